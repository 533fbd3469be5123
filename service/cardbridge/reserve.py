"""Sound-card hand-over with PulseAudio/PipeWire/jackdbus: org.freedesktop.ReserveDevice1.

Runs in the main asyncio process, on a (session) bus connection from `cardbridge.dbuslib`.

The protocol (Lennart Poettering's "reserve" spec, used by PulseAudio, PipeWire/WirePlumber
and jackdbus): whoever opens card N owns the bus name `org.freedesktop.ReserveDevice1.AudioN`
and serves `org.freedesktop.ReserveDevice1` at `/org/freedesktop/ReserveDevice1/AudioN` with
the method `RequestRelease(i priority) → b` and the read-only properties `Priority` (i),
`ApplicationName` (s), `ApplicationDeviceName` (s).

Acquiring: request the name with DoNotQueue (plus AllowReplacement unless our priority is
INT32_MAX, which means "never give it up"). If someone else owns it, ask them with
RequestRelease(our priority); an owner agrees only to a strictly higher priority. If they
agree, request the name again with ReplaceExisting. A failed, unknown or timed-out
RequestRelease counts as "no".

Being asked: a RequestRelease with a priority not above ours is refused at once; otherwise
the `on_release_requested(priority)` callback decides (True = give the card up; the Manager
says yes only when the card is not in use). Losing the name (NameLost) calls `on_lost()`.
"""

# No `from __future__ import annotations` here: dbus-next reads the D-Bus signatures from the
# method annotations ('i', 'b', 's') and needs them unevaluated-as-given.

import asyncio
import inspect
import logging
from typing import Awaitable, Callable, Optional, Union

from .dbuslib import (Message, MessageBus, MessageFlag, MessageType, NameFlag, PropertyAccess,
                      RequestNameReply, ServiceInterface, dbus_property, method)

log = logging.getLogger(__name__)

SERVICE_PREFIX = "org.freedesktop.ReserveDevice1."
PATH_PREFIX = "/org/freedesktop/ReserveDevice1/"
INTERFACE = "org.freedesktop.ReserveDevice1"
INT32_MAX = 2**31 - 1
INT32_MIN = -2**31
# Who holds cards with which priority: PulseAudio 0, WirePlumber -20 (it keeps every card it
# found reserved all the time), jackdbus INT32_MAX (it never gives its card up). An owner hands
# a card over only to a strictly higher priority.
TAKE_PRIORITY = 10         # above the desktops: they hand the card over
ASK_PRIORITY = -30         # below them: only cards nobody holds
DEFAULT_PRIORITY = TAKE_PRIORITY
REQUEST_TIMEOUT = 5.0
DBUS = ("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus")

ReleaseDecision = Callable[[int], Union[bool, Awaitable[bool]]]


class _ReserveInterface(ServiceInterface):
    """The object other audio servers talk to while we hold the card."""

    def __init__(self, owner: "DeviceReservation"):
        super().__init__(INTERFACE)
        self._owner = owner

    @method()
    async def RequestRelease(self, priority: 'i') -> 'b':  # noqa: N802,F821 - D-Bus names
        return await self._owner._release_requested(priority)

    @dbus_property(access=PropertyAccess.READ)
    def Priority(self) -> 'i':  # noqa: N802,F821
        return self._owner.priority

    @dbus_property(access=PropertyAccess.READ)
    def ApplicationName(self) -> 's':  # noqa: N802,F821
        return self._owner.app_name

    @dbus_property(access=PropertyAccess.READ)
    def ApplicationDeviceName(self) -> 's':  # noqa: N802,F821
        return self._owner.device_name


class DeviceReservation:
    """Our claim on one ALSA card (`Audio<card_index>`) on one bus connection.

    `bus` may be None (no session bus): then there is nobody to coordinate with and acquire()
    simply succeeds.
    """

    def __init__(self, bus, card_index: int, app_name: str = "cardbridge", *,
                 device_name: str = "", priority: int = DEFAULT_PRIORITY,
                 on_release_requested: Optional[ReleaseDecision] = None,
                 on_lost: Optional[Callable[[], None]] = None,
                 request_timeout: float = REQUEST_TIMEOUT):
        if not INT32_MIN <= priority <= INT32_MAX:
            raise ValueError(f"priority {priority} is not a 32-bit integer")
        self.bus = bus
        self.card_index = int(card_index)
        self.app_name = app_name
        self.device_name = device_name
        self.priority = priority
        self.on_release_requested = on_release_requested
        self.on_lost = on_lost
        self.request_timeout = request_timeout
        self.service_name = f"{SERVICE_PREFIX}Audio{self.card_index}"
        self.object_path = f"{PATH_PREFIX}Audio{self.card_index}"
        self.owned = False
        self._interface: Optional[_ReserveInterface] = None
        self._handler_installed = False

    # -- public --
    async def acquire(self) -> bool:
        """Take the card's reservation; False if its owner (of equal or higher rank) says no."""
        if self.bus is None:
            return True
        if self.owned:
            return True
        self._export()
        flags = NameFlag.DO_NOT_QUEUE
        if self.priority < INT32_MAX:
            flags |= NameFlag.ALLOW_REPLACEMENT
        try:
            reply = await self.bus.request_name(self.service_name, flags)
            if reply in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
                return self._won()
            if reply != RequestNameReply.EXISTS or self.priority <= INT32_MIN:
                return self._lost_bid()
            if not await self._ask_owner_to_release():
                return self._lost_bid()
            reply = await self.bus.request_name(self.service_name, flags | NameFlag.REPLACE_EXISTING)
            if reply in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
                return self._won()
            return self._lost_bid()
        except Exception as exc:        # noqa: BLE001 - a bus problem is "not reserved", not a crash
            log.warning("could not reserve %s: %s", self.service_name, exc)
            return self._lost_bid()

    async def release(self) -> None:
        """Give the reservation back (idempotent)."""
        if self.bus is None:
            return
        was_owned, self.owned = self.owned, False
        if was_owned:
            try:
                await self.bus.release_name(self.service_name)
            except Exception as exc:    # noqa: BLE001 - e.g. the bus went away
                log.debug("releasing %s: %s", self.service_name, exc)
        self._unexport()

    # -- protocol internals --
    async def _ask_owner_to_release(self) -> bool:
        msg = Message(destination=self.service_name, path=self.object_path, interface=INTERFACE,
                      member="RequestRelease", signature="i", body=[self.priority])
        try:
            reply = await asyncio.wait_for(self.bus.call(msg), self.request_timeout)
        except asyncio.TimeoutError:
            log.info("%s: owner did not answer RequestRelease; treating as refused", self.service_name)
            return False
        if reply is None or reply.message_type != MessageType.METHOD_RETURN:
            detail = reply.error_name if reply is not None else "no reply"
            log.info("%s: RequestRelease failed (%s); treating as refused", self.service_name, detail)
            return False
        return bool(reply.body and reply.body[0] is True)

    async def _release_requested(self, priority: int) -> bool:
        if not self.owned or priority <= self.priority or self.on_release_requested is None:
            return False
        try:
            decision = self.on_release_requested(priority)
            if inspect.isawaitable(decision):
                decision = await decision
        except Exception:               # noqa: BLE001
            log.exception("release decision for %s failed; keeping the card", self.service_name)
            return False
        return bool(decision)

    def _on_message(self, msg) -> None:
        if (msg.message_type == MessageType.SIGNAL and msg.member == "NameLost"
                and msg.interface == "org.freedesktop.DBus" and msg.sender == "org.freedesktop.DBus"
                and msg.body and msg.body[0] == self.service_name and self.owned):
            self.owned = False
            # Not from inside dbus-next's handler loop: drop our handler on the next turn.
            self._unexport(keep_handler=True)
            asyncio.get_running_loop().call_soon(self._drop_handler_if_idle)
            log.info("%s taken over by another application", self.service_name)
            if self.on_lost is not None:
                try:
                    self.on_lost()
                except Exception:       # noqa: BLE001
                    log.exception("on_lost handler for %s failed", self.service_name)
        return None

    def _won(self) -> bool:
        self.owned = True
        return True

    def _lost_bid(self) -> bool:
        self.owned = False
        self._unexport()
        return False

    def _export(self) -> None:
        if self._interface is None:
            self._interface = _ReserveInterface(self)
            self.bus.export(self.object_path, self._interface)
        if not self._handler_installed:
            self.bus.add_message_handler(self._on_message)
            self._handler_installed = True

    def _unexport(self, keep_handler: bool = False) -> None:
        if self._interface is not None:
            try:
                self.bus.unexport(self.object_path, self._interface)
            except Exception:           # noqa: BLE001 - bus already gone
                pass
            self._interface = None
        if not keep_handler:
            self._drop_handler_if_idle()

    def _drop_handler_if_idle(self) -> None:
        if self._handler_installed and self._interface is None and not self.owned:
            try:
                self.bus.remove_message_handler(self._on_message)
            except Exception:           # noqa: BLE001
                pass
            self._handler_installed = False


# -- looking at reservations without holding them ----------------------------------------------

def card_of_service_name(name: str) -> int | None:
    """`org.freedesktop.ReserveDevice1.Audio3` -> 3; None for anything else."""
    tail = name[len(SERVICE_PREFIX):] if name.startswith(SERVICE_PREFIX) else ""
    return int(tail[5:]) if tail.startswith("Audio") and tail[5:].isdigit() else None


async def _call(bus, destination: str, path: str, interface: str, member: str,
                signature: str = "", body: list | None = None):
    """A call that never starts a service; its reply body, or None on any error."""
    msg = Message(destination=destination, path=path, interface=interface, member=member,
                  signature=signature, body=body or [], flags=MessageFlag.NO_AUTOSTART)
    try:
        reply = await asyncio.wait_for(bus.call(msg), REQUEST_TIMEOUT)
    except Exception:                   # noqa: BLE001 - timeout, bus gone: "unknown"
        return None
    if reply is None or reply.message_type != MessageType.METHOD_RETURN:
        return None
    return reply.body


async def owner_of(bus, card_index: int) -> tuple[str, str] | None:
    """(unique bus name, application name) of whoever holds card `card_index`'s reservation, or
    None when nobody does (or there is no bus)."""
    if bus is None:
        return None
    name = f"{SERVICE_PREFIX}Audio{int(card_index)}"
    owner = await _call(bus, *DBUS, "GetNameOwner", "s", [name])
    if not owner:
        return None
    if owner[0] == getattr(bus, "unique_name", None):
        return owner[0], "cardbridge"              # ourselves (another bridge of this service)
    app = await _call(bus, owner[0], f"{PATH_PREFIX}Audio{int(card_index)}",
                      "org.freedesktop.DBus.Properties", "Get", "ss",
                      [INTERFACE, "ApplicationName"])
    value = getattr(app[0], "value", "") if app else ""
    return owner[0], value if isinstance(value, str) and value else owner[0]


def is_jack(application_name: str) -> bool:
    """jackdbus reserves its card as "Jack audio server"."""
    return application_name.lower().startswith("jack")


async def watch_owners(bus, on_change: Callable[[int, str], None]) -> None:
    """Call `on_change(card_index, new_owner)` (new_owner "" when freed) whenever a card's
    reservation changes hands on `bus`."""
    def handler(msg):
        if (msg.message_type == MessageType.SIGNAL and msg.member == "NameOwnerChanged"
                and msg.interface == DBUS[2] and len(msg.body) == 3):
            card = card_of_service_name(msg.body[0])
            if card is not None:
                on_change(card, msg.body[2])
        return None

    bus.add_message_handler(handler)
    await _call(bus, *DBUS, "AddMatch", "s",
                [f"type='signal',sender='{DBUS[0]}',interface='{DBUS[2]}',"
                 f"member='NameOwnerChanged',arg0namespace='{INTERFACE}'"])


async def connect(address: str):
    """A connection to the bus at `address` for reservations (a system instance asks the
    session's); None when it cannot be reached."""
    try:
        return await asyncio.wait_for(MessageBus(bus_address=address).connect(), REQUEST_TIMEOUT)
    except Exception as exc:            # noqa: BLE001
        log.warning("cannot reach the session bus for device reservations (%s); cards are "
                    "bridged without asking PulseAudio/PipeWire", exc)
        return None
