"""Benchmark cardbridge against zita-a2j/zita-j2a and alsa_in/alsa_out, side by side, in one run.

Runs as its own process (`make bench`, or `.venv/bin/python benchmarks/run.py [--quick]`). For each
card (virtual cards with their own clocks) and each bridge, under identical conditions: a private
JACK dummy server, a fresh card with the same clock offset, the bridge started for both
directions, and two measuring JACK clients — one sends a click every second into the bridge's
playback port, the other records the bridge's capture port. The click goes JACK → bridge →
card playback → card loop → card capture → bridge → JACK, so every click gives the round-trip
delay through both directions of the bridge, to a fraction of a frame. From that series:

* lock time: when the 10 s ratio error (the delay's drift over 10 s) enters ±10 ppm and ±2 ppm
  for good;
* steady ratio error (median, p95 of |error| over the second half) and delay stability (p-p and
  MAD over the second half);
* round-trip latency measured vs the latencies the bridge reports to JACK;
* CPU % and private resident memory of the bridge's processes, JACK xruns during the run.

Results: benchmarks/results/<time>/results.json, a Markdown table (medians over the runs, ratios
against each peer) and PNG plots of the delay over time per bridge, overlaid per card.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "service"))

from cardbridge.engine.spec import BridgeSpec  # noqa: E402
from cardbridge.engine.stats import StatsSlot  # noqa: E402
from cardbridge.sandbox.jackserver import JackServer  # noqa: E402
from cardbridge.sandbox.vcard import VirtualCard, write_alsa_config  # noqa: E402

RATE = 48000
PERIOD = 256
BRIDGES = tuple(os.environ.get("BENCH_BRIDGES", "cardbridge,zita,alsa_in").split(","))


# -- bridges under test ---------------------------------------------------------------------------

def start_bridge(kind: str, card: str, server: str, env: dict, work: Path) -> tuple[list, str, str]:
    """Start one duplex bridge; returns (processes, playback port, capture port)."""
    env = dict(env, JACK_DEFAULT_SERVER=server, JACK_NO_START_SERVER="1")
    out = open(work / f"{kind}.log", "w")
    out2 = open(work / f"{kind}-playback.log", "w")
    if kind == "cardbridge":
        slot = StatsSlot(str(work / "stats"), create=True)
        spec = BridgeSpec(device_id=card, pcm=card, client_name="cb", jack_server=server,
                          period=PERIOD, periods=2, quality="medium")
        proc = subprocess.Popen([sys.executable, "-m", "cardbridge.engine.worker", "--spec",
                                 spec.to_json(), "--stats", slot.path], env=env,
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=out)
        return [proc], "cb:playback_1", "cb:capture_1"
    if kind == "zita":
        common = ["-d", card, "-r", str(RATE), "-p", str(PERIOD), "-n", "2", "-c", "2"]
        a2j = subprocess.Popen(["zita-a2j", "-j", "zin", *common], env=env, stdout=out, stderr=out)
        j2a = subprocess.Popen(["zita-j2a", "-j", "zout", *common], env=env, stdout=out2, stderr=out2)
        return [a2j, j2a], "zout:playback_1", "zin:capture_1"
    common = ["-d", card, "-r", str(RATE), "-p", str(PERIOD), "-n", "2", "-c", "2"]
    ain = subprocess.Popen(["alsa_in", "-j", "ain", *common], env=env, stdout=out, stderr=out)
    aout = subprocess.Popen(["alsa_out", "-j", "aout", *common], env=env, stdout=out2, stderr=out2)
    return [ain, aout], "aout:playback_1", "ain:capture_1"


def stop_all(procs: list) -> None:
    for p in procs:
        if p.poll() is None:
            if p.stdin is not None:
                try:
                    p.stdin.write(b"stop\n")
                    p.stdin.flush()
                except (BrokenPipeError, OSError):
                    pass
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
    return subprocess.run(["jack_lsp", "-s", server], capture_output=True, text=True, timeout=10).stdout


def reported_latency(server: str, pb_port: str, cap_port: str) -> int:
    def value(port, kind):
        out = subprocess.run(["jack_lsp", "-s", server, "-l", port], capture_output=True, text=True,
                             timeout=10).stdout
        for line in out.splitlines():
            if line.strip().startswith(f"port {kind} latency"):
                return int(line.split("[")[1].split()[1])
        return 0
    return value(cap_port, "capture") + value(pb_port, "playback")


# -- analysis ---------------------------------------------------------------------------------------

def click_delays(send: dict, recv: dict, rate: int) -> tuple[np.ndarray, np.ndarray]:
    """(time of each click in s since the start, delay in frames) with sub-frame peak fitting."""
    sig, rec = send["signal"], recv["recorded"]
    offset = int(recv["first_frame"]) - int(send["first_frame"])   # recv index 0 = send index offset
    starts = np.nonzero((sig[1:] > 0) & (sig[:-1] == 0))[0] + 1
    times, delays = [], []
    last = None
    for s in starts:
        lo = (s - offset) + (last - 4000 if last is not None else 0)
        lo = max(lo, 0)
        hi = min((s - offset) + (last + 4000 if last is not None else 20000), len(rec) - 3)
        if hi - lo < 10:
            continue
        seg = np.abs(rec[lo:hi])
        k = int(np.argmax(seg))
        if seg[k] < 0.05:
            continue
        i = lo + k
        if 0 < i < len(rec) - 1:
            a, b, c = abs(rec[i - 1]), abs(rec[i]), abs(rec[i + 1])
            denom = a - 2 * b + c
            frac = 0.5 * (a - c) / denom if denom else 0.0
        else:
            frac = 0.0
        delay = (i + frac) + offset - s - 2.0   # the click peaks at its 3rd sample
        times.append(s / rate)
        delays.append(delay)
        last = int(round(delay))
    return np.array(times), np.array(delays)


def analyse(times: np.ndarray, delays: np.ndarray, rate: int) -> dict:
    if len(delays) < 25:
        return {"clicks": int(len(delays))}
    window = 10
    err = (delays[window:] - delays[:-window]) / (window * rate) * 1e6   # ppm, 10 s windows
    t_err = times[window:]

    def lock_time(limit):
        bad = np.nonzero(np.abs(err) > limit)[0]
        if len(bad) == 0:
            return float(t_err[0])
        if bad[-1] == len(err) - 1:
            return None
        return float(t_err[bad[-1] + 1])

    half = len(delays) // 2
    tail = delays[half:]
    tail_err = np.abs(err[len(err) // 2:])
    return {
        "clicks": int(len(delays)),
        "lock_10ppm_s": lock_time(10.0),
        "lock_2ppm_s": lock_time(2.0),
        "ratio_err_median_ppm": float(np.median(tail_err)),
        "ratio_err_p95_ppm": float(np.percentile(tail_err, 95)),
        "delay_pp_frames": float(tail.max() - tail.min()),
        "delay_mad_frames": float(np.median(np.abs(tail - np.median(tail)))),
        "round_trip_frames": float(np.median(tail)),
    }


# -- one measurement --------------------------------------------------------------------------------

def run_one(kind: str, card: VirtualCard, seconds: float, work: Path) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    jack = JackServer(rate=RATE, period=PERIOD, log_path=work / "jackd.log")
    jack.start()
    procs = []
    try:
        env = dict(os.environ, ALSA_CONFIG_PATH=write_alsa_config([card], work / "asound.conf"))
        procs, pb_port, cap_port = start_bridge(kind, card.name, jack.name, env, work)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (pb_port in jack_ports(jack.name)
                                                   and cap_port in jack_ports(jack.name)):
            time.sleep(0.05)
        cpu0 = sum(cpu_seconds(p.pid) for p in procs)
        t0 = time.monotonic()
        probes = []
        for role, args in (("send", ["--play", pb_port, "--signal", "impulse"]),
                           ("recv", ["--record", cap_port, "--signal", "silence"])):
            probes.append(subprocess.Popen(
                [sys.executable, "-m", "cardbridge.sandbox.probe", "--server", jack.name,
                 "--name", f"bench_{role}", "--seconds", str(seconds), "--level", "-3",
                 "--out", str(work / f"{role}.npz"), *args], env=env))
        rss = 0.0
        while any(p.poll() is None for p in probes):
            rss = max(rss, sum(rss_mb(p.pid) for p in procs))
            time.sleep(0.5)
        wall = time.monotonic() - t0
        cpu = (sum(cpu_seconds(p.pid) for p in procs) - cpu0) / wall * 100
        reported = reported_latency(jack.name, pb_port, cap_port)
        alive = all(p.poll() is None for p in procs)
    finally:
        stop_all(procs)
        jack.stop()
    base = {"bridge": kind, "card": card.name, "ppm": card.ppm, "wander_ppm": card.wander_ppm}
    if not (work / "send.npz").exists() or not (work / "recv.npz").exists():
        return {**base, "failed": "the measuring clients could not connect to the bridge's ports "
                                  "(the bridge was gone)", "delays": [], "times": [],
                "cpu_percent": cpu, "rss_mb": rss, "jack_xruns": 0, "bridge_alive_at_end": alive}
    send, recv = np.load(work / "send.npz"), np.load(work / "recv.npz")
    times, delays = click_delays(send, recv, RATE)
    result = analyse(times, delays, RATE)
    result.update({"bridge": kind, "card": card.name, "ppm": card.ppm, "wander_ppm": card.wander_ppm,
                   "cpu_percent": cpu, "rss_mb": rss, "reported_latency_frames": reported,
                   "jack_xruns": int(recv["xruns"]), "bridge_alive_at_end": alive,
                   "delays": delays.tolist(), "times": times.tolist()})
    return result


# -- report -------------------------------------------------------------------------------------------

SUMMARY_KEYS = ("lock_10ppm_s", "lock_2ppm_s", "ratio_err_median_ppm", "ratio_err_p95_ppm",
                "delay_pp_frames", "delay_mad_frames", "round_trip_frames",
                "reported_latency_frames", "cpu_percent", "rss_mb", "jack_xruns")


def med(values):
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return statistics.median(vals), (min(vals), max(vals)), len(values) - len(vals)


def fmt(entry) -> str:
    if entry is None:
        return "never"
    m, (lo, hi), missing = entry
    text = f"{m:.3g}" if lo == hi else f"{m:.3g} [{lo:.3g}–{hi:.3g}]"
    return text + (f" ({missing}× never)" if missing else "")


def report(results: list[dict], out: Path, meta: dict) -> str:
    lines = [f"Machine: {meta['machine']}; {meta['runs']} run(s) per bridge and card, "
             f"{meta['seconds']:.0f} s each; JACK dummy {RATE} Hz / {PERIOD}, ALSA period {PERIOD} × 2. "
             "Values: median [min–max]. Lock times from the click series (10 s windows of the "
             "round-trip delay's drift); round trip includes both directions of each bridge.", ""]
    cards = sorted({r["card"] for r in results})
    for card in cards:
        rows = {k: [r for r in results if r["card"] == card and r["bridge"] == k] for k in BRIDGES}
        first = next(r for r in results if r["card"] == card)
        lines.append(f"### {card} ({first['ppm']:+.0f} ppm"
                     f"{', %.0f ppm wander' % first['wander_ppm'] if first['wander_ppm'] else ''})")
        failures = [f"{r['bridge']} (run {r['run'] + 1}): {r['failed']}" for r in results
                    if r["card"] == card and r.get("failed")]
        if failures:
            lines += ["", "Failed runs: " + "; ".join(failures)]
        lines.append("")
        lines.append("| metric | " + " | ".join(BRIDGES) + " | cardbridge / zita | cardbridge / alsa_in |")
        lines.append("|---|" + "---|" * (len(BRIDGES) + 2))
        for key in SUMMARY_KEYS:
            stats = {k: med([r.get(key) for r in rows[k]]) for k in BRIDGES}
            ratios = []
            for peer in ("zita", "alsa_in"):
                a, b = stats.get("cardbridge"), stats.get(peer)
                ratios.append(f"{a[0] / b[0]:.2f}" if a and b and b[0] else "–")
            lines.append(f"| {key} | " + " | ".join(fmt(stats[k]) for k in BRIDGES) + " | "
                         + " | ".join(ratios) + " |")
        lines.append("")
    text = "\n".join(lines)
    (out / "results.md").write_text(text + "\n")
    return text


def plots(results: list[dict], out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    colours = {"cardbridge": "tab:blue", "zita": "tab:orange", "alsa_in": "tab:green"}
    for card in sorted({r["card"] for r in results}):
        fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
        d_lim, e_lim = 2.0, 3.0
        for r in [r for r in results if r["card"] == card]:
            t = np.array(r["times"])
            d = np.array(r["delays"])
            if len(d) < 12:
                continue
            rel = d - np.median(d[len(d) // 2:])
            err = (d[10:] - d[:-10]) / (10 * RATE) * 1e6
            label = r["bridge"] if r.get("run", 0) == 0 else None
            ax1.plot(t, rel, color=colours.get(r["bridge"]), label=label, alpha=0.7)
            ax2.plot(t[10:], err, color=colours.get(r["bridge"]), label=label, alpha=0.7)
            d_lim = max(d_lim, min(60.0, 1.2 * float(np.percentile(np.abs(rel[2:]), 98))))
            e_lim = max(e_lim, min(60.0, 1.2 * float(np.percentile(np.abs(err), 98))))
        ax1.set_ylabel("round-trip delay − its final value (frames)")
        ax1.set_ylim(-d_lim, d_lim)
        ax1.legend()
        ax1.grid(alpha=0.3)
        ax2.set_ylabel("ratio error over 10 s (ppm)")
        ax2.set_ylim(-e_lim, e_lim)
        ax2.axhspan(-2, 2, color="green", alpha=0.1, label="±2 ppm")
        ax2.set_xlabel("seconds since the bridge's ports appeared (each line one run)")
        ax2.grid(alpha=0.3)
        fig.suptitle(f"card {card}: round-trip delay and ratio error over time")
        fig.tight_layout()
        fig.savefig(out / f"{card}.png", dpi=90)
        plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one card, one run, 40 s per bridge")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--seconds", type=float, default=90.0)
    p.add_argument("--out", default=None)
    p.add_argument("--replot", metavar="DIR", help="redraw the table and plots of a results.json")
    args = p.parse_args(argv)
    if args.replot:
        data = json.loads((Path(args.replot) / "results.json").read_text())
        print(report(data["results"], Path(args.replot), data["meta"]))
        plots(data["results"], Path(args.replot))
        return 0
    cards = [VirtualCard("bench_fast", ppm=143.0),
             VirtualCard("bench_slow_wander", ppm=-500.0, wander_ppm=20.0, wander_period=45.0)]
    if args.quick:
        cards, args.runs, args.seconds = cards[:1], 1, 40.0
    for tool in ("zita-a2j", "zita-j2a", "alsa_in", "alsa_out"):
        if shutil.which(tool) is None:
            print(f"missing peer {tool}: run 'make setup'", file=sys.stderr)
            return 1
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else REPO / "benchmarks" / "results" / stamp
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="cardbridge-bench-"))
    results = []
    for run in range(args.runs):
        for card in cards:
            for kind in BRIDGES:
                print(f"run {run + 1}/{args.runs} · {card.name} · {kind} …", flush=True)
                r = run_one(kind, VirtualCard(**{**card.__dict__, "shm": ""}), args.seconds,
                            work / f"{run}-{card.name}-{kind}")
                r["run"] = run
                results.append(r)
                print(f"   lock 2 ppm: {r.get('lock_2ppm_s')} s, p95 {r.get('ratio_err_p95_ppm')}, "
                      f"cpu {r['cpu_percent']:.1f} %, xruns {r['jack_xruns']}", flush=True)
    meta = {"machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
                       f"{platform.platform()}", "runs": args.runs, "seconds": args.seconds,
            "command": "make bench" + (" (--quick)" if args.quick else "")}
    (out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print(report(results, out, meta))
    plots(results, out)
    print(f"\nresults in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
