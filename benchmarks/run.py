"""Benchmark cardbridge against zita-a2j/zita-j2a and alsa_in/alsa_out, side by side, in one run.

Runs as its own process (`make bench`, or `.venv/bin/python benchmarks/run.py [--quick]`). Every
bridge gets identical conditions: a private JACK dummy server, fresh virtual cards with the
same clock offsets (one with wander, one at 44.1 kHz), the same ALSA period. Scenarios
(benchmarks/scenarios.py):

* loop: a click every second through both directions and the card's loop: lock time (10 s
  windows of the round-trip delay's drift entering ±10 and ±2 ppm for good), steady ratio
  error (median, p95), delay stability (p-p, MAD), measured vs reported round-trip latency,
  CPU %, private memory, JACK xruns; 3 runs per card by default;
* tone: THD+N of a 997 Hz sine through the same path;
* stalls: 20 pauses of 100 ms (SIGSTOP/SIGCONT of the bridge's processes): time to a steady
  delay again, and how often that never happens;
* many: 4 duplex bridges of one kind on one server: JACK xruns, CPU, survivors;
* scale (optional, --scale): 2, 4, 6, 8 bridges at 256 and 128 frames;
* cardbridge only (the peers have neither): D-Bus call latency under a 200 calls/s flood
  (benchmarks/control_plane.py) and hotplug latency (benchmarks/hotplug_latency.py).

Results: benchmarks/results/<time>/results.json, results.md (medians [min–max], ratios against
each peer) and PNG plots of delay and ratio error over time per card.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "service"))
sys.path.insert(0, str(REPO / "tests"))      # the test bench (virtual cards, JACK, buses)
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "tests"), os.environ.get("PYTHONPATH")]))

sys.path.insert(0, str(Path(__file__).resolve().parent))

from testbench.vcard import VirtualCard  # noqa: E402

import scenarios  # noqa: E402
from bridges import KINDS  # noqa: E402

RATE = 48000
PERIOD = 256
BRIDGES = tuple(os.environ.get("BENCH_BRIDGES", ",".join(KINDS)).split(","))


# -- report -------------------------------------------------------------------------------------------

SUMMARY_KEYS = ("lock_10ppm_s", "lock_2ppm_s", "lock_2ppm_trend_s", "ratio_err_median_ppm",
                "ratio_err_p95_ppm", "delay_pp_frames", "delay_mad_frames", "odd_clicks",
                "round_trip_frames",
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


def loop_report(results: list[dict], meta: dict) -> list[str]:
    lines = [f"Machine: {meta['machine']}; {meta['runs']} run(s) per bridge and card, "
             f"{meta['seconds']:.0f} s each; JACK dummy {RATE} Hz / {PERIOD}, ALSA period {PERIOD} × 2. "
             "Values: median [min–max]. Lock times from the click series (10 s windows of the "
             "round-trip delay's drift, so 10.5 s is the earliest measurable): lock_2ppm_s from "
             "the window's two end clicks, lock_2ppm_trend_s from the median of its pairwise "
             "slopes (one odd click does not count as ten seconds of ratio error). odd_clicks: "
             "clicks in the second half more than a frame from the median of the 11 around "
             "them. Round trip includes both directions of each bridge.", ""]
    cards = sorted({r["card"] for r in results})
    for card in cards:
        rows = {k: [r for r in results if r["card"] == card and r["bridge"] == k] for k in BRIDGES}
        first = next(r for r in results if r["card"] == card)
        lines.append(f"### {card} ({first['ppm']:+.0f} ppm"
                     f"{', %.0f ppm wander' % first['wander_ppm'] if first['wander_ppm'] else ''}"
                     f"{', %d Hz' % first['rate'] if first.get('rate', RATE) != RATE else ''})")
        failures = [f"{r['bridge']} (run {r['run'] + 1}): {r['failed']}" for r in results
                    if r["card"] == card and r.get("failed")]
        if failures:
            lines += ["", "Failed runs: " + "; ".join(failures)]
        broken = [f"{r['bridge']} (run {r['run'] + 1}): {r['broke_down']}" for r in results
                  if r["card"] == card and r.get("broke_down")]
        if broken:
            lines += ["", "Broke down (still measured; their figures include it): "
                      + "; ".join(broken)]
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
    return lines


def ratio_cells(values: dict, key: str = "") -> list[str]:
    """cardbridge against each peer: a ratio, or a difference for levels in dB."""
    cells = []
    for peer in ("zita", "alsa_in"):
        a, b = values.get("cardbridge"), values.get(peer)
        if not (isinstance(a, (int, float)) and isinstance(b, (int, float))):
            cells.append("–")
        elif key.endswith("_db"):
            cells.append(f"{a - b:+.1f} dB")
        else:
            cells.append(f"{a / b:.2f}" if b else "–")
    return cells


def kind_table(title: str, note: str, rows: list[dict], keys: tuple) -> list[str]:
    """One row per metric, one column per bridge kind (median over its rows), and ratios."""
    lines = [f"### {title}", "", note, "",
             "| metric | " + " | ".join(BRIDGES) + " | cardbridge / zita | cardbridge / alsa_in |",
             "|---|" + "---|" * (len(BRIDGES) + 2)]
    for key in keys:
        stats = {k: med([r.get(key) for r in rows if r["bridge"] == k]) for k in BRIDGES}
        medians = {k: v[0] if v else None for k, v in stats.items()}
        lines.append(f"| {key} | " + " | ".join(fmt(stats[k]) for k in BRIDGES) + " | "
                     + " | ".join(ratio_cells(medians, key)) + " |")
    failed = [f"{r['bridge']}: {r['failed']}" for r in rows if r.get("failed")]
    broken = [f"{r['bridge']}: {r['broke_down']}" for r in rows if r.get("broke_down")]
    return (lines + (["", "Failed: " + "; ".join(failed)] if failed else [])
            + (["", "Broke down (still measured): " + "; ".join(broken)] if broken else []) + [""])


def scale_cell(r: dict | None, count: int) -> str:
    """One kind at one count: xruns, survivors, CPU and how many bridges broke down (counted
    from measure_many's "bridge i: why; …" text)."""
    if r is None:
        return "–"
    if r.get("failed"):
        return r["failed"]
    broken = len(re.findall(r"bridge \d+:", r.get("broke_down") or ""))
    return (f"{r['jack_xruns']} xruns, {r['alive']}/{count} alive, {r['cpu_percent']:.0f} % CPU"
            + (f", {broken} broke down" if broken else ""))


def scale_report(rows: list[dict]) -> list[str]:
    """Xruns, survivors and CPU per bridge count and period; then, per period and count, whether
    every cardbridge bridge ran with JACK xruns no higher than zita's at the same count."""
    kinds = [k for k in BRIDGES if any(r["bridge"] == k for r in rows)]
    seconds = sorted({r["seconds"] for r in rows if r.get("seconds")})
    lines = ["### Scale", "",
             f"Duplex bridges of one kind on one server, {'/'.join(f'{s:.0f}' for s in seconds)} s "
             "per configuration after 15 s of start-up: JACK xruns seen by a measuring client, "
             "bridges still alive, CPU of all bridge processes, bridges that broke down (still "
             "running; the reasons are in results.json).", "",
             "| bridges | period | " + " | ".join(f"{k}" for k in kinds) + " |",
             "|---|---|" + "---|" * len(kinds)]
    found = {(r["count"], r["period"], r["bridge"]): r for r in rows}
    for count, period in sorted({(r["count"], r["period"]) for r in rows},
                                key=lambda cp: (-cp[1], cp[0])):
        cells = []
        for k in kinds:
            cells.append(scale_cell(found.get((count, period, k)), count))
        lines.append(f"| {count} | {period} | " + " | ".join(cells) + " |")
    lines.append("")
    for period in sorted({r["period"] for r in rows}, reverse=True):
        verdict = []
        for count in sorted({r["count"] for r in rows if r["period"] == period}):
            ours, peer = found.get((count, period, "cardbridge")), found.get((count, period, "zita"))
            if not (ours and peer) or ours.get("jack_xruns") is None:
                continue
            fine = ours["alive"] == count and ours["jack_xruns"] <= (peer.get("jack_xruns") or 0)
            verdict.append(f"{count} {'yes' if fine else 'no'}")
        if verdict:
            lines.append(f"Period {period}: all cardbridge bridges alive with JACK xruns no higher "
                         f"than zita's at the same count: {', '.join(verdict)}.")
    return lines + [""]


def report(data: dict, out: Path) -> str:
    meta = data["meta"]
    lines = loop_report(data["results"], meta)
    if meta.get("merged"):
        kept = meta["merged"]
        lines[:0] = [f"Merged: {', '.join(kept['kept'])} from `{' '.join(kept['from'] or [])}`, "
                     f"the rest re-run by `{' '.join(meta['argv'])}` on the same machine.", ""]
    if data.get("tone"):
        lines += kind_table("Tone: THD+N of a 997 Hz sine, −6 dBFS, through the loop",
                            "4096-frame windows after 18 s, four-parameter sine fit per window.",
                            data["tone"], ("thd_n_median_db", "thd_n_worst_db"))
    if data.get("stalls"):
        s = data["stalls"][0]
        lines += kind_table(f"Stalls: {s['stalls']} × {s['stall_ms']:.0f} ms SIGSTOP of the bridge",
                            "Re-locked: three consecutive clicks (1 s apart) within one frame; "
                            "never: not before the next stall, 8 s later.",
                            data["stalls"], ("relock_median_s", "relock_max_s", "never",
                                             "delay_jump_median_frames"))
    for block in data.get("many", []):
        lines += kind_table(f"{block['count']} duplex bridges on one server, period "
                            f"{block['period']}, {block['seconds']:.0f} s",
                            "JACK xruns seen by a measuring client; CPU of all bridge processes.",
                            block["rows"], ("jack_xruns", "alive", "cpu_percent"))
    if data.get("scale"):
        lines += scale_report(data["scale"])
    for key, title in (("control_plane", "Control plane (cardbridge only)"),
                       ("hotplug", "Hotplug (cardbridge only)")):
        if data.get(key):
            lines += [f"### {title}", "", "| figure | value |", "|---|---|"]
            lines += [f"| {k} | {v:.3g} |" if isinstance(v, float) else f"| {k} | {v} |"
                      for k, v in data[key].items()]
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
        labelled = set()   # one legend entry per bridge, on its first line that has data
        for r in [r for r in results if r["card"] == card]:
            t = np.array(r["times"])
            d = np.array(r["delays"])
            if len(d) < 12:
                continue
            rel = d - np.median(d[len(d) // 2:])
            err = (d[10:] - d[:-10]) / (10 * RATE) * 1e6
            label = None if r["bridge"] in labelled else r["bridge"]
            labelled.add(r["bridge"])
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


def cardbridge_only(name: str, **kwargs) -> dict | None:
    """Figures from benchmarks/<name>.py (measure(**kwargs)), or None when it fails."""
    try:
        module = __import__(name)
        return module.measure(**kwargs)
    except Exception as exc:  # a side figure must not sink the whole run
        print(f"   {name} failed: {exc}", flush=True)
        return {"failed": str(exc)}


def reanalyse(results: list[dict]) -> None:
    """Recompute the click figures of stored runs from their click series (for figures added
    to the analysis after the runs were made)."""
    for r in results:
        if len(r.get("delays", ())) >= 25:
            r.update(scenarios.analyse_clicks(np.array(r["times"]), np.array(r["delays"]), RATE))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="one card, one run, 40 s, 5 stalls, 60 s with 4 bridges")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--seconds", type=float, default=90.0)
    p.add_argument("--stalls", type=int, default=20)
    p.add_argument("--many-seconds", type=float, default=600.0,
                   help="how long 4 bridges of each kind run side by side")
    p.add_argument("--scale", type=float, default=0.0, metavar="SECONDS",
                   help="also run 2/4/6/8 bridges at 256 and 128 frames for SECONDS each")
    p.add_argument("--scale-counts", default="2,4,6,8",
                   help="comma-separated bridge counts for --scale")
    p.add_argument("--only", default="loop,tone,stalls,many,control,hotplug",
                   help="comma-separated scenarios to run")
    p.add_argument("--out", default=None)
    p.add_argument("--replot", metavar="DIR", help="redraw the table and plots of a results.json")
    p.add_argument("--merge", metavar="DIR",
                   help="start from the results.json in DIR and replace only the scenarios run "
                        "now (a scenario re-run after a disturbed run; both commands are kept)")
    args = p.parse_args(argv)
    if args.replot:
        data = json.loads((Path(args.replot) / "results.json").read_text())
        reanalyse(data["results"])
        print(report(data, Path(args.replot)))
        plots(data["results"], Path(args.replot))
        return 0
    cards = [VirtualCard("bench_fast", ppm=143.0),
             VirtualCard("bench_slow_wander", ppm=-500.0, wander_ppm=20.0, wander_period=45.0),
             VirtualCard("bench_44k1", ppm=60.0, rate=44100)]
    only = set(args.only.split(","))
    if args.quick:
        cards, args.runs, args.seconds, args.stalls, args.many_seconds = (
            cards[:1], 1, 40.0, 5, 60.0)
    for tool in ("zita-a2j", "zita-j2a", "alsa_in", "alsa_out"):
        if shutil.which(tool) is None:
            print(f"missing peer {tool}: run 'make setup'", file=sys.stderr)
            return 1
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else REPO / "benchmarks" / "results" / stamp
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="cardbridge-bench-"))
    meta = {"machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
                       f"{platform.platform()}", "runs": args.runs, "seconds": args.seconds,
            "command": "make bench" + (" (--quick)" if args.quick else ""),
            "argv": sys.argv[1:]}
    data = {"meta": meta, "results": [], "tone": [], "stalls": [], "many": [], "scale": []}
    if args.merge:
        data = json.loads((Path(args.merge) / "results.json").read_text())
        reanalyse(data["results"])
        earlier = data["meta"]
        meta["merged"] = {"from": earlier.get("argv"), "machine": earlier.get("machine"),
                          "kept": sorted(k for k in ("loop", "tone", "stalls", "many",
                                                     "control", "hotplug") if k not in only)}
        if "loop" not in only:
            meta["runs"], meta["seconds"] = earlier["runs"], earlier["seconds"]
        data["meta"] = meta
        for key, scenario in (("results", "loop"), ("tone", "tone"), ("stalls", "stalls"),
                              ("many", "many")):
            if scenario in only:
                data[key] = []
        if args.scale:
            data["scale"] = []

    def save():
        (out / "results.json").write_text(json.dumps(data, indent=1))

    for run in range(args.runs if "loop" in only else 0):
        for card in cards:
            for kind in BRIDGES:
                print(f"loop: run {run + 1}/{args.runs} · {card.name} · {kind} …", flush=True)
                r = scenarios.measure_loop(kind, card, args.seconds,
                                           work / f"loop{run}-{card.name}-{kind}")
                r["run"] = run
                data["results"].append(r)
                print(f"   lock 2 ppm: {r.get('lock_2ppm_s')} s, p95 {r.get('ratio_err_p95_ppm')}, "
                      f"cpu {r['cpu_percent']:.1f} %, xruns {r['jack_xruns']}", flush=True)
                save()
    for run in range(args.runs if "tone" in only else 0):
        for kind in BRIDGES:
            print(f"tone: run {run + 1}/{args.runs} · {kind} …", flush=True)
            r = scenarios.measure_tone(kind, cards[0], work / f"tone{run}-{kind}")
            r["run"] = run
            data["tone"].append(r)
            print(f"   {r}", flush=True)
            save()
    for kind in BRIDGES if "stalls" in only else ():
        print(f"stalls: {kind} ×{args.stalls} …", flush=True)
        r = scenarios.measure_stalls(kind, cards[0], work / f"stalls-{kind}", stalls=args.stalls)
        data["stalls"].append(r)
        print(f"   re-lock median {r.get('relock_median_s')} s, max {r.get('relock_max_s')}, "
              f"never {r.get('never')}", flush=True)
        save()
    if "many" in only:
        block = {"count": 4, "period": PERIOD, "seconds": args.many_seconds, "rows": []}
        for kind in BRIDGES:
            print(f"many: 4 × {kind}, {args.many_seconds:.0f} s …", flush=True)
            block["rows"].append(scenarios.measure_many(kind, 4, args.many_seconds,
                                                        work / f"many-{kind}"))
            print(f"   {block['rows'][-1]}", flush=True)
            save()
        data["many"].append(block)
    if args.scale:
        for period in (256, 128):
            for count in map(int, args.scale_counts.split(",")):
                for kind in BRIDGES:
                    print(f"scale: {count} × {kind} at {period} …", flush=True)
                    data["scale"].append(scenarios.measure_many(
                        kind, count, args.scale, work / f"scale-{count}-{period}-{kind}", period))
                    save()
    if "control" in only:
        print("control plane …", flush=True)
        data["control_plane"] = cardbridge_only("control_plane")
    if "hotplug" in only:
        print("hotplug …", flush=True)
        data["hotplug"] = cardbridge_only("hotplug_latency")
    save()
    print(report(data, out))
    plots(data["results"], out)
    print(f"\nresults in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
