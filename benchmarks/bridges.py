"""The bridges under test, started and stopped the same way for every kind, and what their
processes cost. Runs in the benchmark process (benchmarks/run.py); the bridges are its children.

Kinds: "cardbridge" (one worker process, exactly what the service runs per card), "zita"
(zita-a2j + zita-j2a), "alsa_in" (alsa_in + alsa_out). Each is started for both directions of
one card, with the same ALSA period (256 × 2 unless told) and the card's own rate.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from cardbridge.engine.spec import BridgeSpec
from cardbridge.engine.stats import StatsSlot

KINDS = ("cardbridge", "zita", "alsa_in")


@dataclass
class Running:
    """One started bridge: its processes and the JACK ports the measuring clients use."""
    kind: str
    procs: list
    playback_port: str
    capture_port: str
    clients: list = field(default_factory=list)    # its JACK client names
    logs: list = field(default_factory=list)       # (program, log path) of each process


def start_bridge(kind: str, card, server: str, env: dict, work: Path, tag: str = "",
                 period: int = 256) -> Running:
    """Start one duplex bridge of `kind` on `card` (a VirtualCard) against JACK `server`."""
    env = dict(env, JACK_DEFAULT_SERVER=server, JACK_NO_START_SERVER="1")
    work.mkdir(parents=True, exist_ok=True)
    out = open(work / f"{kind}{tag}.log", "w")
    out2 = open(work / f"{kind}{tag}-playback.log", "w")
    if kind == "cardbridge":
        slot = StatsSlot(str(work / f"stats{tag}"), create=True)
        name = f"cb{tag}"
        spec = BridgeSpec(device_id=card.name, pcm=card.name, client_name=name,
                          jack_server=server, period=period, periods=2, quality="medium",
                          rate=card.rate if card.rate != 48000 else None)
        proc = subprocess.Popen([sys.executable, "-m", "cardbridge.engine.worker", "--spec",
                                 spec.to_json(), "--stats", slot.path], env=env,
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=out)
        return Running(kind, [proc], f"{name}:playback_1", f"{name}:capture_1", [name])
    common = ["-d", card.name, "-r", str(card.rate), "-p", str(period), "-n", "2", "-c", "2"]
    if kind == "zita":
        # -v: one line a second with the loop's error and ratio, line-buffered into the log,
        # so that a loop that broke down is seen (broke_down) rather than measured as audio
        cin, cout = f"zin{tag}", f"zout{tag}"
        programs = ("zita-a2j", "zita-j2a")
        line = ["stdbuf", "-oL", "-eL"]
        a = subprocess.Popen([*line, "zita-a2j", "-v", "-j", cin, *common], env=env, stdout=out,
                             stderr=out)
        b = subprocess.Popen([*line, "zita-j2a", "-v", "-j", cout, *common], env=env, stdout=out2,
                             stderr=out2)
    else:
        cin, cout = f"ain{tag}", f"aout{tag}"
        programs = ("alsa_in", "alsa_out")
        a = subprocess.Popen(["alsa_in", "-j", cin, *common], env=env, stdout=out, stderr=out)
        b = subprocess.Popen(["alsa_out", "-j", cout, *common], env=env, stdout=out2, stderr=out2)
    logs = list(zip(programs, (out.name, out2.name)))
    return Running(kind, [a, b], f"{cout}:playback_1", f"{cin}:capture_1", [cin, cout], logs)


def _floats(line: str) -> list | None:
    try:
        values = [float(w) for w in line.split()]
    except ValueError:
        return None
    return values if len(values) == 3 else None


def broke_down(bridge: Running) -> str | None:
    """What a peer's own log says went wrong for good, read after it stopped: zita's control
    loop reading NaN (its -v status lines show error and ratio "-nan" from then on, and its audio
    is garbage), alsa_in/alsa_out giving up on an ALSA error ("Write error: …", after the
    error codes it printed before). None when nothing was seen."""
    found = []
    for program, path in bridge.logs:
        try:
            lines = Path(path).read_text(errors="replace").splitlines()
        except OSError:
            continue
        status = [v for v in map(_floats, lines) if v is not None]
        bad = next((i for i, v in enumerate(status) if any(math.isnan(x) for x in v)), None)
        if bad is not None:
            found.append(f"{program}'s control loop went NaN (its -v status lines read -nan "
                         f"from line {bad + 1} of {len(status)} on)")
        fatal = next((ln for ln in lines if ln.startswith(("Write error", "Read error"))), None)
        if fatal is not None:
            codes = sorted({ln.split("=")[1].strip() for ln in lines if ln.startswith("err =")})
            found.append(f"{program} exited: \"{fatal.strip()}\" (ALSA errors it had printed: "
                         f"{', '.join(codes) or 'none'})")
    return "; ".join(found) or None


def stop_all(procs: list) -> None:
    for p in procs:
        if p.poll() is None:
            if p.stdin is not None:
                try:
                    p.stdin.write(b"stop\n")
                    p.stdin.flush()
                except (BrokenPipeError, OSError):
                    pass
            p.send_signal(signal.SIGCONT)
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError):
        return 0.0


def rss_mb(pid: int) -> float:
    """Private resident memory (RssAnon): VmRSS would count JACK's shared segments, which every
    JACK client maps and which are not the client's own cost."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def jack_ports(server: str) -> str:
    return subprocess.run(["jack_lsp", "-s", server], capture_output=True, text=True,
                          timeout=10).stdout


def reported_latency(server: str, pb_port: str, cap_port: str) -> int:
    """Capture latency of the capture port + playback latency of the playback port (frames)."""
    def value(port, kind):
        out = subprocess.run(["jack_lsp", "-s", server, "-l", port], capture_output=True,
                             text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.strip().startswith(f"port {kind} latency"):
                return int(line.split("[")[1].split()[1])
        return 0
    return value(cap_port, "capture") + value(pb_port, "playback")
