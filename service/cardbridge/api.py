"""The D-Bus face of the service: Manager and Bridge interfaces, errors, signature checks.

Main asyncio process. Only translates between D-Bus and the Manager: every method maps typed
errors to `org.cardbridge.CardBridge1.Error.<Name>` with their one-line message, and anything
unexpected to `...Error.Internal` (logged here, never a traceback or a path to the caller).
D-Bus names come from dbuslib, the one module that imports the library.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time

from . import names
from .bridgestats import PUBLISHED, Stat, published_value
from .dbuslib import (DBusError, Message, MessageType, PropertyAccess, ServiceInterface, Variant,
                      dbus_property, method, read_only_property, signal)
from .errors import CardBridgeError, InvalidArgument
from .manager import Manager

log = logging.getLogger("cardbridge.api")

INVALID_ARGS = "org.freedesktop.DBus.Error.InvalidArgs"
UNKNOWN_OBJECT = "org.freedesktop.DBus.Error.UnknownObject"
STATS_MIN_INTERVAL = 0.2          # ≤ 5 Hz of PropertiesChanged per bridge

# member → input signature, for the wrong-signature check (dbus-next would say UnknownMethod)
SIGNATURES = {
    names.MANAGER_IFACE: {"Attach": "sa{sv}", "Detach": "s", "ListDevices": "", "Reload": "",
                          "SetAutoAttach": "sb", "Set": "sa{sv}"},
    names.BRIDGE_IFACE: {"Detach": "", "Restart": "", "Set": "a{sv}"},
}
OPTION_TYPES = {"name": "s", "quality": "s", "persist": "b", "capture": "u", "playback": "u",
                "rate": "u", "period": "u", "periods": "u", "max_periods": "u"}
INTEGER_SIGS = set("ynqiuxt")

def dbus_errors(fn):
    """Typed errors → their D-Bus names; anything else → Internal, logged with its traceback."""
    @functools.wraps(fn)
    async def wrapper(self, *args):
        try:
            return await fn(self, *args)
        except DBusError:
            raise
        except CardBridgeError as exc:
            raise DBusError(exc.dbus_name, str(exc)) from None
        except Exception:
            log.exception("unexpected error in %s", fn.__name__)
            raise DBusError(f"{names.ERROR_PREFIX}.Internal",
                            "internal error in the service (see its log)") from None
    return wrapper


def to_variant_dict(info: dict) -> dict:
    out = {}
    for key, value in info.items():
        if value is None:
            continue
        if isinstance(value, bool):
            out[key] = Variant("b", value)
        elif isinstance(value, int):
            out[key] = Variant("i" if key == "card" or value < 0 else "u", value)
        elif isinstance(value, float):
            out[key] = Variant("d", value)
        else:
            out[key] = Variant("s", str(value))
    return out


def options_from_variants(options: dict) -> dict:
    out = {}
    for key, var in options.items():
        want = OPTION_TYPES.get(key)
        if want is None:
            raise InvalidArgument(f"unknown option '{key}'")
        sig = getattr(var, "signature", "")
        value = getattr(var, "value", None)
        if want == "u":
            if sig not in INTEGER_SIGS:
                raise InvalidArgument(f"option '{key}' must be an unsigned integer (u)")
        elif sig != want:
            raise InvalidArgument(f"option '{key}' must have type {want}")
        out[key] = value
    return out


def bridge_value(stat: Stat, stats: dict):
    """A bridge property's value from the bridge's statistics (never None or NaN)."""
    return published_value(stat, stats.get(stat.key))


class ManagerInterface(ServiceInterface):
    def __init__(self, manager: Manager):
        super().__init__(names.MANAGER_IFACE)
        self.manager = manager

    @method()
    @dbus_errors
    async def Attach(self, device: "s", options: "a{sv}") -> "o":
        dev_id = await self.manager.attach(device, options_from_variants(options))
        return names.bridge_path(dev_id)

    @method()
    @dbus_errors
    async def Detach(self, bridge_or_device: "s"):
        await self.manager.detach(bridge_or_device)

    @method()
    @dbus_errors
    async def Set(self, bridge_or_device: "s", options: "a{sv}") -> "o":
        dev_id = await self.manager.set_options(bridge_or_device, options_from_variants(options))
        return names.bridge_path(dev_id)

    @method()
    @dbus_errors
    async def ListDevices(self) -> "aa{sv}":
        return [to_variant_dict(info) for info in self.manager.list_devices()]

    @method()
    @dbus_errors
    async def Reload(self):
        await self.manager.reload()

    @method()
    @dbus_errors
    async def SetAutoAttach(self, device: "s", enabled: "b"):
        await self.manager.set_auto_attach(device, enabled)

    @dbus_property(access=PropertyAccess.READ)
    def Version(self) -> "s":
        return self.manager.version

    @dbus_property(access=PropertyAccess.READ)
    def JackRunning(self) -> "b":
        return self.manager.jack.running

    @dbus_property(access=PropertyAccess.READ)
    def JackSampleRate(self) -> "u":
        return self.manager.jack.sample_rate

    @dbus_property(access=PropertyAccess.READ)
    def JackBufferSize(self) -> "u":
        return self.manager.jack.buffer_size

    @dbus_property(access=PropertyAccess.READ)
    def AutoAttach(self) -> "s":
        return self.manager.config.auto_attach

    @signal()
    def DeviceAdded(self, device_id, info) -> "sa{sv}":
        return [device_id, info]

    @signal()
    def DeviceRemoved(self, device_id) -> "s":
        return device_id


class BridgeInterface(ServiceInterface):
    def __init__(self, manager: Manager, device_id: str):
        super().__init__(names.BRIDGE_IFACE)
        self.manager = manager
        self.device_id = device_id
        self._sent: dict = {}
        self._last_emit = 0.0
        self._pending: dict = {}

    def _stats(self) -> dict:
        bridge = self.manager.bridges.get(self.device_id)
        return bridge.stats() if bridge is not None else {}

    def changed(self) -> None:
        """Turn stats changes into PropertiesChanged: state at once, numbers at ≤ 5 Hz."""
        stats = self._stats()
        for stat in PUBLISHED:
            value = bridge_value(stat, stats)
            if self._sent.get(stat.prop) != value:
                self._pending[stat.prop] = value
        now = time.monotonic()
        if self._pending and ("State" in self._pending or "StateReason" in self._pending
                              or now - self._last_emit >= STATS_MIN_INTERVAL):
            self._sent.update(self._pending)
            self.emit_properties_changed(dict(self._pending))
            self._pending = {}
            self._last_emit = now

    @method()
    @dbus_errors
    async def Detach(self):
        await self.manager.detach(self.device_id)

    @method()
    @dbus_errors
    async def Restart(self):
        await self.manager.restart(self.device_id)

    @method()
    @dbus_errors
    async def Set(self, options: "a{sv}"):
        await self.manager.set_options(self.device_id, options_from_variants(options))


def _bridge_property(stat: Stat):
    return read_only_property(stat.prop, stat.signature,
                              lambda iface: bridge_value(stat, iface._stats()))


# Bridge properties: one per published entry of the statistics table (bridgestats.STATS).
for _stat in PUBLISHED:
    setattr(BridgeInterface, _stat.prop, _bridge_property(_stat))
del _stat


def quiet_replied_errors(loop: asyncio.AbstractEventLoop) -> None:
    """dbus-next re-raises a method's DBusError in its reply callback after it has sent the
    error reply; the loop would log each one with a traceback. They are answers, not faults."""
    previous = loop.get_exception_handler()

    def handler(lp, context):
        if isinstance(context.get("exception"), DBusError):
            return
        if previous is not None:
            previous(lp, context)
        else:
            lp.default_exception_handler(context)

    loop.set_exception_handler(handler)


class Api:
    """Exports the objects on a connected bus and keeps them in step with the Manager."""

    def __init__(self, bus, manager: Manager):
        self.bus = bus
        self.manager = manager
        self.iface = ManagerInterface(manager)
        self.bridges: dict[str, BridgeInterface] = {}
        manager.listener = self
        bus.add_message_handler(self._check_call)
        quiet_replied_errors(asyncio.get_running_loop())
        bus.export(names.MANAGER_PATH, self.iface)

    # -- wrong signatures and unknown objects -------------------------------------------------
    def _check_call(self, msg: Message):
        if msg.message_type != MessageType.METHOD_CALL:
            return None
        path = msg.path or ""
        if not path.startswith(names.MANAGER_PATH):
            return None
        members = SIGNATURES.get(msg.interface or "")
        if members is not None:
            if path.startswith(names.BRIDGE_PATH_PREFIX + "/") and path not in self._bridge_paths():
                return Message.new_error(msg, UNKNOWN_OBJECT, f"no object at {path}")
            expected = members.get(msg.member)
            if expected is not None and (msg.signature or "") != expected:
                return Message.new_error(msg, INVALID_ARGS,
                                         f"{msg.member} takes arguments ({expected}), got ({msg.signature or ''})")
        elif msg.interface == "org.freedesktop.DBus.Properties":
            if path.startswith(names.BRIDGE_PATH_PREFIX + "/") and path not in self._bridge_paths():
                return Message.new_error(msg, UNKNOWN_OBJECT, f"no object at {path}")
        return None

    def _bridge_paths(self) -> set[str]:
        return {names.bridge_path(d) for d in self.bridges}

    # -- Manager listener -----------------------------------------------------------------------
    def bridge_added(self, device_id: str, bridge) -> None:
        iface = BridgeInterface(self.manager, device_id)
        self.bridges[device_id] = iface
        self.bus.export(names.bridge_path(device_id), iface)

    def bridge_removed(self, device_id: str) -> None:
        iface = self.bridges.pop(device_id, None)
        if iface is not None:
            self.bus.unexport(names.bridge_path(device_id), iface)

    def bridge_changed(self, device_id: str, changed: dict) -> None:
        iface = self.bridges.get(device_id)
        if iface is not None:
            iface.changed()

    def manager_changed(self, changed: dict) -> None:
        self.iface.emit_properties_changed(changed)

    def device_added(self, device_id: str, info: dict) -> None:
        self.iface.DeviceAdded(device_id, to_variant_dict(info))

    def device_removed(self, device_id: str) -> None:
        self.iface.DeviceRemoved(device_id)
