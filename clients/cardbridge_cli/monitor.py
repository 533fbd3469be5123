"""`cardbridge monitor`: every event of the service, one line each, as it happens (in the spirit
of `busctl monitor` and `nmcli monitor`, but in the service's own terms).

Runs in the CLI process's asyncio loop, fed by the service's signals (bus.Service.follow): no
polling, no snapshot. Text lines are `HH:MM:SS.mmm EVENT WHAT key=value …`; with --json each
line is one object with `event` and `time` (schema.MONITOR_EVENTS). Ends on Ctrl-C (exit 0),
SIGTERM, a closed output, or a lost bus (exit 1).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time

from cardbridge.names import BRIDGE_IFACE, MANAGER_IFACE, MANAGER_PATH

from . import failures, records
from .failures import CliError

# Manager property -> key of the service's events
SERVICE_KEYS = {"Version": "version", "JackRunning": "jack_running",
                "JackSampleRate": "jack_sample_rate", "JackBufferSize": "jack_buffer_size",
                "AutoAttach": "auto_attach"}


def events_of(kind: str, data: dict) -> list[dict]:
    """The monitor's events (without time) for one signal from bus.Service.follow."""
    if kind == "owner":
        return [{"event": "service-started" if data["running"] else "service-stopped"}]
    if kind == "added" and BRIDGE_IFACE in data["interfaces"]:
        return [{"event": "bridge-added", "path": data["path"],
                 "bridge": records.bridge_record(data["path"], data["interfaces"][BRIDGE_IFACE])}]
    if kind == "removed" and BRIDGE_IFACE in data["interfaces"]:
        return [{"event": "bridge-removed", "path": data["path"]}]
    if kind == "properties" and data["interface"] == BRIDGE_IFACE:
        changes = {records.BRIDGE_KEYS[p]: v for p, v in data["changed"].items()
                   if p in records.BRIDGE_KEYS}
        return [{"event": "bridge-changed", "path": data["path"], "changes": changes}] \
            if changes else []
    if kind == "properties" and data["interface"] == MANAGER_IFACE \
            and data["path"] == MANAGER_PATH:
        changes = {SERVICE_KEYS[p]: v for p, v in data["changed"].items() if p in SERVICE_KEYS}
        return [{"event": "service-changed", "changes": changes}] if changes else []
    if kind == "device-added":
        return [{"event": "device-added", "id": data["id"],
                 "device": records.device_record(data["info"])}]
    if kind == "device-removed":
        return [{"event": "device-removed", "id": data["id"]}]
    return []


def _value(value) -> str:
    """A value as it reads in a key=value pair (strings quoted when they need it)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, str):
        plain = value and not any(c.isspace() or c in '"=' for c in value)
        return value if plain else json.dumps(value, ensure_ascii=False)
    return str(value)


def text_line(event: dict, when: float) -> str:
    """One human line: time, event, what it is about, then key=value pairs."""
    clock = time.strftime("%H:%M:%S", time.localtime(when)) + f".{int(when % 1 * 1000):03d}"
    kind = event["event"]
    parts = [clock, kind]
    if "path" in event:
        parts.append(event["path"])
    if "id" in event:
        parts.append(event["id"])
    fields = event.get("changes") or event.get("bridge") or event.get("device") or {}
    parts += [f"{key}={_value(value)}" for key, value in fields.items()
              if key not in ("path", "id") and value is not None]
    return " ".join(parts)


async def run_monitor(service, json_mode: bool) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    lost = []

    def on_event(kind: str, data: dict) -> None:
        now = time.time()
        for event in events_of(kind, data):
            line = json.dumps({**event, "time": round(now, 3)}, ensure_ascii=False) \
                if json_mode else text_line(event, now)
            try:
                sys.stdout.write(line + "\n")
                sys.stdout.flush()
            except (BrokenPipeError, OSError):
                stop.set()

    def connection_lost() -> None:
        lost.append(True)
        stop.set()

    await service.follow(on_event)
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(signum, stop.set)
    watcher = loop.create_task(service.watch_connection(connection_lost))
    try:
        await stop.wait()
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    if lost:
        raise CliError(failures.FAILED, "lost the connection to the D-Bus bus")
    return failures.OK
