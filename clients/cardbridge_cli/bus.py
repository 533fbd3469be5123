"""The CLI's only door to D-Bus (dbus-next): finding the service and talking to it.

Runs in the CLI process, inside its asyncio loop. Everything returned is plain Python (Variants
unwrapped); every D-Bus failure is raised as failures.CliError with the documented exit code, so
no other client module needs to know the D-Bus library.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, Callable

from dbus_next import BusType, Message, MessageType, Variant
from dbus_next.aio import MessageBus

from cardbridge.names import BRIDGE_IFACE, BUS_NAME, MANAGER_IFACE, MANAGER_PATH

from . import failures
from .failures import CliError

SESSION = "session"
SYSTEM = "system"
CALL_TIMEOUT = 30.0           # seconds; the service answers at once, this only guards hangs
PROPERTIES_IFACE = "org.freedesktop.DBus.Properties"
OBJECT_MANAGER_IFACE = "org.freedesktop.DBus.ObjectManager"
_DBUS = ("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus")

# What attach options travel as (DESIGN.md §2 Attach).
_OPTION_SIGNATURES = {"name": "s", "capture": "u", "playback": "u", "rate": "u", "period": "u",
                      "periods": "u", "max_periods": "u", "quality": "s", "persist": "b"}


def bus_address(kind: str) -> str | None:
    """The address of the session or system bus, or None when there is none to try."""
    if kind == SYSTEM:
        return os.environ.get("DBUS_SYSTEM_BUS_ADDRESS") or "unix:path=/run/dbus/system_bus_socket"
    address = os.environ.get("DBUS_SESSION_BUS_ADDRESS")
    if address:
        return address
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    if runtime_dir and os.path.exists(os.path.join(runtime_dir, "bus")):
        return f"unix:path={os.path.join(runtime_dir, 'bus')}"
    return None


def plain(value: Any) -> Any:
    """Unwrap Variants recursively into plain Python values."""
    if isinstance(value, Variant):
        return plain(value.value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


async def _connect(kind: str) -> MessageBus:
    address = bus_address(kind)
    if address is None:
        raise CliError(failures.NOT_RUNNING, f"no {kind} bus (DBUS_SESSION_BUS_ADDRESS is not set)")
    try:
        return await asyncio.wait_for(MessageBus(bus_address=address).connect(), CALL_TIMEOUT)
    except CliError:
        raise
    except PermissionError:
        raise CliError(failures.DENIED, f"permission denied connecting to the {kind} bus")
    except Exception as exc:  # socket missing, refused, bad address, auth failure, timeout
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise CliError(failures.NOT_RUNNING, f"cannot connect to the {kind} bus: {reason}")


async def _raw_call(bus: MessageBus, destination: str, path: str, interface: str, member: str,
                    signature: str = "", body: list | None = None) -> list:
    message = Message(destination=destination, path=path, interface=interface, member=member,
                      signature=signature, body=body or [])
    try:
        reply = await asyncio.wait_for(bus.call(message), CALL_TIMEOUT)
    except asyncio.TimeoutError:
        raise CliError(failures.FAILED, f"no reply from the service to {member} within {CALL_TIMEOUT:.0f} s")
    except CliError:
        raise
    except Exception as exc:  # connection lost
        raise CliError(failures.FAILED, f"D-Bus connection lost during {member}: {exc}")
    if reply.message_type == MessageType.ERROR:
        text = reply.body[0] if reply.body and isinstance(reply.body[0], str) else ""
        raise failures.from_dbus_error(reply.error_name or "", text)
    return plain(reply.body)


async def _service_present(bus: MessageBus) -> bool:
    if (await _raw_call(bus, *_DBUS, "NameHasOwner", "s", [BUS_NAME]))[0]:
        return True
    return BUS_NAME in (await _raw_call(bus, *_DBUS, "ListActivatableNames"))[0]


async def open_service(kind: str | None) -> "Service":
    """Connect to the bus `kind` ("session"/"system"), or find the service (session first)."""
    kinds = [kind] if kind else [SESSION, SYSTEM]
    reasons = []
    for candidate in kinds:
        try:
            bus = await _connect(candidate)
        except CliError as exc:
            if kind:
                raise
            reasons.append(exc.message)
            continue
        try:
            if await _service_present(bus):
                return Service(bus, candidate)
        except CliError:
            bus.disconnect()
            raise
        bus.disconnect()
        reasons.append(f"not on the {candidate} bus")
    where = f"the {kind} bus" if kind else "the session or system bus"
    detail = "; ".join(r for r in reasons if not r.startswith("not on the"))
    raise CliError(failures.NOT_RUNNING,
                   f"the cardbridge service is not running (not found on {where})"
                   + (f"; {detail}" if detail else ""))


class Service:
    """A connection to the cardbridge service on one bus; methods mirror the D-Bus API."""

    def __init__(self, bus: MessageBus, kind: str):
        self._bus = bus
        self.kind = kind

    def close(self) -> None:
        try:
            self._bus.disconnect()
        except Exception:
            pass

    async def _call(self, path: str, interface: str, member: str, signature: str = "",
                    body: list | None = None) -> list:
        return await _raw_call(self._bus, BUS_NAME, path, interface, member, signature, body)

    # -- reading -----------------------------------------------------------------------------

    async def manager_properties(self) -> dict:
        return (await self._call(MANAGER_PATH, PROPERTIES_IFACE, "GetAll", "s", [MANAGER_IFACE]))[0]

    async def bridge_properties(self, path: str) -> dict:
        return (await self._call(path, PROPERTIES_IFACE, "GetAll", "s", [BRIDGE_IFACE]))[0]

    async def bridges(self) -> dict[str, dict]:
        """Object path → Bridge properties, for every attached bridge."""
        objects = (await self._call(MANAGER_PATH, OBJECT_MANAGER_IFACE, "GetManagedObjects"))[0]
        return {path: ifaces[BRIDGE_IFACE] for path, ifaces in sorted(objects.items())
                if BRIDGE_IFACE in ifaces}

    async def list_devices(self) -> list[dict]:
        return (await self._call(MANAGER_PATH, MANAGER_IFACE, "ListDevices"))[0]

    # -- changing ----------------------------------------------------------------------------

    async def attach(self, device: str, options: dict) -> str:
        variants = {key: Variant(_OPTION_SIGNATURES[key], value) for key, value in options.items()}
        return (await self._call(MANAGER_PATH, MANAGER_IFACE, "Attach", "sa{sv}", [device, variants]))[0]

    async def detach(self, bridge_or_device: str) -> None:
        await self._call(MANAGER_PATH, MANAGER_IFACE, "Detach", "s", [bridge_or_device])

    async def set_options(self, bridge: str, options: dict) -> str:
        variants = {key: Variant(_OPTION_SIGNATURES[key], value) for key, value in options.items()}
        return (await self._call(MANAGER_PATH, MANAGER_IFACE, "Set", "sa{sv}", [bridge, variants]))[0]

    async def restart(self, path: str) -> None:
        await self._call(path, BRIDGE_IFACE, "Restart")

    async def set_auto_attach(self, device: str, enabled: bool) -> None:
        await self._call(MANAGER_PATH, MANAGER_IFACE, "SetAutoAttach", "sb", [device, enabled])

    async def reload(self) -> None:
        await self._call(MANAGER_PATH, MANAGER_IFACE, "Reload")

    # -- following ---------------------------------------------------------------------------

    async def follow(self, on_event: Callable[[str, dict], None]) -> None:
        """Deliver the service's signals as events until disconnected.

        on_event(kind, data) with kind one of: "properties" {path, interface, changed},
        "added" {path, interfaces}, "removed" {path, interfaces}, "owner" {running},
        "device-added" {id, info}, "device-removed" {id}.
        """
        rules = [
            f"type='signal',sender='{BUS_NAME}',interface='{PROPERTIES_IFACE}',"
            f"member='PropertiesChanged',path_namespace='{MANAGER_PATH}'",
            # dbus-next sends InterfacesAdded/Removed from the new object's own path, not the
            # manager's (the spec's place): accept both.
            f"type='signal',sender='{BUS_NAME}',interface='{OBJECT_MANAGER_IFACE}',"
            f"path_namespace='{MANAGER_PATH}'",
            f"type='signal',sender='org.freedesktop.DBus',member='NameOwnerChanged',arg0='{BUS_NAME}'",
            f"type='signal',sender='{BUS_NAME}',interface='{MANAGER_IFACE}',path='{MANAGER_PATH}'",
        ]

        def handler(msg: Message):
            if msg.message_type != MessageType.SIGNAL:
                return None
            body = plain(msg.body)
            if msg.member == "NameOwnerChanged" and body and body[0] == BUS_NAME:
                on_event("owner", {"running": bool(body[2])})
            elif msg.interface == PROPERTIES_IFACE and msg.member == "PropertiesChanged":
                on_event("properties", {"path": msg.path, "interface": body[0], "changed": body[1]})
            elif msg.interface == OBJECT_MANAGER_IFACE and msg.member == "InterfacesAdded":
                on_event("added", {"path": body[0], "interfaces": body[1]})
            elif msg.interface == OBJECT_MANAGER_IFACE and msg.member == "InterfacesRemoved":
                on_event("removed", {"path": body[0], "interfaces": body[1]})
            elif msg.interface == MANAGER_IFACE and msg.member == "DeviceAdded" and len(body) == 2:
                on_event("device-added", {"id": body[0], "info": body[1]})
            elif msg.interface == MANAGER_IFACE and msg.member == "DeviceRemoved" and body:
                on_event("device-removed", {"id": body[0]})
            return None

        self._bus.add_message_handler(handler)
        for rule in rules:
            await _raw_call(self._bus, *_DBUS, "AddMatch", "s", [rule])

    async def running(self) -> bool:
        return bool((await _raw_call(self._bus, *_DBUS, "NameHasOwner", "s", [BUS_NAME]))[0])

    async def watch_connection(self, on_lost: Callable[[], None]) -> None:
        """Wait until the connection to the bus ends, then call `on_lost()`."""
        try:
            await self._bus.wait_for_disconnect()
        except Exception:
            pass
        on_lost()
