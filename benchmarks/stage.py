"""One run of one cell for one bridge kind: the JACK server, the cards, the measuring clients,
the taps, the bridges, and the run's events (a card that stalls, a 100 ms stop of every bridge
process). Runs in the benchmark process; everything else is its children.

Order: fresh cards (their clocks start now; capture delivers each card's own sine) → JACK dummy
server (real-time, as its users run it) → a playback tap per card → the measuring clients (a
player, a recorder; they connect to the bridges' ports as soon as those appear) → the bridges
(t = 0 of the run) → at `stall_at` every card's pointer freezes for `stall_ms` (a card xrun:
what was lost must come back as exactly that many frames) → at `stop_at` every bridge process
is stopped for `stop_ms` (SIGSTOP/SIGCONT) → at `seconds` everything stops and the files are
loaded. CPU is counted from `cpu_from` s to the end.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import resource
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from testbench.jackserver import JackServer
from testbench.meter import Meter, MeterRun
from testbench.tap import Tap, TapRun
from testbench.procs import terminate
from testbench.vcard import create_card, write_alsa_config

from bridges import SETS

SHM_ROOT = Path("/dev/shm")
_serial = itertools.count(1)


@dataclass
class Layout:
    """When things happen in a run (s since the bridges were started)."""
    seconds: float = 80.0
    stall_at: float = 36.0
    stall_ms: float = 150.0
    stop_at: float = 56.0
    stop_ms: float = 100.0
    cpu_from: float = 5.0
    steady_from: float = 15.0     # steady figures from here on (outside the events' settling)
    settle: float = 10.0          # seconds after an event that steady figures leave out

    @classmethod
    def quick(cls) -> "Layout":
        return cls(seconds=36.0, stall_at=17.0, stop_at=26.0, steady_from=10.0, settle=8.0)

    @classmethod
    def without_events(cls, seconds: float) -> "Layout":
        return cls(seconds=seconds, stall_at=float("inf"), stop_at=float("inf"))


@dataclass
class CardRun:
    spec: object                  # cells.CardSpec
    name: str
    card: object                  # VirtualCard
    tap: TapRun | None
    capture_ports: list           # recorder input index per capture channel kept (0, 1)
    playback_clients: str | None
    capture_client: str | None
    cpu_percent: float | None


@dataclass
class StageRun:
    cell: object
    kind: str
    layout: Layout
    t0_ns: int                    # CLOCK_MONOTONIC when the bridges were started
    events: dict                  # name -> (start ns, end ns)
    player: MeterRun | None
    recorder: MeterRun | None
    cards: list[CardRun]
    shared_cpu_percent: float     # processes shared by all cards (cardbridge's daemon)
    bridge_report: dict
    failed: str | None = None
    work: Path | None = None
    jack_log: str = ""
    extra: dict = field(default_factory=dict)


def bridge_limits() -> None:
    """The limits the project's systemd units give the service (LimitRTPRIO=95,
    LimitMEMLOCK=infinity), for every bridge kind alike: children inherit them."""
    for limit, value in ((resource.RLIMIT_MEMLOCK, resource.RLIM_INFINITY),
                         (resource.RLIMIT_RTPRIO, 95)):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(limit, (value, value))


def cpu_ticks() -> tuple[int, int, int]:
    """The whole machine's (busy, steal, total) clock ticks so far (/proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    total = sum(fields[:8])
    idle = fields[3] + fields[4]
    return total - idle, fields[7], total


def machine_load(t0: tuple, t1: tuple) -> dict:
    """What the whole machine did between two cpu_ticks(): busy and stolen CPU in % of one core
    (two cores busy: 200), and the load average at the end."""
    busy, steal, total = (b - a for a, b in zip(t0, t1))
    cores = os.cpu_count() or 1
    return {"busy_percent": 100.0 * cores * busy / max(total, 1),
            "steal_percent": 100.0 * cores * steal / max(total, 1),
            "load_average": os.getloadavg()[0], "cores": cores}


def card_name(cell, spec) -> str:
    return f"{cell.name}{spec.key}"


def run_stage(cell, kind: str, layout: Layout, work: Path, keep_channels: int = 2) -> StageRun:
    """Run `cell` with bridges of `kind`; the measuring files stay in `work`."""
    bridge_limits()
    work = Path(work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    shm = SHM_ROOT / f"cbbench-{os.getpid()}-{next(_serial)}"
    shm.mkdir()
    cards = []
    for spec in cell.cards:
        card = spec.virtual_card(card_name(cell, spec))
        card.shm = str(shm / f"{card.name}.vcard")
        cards.append((spec, card))
    alsa = write_alsa_config([c for _, c in cards], shm / "asound.conf")
    controls = [create_card(card) for _, card in cards]
    total = layout.seconds + 15.0
    events: dict = {}
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, shm, True)
        for control in controls:
            stack.callback(control.close)
        jack = JackServer(rate=cell.jack_rate, period=cell.jack_period, realtime=True,
                          log_path=work / "jackd.log")
        jack.start()
        stack.callback(jack.stop)
        env = dict(jack.env(), ALSA_CONFIG_PATH=alsa)
        bridges = SETS[kind]([c for c in cards], jack.name, env, work / "bridges")
        taps = []
        for spec, card in cards:
            keep = tuple(range(min(keep_channels, card.playback_channels)))
            taps.append(Tap(card.shm, work / f"tap-{card.name}", total, keep))
            stack.callback(terminate, taps[-1].proc)
        plays, records, capture_ports = [], [], []
        for spec, card in cards:
            ports = bridges.ports(card)
            for ch in range(card.playback_channels):
                plays.append((ports.playback(ch), ch))
            mine = []
            for ch in range(min(keep_channels, card.capture_channels)):
                mine.append(len(records))
                records.append(ports.capture(ch))
            capture_ports.append(mine)
        player = Meter(jack.name, "bench_play", work / "player", total, env, plays=plays) \
            if plays else None
        recorder = Meter(jack.name, "bench_rec", work / "recorder", total, env,
                         records=records) if records else None
        for meter in (player, recorder):
            if meter is not None:
                stack.callback(terminate, meter.proc)
        failed = None
        t0 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        try:
            stack.callback(bridges.stop)
            bridges.start()
        except Exception as exc:                  # noqa: BLE001 - reported, the run goes on
            failed = f"the bridges did not start: {exc}"

        def at(seconds: float) -> None:
            time.sleep(max(0.0, t0 / 1e9 + seconds - time.clock_gettime_ns(time.CLOCK_MONOTONIC) / 1e9))

        at(layout.cpu_from)
        cpu0 = bridges.cpu() if failed is None else {}
        ticks0 = cpu_ticks()
        tc0 = time.monotonic()
        if layout.stall_at < layout.seconds:
            at(layout.stall_at)
            s0 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
            for control in controls:
                control.stall(layout.stall_ms / 1000)
            events["card_stall"] = (s0, s0 + int(layout.stall_ms * 1e6))
        if layout.stop_at < layout.seconds and failed is None:
            at(layout.stop_at)
            events["process_stop"] = bridges.pause(layout.stop_ms / 1000)
        at(layout.seconds)
        cpu1 = bridges.cpu() if failed is None else {}
        machine = machine_load(ticks0, cpu_ticks())
        wall = time.monotonic() - tc0
        player_run = player.stop() if player else None
        recorder_run = recorder.stop() if recorder else None
        tap_runs = [tap.stop() for tap in taps]
        stack.pop_all().close()                   # bridges, JACK, cards, in reverse order
    report = bridges.report() if failed is None else {}

    def percent(name: str) -> float | None:
        if name not in cpu0 or name not in cpu1:
            return None
        return (cpu1[name] - cpu0[name]) / wall * 100

    runs = []
    for (spec, card), tap, mine in zip(cards, tap_runs, capture_ports):
        ports = bridges.ports(card)
        runs.append(CardRun(spec, card.name, card, tap, mine, ports.playback_client,
                            ports.capture_client, percent(card.name)))
    log = (work / "jackd.log").read_text(errors="replace") if (work / "jackd.log").exists() else ""
    return StageRun(cell, kind, layout, t0, events, player_run, recorder_run, runs,
                    percent("") or 0.0, report, failed, work, log, {"machine": machine})
