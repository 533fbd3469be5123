"""Follow one JACK server: is it running, at which sample rate and buffer size.

Runs in the main asyncio process. Two sources, used together:

- jackdbus on the session bus (how qjackctl's D-Bus mode and `jack_control` run JACK):
  `NameOwnerChanged` for `org.jackaudio.service`, the `ServerStarted`/`ServerStopped` signals
  of `org.jackaudio.JackControl` on `/org/jackaudio/Controller`, and `IsStarted` once at
  start-up and whenever jackdbus (re)appears. Calls never auto-start jackdbus. jackdbus is
  trusted only while its engine `name` parameter is the server we follow.
- A plain JACK client in this process, opened with `no_start_server=True` (never starting a
  server). While the server is absent and jackdbus is not managing it, an open is attempted
  with exponential back-off (0.25 s → 2 s) in a worker thread, quietly. Once open, the client
  stays open: it has NO process callback, only shutdown, buffer-size and sample-rate callbacks,
  which run in JACK's notification thread and merely hand the news to the loop with
  `call_soon_threadsafe`. Buffer-size and rate changes and the server leaving come from here.

`on_change(JackState)` is called in the loop whenever running, rate or buffer size change.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from dataclasses import dataclass
from typing import Callable

import jack

from .dbuslib import BusType, Message, MessageBus, MessageFlag, MessageType

log = logging.getLogger(__name__)

JACKDBUS_NAME = "org.jackaudio.service"
JACKDBUS_PATH = "/org/jackaudio/Controller"
JACKDBUS_CONTROL = "org.jackaudio.JackControl"
JACKDBUS_CONFIGURE = "org.jackaudio.Configure"
DBUS_NAME = "org.freedesktop.DBus"
DBUS_PATH = "/org/freedesktop/DBus"

WATCH_CLIENT_NAME = "cardbridge-watch"
BACKOFF_FIRST = 0.25
BACKOFF_MAX = 2.0
CLOSE_TIMEOUT = 3.0
# After the shutdown callback the client is closed only this much later: jackd 1.9.21 still
# writes to its clients' sockets while it exits, and dies of SIGPIPE (keeping its slot in
# JACK's 8-slot server registry) if one was closed already.
SHUTDOWN_GRACE = 1.0


@dataclass(frozen=True)
class JackState:
    running: bool
    sample_rate: int = 0
    buffer_size: int = 0


JACK_DOWN = JackState(False, 0, 0)


def resolve_server_name(server_name: str | None) -> str:
    """The name libjack will use: the given one, else $JACK_DEFAULT_SERVER, else "default"."""
    return server_name or os.environ.get("JACK_DEFAULT_SERVER") or "default"


_libjack_quiet = False


def silence_libjack() -> None:
    """Send libjack's error/info chatter (every failed open prints several lines) to debug.

    Process-wide (libjack has one error function per process); the main process only.
    """
    global _libjack_quiet
    if not _libjack_quiet:
        jack.set_error_function(lambda msg: log.debug("libjack: %s", msg))
        jack.set_info_function(lambda msg: None)
        _libjack_quiet = True


# libjack2 deadlocks when one thread opens a client while another closes one (seen here:
# both stuck on libjack's global mutex), so every open and close in this process takes turns.
_open_close_lock = threading.Lock()


def open_client(name: str, server_name: str | None) -> jack.Client:
    """Open a JACK client without ever starting a server; raises jack.JackError.

    Blocking (talks to the server): call it through asyncio.to_thread. The caller must close
    the client with close_client(): a jack.Client left to the garbage collector closes itself
    from whatever thread collects it, which crashes libjack once the server is gone.
    """
    with _open_close_lock:
        return jack.Client(name, no_start_server=True, servername=server_name)


def activate_client(client: jack.Client) -> None:
    """Activate (after the callbacks are set). Blocking."""
    with _open_close_lock:
        client.activate()


def close_client(client: jack.Client) -> None:
    """Deactivate and close, ignoring a server that is already gone. Blocking."""
    with _open_close_lock:
        try:
            client.deactivate(ignore_errors=True)
        except jack.JackError:
            pass
        try:
            client.close(ignore_errors=True)
        except jack.JackError:
            pass


def post_to_loop(loop: asyncio.AbstractEventLoop, func: Callable, *args) -> None:
    """Hand a JACK notification over to the loop; harmless once the loop is gone."""
    try:
        loop.call_soon_threadsafe(func, *args)
    except RuntimeError:  # loop closed while JACK still talked to us
        pass


class JackWatch:
    """Knows whether the followed JACK server runs, and tells `on_change` when that changes."""

    def __init__(self, server_name: str | None, session_bus_address: str | None,
                 on_change: Callable[[JackState], None], client_name: str = WATCH_CLIENT_NAME):
        self.server_name = server_name
        self.session_bus_address = session_bus_address
        self.on_change = on_change
        self.client_name = client_name
        self.state = JACK_DOWN
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: jack.Client | None = None
        self._client_lost = False
        self._bus: MessageBus | None = None
        self._jackdbus_owner: str | None = None   # unique bus name of jackdbus, when present
        self._jackdbus_ours = False                # jackdbus runs (or would run) our server
        self._jackdbus_started = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._opening: asyncio.Future | None = None
        self._dbus_tasks: set[asyncio.Task] = set()
        self._stopping = False

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        silence_libjack()
        await self._connect_session_bus()
        if self._bus is not None:
            await self._refresh_jackdbus()
        self._task = asyncio.create_task(self._run(), name="jackwatch")

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for task in list(self._dbus_tasks):
            task.cancel()
        await self._finish_pending_open()
        await self._drop_client()
        if self._bus is not None:
            self._bus.disconnect()
            self._bus = None

    @property
    def jackdbus_present(self) -> bool:
        return self._jackdbus_owner is not None

    # ----------------------------------------------------------------- main task

    def _should_poll(self) -> bool:
        # jackdbus tells us when its server starts: no need to knock while it says "stopped".
        return not (self._jackdbus_ours and not self._jackdbus_started)

    async def _run(self) -> None:
        backoff = BACKOFF_FIRST
        while not self._stopping:
            self._wake.clear()   # everything before this turn is looked at below
            if self._client_lost:
                if not self._jackdbus_claims_running():
                    self._set_state(JACK_DOWN)
                await asyncio.sleep(SHUTDOWN_GRACE)
                await self._drop_client()
                backoff = BACKOFF_FIRST
            if self._client is None and self._should_poll():
                if await self._try_open():
                    backoff = BACKOFF_FIRST
                    continue
                await self._sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
            else:
                await self._sleep(None)
                backoff = BACKOFF_FIRST

    async def _sleep(self, timeout: float | None) -> None:
        """Wait for a poke (or the timeout); pokes since the loop's last turn count."""
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    def _poke(self) -> None:
        self._wake.set()

    def _jackdbus_claims_running(self) -> bool:
        return self._jackdbus_ours and self._jackdbus_started

    # ----------------------------------------------------------------- the light client

    def _open_activated_blocking(self) -> jack.Client:
        """Open and activate the light client (worker thread); raises jack.JackError."""
        loop = self._loop
        client = open_client(self.client_name, self.server_name)

        def on_shutdown(status, reason):
            post_to_loop(loop, self._on_client_shutdown, client)

        def on_blocksize(blocksize):
            post_to_loop(loop, self._on_client_param, client, "buffer_size", int(blocksize))

        def on_samplerate(samplerate):
            post_to_loop(loop, self._on_client_param, client, "sample_rate", int(samplerate))

        try:
            client.set_shutdown_callback(on_shutdown)
            client.set_blocksize_callback(on_blocksize)
            client.set_samplerate_callback(on_samplerate)
            activate_client(client)
        except BaseException:
            close_client(client)
            raise
        return client

    async def _try_open(self) -> bool:
        # The open runs on in its thread even if we are cancelled meanwhile; stop() waits for
        # it and closes what it opened (a jack.Client left to the garbage collector closes
        # itself there, which crashes libjack once its server is gone).
        self._opening = asyncio.ensure_future(asyncio.to_thread(self._open_activated_blocking))
        try:
            client = await asyncio.shield(self._opening)
        except jack.JackError:
            return False
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # libjack missing or broken
            log.debug("cannot open a JACK client: %s", exc)
            return False
        finally:
            if self._opening is not None and self._opening.done():
                self._opening = None
        if self._stopping:
            await asyncio.to_thread(close_client, client)
            return False
        self._client = client
        self._client_lost = False
        rate, size = client.samplerate, client.blocksize
        log.info("JACK server %r is running (%d Hz, %d frames)",
                 resolve_server_name(self.server_name), rate, size)
        self._set_state(JackState(True, rate, size))
        return True

    async def _finish_pending_open(self) -> None:
        opening, self._opening = self._opening, None
        if opening is None:
            return
        try:
            client = await opening
        except BaseException:
            return
        await asyncio.to_thread(close_client, client)

    def _on_client_shutdown(self, client: jack.Client) -> None:
        if client is self._client:
            self._client_lost = True
            self._poke()

    def _on_client_param(self, client: jack.Client, key: str, value: int) -> None:
        if client is not self._client or self._client_lost or value <= 0:
            return
        rate = value if key == "sample_rate" else self.state.sample_rate
        size = value if key == "buffer_size" else self.state.buffer_size
        self._set_state(JackState(True, rate, size))

    async def _drop_client(self) -> None:
        client, self._client = self._client, None
        self._client_lost = False
        if client is not None:
            try:
                await asyncio.wait_for(asyncio.to_thread(close_client, client), CLOSE_TIMEOUT)
            except asyncio.TimeoutError:
                log.warning("closing the JACK watch client timed out")

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
            if self._client is not None:
                self._client_lost = True
            self._set_state(JACK_DOWN)
        self._poke()  # back to polling for a plain jackd

    async def _refresh_jackdbus(self) -> None:
        """jackdbus may be there: who owns the name, which server it runs, is it started."""
        reply = await self._call(DBUS_NAME, DBUS_PATH, DBUS_NAME, "GetNameOwner", "s",
                                 [JACKDBUS_NAME])
        if not reply:
            self._jackdbus_owner = None
            self._jackdbus_ours = False
            self._jackdbus_started = False
            self._poke()
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
        if self._client is None:
            rate = await self._call(JACKDBUS_NAME, JACKDBUS_PATH, JACKDBUS_CONTROL, "GetSampleRate")
            size = await self._call(JACKDBUS_NAME, JACKDBUS_PATH, JACKDBUS_CONTROL, "GetBufferSize")
            if rate and size and self._client is None and self._jackdbus_started:
                self._set_state(JackState(True, int(rate[0]), int(size[0])))
        self._poke()  # open the light client now, no back-off wait

    def _jackdbus_server_stopped(self) -> None:
        self._jackdbus_started = False
        if self._jackdbus_ours:
            # The light client's shutdown callback normally comes first; this covers the case
            # where it never opened.
            if self._client is not None:
                self._client_lost = True
            self._set_state(JACK_DOWN)
        self._poke()
