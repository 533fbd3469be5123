"""Follow one JACK server: is it running, at which sample rate and buffer size.

Runs in the main asyncio process. Two sources, used together:

- jackdbus on the session bus (how qjackctl's D-Bus mode and `jack_control` run JACK):
  `NameOwnerChanged` for `org.jackaudio.service`, the `ServerStarted`/`ServerStopped` signals
  of `org.jackaudio.JackControl` on `/org/jackaudio/Controller`, and `IsStarted` once at
  start-up and whenever jackdbus (re)appears. Calls never auto-start jackdbus. jackdbus is
  trusted only while its engine `name` parameter is the server we follow.
- The main process's JACK client (jacklink.JackLink, opened with `no_start_server=True`, never
  starting a server). While the server is absent and jackdbus is not managing it, the link
  knocks with back-off (0.25 s -> 2 s), quietly. Buffer-size and rate changes and the server
  leaving come from its callbacks, handed to the loop.

`on_change(JackState)` is called in the loop whenever running, rate, buffer size or the ALSA
devices the server itself runs on change. Those devices come from jackdbus's driver parameters
and from the aliases JACK's ALSA driver gives its `system:` ports (`alsa_pcm:hw:USB:out1`), so
a plain jackd is recognised too.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, replace
from typing import Callable

from .dbuslib import BusType, Message, MessageBus, MessageFlag, MessageType
from .jacklink import JackLink

log = logging.getLogger(__name__)

JACKDBUS_NAME = "org.jackaudio.service"
JACKDBUS_PATH = "/org/jackaudio/Controller"
JACKDBUS_CONTROL = "org.jackaudio.JackControl"
JACKDBUS_CONFIGURE = "org.jackaudio.Configure"
DBUS_NAME = "org.freedesktop.DBus"
DBUS_PATH = "/org/freedesktop/DBus"

@dataclass(frozen=True)
class JackState:
    running: bool
    sample_rate: int = 0
    buffer_size: int = 0
    alsa_devices: frozenset = frozenset()     # ALSA device names the server runs on


def alsa_device_of_alias(alias: str) -> str | None:
    """`alsa_pcm:hw:USB:out1` (JACK's ALSA driver) -> "hw:USB"; None for other aliases."""
    head, _, rest = alias.partition(":")
    if head != "alsa_pcm" or not rest:
        return None
    device, _, port = rest.rpartition(":")
    return device if device and port.startswith(("out", "in")) else None


def _system_port_devices(client) -> frozenset:
    """The ALSA devices named by the aliases of JACK's `system:` ports (the link's thread)."""
    found = set()
    try:
        for port in client.get_ports("^system:"):
            for alias in port.aliases:
                device = alsa_device_of_alias(alias)
                if device:
                    found.add(device)
    except Exception as exc:            # noqa: BLE001 - the server may be leaving
        log.debug("cannot read the system ports' aliases: %s", exc)
    return frozenset(found)


JACK_DOWN = JackState(False, 0, 0)


def resolve_server_name(server_name: str | None) -> str:
    """The name libjack will use: the given one, else $JACK_DEFAULT_SERVER, else "default"."""
    return server_name or os.environ.get("JACK_DEFAULT_SERVER") or "default"


class JackWatch:
    """Knows whether the followed JACK server runs, and tells `on_change` when that changes.

    It shares `link` (the main process's JACK client) with other listeners, or makes and
    runs its own when none is given.
    """

    def __init__(self, server_name: str | None, session_bus_address: str | None,
                 on_change: Callable[[JackState], None], link: JackLink | None = None):
        self.server_name = server_name
        self.session_bus_address = session_bus_address
        self.on_change = on_change
        self.state = JACK_DOWN
        self._own_link = link is None
        self.link = link if link is not None else JackLink(server_name)
        self.link.should_poll = self._should_poll
        self.link.subscribe(self)
        self._bus: MessageBus | None = None
        self._jackdbus_owner: str | None = None   # unique bus name of jackdbus, when present
        self._jackdbus_ours = False                # jackdbus runs (or would run) our server
        self._jackdbus_started = False
        self._jackdbus_devices: frozenset = frozenset()
        self._dbus_tasks: set[asyncio.Task] = set()

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        await self._connect_session_bus()
        if self._bus is not None:
            await self._refresh_jackdbus()
        if self._own_link:
            await self.link.start()

    async def stop(self) -> None:
        for task in list(self._dbus_tasks):
            task.cancel()
        if self._own_link:
            await self.link.stop()
        if self._bus is not None:
            self._bus.disconnect()
            self._bus = None

    @property
    def jackdbus_present(self) -> bool:
        return self._jackdbus_owner is not None

    def _should_poll(self) -> bool:
        # jackdbus tells us when its server starts: no need to knock while it says "stopped".
        return not (self._jackdbus_ours and not self._jackdbus_started)

    def _jackdbus_claims_running(self) -> bool:
        return self._jackdbus_ours and self._jackdbus_started

    # ----------------------------------------------------------------- the link (loop)

    def link_up(self, client) -> None:
        rate, size = client.samplerate, client.blocksize
        log.info("JACK server %r is running (%d Hz, %d frames)",
                 resolve_server_name(self.server_name), rate, size)
        self._set_state(JackState(True, rate, size, self._jackdbus_devices))
        self._spawn(self._read_port_devices(client))

    async def _read_port_devices(self, client) -> None:
        devices = await self.link.in_thread(_system_port_devices, client)
        if self.link.client is client and self.state.running:
            self._set_state(replace(self.state,
                                    alsa_devices=self.state.alsa_devices | devices))

    def link_lost(self) -> None:
        if not self._jackdbus_claims_running():
            self._set_state(JACK_DOWN)

    def link_param(self, key: str, value: int) -> None:
        rate = value if key == "sample_rate" else self.state.sample_rate
        size = value if key == "buffer_size" else self.state.buffer_size
        self._set_state(replace(self.state, running=True, sample_rate=rate, buffer_size=size))

    # ----------------------------------------------------------------- state

    def _set_state(self, new: JackState) -> None:
        if new == self.state:
            return
        old, self.state = self.state, new
        if old.running and not new.running:
            log.info("JACK server %r is gone", resolve_server_name(self.server_name))
        try:
            self.on_change(new)
        except Exception:
            log.exception("JACK state listener failed")

    # ----------------------------------------------------------------- jackdbus

    async def _connect_session_bus(self) -> None:
        address = self.session_bus_address
        if address == "":
            return
        try:
            if address:
                bus = MessageBus(bus_address=address)
            elif os.environ.get("DBUS_SESSION_BUS_ADDRESS"):
                bus = MessageBus(bus_type=BusType.SESSION)
            else:
                return
            self._bus = await bus.connect()
        except Exception as exc:
            log.warning("cannot follow jackdbus (session bus unreachable: %s); "
                        "following plain JACK only", exc)
            self._bus = None
            return
        self._bus.add_message_handler(self._on_message)
        rules = (
            f"type='signal',sender='{DBUS_NAME}',interface='{DBUS_NAME}',"
            f"member='NameOwnerChanged',arg0='{JACKDBUS_NAME}'",
            f"type='signal',sender='{JACKDBUS_NAME}',interface='{JACKDBUS_CONTROL}',"
            f"member='ServerStarted'",
            f"type='signal',sender='{JACKDBUS_NAME}',interface='{JACKDBUS_CONTROL}',"
            f"member='ServerStopped'",
        )
        for rule in rules:
            await self._call(DBUS_NAME, DBUS_PATH, DBUS_NAME, "AddMatch", "s", [rule])
        log.info("following jackdbus on %s", address or "the session bus")

    async def _call(self, destination: str, path: str, interface: str, member: str,
                    signature: str = "", body: list | None = None):
        """Method call that never auto-starts a service; None on any error."""
        if self._bus is None:
            return None
        msg = Message(destination=destination, path=path, interface=interface, member=member,
                      signature=signature, body=body or [], flags=MessageFlag.NO_AUTOSTART)
        try:
            reply = await asyncio.wait_for(self._bus.call(msg), 5.0)
        except (asyncio.TimeoutError, Exception) as exc:  # bus gone, reply lost
            log.debug("%s.%s failed: %s", interface, member, exc)
            return None
        if reply is None or reply.message_type == MessageType.ERROR:
            return None
        return reply.body

    def _on_message(self, msg: Message):
        if msg.message_type != MessageType.SIGNAL:
            return None
        if msg.interface == DBUS_NAME and msg.member == "NameOwnerChanged":
            if msg.body and msg.body[0] == JACKDBUS_NAME:
                new_owner = msg.body[2] if len(msg.body) > 2 else ""
                if not new_owner:
                    self._jackdbus_gone()
                else:
                    self._spawn(self._refresh_jackdbus())
        elif msg.interface == JACKDBUS_CONTROL and msg.path == JACKDBUS_PATH:
            if self._jackdbus_owner is not None and msg.sender != self._jackdbus_owner:
                return None
            if msg.member == "ServerStarted":
                self._spawn(self._jackdbus_server_started())
            elif msg.member == "ServerStopped":
                self._jackdbus_server_stopped()
        return None

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._dbus_tasks.add(task)
        task.add_done_callback(self._dbus_tasks.discard)

    def _jackdbus_gone(self) -> None:
        was_ours = self._jackdbus_claims_running()
        self._jackdbus_owner = None
        self._jackdbus_ours = False
        self._jackdbus_started = False
        log.info("jackdbus left the session bus")
        if was_ours:   # its server lived in the jackdbus process
            self.link.server_left()
            self._set_state(JACK_DOWN)
        self.link.poke()  # back to polling for a plain jackd

    async def _refresh_jackdbus(self) -> None:
        """jackdbus may be there: who owns the name, which server it runs, is it started."""
        reply = await self._call(DBUS_NAME, DBUS_PATH, DBUS_NAME, "GetNameOwner", "s",
                                 [JACKDBUS_NAME])
        if not reply:
            self._jackdbus_owner = None
            self._jackdbus_ours = False
            self._jackdbus_started = False
            self.link.poke()
            return
        self._jackdbus_owner = reply[0]
        await self._read_jackdbus_server_name()
        started = await self._call(JACKDBUS_NAME, JACKDBUS_PATH, JACKDBUS_CONTROL, "IsStarted")
        if started and started[0] and self._jackdbus_ours:
            await self._jackdbus_server_started()
        else:
            self._jackdbus_server_stopped()

    async def _read_jackdbus_server_name(self) -> None:
        reply = await self._call(JACKDBUS_NAME, JACKDBUS_PATH, JACKDBUS_CONFIGURE,
                                 "GetParameterValue", "as", [["engine", "name"]])
        ours = resolve_server_name(self.server_name)
        if reply and len(reply) == 3:
            value = getattr(reply[2], "value", reply[2])
            name = value if isinstance(value, str) and value else "default"
        else:
            name = "default"
        self._jackdbus_ours = name == ours
        log.debug("jackdbus runs server %r (we follow %r)", name, ours)

    async def _jackdbus_server_started(self) -> None:
        await self._read_jackdbus_server_name()
        if not self._jackdbus_ours:
            return
        self._jackdbus_started = True
        self._jackdbus_devices = await self._read_jackdbus_devices()
        if self.state.running:
            self._set_state(replace(self.state, alsa_devices=self.state.alsa_devices
                                    | self._jackdbus_devices))
        if not self.link.up:
            rate = await self._call(JACKDBUS_NAME, JACKDBUS_PATH, JACKDBUS_CONTROL, "GetSampleRate")
            size = await self._call(JACKDBUS_NAME, JACKDBUS_PATH, JACKDBUS_CONTROL, "GetBufferSize")
            if rate and size and not self.link.up and self._jackdbus_started:
                self._set_state(JackState(True, int(rate[0]), int(size[0]),
                                          self._jackdbus_devices))
        self.link.poke()  # open the client now, no back-off wait

    async def _read_jackdbus_devices(self) -> frozenset:
        """The ALSA devices of jackdbus's driver, when that driver is alsa."""
        async def value(*path):
            reply = await self._call(JACKDBUS_NAME, JACKDBUS_PATH, JACKDBUS_CONFIGURE,
                                     "GetParameterValue", "as", [list(path)])
            found = getattr(reply[2], "value", reply[2]) if reply and len(reply) == 3 else None
            return found if isinstance(found, str) else ""

        if await value("engine", "driver") != "alsa":
            return frozenset()
        found = {await value("driver", key) for key in ("device", "capture", "playback")}
        return frozenset(d for d in found if d and d != "none")

    def _jackdbus_server_stopped(self) -> None:
        self._jackdbus_started = False
        self._jackdbus_devices = frozenset()
        if self._jackdbus_ours:
            # The client's shutdown callback normally comes first; this covers the case where
            # it never opened.
            self.link.server_left()
            self._set_state(JACK_DOWN)
        self.link.poke()
