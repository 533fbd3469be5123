"""What the benchmark measures, one scenario per function, the same way for every bridge kind.
Runs in the benchmark process (benchmarks/run.py); JACK, the bridges and the measuring JACK
clients (testbench.probe) are its child processes.

Every scenario gets a fresh private JACK dummy server and fresh virtual cards, so no run sees
another's leftovers. The measuring clients: one plays a click every second (or a sine) into
the bridge's playback port, the other records its capture port; the signal goes JACK → bridge →
card playback → the card's loop → card capture → bridge → JACK.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from testbench.jackserver import JackServer
from testbench.probe import thd_n_windows_db
from testbench.vcard import VirtualCard, write_alsa_config

from bridges import broke_down, cpu_seconds, jack_ports, reported_latency, rss_mb, start_bridge, stop_all

RATE = 48000


@contextlib.contextmanager
def jack_and_cards(cards: list[VirtualCard], work: Path, period: int = 256):
    """A private JACK dummy server and the cards' ALSA config: yields (server, env)."""
    work.mkdir(parents=True, exist_ok=True)
    jack = JackServer(rate=RATE, period=period, log_path=work / "jackd.log")
    jack.start()
    try:
        env = dict(os.environ, ALSA_CONFIG_PATH=write_alsa_config(cards, work / "asound.conf"))
        yield jack, env
    finally:
        jack.stop()


def wait_ports(server: str, ports: list[str], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listed = jack_ports(server)
        if all(p in listed for p in ports):
            return True
        time.sleep(0.05)
    return False


def start_probe(server: str, role: str, seconds: float, out: Path, env: dict, *args: str):
    return subprocess.Popen(
        [sys.executable, "-m", "testbench.probe", "--server", server,
         "--name", f"bench_{role}", "--seconds", str(seconds), "--out", str(out), *args], env=env)


def fresh(card: VirtualCard) -> VirtualCard:
    return VirtualCard(**{**card.__dict__, "shm": ""})


# -- the click train -------------------------------------------------------------------------------

def click_delays(send: dict, recv: dict, rate: int) -> tuple[np.ndarray, np.ndarray]:
    """(time of each click in s since the probe started, round-trip delay in frames), each
    peak located to a fraction of a frame."""
    sig, rec = send["signal"], recv["recorded"]
    offset = int(recv["first_frame"]) - int(send["first_frame"])
    starts = np.nonzero((sig[1:] > 0) & (sig[:-1] == 0))[0] + 1
    times, delays = [], []
    last = None
    wide = int(0.9 * rate)      # clicks are 1 s apart: a delay below 0.9 s is unambiguous
    for s in starts:
        # near the last delay first (to a fraction of a frame); after a jump (a stall, a
        # resync), anywhere in the next 0.9 s
        for near in ((last,) if last is not None else ()) + (None,):
            lo = max((s - offset) + (near - 4000 if near is not None else 0), 0)
            hi = min((s - offset) + (near + 4000 if near is not None else wide), len(rec) - 3)
            if hi - lo < 10:
                continue
            seg = np.abs(rec[lo:hi])
            k = int(np.argmax(seg))
            if seg[k] >= 0.05:
                break
        else:
            continue
        i = lo + k
        a, b, c = abs(rec[i - 1]), abs(rec[i]), abs(rec[i + 1])
        denom = a - 2 * b + c
        frac = 0.5 * (a - c) / denom if (denom and i > 0) else 0.0
        times.append(s / rate)
        delays.append((i + frac) + offset - s - 2.0)   # the click peaks at its 3rd sample
        last = int(round(delays[-1]))
    return np.array(times), np.array(delays)


def trend_ppm(times: np.ndarray, delays: np.ndarray, rate: int, window: int) -> np.ndarray:
    """The delay's drift over each `window` clicks as the median of its pairwise slopes
    (Theil–Sen), in ppm: the window's mean ratio, read without letting one odd click (a
    transient at a JACK xrun) count as a ratio error for the ten seconds it takes part in."""
    pairs = [(j, k) for j in range(window + 1) for k in range(j + 1, window + 1)]
    j, k = np.array(pairs).T
    out = np.empty(len(delays) - window)
    for i in range(len(out)):
        d, t = delays[i:i + window + 1], times[i:i + window + 1]
        out[i] = np.median((d[k] - d[j]) / (t[k] - t[j]))
    return out / rate * 1e6


def analyse_clicks(times: np.ndarray, delays: np.ndarray, rate: int) -> dict:
    if len(delays) < 25:
        return {"clicks": int(len(delays))}
    window = 10
    err = (delays[window:] - delays[:-window]) / (window * rate) * 1e6   # ppm over 10 s
    trend = trend_ppm(times, delays, rate, window)
    t_err = times[window:]

    def lock_time(series, limit):
        bad = np.nonzero(np.abs(series) > limit)[0]
        if len(bad) == 0:
            return float(t_err[0])
        if bad[-1] == len(series) - 1:
            return None
        return float(t_err[bad[-1] + 1])

    half = len(delays) // 2
    tail = delays[half:]
    tail_err = np.abs(err[len(err) // 2:])
    # an odd click: more than a frame away from the median of the 11 clicks around it
    local = np.array([np.median(delays[max(i - 5, 0):i + 6]) for i in range(half, len(delays))])
    return {
        "clicks": int(len(delays)),
        "lock_10ppm_s": lock_time(err, 10.0),
        "lock_2ppm_s": lock_time(err, 2.0),
        "lock_2ppm_trend_s": lock_time(trend, 2.0),
        "ratio_err_median_ppm": float(np.median(tail_err)),
        "ratio_err_p95_ppm": float(np.percentile(tail_err, 95)),
        "delay_pp_frames": float(tail.max() - tail.min()),
        "delay_mad_frames": float(np.median(np.abs(tail - np.median(tail)))),
        "odd_clicks": int(np.sum(np.abs(tail - local) > 1.0)),
        "round_trip_frames": float(np.median(tail)),
    }


def _run_clicks(kind: str, card: VirtualCard, seconds: float, work: Path,
                during=None) -> tuple[dict, dict | None, float]:
    """Start the bridge, run the click train for `seconds` (calling `during(bridge, t0)` while
    it runs, t0 = monotonic time of the probe's first cycle); returns (process figures,
    loaded probe data or None, t0)."""
    with jack_and_cards([card], work) as (jack, env):
        bridge = start_bridge(kind, card, jack.name, env, work)
        try:
            wait_ports(jack.name, [bridge.playback_port, bridge.capture_port])
            cpu0 = sum(cpu_seconds(p.pid) for p in bridge.procs)
            t_start = time.monotonic()
            send = start_probe(jack.name, "send", seconds, work / "send.npz", env,
                               "--play", bridge.playback_port, "--signal", "impulse",
                               "--level", "-3")
            recv = start_probe(jack.name, "recv", seconds, work / "recv.npz", env,
                               "--record", bridge.capture_port, "--signal", "silence")
            wait_ports(jack.name, ["bench_send:", "bench_recv:"], 10.0)
            t0 = time.monotonic()
            if during is not None:
                during(bridge, t0)
            rss = 0.0
            while send.poll() is None or recv.poll() is None:
                rss = max(rss, sum(rss_mb(p.pid) for p in bridge.procs))
                time.sleep(0.5)
            wall = time.monotonic() - t_start
            figures = {
                "cpu_percent": (sum(cpu_seconds(p.pid) for p in bridge.procs) - cpu0) / wall * 100,
                "rss_mb": rss,
                "reported_latency_frames": reported_latency(jack.name, bridge.playback_port,
                                                            bridge.capture_port),
                "bridge_alive_at_end": all(p.poll() is None for p in bridge.procs),
            }
        finally:
            stop_all(bridge.procs)
    figures["broke_down"] = broke_down(bridge)
    if not (work / "send.npz").exists() or not (work / "recv.npz").exists():
        return figures, None, t0
    return figures, {"send": np.load(work / "send.npz"), "recv": np.load(work / "recv.npz")}, t0


def measure_loop(kind: str, card: VirtualCard, seconds: float, work: Path) -> dict:
    """Lock time, steady ratio error, delay stability, latency, CPU, memory, xruns."""
    figures, data, _ = _run_clicks(kind, fresh(card), seconds, work)
    base = {"bridge": kind, "card": card.name, "ppm": card.ppm, "wander_ppm": card.wander_ppm,
            "rate": card.rate, **figures}
    if data is None:
        return {**base, "failed": "the measuring clients could not connect to the bridge's "
                                  "ports (the bridge was gone)", "delays": [], "times": [],
                "jack_xruns": 0}
    times, delays = click_delays(data["send"], data["recv"], RATE)
    return {**base, **analyse_clicks(times, delays, RATE), "jack_xruns": int(data["recv"]["xruns"]),
            "delays": delays.tolist(), "times": times.tolist()}


# -- stalls ------------------------------------------------------------------------------------------

def measure_stalls(kind: str, card: VirtualCard, work: Path, stalls: int = 20,
                   every: float = 8.0, stall_ms: float = 100.0, warmup: float = 25.0) -> dict:
    """`stalls` SIGSTOP/SIGCONT pauses of all the bridge's processes, `every` s apart after a
    warm-up. Re-locked: the first click after which three consecutive clicks agree within one
    frame (the delay is steady again, wherever it settled). Never: not before the next stall."""
    seconds = warmup + stalls * every + 4.0
    stall_at: list[float] = []

    def during(bridge, t0):
        for k in range(stalls):
            time.sleep(max(0.0, t0 + warmup + k * every - time.monotonic()))
            stall_at.append(time.monotonic() - t0)
            for p in bridge.procs:
                p.send_signal(signal.SIGSTOP)
            time.sleep(stall_ms / 1000.0)
            for p in bridge.procs:
                p.send_signal(signal.SIGCONT)

    figures, data, _ = _run_clicks(kind, fresh(card), seconds, work, during)
    result = {"bridge": kind, "card": card.name, "stalls": stalls, "stall_ms": stall_ms,
              "alive_at_end": figures.get("bridge_alive_at_end"),
              "broke_down": figures["broke_down"]}
    if data is None:
        return {**result, "failed": "no click data", "relock_s": [], "never": stalls}
    times, delays = click_delays(data["send"], data["recv"], RATE)
    relock, jumps = [], []
    for k, at in enumerate(stall_at):
        end = stall_at[k + 1] if k + 1 < len(stall_at) else times[-1] if len(times) else at
        before = delays[(times < at) & (times > at - every + 1.0)]
        idx = np.nonzero((times > at + stall_ms / 1000.0) & (times < end))[0]
        found = None
        for j in range(len(idx) - 2):
            a, b, c = delays[idx[j]], delays[idx[j + 1]], delays[idx[j + 2]]
            if abs(b - a) <= 1.0 and abs(c - b) <= 1.0:
                found = idx[j]
                break
        if found is None:
            relock.append(None)
            continue
        relock.append(float(times[found] - at))
        if len(before):
            jumps.append(float(delays[found] - np.median(before)))
    good = [r for r in relock if r is not None]
    return {**result, "relock_s": relock, "never": sum(r is None for r in relock),
            "relock_median_s": float(np.median(good)) if good else None,
            "relock_max_s": float(max(good)) if good else None,
            "delay_jump_median_frames": float(np.median(np.abs(jumps))) if jumps else None}


# -- a sine through the loop ------------------------------------------------------------------------

def measure_tone(kind: str, card: VirtualCard, work: Path, seconds: float = 30.0,
                 settle: float = 18.0, freq: float = 997.0) -> dict:
    """THD+N of a −6 dBFS sine after JACK → bridge → card loop → bridge → JACK, in 4096-frame
    windows over the recording after `settle` s (the peers' loops are wide before that)."""
    card = fresh(card)
    with jack_and_cards([card], work) as (jack, env):
        bridge = start_bridge(kind, card, jack.name, env, work)
        try:
            wait_ports(jack.name, [bridge.playback_port, bridge.capture_port])
            probe = start_probe(jack.name, "tone", seconds, work / "tone.npz", env,
                                "--play", bridge.playback_port, "--record", bridge.capture_port,
                                "--signal", "sine", "--freq", str(freq), "--level", "-6")
            probe.wait(seconds + 60)
        finally:
            stop_all(bridge.procs)
    result = {"bridge": kind, "card": card.name, "broke_down": broke_down(bridge)}
    if not (work / "tone.npz").exists():
        return {**result, "failed": "no recording"}
    rec = np.load(work / "tone.npz")["recorded"]
    part = rec[int(settle * RATE):]
    windows = [w for w in thd_n_windows_db(part, RATE, freq) if np.isfinite(w)]
    if not windows:
        return {**result, "failed": "no signal came back"}
    return {**result, "thd_n_median_db": float(np.median(windows)),
            "thd_n_worst_db": float(max(windows)), "windows": len(windows)}


# -- several bridges at once -------------------------------------------------------------------------

def measure_many(kind: str, count: int, seconds: float, work: Path, period: int = 256) -> dict:
    """`count` duplex bridges of one kind on one JACK server (cards with different offsets),
    for `seconds`: JACK xruns (seen by a measuring client), bridges still alive, total CPU."""
    cards = [VirtualCard(f"many{i}", ppm=(-300.0 + 170.0 * i) % 600 - 300) for i in range(count)]
    with jack_and_cards(cards, work, period) as (jack, env):
        bridges = []
        try:
            for i, card in enumerate(cards):
                bridges.append(start_bridge(kind, card, jack.name, env, work, tag=str(i),
                                            period=period))
            wait_ports(jack.name, [b.capture_port for b in bridges], 30.0)
            procs = [p for b in bridges for p in b.procs]
            time.sleep(15.0)                      # everyone past start-up
            if not any(all(p.poll() is None for p in b.procs) for b in bridges):
                return {"bridge": kind, "count": count, "period": period, "seconds": 0.0,
                        "jack_xruns": None, "alive": 0, "cpu_percent": None,
                        "failed": "every bridge exited during start-up"}
            cpu0 = sum(cpu_seconds(p.pid) for p in procs)
            t0 = time.monotonic()
            probe = start_probe(jack.name, "xruns", seconds, work / "xruns.npz", env,
                                "--record", bridges[0].capture_port, "--signal", "silence")
            probe.wait(seconds + 60)
            wall = time.monotonic() - t0
            cpu = (sum(cpu_seconds(p.pid) for p in procs) - cpu0) / wall * 100
            alive = sum(all(p.poll() is None for p in b.procs) for b in bridges)
        finally:
            stop_all([p for b in bridges for p in b.procs])
    xruns = int(np.load(work / "xruns.npz")["xruns"]) if (work / "xruns.npz").exists() else None
    broken = [f"bridge {i}: {why}" for i, b in enumerate(bridges) if (why := broke_down(b))]
    return {"bridge": kind, "count": count, "period": period, "seconds": seconds,
            "jack_xruns": xruns, "alive": alive, "cpu_percent": cpu,
            "broke_down": "; ".join(broken) or None}
