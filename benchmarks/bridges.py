"""The bridges under test, started for a set of cards the way their users start them, and what
their processes cost. Runs in the benchmark process (benchmarks/run.py); the bridges are its
children.

Kinds:
* "cardbridge": the daemon (cardbridged) on a private session bus, the cards declared in its
  config file, attached over D-Bus (busctl), its statistics read the way a user reads them,
  `cardbridge --json watch` (a line per property change). Its processes are the daemon and
  whatever it started (the workers), found as the daemon's descendants.
* "zita": zita-a2j (capture) and zita-j2a (playback) per card, `-v` so that a control loop that
  broke down is seen in its status lines.
* "alsa_in": alsa_in and alsa_out per card.

Each card's bridge gets the card's own rate and the cell's ALSA period and period count. JACK
client names: `<kind prefix>_<card>` (zita and alsa_in: one client per direction).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from testbench.busdaemon import PrivateBus
from testbench.procs import terminate
from testbench.servicerun import BUS, MGR, MIFACE, daemon, get_prop

KINDS = ("cardbridge", "zita", "alsa_in")
PEER_PROGRAMS = {"zita": ("zita-a2j", "zita-j2a"), "reference": ("zita-a2j", "zita-j2a"),
                 "alsa_in": ("alsa_in", "alsa_out")}


@dataclass
class CardPorts:
    """Where a card's channels are on the JACK side for one bridge kind."""
    capture_client: str | None
    playback_client: str | None

    def capture(self, channel: int) -> str:
        return f"{self.capture_client}:capture_{channel + 1}"

    def playback(self, channel: int) -> str:
        return f"{self.playback_client}:playback_{channel + 1}"


def descendants(pid: int) -> list[int]:
    """PIDs of every live descendant of `pid` (from /proc's parent links)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError):
        return None


def maps_file(pid: int, path: str) -> bool:
    """True when process `pid` has `path` mapped (a worker maps its card's shared file)."""
    try:
        return path in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


class BridgeSet:
    """Every bridge of one kind for a cell's cards."""

    kind = ""

    def __init__(self, cards, jack_server: str, env: dict, work: Path):
        self.cards = list(cards)           # (CardSpec, VirtualCard) pairs
        self.jack_server = jack_server
        self.env = dict(env, JACK_DEFAULT_SERVER=jack_server, JACK_NO_START_SERVER="1")
        self.work = Path(work)
        self.work.mkdir(parents=True, exist_ok=True)
        self._stack = contextlib.ExitStack()

    def ports(self, card) -> CardPorts:
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    def processes(self) -> dict[str, list[int]]:
        """PIDs per card name, plus "" for processes shared by all cards."""
        raise NotImplementedError

    def pause(self, seconds: float) -> tuple[int, int]:
        """SIGSTOP every process of every bridge, `seconds`, SIGCONT: (stop ns, resume ns)."""
        pids = [p for group in self.processes().values() for p in group]
        t0 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        time.sleep(seconds)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        return t0, time.clock_gettime_ns(time.CLOCK_MONOTONIC)

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far per card name ("" for shared processes)."""
        return {name: sum(cpu_seconds(p) or 0.0 for p in pids)
                for name, pids in self.processes().items()}

    def report(self) -> dict[str, dict]:
        """What each card's bridge said about itself (after stop()): per card name."""
        return {}

    def stop(self) -> None:
        self._stack.close()


class CardbridgeSet(BridgeSet):
    kind = "cardbridge"

    def ports(self, card) -> CardPorts:
        name = f"cb_{card.name}"
        return CardPorts(name, name)

    def config(self) -> str:
        lines = ['auto_attach = "none"', "hotplug = false", ""]
        for spec, card in self.cards:
            lines += [f"[devices.{card.name}]", f'pcm = "{card.name}"',
                      f'name = "cb_{card.name}"', f"rate = {card.rate}",
                      f"period = {spec.period}", f"periods = {spec.periods}", ""]
        return "\n".join(lines)

    def start(self) -> None:
        bus = self._stack.enter_context(PrivateBus("session"))
        env = bus.env(self.env, HOME=str(self.work))
        started: list = []
        self.address = self._stack.enter_context(
            daemon(self.work, env, self.jack_server, "--no-hotplug", config=self.config(),
                   started=started))
        self.daemon = started[0]
        self.watch = Watch(env, self.work / "watch.jsonl")
        self._stack.callback(self.watch.stop)
        for _, card in self.cards:
            done = subprocess.run(["busctl", f"--address={self.address}", "call", BUS, MGR,
                                   MIFACE, "Attach", "sa{sv}", card.name, "0"],
                                  capture_output=True, text=True, timeout=20)
            if done.returncode != 0:
                raise RuntimeError(f"Attach({card.name}) failed: {done.stderr.strip()}")

    def processes(self) -> dict[str, list[int]]:
        workers = descendants(self.daemon.pid)
        out = {"": [self.daemon.pid]}
        for _, card in self.cards:
            out[card.name] = [p for p in workers if maps_file(p, card.shm)]
        mapped = {p for pids in out.values() for p in pids}
        out[""] += [p for p in workers if p not in mapped]
        return out

    def stats_now(self) -> dict[str, dict]:
        """Each bridge's D-Bus properties now (busctl; between measurements only)."""
        from cardbridge import names
        out = {}
        for _, card in self.cards:
            path = names.bridge_path(card.name)
            out[card.name] = {k: get_prop(self.address, path, k)
                              for k in ("State", "Xruns", "Underruns", "Restarts", "Latency")}
        return out

    def report(self) -> dict[str, dict]:
        from cardbridge import names
        by_path = {names.bridge_path(card.name): card.name for _, card in self.cards}
        out = {card.name: {"states": [], "xruns": None, "underruns": None, "restarts": None}
               for _, card in self.cards}
        for t, event in self.watch.events:
            bridges = []
            if event.get("event") == "snapshot":
                bridges = [(b["path"], b) for b in event["status"]["bridges"]]
            elif event.get("event") == "bridge-added":
                bridges = [(event["bridge"]["path"], event["bridge"])]
            elif event.get("event") == "bridge-changed":
                bridges = [(event["path"], event["changes"])]
            for path, values in bridges:
                name = by_path.get(path)
                if name is None:
                    continue
                rec = out[name]
                if values.get("state") is not None:
                    rec["states"].append((t, values["state"]))
                for key in ("xruns", "underruns", "restarts"):
                    if values.get(key) is not None:
                        rec[key] = values[key]
        log = (self.work / "daemon.log")
        text = log.read_text(errors="replace") if log.exists() else ""
        for name, rec in out.items():
            rec["log_lines"] = [ln for ln in text.splitlines() if name in ln][-40:]
        return out


class Watch:
    """`cardbridge --json watch` as a child process; its lines with the CLOCK_MONOTONIC ns at
    which each arrived (events: list of (ns, dict))."""

    def __init__(self, env: dict, path: Path):
        cli = Path(sys.executable).with_name("cardbridge")
        self.proc = subprocess.Popen([str(cli), "--session", "--json", "watch"], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.path = path
        self.events: list[tuple[int, dict]] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with open(self.path, "w") as keep:
            for line in self.proc.stdout:
                now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
                keep.write(f"{now} {line}")
                try:
                    self.events.append((now, json.loads(line)))
                except ValueError:
                    pass

    def stop(self) -> None:
        terminate(self.proc, 5.0)
        self._thread.join(5.0)


class PeerSet(BridgeSet):
    """zita-a2j/zita-j2a or alsa_in/alsa_out: one process per card and direction."""

    prefix = ""

    def ports(self, card) -> CardPorts:
        return CardPorts(f"{self.prefix}c_{card.name}" if card.capture_channels else None,
                         f"{self.prefix}p_{card.name}" if card.playback_channels else None)

    def start(self) -> None:
        self.procs: dict[str, list[tuple[str, subprocess.Popen, Path]]] = {}
        cap_prog, pb_prog = PEER_PROGRAMS[self.kind]
        for spec, card in self.cards:
            ports = self.ports(card)
            common = ["-d", card.name, "-r", str(card.rate), "-p", str(spec.period),
                      "-n", str(spec.periods)]
            started = []
            for prog, client, channels in ((cap_prog, ports.capture_client, card.capture_channels),
                                           (pb_prog, ports.playback_client, card.playback_channels)):
                if not channels:
                    continue
                log = self.work / f"{client}.log"
                args = [prog, "-j", client, *common, "-c", str(channels)]
                if self.kind in ("zita", "reference"):
                    args = ["stdbuf", "-oL", "-eL", *args[:1], "-v", *self.extra_args, *args[1:]]
                out = open(log, "w")
                self._stack.callback(out.close)
                proc = subprocess.Popen(args, env=self.env, stdout=out, stderr=subprocess.STDOUT)
                self._stack.callback(terminate, proc, 5.0)
                started.append((prog, proc, log))
            self.procs[card.name] = started

    def processes(self) -> dict[str, list[int]]:
        out = {"": []}
        for name, started in self.procs.items():
            pids = []
            for _, proc, _ in started:
                pids += [proc.pid] + descendants(proc.pid)     # stdbuf execs; be sure
            out[name] = [p for p in pids if cpu_seconds(p) is not None]
        return out

    def report(self) -> dict[str, dict]:
        out = {}
        for name, started in self.procs.items():
            rec = {"broke_down": [], "exited": [], "xruns": 0}
            for prog, proc, log in started:
                text = log.read_text(errors="replace") if log.exists() else ""
                rec["xruns"] += said_xruns(prog, text)
                why = peer_breakdown(prog, text)
                if why:
                    rec["broke_down"].append(why)
                if proc.returncode not in (None, 0, -signal.SIGTERM):
                    said = [ln.strip() for ln in text.splitlines()
                            if ln.strip() and _floats(ln) is None][-2:]
                    rec["exited"].append(f"{prog} exited with {proc.returncode}"
                                         + (f" ({' / '.join(said)})" if said else ""))
            out[name] = rec
        return out


class ZitaSet(PeerSet):
    kind = "zita"
    prefix = "z"
    extra_args: tuple = ()


class ReferenceSet(ZitaSet):
    """zita-a2j/j2a with -S (word clock sync: no resampling, no control loop): on a card whose
    clock is JACK's own rate (0 ppm; JACK's CLOCK_MONOTONIC_RAW and the card's CLOCK_MONOTONIC
    run together to a few ppb where nothing slews the clock) it moves every sample unchanged
    at a fixed delay, so what the benchmark measures on it is the measurement's own floor."""
    kind = "reference"
    prefix = "r"
    extra_args = ("-S",)


class AlsaInSet(PeerSet):
    kind = "alsa_in"
    prefix = "a"


def _floats(line: str) -> list | None:
    try:
        values = [float(w) for w in line.split()]
    except ValueError:
        return None
    return values if len(values) == 3 else None


def said_xruns(program: str, text: str) -> int:
    """The xruns a peer's own output tells of: zita-a2j/j2a start their synchronisation again
    after each (\"Starting synchronisation.\" after the first), alsa_in/alsa_out print
    \"err = -32\" (EPIPE)."""
    if program.startswith("zita"):
        return max(0, text.count("Starting synchronisation.") - 1)
    return sum(1 for ln in text.splitlines() if ln.strip() == "err = -32")


def peer_breakdown(program: str, text: str) -> str | None:
    """What a peer's own log says went wrong for good: zita's control loop reading NaN (its -v
    status lines show error and ratio "-nan" from then on, and its audio is garbage),
    alsa_in/alsa_out giving up on an ALSA error ("Write error: …")."""
    lines = text.splitlines()
    status = [v for v in map(_floats, lines) if v is not None]
    bad = next((i for i, v in enumerate(status) if any(math.isnan(x) for x in v)), None)
    if bad is not None:
        return (f"{program}'s control loop went NaN (its -v status lines read -nan from line "
                f"{bad + 1} of {len(status)} on)")
    fatal = next((ln for ln in lines if ln.startswith(("Write error", "Read error"))), None)
    if fatal is not None:
        return f"{program} exited: \"{fatal.strip()}\""
    return None


SETS = {"cardbridge": CardbridgeSet, "zita": ZitaSet, "alsa_in": AlsaInSet,
        "reference": ReferenceSet}
