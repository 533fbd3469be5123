"""Human output: aligned tables, state colours, number formats and sparklines.

Runs in the CLI process; pure functions of the records made by records.py (no I/O except the
colour decision, which looks at the output stream and NO_COLOR).
"""

from __future__ import annotations

import os
import sys
from typing import Sequence

_RESET = "\x1b[0m"
_STATE_COLOURS = {
    "running": "\x1b[32m",             # green
    "syncing": "\x1b[33m",             # yellow
    "starting": "\x1b[33m",
    "waiting-for-device": "\x1b[36m",  # cyan
    "waiting-for-jack": "\x1b[36m",
    "failed": "\x1b[1;31m",            # bold red
}
BOLD = "\x1b[1m"
DIM = "\x1b[2m"

SPARK_BLOCKS = "▁▂▃▄▅▆▇█"
SPARK_ASCII = "_.-~^"


def colour_wanted(stream=None) -> bool:
    """Colour only on a terminal, never when NO_COLOR is set (https://no-color.org)."""
    stream = stream or sys.stdout
    if os.environ.get("NO_COLOR"):
        return False
    try:
        return stream.isatty() and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):
        return False


def unicode_ok(stream=None) -> bool:
    encoding = (getattr(stream or sys.stdout, "encoding", None) or "").lower()
    return "utf" in encoding


class Style:
    """Wraps text in ANSI codes when colour is on; a no-op otherwise."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def wrap(self, text: str, code: str | None) -> str:
        return f"{code}{text}{_RESET}" if self.enabled and code and text else text

    def state(self, text: str) -> str:
        return self.wrap(text, _STATE_COLOURS.get(text.strip()))

    def bold(self, text: str) -> str:
        return self.wrap(text, BOLD)

    def dim(self, text: str) -> str:
        return self.wrap(text, DIM)


# -- numbers ---------------------------------------------------------------------------------

def dash(value) -> str:
    return "-" if value is None else str(value)


def signed(value, digits: int) -> str:
    return "-" if value is None else f"{value:+.{digits}f}"


def latency(frames, ms) -> str:
    if frames is None:
        return "-"
    return f"{frames} fr" + (f" {ms:.1f} ms" if ms is not None else "")


def milliseconds(ms) -> str:
    return "-" if ms is None else f"{ms:.1f}"


def channels(capture, playback) -> str:
    return f"{dash(capture)}/{dash(playback)}"


def yes_no(flag) -> str:
    return "yes" if flag else "no"


# -- tables ----------------------------------------------------------------------------------

def table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int] = frozenset(),
          style: Style | None = None, state_column: int | None = None) -> str:
    """Columns padded to the widest cell; `right` holds the indexes of right-aligned columns.

    Colour is applied after padding so escape codes never disturb the alignment.
    """
    style = style or Style(False)
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells, header=False):
        out = []
        for i, cell in enumerate(cells):
            if i in right:
                padded = cell.rjust(widths[i])
            else:                               # no trailing blanks after the last column
                padded = cell if i == len(cells) - 1 else cell.ljust(widths[i])
            if header:
                padded = style.bold(padded)
            elif i == state_column:
                padded = padded.replace(cell, style.state(cell), 1)
            out.append(padded)
        return "  ".join(out).rstrip()

    return "\n".join([line(headers, header=True)] + [line(row) for row in rows])


# -- sparklines ------------------------------------------------------------------------------

def sparkline(values: Sequence[float | None], min_span: float, ascii_only: bool = False) -> str:
    """One character per sample, scaled to the window's range (at least `min_span` wide).

    A flat signal draws a flat line in the middle; unknown samples are blanks.
    """
    blocks = SPARK_ASCII if ascii_only else SPARK_BLOCKS
    known = [v for v in values if v is not None]
    if not known:
        return " " * len(values)
    low, high = min(known), max(known)
    span = max(high - low, min_span)
    base = (low + high) / 2 - span / 2
    top = len(blocks) - 1
    chars = []
    for v in values:
        if v is None:
            chars.append(" ")
        else:
            chars.append(blocks[min(top, max(0, round((v - base) / span * top)))])
    return "".join(chars)


# -- views -----------------------------------------------------------------------------------

BRIDGE_HEADERS = ("CLIENT", "DEVICE", "STATE", "IN/OUT", "RATE", "DRIFT ppm", "DELAY ERR",
                  "LATENCY fr", "ms", "XRUNS", "RESTARTS")


def bridge_row(b: dict) -> list[str]:
    return [dash(b["client_name"]), dash(b["device"]), dash(b["state"]),
            channels(b["capture_channels"], b["playback_channels"]), dash(b["rate"]),
            signed(b["drift_ppm"], 2), signed(b["delay_error"], 2),
            dash(b["latency_frames"]), milliseconds(b["latency_ms"]), dash(b["xruns"]),
            dash(b["restarts"])]


def service_lines(service: dict) -> list[str]:
    jack = service["jack"]
    if jack["running"]:
        rate, size = jack["sample_rate"], jack["buffer_size"]
        period_ms = f" ({size * 1000.0 / rate:.1f} ms)" if rate and size else ""
        jack_text = f"running, {dash(rate)} Hz, {dash(size)} frames{period_ms}"
    else:
        jack_text = "not running"
    return [f"Service:      cardbridge {dash(service['version'])} on the {service['bus']} bus",
            f"JACK:         {jack_text}",
            f"Auto-attach:  {dash(service['auto_attach'])}"]


def status_view(doc: dict, style: Style) -> str:
    lines = service_lines(doc["service"]) + [""]
    if doc["bridges"]:
        lines.append(table(BRIDGE_HEADERS, [bridge_row(b) for b in doc["bridges"]],
                           right={3, 4, 5, 6, 7, 8, 9, 10}, style=style, state_column=2))
        reasons = [f"  {dash(b['client_name'])}: {b['state_reason']}" for b in doc["bridges"]
                   if b.get("state_reason") and b.get("state") != "running"]
        if reasons:
            lines += [""] + reasons
    else:
        lines.append("No bridges. See 'cardbridge devices', then 'cardbridge attach DEVICE'.")
    return "\n".join(lines)


def bridge_detail_view(b: dict, style: Style) -> str:
    fields = [
        ("Client", dash(b["client_name"])),
        ("Device", dash(b["device"])),
        ("Object", b["path"]),
        ("State", style.state(dash(b["state"]))),
        ("Reason", dash(b.get("state_reason") or None)),
        ("Channels", f"{dash(b['capture_channels'])} capture, {dash(b['playback_channels'])} playback"),
        ("Card", f"{dash(b['rate'])} Hz, {dash(b['periods'])} x {dash(b['period'])} frames"),
        ("Quality", dash(b["quality"])),
        ("Ratio", "-" if b["ratio"] is None else f"{b['ratio']:.6f}"),
        ("Drift", f"{signed(b['drift_ppm'], 2)} ppm"),
        ("Delay error", f"{signed(b['delay_error'], 2)} frames"),
        ("Latency", latency(b["latency_frames"], b["latency_ms"])),
        ("Xruns", dash(b["xruns"])),
        ("Underruns", dash(b["underruns"])),
        ("Restarts", dash(b["restarts"])),
    ]
    width = max(len(k) for k, _ in fields) + 1
    return "\n".join(f"{(k + ':').ljust(width)}  {v}" for k, v in fields)


DEVICE_HEADERS = ("ID", "NAME", "CARD", "CLIENT NAME", "IN/OUT", "PRESENT", "ATTACHED", "AUTO")


def devices_view(devices: list[dict], style: Style) -> str:
    if not devices:
        return "No sound cards known to the service."
    rows = []
    for d in devices:
        card = "-" if d["card"] is None else f"{d['card']} ({dash(d['alsa_name'])})"
        rows.append([d["id"], dash(d["name"]), card, dash(d["client_name"]),
                     channels(d["capture_channels"], d["playback_channels"]),
                     yes_no(d["present"]), yes_no(d["attached"]), yes_no(d["auto_attach"])])
    return table(DEVICE_HEADERS, rows, right={4}, style=style)
