"""The benchmark's report: results.md (a table per cell, cardbridge beside the peers, each figure
against the issue's target; a summary of the whole matrix; the scale runs) and PNG plots of
each card's per-direction delay and ratio error over time.

Runs in the benchmark process (benchmarks/run.py), on results.json's data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# the targets, per direction
TARGETS = {
    "lock_2ppm_s": ("≤ 10 s", lambda v: v is not None and v <= 10.0),
    "ratio_err_p95_ppm": ("≤ 1 ppm", lambda v: v is not None and v <= 1.0),
    "thd_n_worst_db": ("≤ −96 dB", lambda v: v is not None and v <= -96.0),
    "latency_error": ("± 2 frames", lambda v: v is not None and abs(v) <= 2.0),
    "relock_s": ("≤ 5 s", lambda v: v is not None and v <= 5.0),
    "stall_back": ("± 1 frame", lambda v: v is not None and abs(v) <= 1.0),
}
COLUMNS = (
    ("lock_2ppm_s", "lock 2 ppm (s)"),
    ("lock_10ppm_s", "lock 10 ppm (s)"),
    ("ratio_err_p95_ppm", "p95 (ppm)"),
    ("ratio_err_median_ppm", "median (ppm)"),
    ("thd_n_worst_db", "worst THD+N (dB), windows ≤ −96 dB"),
    ("latency_error", "latency − reported (frames)"),
    ("relock_s", "re-lock after stop (s)"),
    ("stop_jump", "delay jump after stop (frames)"),
    ("stall_back", "delay after card xrun (frames)"),
    ("natural_xruns", "other card xruns (delay back ±1)"),
    ("cpu_percent", "CPU %"),
)
COLOURS = {"cardbridge": "tab:blue", "zita": "tab:orange", "alsa_in": "tab:green"}


def figure(direction: dict | None, key: str):
    """One figure of one direction, from assess()'s output (None: never / not measured)."""
    if not direction:
        return None
    if key == "relock_s":
        return (direction.get("process_stop") or {}).get("relock_s")
    if key == "stop_jump":
        return (direction.get("process_stop") or {}).get("delay_jump")
    if key == "stall_back":
        return (direction.get("card_stall") or {}).get("delay_jump")
    if key == "natural_xruns":
        events = direction.get("natural_xruns") or ()
        back = sum(1 for e in events if e["delay_jump"] is not None and abs(e["delay_jump"]) <= 1)
        return f"{len(events)} ({back})" if events else 0
    return direction.get(key)


def fmt(v, key: str = "") -> str:
    if v is None:
        return "never" if key in ("lock_2ppm_s", "lock_10ppm_s", "relock_s") else "–"
    if isinstance(v, str):
        return v
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if key.endswith("_db"):
        return f"{v:.0f}"
    if abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.2g}" if abs(v) < 1 else f"{v:.1f}"


def mark(v, key: str) -> str:
    if key not in TARGETS:
        return ""
    return " ✓" if TARGETS[key][1](v) else " ✗"


def by_cell(matrix: list[dict]) -> dict:
    out: dict = {}
    for r in matrix:
        out.setdefault(r["cell"], {})[r["kind"]] = r
    return out


def cell_table(name: str, runs: dict, kinds: list[str], cell_info: dict) -> list[str]:
    first = next(iter(runs.values()))
    lines = [f"### Cell {name}: {cell_info.get('describe', '')}", ""]
    if cell_info.get("note"):
        lines += [cell_info["note"] + ".", ""]
    facts = []
    for kind in kinds:
        r = runs.get(kind)
        if r is None:
            continue
        if r.get("failed"):
            facts.append(f"{kind}: FAILED ({r['failed']})")
            continue
        j = r.get("jack", {})
        m = r.get("machine") or {}
        busy = (f"; the machine {m['busy_percent']:.0f} % busy (of {100 * m.get('cores', 1)}), "
                f"{m['steal_percent']:.0f} % stolen, load {m['load_average']:.1f}") if m else ""
        facts.append(f"{kind}: {j.get('xruns', '–')} JACK xruns, JACK lost time "
                     f"{j.get('lost_time_events', '–')}× ({j.get('lost_frames', 0):.0f} frames), "
                     f"CPU {cpu_total(r):.1f} % (all its processes){busy}")
    lines += ["; ".join(facts) + ".", ""]
    head = "| card | dir | " + " | ".join(label for _, label in COLUMNS) + " |"
    lines += [head, "|---|---|" + "---|" * len(COLUMNS)]
    cards = first.get("cards", [])
    for ci, card in enumerate(cards):
        for d in ("capture", "playback"):
            if not any((runs[k]["cards"][ci] if ci < len(runs[k].get("cards", [])) else {}).get(d)
                       for k in runs):
                continue
            cells = []
            for key, _ in COLUMNS:
                vals = []
                for kind in kinds:
                    r = runs.get(kind)
                    c = r["cards"][ci] if r and ci < len(r.get("cards", [])) else {}
                    v = c.get(key) if key == "cpu_percent" else figure(c.get(d), key)
                    text = fmt(v, key) + mark(v, key) if c.get(d) else "–"
                    if key == "latency_error" and v is not None and c[d].get("latency_ambiguity"):
                        text += f" (mod {c[d]['latency_ambiguity']:.0f})"
                    if key == "thd_n_worst_db" and c.get(d) and c[d].get("thd_n_windows_clean"):
                        text += f" {c[d]['thd_n_windows_passing']}/{c[d]['thd_n_windows_clean']}"
                    vals.append(text)
                cells.append(" · ".join(vals))
            label = f"{card['key']}: {card['describe']}" if d == "capture" or not card.get(
                "capture") else card["key"]
            lines.append(f"| {label} | {d} | " + " | ".join(cells) + " |")
    bridge_notes, silent = [], []
    for kind in kinds:
        r = runs.get(kind)
        for c in (r or {}).get("cards", []):
            b = c.get("bridge") or {}
            broke = "; ".join(b.get("broke_down") or []) or None
            if broke:
                bridge_notes.append(f"{kind} on {c['key']}: {broke}")
            dead = [d for d in ("capture", "playback") if c.get(d) and c[d]["start_s"] is None]
            if dead:
                why = "; ".join(b.get("exited") or []) or last_word(b, c["card"])
                silent.append(f"{kind} on {c['key']} ({'/'.join(dead)}): {why or 'no reason given'}")
    said = []
    for kind in kinds:
        r = runs.get(kind)
        counts = [f"{c['key']} {(c.get('bridge') or {}).get('xruns')}" for c in (r or {}).get("cards", [])
                  if (c.get("bridge") or {}).get("xruns") is not None]
        if counts:
            said.append(f"{kind} {', '.join(counts)}")
    if said:
        lines += ["", "Xruns the bridges reported themselves (cardbridge: its Xruns property; "
                  "zita: re-synchronisations; alsa_in: ALSA errors -32): " + "; ".join(said) + "."]
    if silent:
        lines += ["", "No audio at all: " + "; ".join(silent) + "."]
    if bridge_notes:
        lines += ["", "Broke down (still measured; their figures include it): "
                  + "; ".join(bridge_notes) + "."]
    return lines + [""]


def last_word(bridge: dict, card: str) -> str | None:
    """cardbridge: its last state and the last log line about the card."""
    states = bridge.get("states") or []
    lines = bridge.get("log_lines") or []
    parts = []
    if states:
        parts.append(f"state {states[-1][1]}")
    if lines:
        parts.append(f"log: \"{lines[-1].strip()}\"")
    return ", ".join(parts) or None


def cpu_total(r: dict) -> float:
    return sum(c.get("cpu_percent") or 0.0 for c in r.get("cards", [])) + (
        r.get("shared_cpu_percent") or 0.0)


def summary(matrix: list[dict], kinds: list[str]) -> list[str]:
    """Per cell and kind: directions meeting each target, JACK xruns, CPU."""
    keys = [k for k, _ in COLUMNS if k in TARGETS]
    lines = ["| cell | bridge | " + " | ".join(f"{k} {TARGETS[k][0]}" for k in keys)
             + " | JACK xruns | card xruns | CPU % |",
             "|---|---|" + "---|" * (len(keys) + 3)]
    for cell, runs in by_cell(matrix).items():
        for kind in kinds:
            r = runs.get(kind)
            if r is None:
                continue
            if r.get("failed") and not r.get("cards"):
                lines.append(f"| {cell} | {kind} | failed: {r['failed']} |" + " |" * (len(keys) + 2))
                continue
            dirs = [c[d] for c in r["cards"] for d in ("capture", "playback") if c.get(d)]
            counts = [f"{sum(TARGETS[k][1](figure(d, k)) for d in dirs)}/{len(dirs)}"
                      for k in keys]
            xr = sum(c["card_xruns"]["capture"] + c["card_xruns"]["playback"] for c in r["cards"])
            lines.append(f"| {cell} | {kind} | " + " | ".join(counts)
                         + f" | {r.get('jack', {}).get('xruns', '–')} | {xr} | {cpu_total(r):.1f} |")
    return lines + [""]


def scale_table(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    kinds = sorted({r["kind"] for r in rows}, key=lambda k: ("cardbridge", "zita", "alsa_in").index(k))
    lines = ["### Scale: duplex bridges at 48 kHz / 128", "",
             "Stereo cards at 48 kHz with offsets from −300 to +300 ppm, one duplex bridge each, "
             "on one JACK server; JACK xruns seen by the measuring clients, CPU of all the kind's "
             "processes, per bridge and as a ratio to zita's.", "",
             "| bridges | " + " | ".join(kinds) + " | CPU per bridge / zita | JACK xruns ≤ zita |",
             "|---|" + "---|" * (len(kinds) + 2)]
    for count in sorted({r["count"] for r in rows}):
        got = {r["kind"]: r for r in rows if r["count"] == count}
        cells = []
        for k in kinds:
            r = got.get(k)
            if r is None or r.get("failed"):
                cells.append((r or {}).get("failed", "–"))
                continue
            cells.append(f"{r['jack_xruns']} JACK xruns, {r['cpu_per_bridge']:.1f} % CPU per "
                         f"bridge, {r['card_xruns']} card xruns")
        cb, z = got.get("cardbridge"), got.get("zita")
        ratio = (f"{cb['cpu_per_bridge'] / z['cpu_per_bridge']:.2f}"
                 if cb and z and not cb.get("failed") and not z.get("failed")
                 and z["cpu_per_bridge"] else "–")
        fine = ("yes" if cb["jack_xruns"] <= z["jack_xruns"] else "no") \
            if cb and z and not cb.get("failed") and not z.get("failed") else "–"
        lines.append(f"| {count} | " + " | ".join(cells) + f" | {ratio} | {fine} |")
    return lines + [""]


def clock_line(matrix: list[dict]) -> str:
    """What the runs found about JACK's clock against the cards'."""
    jacks = [r["jack"] for r in matrix if r.get("jack")]
    if not jacks:
        return ""
    raw = all(j["jack_time_is_raw"] for j in jacks)
    ppm = [j["raw_vs_mono_ppm"] for j in jacks]
    clock = "CLOCK_MONOTONIC_RAW" if raw else "CLOCK_MONOTONIC (in at least one run)"
    return (f"JACK's clock: jack_get_time() and the dummy driver read {clock}; the cards' "
            f"CLOCK_MONOTONIC ran {min(ppm):+.4f} to {max(ppm):+.4f} ppm against it "
            "(measured in each run and corrected).")


def markdown(data: dict) -> str:
    meta = data["meta"]
    kinds = meta["kinds"]
    lines = ["## Per-direction benchmark", "",
             f"Command: `{meta['command']}` at {meta.get('code', 'an unrecorded commit')}. "
             f"Machine: {meta['machine']}"
             + (f", load average {meta['load_before'][0]:.1f} before the run"
                if meta.get("load_before") else "") + f". {meta['when']}.", "",
             meta["method"], "",
             "Each table cell: " + " · ".join(kinds) + " (✓/✗: against the issue's target). "
             "Targets: " + "; ".join(f"{k} {t[0]}" for k, t in TARGETS.items()) + ".", "",
             clock_line(data.get("matrix", [])), ""]
    if data.get("matrix"):
        lines += ["### Summary: directions meeting each target", ""]
        lines += summary(data["matrix"], kinds)
    cells_info = {c["name"]: c for c in meta.get("cells", [])}
    for cell, runs in by_cell(data.get("matrix", [])).items():
        lines += cell_table(cell, runs, kinds, cells_info.get(cell, {}))
    lines += scale_table(data.get("scale", []))
    for key, title in (("control_plane", "Control plane (cardbridge only)"),
                       ("hotplug", "Hotplug (cardbridge only)")):
        if data.get(key):
            lines += [f"### {title}", "", "| figure | value |", "|---|---|"]
            lines += [f"| {k} | {v:.3g} |" if isinstance(v, float) else f"| {k} | {v} |"
                      for k, v in data[key].items()]
            lines.append("")
    return "\n".join(lines)


def plots(data: dict, out: Path) -> list[Path]:
    """One PNG per card of each cell: delay (relative to its median before the events) and
    4 s ratio error over time, capture and playback, one line per bridge kind."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    made = []
    for cell, runs in by_cell(data.get("matrix", [])).items():
        first = next(iter(runs.values()))
        for ci, card in enumerate(first.get("cards", [])):
            fig, axes = plt.subplots(2, 2, figsize=(13, 7), sharex=True)
            for col, d in enumerate(("capture", "playback")):
                ax_d, ax_e = axes[0][col], axes[1][col]
                for kind, r in runs.items():
                    c = r["cards"][ci] if ci < len(r.get("cards", [])) else {}
                    f = c.get(d)
                    if not f:
                        continue
                    s = f["series"]
                    t = np.array(s["t"])
                    dl = np.array([np.nan if v is None else v for v in s["delay"]])
                    if np.isfinite(dl).any():
                        ref = f.get("latency_measured")
                        ref = ref if ref is not None else np.nanmedian(dl)
                        ax_d.plot(t, dl - ref, ".", ms=1.5, color=COLOURS.get(kind), label=kind)
                    et = np.array(s["err_t"])
                    ev = np.array([np.nan if v is None else v for v in s["err_ppm"]])
                    ax_e.plot(et, ev, color=COLOURS.get(kind), label=kind, lw=1)
                for ax in (ax_d, ax_e):
                    for name, (a, b) in first.get("events", {}).items():
                        ax.axvspan(a, b + 0.05, color="red", alpha=0.3)
                    ax.grid(alpha=0.3)
                ax_d.set_ylim(-5, 5)
                ax_e.set_ylim(-20, 20)
                ax_e.axhspan(-2, 2, color="green", alpha=0.1)
                ax_d.set_title(f"{d}")
                ax_d.set_ylabel("delay − steady delay (JACK frames)")
                ax_e.set_ylabel("ratio error, 4 s windows (ppm)")
                ax_e.set_xlabel("s since the bridges started (red: card stall, process stop)")
                if ax_d.get_legend_handles_labels()[0]:
                    ax_d.legend(loc="upper right", fontsize=8)
            fig.suptitle(f"cell {cell} card {card['key']}: {card['describe']}")
            fig.tight_layout()
            path = out / f"{cell}{card['key']}.png"
            fig.savefig(path, dpi=80)
            plt.close(fig)
            made.append(path)
    return made
