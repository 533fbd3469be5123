"""The figures of one stage run (one cell, one bridge kind): per card and direction, what a
listener gets (direction.py), and per run what JACK and the machine did.

Runs in the benchmark process after the run, on the files its measuring tools wrote.
"""

from __future__ import annotations

import numpy as np

import direction
import timeaxis


def _seconds(ns, t0_ns: int) -> np.ndarray:
    return (np.asarray(ns, np.float64) - t0_ns) / 1e9


def card_xrun_times(polls, t0_ns: int) -> tuple[list, list]:
    """(capture, playback) xrun times of a card, s since t0, from the tap's poll log."""
    out = []
    for key in ("xruns_capture", "xruns_playback"):
        counts = polls[key].astype(np.int64)
        at = np.nonzero(np.diff(counts) > 0)[0] + 1
        out.append([float(v) for v in _seconds(polls["mono_ns"][at], t0_ns)])
    return out[0], out[1]


def reported_range(meter, port: str, t0_ns: int, a: float, b: float) -> tuple | None:
    """The latency range JACK reported for `port` between a and b s (medians), else None."""
    rows = meter.reported_latency(port)
    if not len(rows):
        return None
    t = _seconds(rows[:, 0], t0_ns)
    sel = (t >= a) & (t < b)
    if not sel.any():
        sel = t >= 0
    if not sel.any():
        return None
    return float(np.median(rows[sel, 1])), float(np.median(rows[sel, 2]))


def analyse_stage(run) -> dict:
    layout = run.layout
    out = {"cell": run.cell.name, "kind": run.kind, "failed": run.failed, "cards": [],
           "events": {k: [float(v) for v in _seconds(ab, run.t0_ns)] for k, ab in run.events.items()},
           "shared_cpu_percent": run.shared_cpu_percent, "machine": run.extra.get("machine")}
    meter = run.player or run.recorder
    if meter is None or len(meter.cycles) < 16:
        out["failed"] = out["failed"] or "no JACK cycles were recorded"
        return out
    timeline = timeaxis.build(meter.cycles, meter.rate)
    jack_rate = meter.rate
    jack_xruns = sorted(float(v) for v in _seconds(meter.xruns["mono_ns"], run.t0_ns))
    in_run = [x for x in jack_xruns if 0 <= x <= layout.seconds]
    load = meter.load[:, 1] if len(meter.load) else np.zeros(1)
    out["jack"] = {"rate": jack_rate, "period": meter.meta["period"], "xruns": len(in_run),
                   "xrun_times": in_run,
                   "lost_time_events": int((timeline.seg_lost_frames > 0.5).sum()),
                   "lost_frames": float(timeline.seg_lost_frames.sum()),
                   # where JACK's schedule moved (s since the start) and by how many frames
                   "schedule_moves": [[float(t), float(f)] for t, f in zip(
                       _seconds(timeline.raw_to_mono[0] + timeline.raw_to_mono[1]
                                * timeline.seg_raw_start, run.t0_ns), timeline.seg_lost_frames)][1:],
                   "raw_vs_mono_ppm": timeline.raw_vs_mono_ppm,
                   "clock_fit_residual_us": timeline.clock_residual_ns / 1000,
                   "jack_time_is_raw": timeline.jack_time_is_raw,
                   "dsp_load_median": float(np.median(load)), "dsp_load_max": float(load.max())}
    events = {k: tuple(_seconds(ab, run.t0_ns)) for k, ab in run.events.items()}
    first_event = min([a for a, _ in events.values()] + [layout.seconds])
    for card in run.cards:
        spec, vc = card.spec, card.card
        cap_x, pb_x = card_xrun_times(card.tap.polls, run.t0_ns) if card.tap else ([], [])
        inside = lambda xs: [x for x in xs if 0 <= x <= layout.seconds]  # noqa: E731
        entry = {"card": card.name, "key": spec.key, "describe": spec.describe(),
                 "rate": vc.rate, "channels": spec.channels, "direction": spec.direction,
                 "format": spec.fmt, "ppm": spec.ppm, "wander_ppm": spec.wander_ppm,
                 "cpu_percent": card.cpu_percent,
                 "card_xruns": {"capture": len(inside(cap_x)), "playback": len(inside(pb_x)),
                                "capture_times": inside(cap_x), "playback_times": inside(pb_x)},
                 "bridge": run.bridge_report.get(card.name)}
        card_xruns = sorted(inside(cap_x) + inside(pb_x))
        freqs = vc.sine_freqs(max(spec.channels, 2))
        level = 10 ** (vc.sine_level_db / 20)
        if vc.capture_channels and run.recorder is not None and card.capture_ports:
            port = f"{card.capture_client}:capture_1"
            reported = reported_range(run.recorder, port, run.t0_ns, layout.steady_from,
                                      first_event)
            recs = [run.recorder.recording(k) for k in card.capture_ports]
            s = direction.capture_series(recs, run.recorder.first_frame, jack_rate, timeline,
                                         card.tap.clock, freqs, level, run.t0_ns,
                                         run.recorder.cycles,
                                         guess_frames=reported[1] if reported else None)
            entry["capture"] = direction.assess(s, jack_rate, layout, events, card_xruns,
                                                jack_xruns, reported)
        if vc.playback_channels and card.tap is not None:
            port = f"{card.playback_clients}:playback_1"
            reported = reported_range(run.player, port, run.t0_ns, layout.steady_from,
                                      first_event) if run.player else None
            chans = [card.tap.channel(c) for c in card.tap.meta["channels"]]
            if chans:
                s = direction.playback_series(chans, card.tap.first_frame, jack_rate, timeline,
                                              card.tap.clock, freqs, level, run.t0_ns,
                                              guess_frames=reported[1] if reported else None)
                entry["playback"] = direction.assess(s, jack_rate, layout, events, card_xruns,
                                                     jack_xruns, reported)
        out["cards"].append(entry)
    return out
