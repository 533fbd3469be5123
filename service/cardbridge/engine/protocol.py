"""What the main process and a bridge worker say to each other over the worker's pipes.

Imported by both ends: the supervisor (main process) writes commands to the worker's stdin and
reads its events from its stdout; the worker's stdin reader thread parses the commands and its
control thread writes the events. One line per message; anything else on a line is ignored
(never an exception), so a garbled or unknown line costs nothing.

Commands (main process → worker), plain words:
  stop       stop everything and exit
  restart    start the stream again (D-Bus Restart)
  device     the card was plugged or unplugged (udev): look at it now
  jack-up    a JACK server started (jackdbus/jackwatch): try to connect now
  jack-down  the JACK server stopped (jackdbus/jackwatch)

Events (worker → main process), JSON objects with "event":
  state  {"state": one of bridgestats.STATES, "reason": one line, "" while running}
  ports  {"client": JACK client name, "ports": ["client:port", ...]}
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass

from ..bridgestats import STATES


class Command(enum.Enum):
    STOP = "stop"
    RESTART = "restart"
    DEVICE = "device"
    JACK_UP = "jack-up"
    JACK_DOWN = "jack-down"


def command_line(command: Command) -> bytes:
    return command.value.encode() + b"\n"


def parse_command(line: str | bytes) -> Command | None:
    if isinstance(line, bytes):
        line = line.decode("ascii", errors="replace")
    try:
        return Command(line.strip())
    except ValueError:
        return None


@dataclass(frozen=True)
class StateEvent:
    state: str
    reason: str = ""


@dataclass(frozen=True)
class PortsEvent:
    client: str
    ports: tuple[str, ...]


Event = StateEvent | PortsEvent


def event_line(event: Event) -> str:
    if isinstance(event, StateEvent):
        body = {"event": "state", "state": event.state, "reason": event.reason}
    else:
        body = {"event": "ports", "client": event.client, "ports": list(event.ports)}
    return json.dumps(body) + "\n"


def parse_event(line: str | bytes) -> Event | None:
    try:
        body = json.loads(line)
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    kind = body.get("event")
    if kind == "state" and body.get("state") in STATES:
        reason = body.get("reason")
        return StateEvent(body["state"], reason.splitlines()[0][:300] if isinstance(reason, str)
                          and reason.strip() else "")
    if kind == "ports" and isinstance(body.get("client"), str):
        ports = body.get("ports")
        if isinstance(ports, list) and all(isinstance(p, str) for p in ports):
            return PortsEvent(body["client"], tuple(ports))
    return None
