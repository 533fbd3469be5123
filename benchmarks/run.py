"""Benchmark what a listener gets from cardbridge, per direction, against each card's own clock,
side by side with zita-a2j/zita-j2a (and alsa_in/alsa_out), in one run.

Runs as its own process (`make bench`, or `.venv/bin/python benchmarks/run.py [--quick]`).

* matrix: cells (benchmarks/cells.py), each a JACK configuration with four virtual cards of
  different kinds; each cell runs once per bridge kind, one kind after the other, on fresh
  cards and a fresh JACK server (stage.py): the cards' capture is a sine per channel tied to the
  card's frame index, a C measuring client plays a sine per channel tied to JACK's frame index
  into the bridges and records them, a tap reads what each card played and when. Per card and
  direction (direction.py): lock time, steady ratio error, THD+N per 10 s window, measured vs
  reported latency, re-lock and delay after a card xrun (the card's pointer stalls) and after a
  100 ms stop of every bridge process; JACK and card xruns, CPU.
* scale (--only scale, `make bench-scale`): 8 and 16 duplex bridges at 48 kHz / 128, JACK
  xruns and CPU per bridge, cardbridge beside zita.
* cardbridge only: D-Bus call latency under a 200 calls/s flood (benchmarks/control_plane.py)
  and hotplug latency (benchmarks/hotplug_latency.py).
* --clock-check: which clock jack_get_time() and the dummy driver follow here.
* the measurement's own floor (`--cells ref --kinds reference`): cards on JACK's own clock
  bridged by zita-a2j/j2a -S, which moves samples unchanged at a fixed delay; on a quiet
  machine every figure should be at its ideal (0 ppm, the format's THD+N floor, a flat delay).

Results: benchmarks/results/<time>/ (or --out): results.json, results.md, a PNG per card.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "service"))
sys.path.insert(0, str(REPO / "tests"))      # the test bench (virtual cards, JACK, tools)
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "tests"),
                                                         os.environ.get("PYTHONPATH")]))

import analysis  # noqa: E402
import cells  # noqa: E402
import report  # noqa: E402
import stage  # noqa: E402
from bridges import KINDS  # noqa: E402

METHOD = (
    "Method: every card is a virtual card with its own clock (CLOCK_MONOTONIC scaled by its "
    "offset and wander). Capture carries the card's own sine per channel (997 Hz + 2 Hz per "
    "channel, −6 dBFS, an exact function of the card's frame index); playback carries the "
    "measuring client's sine per channel tied to JACK's frame index. Blocks of ~85 ms are fitted "
    "(four-parameter sine fit); each block's phase gives the source frame it carries, so each "
    "direction's delay in JACK frames is known against the card's frame counter, on one time "
    "axis (JACK's dummy driver follows CLOCK_MONOTONIC_RAW, converted with a fit per run). "
    "Ratio error: slope of that delay over 4 s windows (median of pairwise slopes). Lock: the "
    "window end from which the error stays within the limit for 5 s, counted from the start of "
    "the bridges. p95 and median: windows after {steady:g} s outside the events and {settle:g} s "
    "after them. THD+N: residual of every block's fit over the tone's power per 10 s window (a "
    "block without the tone counts as lost); worst over windows without a card xrun. Latency: "
    "measured delay before the events minus the port latency the bridge reports to JACK. "
    "Events: at {stall:g} s every card's pointer stalls {stall_ms:g} ms (a card xrun; "
    "'delay after card xrun' is the delay once re-locked minus before), at {stop:g} s every "
    "process of the bridges is stopped {stop_ms:g} ms (SIGSTOP/SIGCONT; re-lock: 2 s windows "
    "within ±2 ppm for 5 s). {seconds:g} s per cell and kind.")


def code_version() -> str:
    """The commit the benchmark and the engine under test come from (+ "dirty")."""
    import subprocess
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip() or "unknown"
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return head + (" with uncommitted changes" if dirty else "")


def machine() -> str:
    return f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}"


def cardbridge_only(name: str, **kwargs) -> dict:
    """Figures from benchmarks/<name>.py (measure(**kwargs)); a failure is reported, not fatal."""
    try:
        return __import__(name).measure(**kwargs)
    except Exception as exc:  # noqa: BLE001 - a side figure must not sink the whole run
        print(f"   {name} failed: {exc}", flush=True)
        return {"failed": str(exc)}


def run_matrix(chosen, kinds, layout, work: Path, data: dict, save, keep: bool) -> None:
    for cell in chosen:
        for kind in kinds:
            print(f"cell {cell.name} ({cell.describe()}) · {kind} …", flush=True)
            where = work / f"{cell.name}-{kind}"
            t = time.monotonic()
            try:
                run = stage.run_stage(cell, kind, layout, where)
                result = analysis.analyse_stage(run)
            except Exception as exc:  # noqa: BLE001 - one broken run must not end the matrix
                result = {"cell": cell.name, "kind": kind, "failed": f"{type(exc).__name__}: {exc}",
                          "cards": []}
            result["wall_s"] = time.monotonic() - t
            data["matrix"].append(result)
            print("   " + one_line(result), flush=True)
            save()
            if not keep:
                shutil.rmtree(where, ignore_errors=True)


def one_line(result: dict) -> str:
    if result.get("failed") and not result.get("cards"):
        return f"FAILED: {result['failed']}"
    parts = []
    for c in result["cards"]:
        for d in ("capture", "playback"):
            f = c.get(d)
            if f:
                parts.append(f"{c['key']}/{d[:3]} lock {report.fmt(f['lock_2ppm_s'], 'lock_2ppm_s')} "
                             f"p95 {report.fmt(f['ratio_err_p95_ppm'])} "
                             f"THD {report.fmt(f['thd_n_worst_db'], 'x_db')}")
    j = result.get("jack", {})
    return f"JACK xruns {j.get('xruns')}; " + "; ".join(parts)


def run_scale(counts, kinds, seconds: float, work: Path, data: dict, save, keep: bool) -> None:
    for count in counts:
        cards = tuple(cells.CardSpec(f"{i:02d}", 48000, (-300.0 + 170.0 * i) % 600 - 300)
                      for i in range(count))
        cell = cells.Cell(f"s{count}", 48000, 128, cards)
        for kind in kinds:
            print(f"scale: {count} × {kind} at 48 kHz / 128, {seconds:.0f} s …", flush=True)
            where = work / f"scale{count}-{kind}"
            try:
                run = stage.run_stage(cell, kind, stage.Layout.without_events(seconds), where,
                                      keep_channels=0)
                row = scale_row(run, count)
            except Exception as exc:  # noqa: BLE001
                row = {"kind": kind, "count": count, "failed": f"{type(exc).__name__}: {exc}"}
            data["scale"].append(row)
            print(f"   {row}", flush=True)
            save()
            if not keep:
                shutil.rmtree(where, ignore_errors=True)


def scale_row(run, count: int) -> dict:
    meter = run.player
    t0, end = run.t0_ns, run.t0_ns + run.layout.seconds * 1e9
    xr = meter.xruns["mono_ns"] if meter is not None else []
    cpu = [c.cpu_percent for c in run.cards if c.cpu_percent is not None]
    total = sum(cpu) + run.shared_cpu_percent
    card_xruns = 0
    for c in run.cards:
        cap, pb = analysis.card_xrun_times(c.tap.polls, t0)
        card_xruns += sum(1 for x in cap + pb if 0 <= x <= run.layout.seconds)
    return {"kind": run.kind, "count": count, "seconds": run.layout.seconds,
            "failed": run.failed, "jack_xruns": int(sum(1 for x in xr if t0 <= x <= end)),
            "cpu_total": total, "cpu_per_bridge": total / count, "card_xruns": card_xruns}


def clock_check(seconds: float = 20.0) -> dict:
    """Which clock jack_get_time() and the dummy driver's schedule follow, and how far
    CLOCK_MONOTONIC_RAW and CLOCK_MONOTONIC run apart here."""
    import timeaxis
    from testbench.jackserver import JackServer
    from testbench.meter import Meter
    work = Path(tempfile.mkdtemp(prefix="cardbridge-clock-"))
    with JackServer(rate=48000, period=256, realtime=True, log_path=work / "jackd.log") as j:
        m = Meter(j.name, "clock", work / "meter", seconds, j.env(),
                  plays=[("system:playback_1", 0)])
        run = m.wait(seconds + 20)
    tl = timeaxis.build(run.cycles, run.rate)
    shutil.rmtree(work, ignore_errors=True)
    return {"jack_get_time_clock": "CLOCK_MONOTONIC_RAW" if tl.jack_time_is_raw
            else "CLOCK_MONOTONIC", "raw_vs_mono_ppm": tl.raw_vs_mono_ppm,
            "cycles": len(run.cycles), "schedule_moves": len(tl.seg_offset) - 1}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help=f"cells {','.join(cells.QUICK)}, cardbridge and zita, 36 s each")
    p.add_argument("--cells", help="comma-separated cells of the matrix (default: all)")
    p.add_argument("--kinds", help=f"comma-separated bridge kinds (of {','.join(KINDS)}; "
                                    "default: all, --quick: cardbridge,zita)")
    p.add_argument("--seconds", type=float, help="seconds per cell and kind (default 80)")
    p.add_argument("--only", default="matrix,control,hotplug",
                   help="comma-separated parts: matrix, scale, control, hotplug")
    p.add_argument("--scale-counts", default="8,16")
    p.add_argument("--scale-seconds", type=float, default=60.0)
    p.add_argument("--out", help="results directory (default benchmarks/results/<time>)")
    p.add_argument("--keep", action="store_true", help="keep the raw measurement files")
    p.add_argument("--replot", metavar="DIR", help="redraw results.md and plots of DIR")
    p.add_argument("--clock-check", action="store_true",
                   help="only say which clock JACK's dummy driver follows here")
    args = p.parse_args(argv)
    if args.clock_check:
        print(json.dumps(clock_check(), indent=1))
        return 0
    if args.replot:
        out = Path(args.replot)
        data = json.loads((out / "results.json").read_text())
        (out / "results.md").write_text(report.markdown(data) + "\n")
        report.plots(data, out)
        print(report.markdown(data))
        return 0
    kinds = (args.kinds.split(",") if args.kinds
             else ["cardbridge", "zita"] if args.quick else list(KINDS))
    unknown = [k for k in kinds if k not in KINDS + ("reference",)]
    if unknown:
        p.error(f"unknown bridge kind {unknown[0]} (kinds: {', '.join(KINDS)})")
    try:
        chosen = cells.by_name(args.cells, args.quick)
    except ValueError as exc:
        p.error(str(exc))
    layout = stage.Layout.quick() if args.quick else stage.Layout()
    if args.seconds:
        scale_by = args.seconds / layout.seconds
        layout = stage.Layout(seconds=args.seconds, stall_at=layout.stall_at * scale_by,
                              stop_at=layout.stop_at * scale_by,
                              steady_from=min(layout.steady_from, layout.stall_at * scale_by),
                              settle=layout.settle)
    only = set(args.only.split(","))
    for tool in ("zita-a2j", "zita-j2a", "alsa_in", "alsa_out"):
        if shutil.which(tool) is None:
            print(f"missing peer {tool}: run 'make setup'", file=sys.stderr)
            return 1
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else REPO / "benchmarks" / "results" / stamp
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="cardbridge-bench-"))
    meta = {"machine": machine(), "kinds": kinds, "argv": sys.argv[1:], "code": code_version(),
            "load_before": os.getloadavg(),
            "command": "benchmarks/run.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "when": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "layout": layout.__dict__,
            "method": METHOD.format(steady=layout.steady_from, settle=layout.settle,
                                    stall=layout.stall_at, stall_ms=layout.stall_ms,
                                    stop=layout.stop_at, stop_ms=layout.stop_ms,
                                    seconds=layout.seconds),
            "cells": [{"name": c.name, "describe": c.describe(), "note": c.note,
                       "cards": [s.__dict__ for s in c.cards]} for c in chosen]}
    data = {"meta": meta, "matrix": [], "scale": []}

    def save():
        (out / "results.json").write_text(json.dumps(data, indent=None))

    if "matrix" in only:
        run_matrix(chosen, kinds, layout, work, data, save, args.keep)
    if "scale" in only:
        run_scale([int(c) for c in args.scale_counts.split(",")],
                  [k for k in kinds if k != "alsa_in"], args.scale_seconds, work, data, save,
                  args.keep)
    if "control" in only:
        print("control plane …", flush=True)
        data["control_plane"] = cardbridge_only("control_plane")
    if "hotplug" in only:
        print("hotplug …", flush=True)
        data["hotplug"] = cardbridge_only("hotplug_latency")
    save()
    text = report.markdown(data)
    (out / "results.md").write_text(text + "\n")
    report.plots(data, out)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    print(text)
    print(f"\nresults in {out}" + (f", raw files in {work}" if args.keep else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
