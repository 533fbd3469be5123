"""`cardbridge watch`: a live view fed by the service's signals (PropertiesChanged,
InterfacesAdded/Removed, NameOwnerChanged), never by polling the service.

Runs in the CLI process's asyncio loop. `WatchModel` is the pure state (records plus a history of
drift and delay error per bridge, sampled locally at a fixed rate so a stalled bridge shows as a
flat line and a growing "quiet" age); `render_screen` draws it; `run_watch` wires signals, the
terminal (cbreak mode, `q` quits, Ctrl-C quits, alternate screen restored on every exit) and,
with --json, prints one JSON object per event instead of drawing. When the output is not a
terminal (a pipe, a file, a log), it writes plain frames — no control codes, no colour — each
followed by a blank line, at most one a second and only when the picture changed.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import re
import shutil
import signal
import sys
import termios
import time
import tty

from cardbridge.names import BRIDGE_IFACE, MANAGER_IFACE, MANAGER_PATH

from . import failures, records, render
from .failures import CliError

SAMPLE_INTERVAL = 0.5        # s between history samples (local, from the last values received)
REDRAW_INTERVAL = 0.2        # s; at most 5 redraws a second
PLAIN_INTERVAL = 1.0         # s; at most one plain frame a second when not on a terminal
HISTORY = 240                # samples kept per bridge (2 minutes)
QUIET_AFTER = 3.0            # s without any change before a running bridge is marked quiet
_MANAGER_KEYS = {"Version", "JackRunning", "JackSampleRate", "JackBufferSize", "AutoAttach"}


class WatchModel:
    """What the watch knows: the service record, the bridges and their history."""

    def __init__(self, bus_kind: str):
        self.bus_kind = bus_kind
        self.running = False
        self.manager: dict = {}
        self.bridges: dict[str, dict] = {}
        self.history: dict[str, collections.deque] = {}
        self.last_change: dict[str, float] = {}

    @property
    def service(self) -> dict:
        return records.service_record(self.manager, self.bus_kind)

    def jack_rate(self):
        return self.manager.get("JackSampleRate") if self.manager.get("JackRunning") else None

    def load_snapshot(self, manager: dict, bridges: dict[str, dict], now: float) -> dict:
        self.running = True
        self.manager = dict(manager)
        self.bridges = {}
        for path, props in bridges.items():
            self._add(path, props, now)
        for path in list(self.history):
            if path not in self.bridges:
                del self.history[path]
        return {"service": self.service, "bridges": list(self.bridges.values())}

    def _add(self, path: str, props: dict, now: float) -> dict:
        record = records.bridge_record(path, props, self.jack_rate())
        self.bridges[path] = record
        self.history.setdefault(path, collections.deque(maxlen=HISTORY))
        self.last_change[path] = now
        return record

    def service_stopped(self) -> None:
        self.running = False
        self.bridges.clear()

    def bridge_added(self, path: str, props: dict, now: float) -> dict:
        return self._add(path, props, now)

    def bridge_removed(self, path: str) -> bool:
        self.history.pop(path, None)
        self.last_change.pop(path, None)
        return self.bridges.pop(path, None) is not None

    def bridge_changed(self, path: str, changed: dict, now: float) -> dict:
        record = self.bridges.get(path)
        if record is None:
            return {}
        delta = records.update_bridge_record(record, changed, self.jack_rate())
        if delta:
            self.last_change[path] = now
        return delta

    def manager_changed(self, changed: dict) -> bool:
        relevant = {k: v for k, v in changed.items() if k in _MANAGER_KEYS and self.manager.get(k) != v}
        self.manager.update(relevant)
        if relevant:
            for record in self.bridges.values():
                records.update_bridge_record(record, {}, self.jack_rate())
        return bool(relevant)

    def sample(self) -> None:
        for path, record in self.bridges.items():
            self.history[path].append((record["drift_ppm"], record["delay_error"]))


# -- drawing ---------------------------------------------------------------------------------

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def clip(line: str, width: int) -> str:
    """Cut a line to `width` visible characters, keeping (and closing) its colour codes."""
    out, visible, pos = [], 0, 0
    for match in _ANSI.finditer(line):
        text = line[pos:match.start()]
        take = text[:max(0, width - visible)]
        out.append(take)
        visible += len(take)
        out.append(match.group())
        pos = match.end()
    out.append(line[pos:][:max(0, width - visible)])
    clipped = "".join(out)
    return clipped + ("\x1b[0m" if "\x1b[" in clipped else "")


WATCH_HEADERS = ("CLIENT", "STATE", "DRIFT ppm", "DELAY ERR", "LATENCY fr", "ms", "XRUNS",
                 "UNDERRUNS", "RESTARTS")


def render_screen(model: WatchModel, width: int, height: int, style: render.Style,
                  ascii_only: bool, now: float) -> list[str]:
    clock = time.strftime("%H:%M:%S", time.localtime())
    if not model.running:
        return [style.bold("cardbridge watch") + f"  {model.bus_kind} bus  {clock}   q: quit", "",
                "The cardbridge service is not running; waiting for it to start."]
    service = model.service
    jack = service["jack"]
    jack_text = (f"JACK {jack['sample_rate']} Hz / {jack['buffer_size']}" if jack["running"]
                 else "JACK not running")
    lines = [style.bold("cardbridge watch") + f"  {model.bus_kind} bus  {jack_text}  "
             f"auto-attach {render.dash(service['auto_attach'])}  {clock}   q: quit", ""]
    if not model.bridges:
        lines.append("No bridges. Attach a card with 'cardbridge attach DEVICE'.")
        return [clip(line, width) for line in lines]
    rows = []
    for record in model.bridges.values():
        rows.append([render.dash(record["client_name"]), render.dash(record["state"]),
                     render.signed(record["drift_ppm"], 2), render.signed(record["delay_error"], 2),
                     render.dash(record["latency_frames"]), render.milliseconds(record["latency_ms"]),
                     render.dash(record["xruns"]), render.dash(record["underruns"]),
                     render.dash(record["restarts"])])
    table = render.table(WATCH_HEADERS, rows, right={2, 3, 4, 5, 6, 7, 8}, style=style,
                         state_column=1).split("\n")
    lines.append(table[0])
    spark_width = max(8, (width - 44) // 2)
    for (path, record), row_line in zip(model.bridges.items(), table[1:]):
        lines.append(row_line)
        samples = list(model.history.get(path, ()))[-spark_width:]
        drift = [s[0] for s in samples]
        delay = [s[1] for s in samples]
        quiet = now - model.last_change.get(path, now)
        note = f"  quiet {quiet:.0f} s" if record["state"] == "running" and quiet >= QUIET_AFTER else ""
        lines.append("  drift " + render.sparkline(drift, 1.0, ascii_only).ljust(spark_width)
                     + f" {_range(drift)}   delay " + render.sparkline(delay, 1.0, ascii_only).ljust(spark_width)
                     + f" {_range(delay)}" + style.dim(note))
    return [clip(line, width) for line in lines[:max(1, height - 1)]]


def _range(values) -> str:
    known = [v for v in values if v is not None]
    return f"[{min(known):+.1f} {max(known):+.1f}]" if known else "[ - ]"


# -- the live loop ---------------------------------------------------------------------------

class _Terminal:
    """cbreak input and the alternate screen, restored however the watch ends."""

    def __init__(self, draw: bool):
        self.draw = draw
        self.fd = sys.stdin.fileno() if sys.stdin.isatty() else None
        self.saved = None

    def __enter__(self):
        if self.fd is not None:
            self.saved = termios.tcgetattr(self.fd)
            tty.setcbreak(self.fd)
        if self.draw:
            sys.stdout.write("\x1b[?1049h\x1b[?25l")
            sys.stdout.flush()
        return self

    def __exit__(self, *exc):
        if self.draw:
            sys.stdout.write("\x1b[?25h\x1b[?1049l")
            sys.stdout.flush()
        if self.saved is not None:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)
        return False


async def run_watch(service, json_mode: bool) -> int:
    loop = asyncio.get_running_loop()
    model = WatchModel(service.kind)
    stop = asyncio.Event()
    dirty = asyncio.Event()
    style = render.Style(render.colour_wanted())
    ascii_only = not render.unicode_ok()
    try:
        plain = not json_mode and not sys.stdout.isatty()
    except (AttributeError, ValueError):
        plain = True
    lost = []

    def emit(event: str, **fields) -> None:
        if not json_mode:
            return
        try:
            sys.stdout.write(json.dumps({"event": event, "time": round(time.time(), 3), **fields}) + "\n")
            sys.stdout.flush()
        except (BrokenPipeError, OSError):
            stop.set()

    async def snapshot() -> None:
        try:
            manager = await service.manager_properties()
            bridges = await service.bridges()
        except CliError as exc:
            if exc.code == failures.NOT_RUNNING:
                model.service_stopped()
                dirty.set()
                return
            raise
        emit("snapshot", status=model.load_snapshot(manager, bridges, loop.time()))
        dirty.set()

    def on_event(kind: str, data: dict) -> None:
        now = loop.time()
        if kind == "owner":
            if data["running"]:
                loop.create_task(snapshot())
            else:
                model.service_stopped()
                emit("service-stopped")
        elif kind == "added" and BRIDGE_IFACE in data["interfaces"]:
            record = model.bridge_added(data["path"], data["interfaces"][BRIDGE_IFACE], now)
            emit("bridge-added", bridge=record)
        elif kind == "removed" and BRIDGE_IFACE in data["interfaces"]:
            if model.bridge_removed(data["path"]):
                emit("bridge-removed", path=data["path"])
        elif kind == "properties" and data["interface"] == BRIDGE_IFACE:
            delta = model.bridge_changed(data["path"], data["changed"], now)
            if delta:
                emit("bridge-changed", path=data["path"], changes=delta)
        elif kind == "properties" and data["interface"] == MANAGER_IFACE and data["path"] == MANAGER_PATH:
            if model.manager_changed(data["changed"]):
                emit("service-changed", service=model.service)
        dirty.set()

    def on_key() -> None:
        try:
            keys = os.read(sys.stdin.fileno(), 64)
        except OSError:
            keys = b""
        if not keys or b"q" in keys.lower():
            stop.set()

    async def sampler() -> None:
        while True:
            await asyncio.sleep(SAMPLE_INTERVAL)
            model.sample()
            dirty.set()

    async def painter() -> None:
        while True:
            await dirty.wait()
            dirty.clear()
            size = shutil.get_terminal_size((100, 30))
            lines = render_screen(model, size.columns, size.lines, style, ascii_only, loop.time())
            sys.stdout.write("\x1b[H" + "".join(line + "\x1b[K\n" for line in lines) + "\x1b[J")
            sys.stdout.flush()
            await asyncio.sleep(REDRAW_INTERVAL)

    async def plain_painter() -> None:
        last: list[str] = []
        while True:
            await dirty.wait()
            dirty.clear()
            lines = [line for line in render_screen(model, 200, 10000, render.Style(False),
                                                    ascii_only, loop.time()) if line]
            if lines[1:] != last[1:]:            # the first line holds the clock
                last = lines
                try:
                    sys.stdout.write("\n".join(lines) + "\n\n")
                    sys.stdout.flush()
                except (BrokenPipeError, OSError):
                    stop.set()
            await asyncio.sleep(PLAIN_INTERVAL)

    def connection_lost() -> None:
        lost.append(True)
        stop.set()

    await service.follow(on_event)
    await snapshot()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(signum, stop.set)
    if not json_mode and not plain:
        loop.add_signal_handler(signal.SIGWINCH, dirty.set)
    tasks = [loop.create_task(service.watch_connection(connection_lost))]
    with _Terminal(draw=not json_mode and not plain) as terminal:
        if terminal.fd is not None:
            loop.add_reader(terminal.fd, on_key)
        if not json_mode:
            tasks += [loop.create_task(sampler()),
                      loop.create_task(plain_painter() if plain else painter())]
        try:
            await stop.wait()
        finally:
            if terminal.fd is not None:
                loop.remove_reader(terminal.fd)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    if lost:
        raise CliError(failures.FAILED, "lost the connection to the D-Bus bus")
    return failures.OK
