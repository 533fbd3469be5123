"""The main process's one JACK client, shared by everything that watches JACK from there.

Runs in the main asyncio process. The client is opened, activated and closed on one dedicated
thread ("libjack"), never from the loop and never two at a time; its callbacks run in JACK's
notification thread and only hand the news to the loop (`call_soon_threadsafe`). It has no
process callback and no ports.

Why one client, closed before the next open: libjack2 keeps process-wide state. When a server
goes away, the first client to notice marks the whole process "server not running", and the
next `jack_client_open` in the process deletes every client still open there
(JackLibGlobals::Init). A second client object of ours would then be freed again by our own
close: a double free that crashed the service on the first JACK restart after a few cycles.
With a single client, closed (after a grace period) before any new open, that cannot happen.

Listeners (`subscribe`) are objects with any of these methods, all called in the loop:
`link_up(client)` once the client is active, `link_lost()` when its server left,
`link_param(key, value)` for "sample_rate"/"buffer_size" changes, `link_connect(a, b,
connected)` and `link_registration(port_name, registered)` for graph changes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from typing import Callable

import jack

from . import names

log = logging.getLogger(__name__)

LINK_CLIENT_NAME = names.SERVICE_CLIENT_NAME
BACKOFF_FIRST = 0.25
BACKOFF_MAX = 2.0
CLOSE_TIMEOUT = 3.0
# After the shutdown callback the client is closed only this much later: jackd 1.9.21 still
# writes to its clients' sockets while it exits, and dies of SIGPIPE (keeping its slot in
# JACK's 8-slot server registry) if one was closed already.
SHUTDOWN_GRACE = 1.0

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


def post_to_loop(loop: asyncio.AbstractEventLoop, func: Callable, *args) -> None:
    """Hand a JACK notification over to the loop; harmless once the loop is gone."""
    try:
        loop.call_soon_threadsafe(func, *args)
    except RuntimeError:  # loop closed while JACK still talked to us
        pass


async def cancel_task(task: asyncio.Task | None) -> None:
    """Cancel a task and wait until it has ended."""
    if task is not None:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass


def _close_blocking(client: jack.Client) -> None:
    """Deactivate and close, ignoring a server that is already gone (libjack thread)."""
    try:
        client.deactivate(ignore_errors=True)
    except jack.JackError:
        pass
    try:
        client.close(ignore_errors=True)
    except jack.JackError:
        pass


class JackLink:
    """Keeps one light JACK client open whenever the server runs; tells listeners about it."""

    def __init__(self, server_name: str | None, client_name: str = LINK_CLIENT_NAME):
        self.server_name = server_name
        self.client_name = client_name
        # Whether to knock on a server that may be absent; JackWatch says no while jackdbus
        # reports its server stopped (it then pokes on ServerStarted).
        self.should_poll: Callable[[], bool] = lambda: True
        self._listeners: list = []
        self._client: jack.Client | None = None
        self._lost = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="libjack")
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._opening: asyncio.Future | None = None
        self._stopping = False

    # ----------------------------------------------------------------- public interface

    def subscribe(self, listener) -> None:
        self._listeners.append(listener)

    @property
    def client(self) -> jack.Client | None:
        """The client while its server runs, else None. Loop thread only."""
        return self._client if not self._lost else None

    @property
    def up(self) -> bool:
        return self.client is not None

    async def start(self) -> None:
        if self._task is not None:
            return
        self._loop = asyncio.get_running_loop()
        silence_libjack()
        self._task = asyncio.create_task(self._run(), name="jacklink")

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        await cancel_task(self._task)
        self._task = None
        await self._finish_pending_open()
        await self._drop_client()
        self._thread.shutdown(wait=False)

    def poke(self) -> None:
        """Look again now (the server may have started, or polling be allowed again)."""
        self._wake.set()

    def server_left(self) -> None:
        """Someone else (jackdbus) says the server is gone: treat the client as lost."""
        if self._client is not None and not self._lost:
            self._mark_lost()

    # ----------------------------------------------------------------- main task

    async def _run(self) -> None:
        backoff = BACKOFF_FIRST
        while not self._stopping:
            self._wake.clear()   # everything before this turn is looked at below
            if self._lost:
                await asyncio.sleep(SHUTDOWN_GRACE)
                await self._drop_client()
                backoff = BACKOFF_FIRST
            if self._client is None and self.should_poll():
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

    def in_thread(self, func, *args) -> asyncio.Future:
        """Run `func(*args)` in the link's own thread (libjack calls may block: never on the
        event loop); await the result."""
        return self._loop.run_in_executor(self._thread, func, *args)

    # ----------------------------------------------------------------- the client

    def _open_blocking(self) -> jack.Client:
        """Open, hook up and activate the client (libjack thread); raises jack.JackError."""
        loop = self._loop
        client = jack.Client(self.client_name, no_start_server=True, servername=self.server_name)

        def on_shutdown(status, reason):
            post_to_loop(loop, self._on_shutdown, client)

        def on_blocksize(blocksize):
            post_to_loop(loop, self._on_param, client, "buffer_size", int(blocksize))

        def on_samplerate(samplerate):
            post_to_loop(loop, self._on_param, client, "sample_rate", int(samplerate))

        def on_connect(a, b, connected):
            if a is not None and b is not None:
                post_to_loop(loop, self._on_graph, client, "link_connect",
                             a.name, b.name, bool(connected))

        def on_registration(port, registered):
            if port is not None:
                post_to_loop(loop, self._on_graph, client, "link_registration",
                             port.name, bool(registered))

        try:
            client.set_shutdown_callback(on_shutdown)
            client.set_blocksize_callback(on_blocksize)
            client.set_samplerate_callback(on_samplerate)
            client.set_port_connect_callback(on_connect, only_available=False)
            client.set_port_registration_callback(on_registration, only_available=False)
            client.activate()
            client.get_ports()   # lets JACK-Client name ports that existed before activation
        except BaseException:
            _close_blocking(client)
            raise
        return client

    async def _try_open(self) -> bool:
        # The open runs on in its thread even if we are cancelled meanwhile; stop() waits for
        # it and closes what it opened (a jack.Client left to the garbage collector closes
        # itself there, which crashes libjack once its server is gone).
        self._opening = self.in_thread(self._open_blocking)
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
            await self.in_thread(_close_blocking, client)
            return False
        self._client = client
        self._lost = False
        self._tell("link_up", client)
        return True

    async def _finish_pending_open(self) -> None:
        opening, self._opening = self._opening, None
        if opening is None:
            return
        try:
            client = await opening
        except BaseException:
            return
        await self.in_thread(_close_blocking, client)

    async def _drop_client(self) -> None:
        client, self._client = self._client, None
        self._lost = False
        if client is None:
            return
        try:
            await asyncio.wait_for(self.in_thread(_close_blocking, client), CLOSE_TIMEOUT)
        except asyncio.TimeoutError:
            # Nothing else in this process may open a client while this close hangs (libjack
            # would free it under our feet): the next open waits in the same thread.
            log.warning("closing the JACK client timed out")

    # ----------------------------------------------------------------- notifications (loop)

    def _mark_lost(self) -> None:
        self._lost = True
        self._wake.set()
        self._tell("link_lost")

    def _on_shutdown(self, client: jack.Client) -> None:
        if client is self._client and not self._lost:
            self._mark_lost()

    def _on_param(self, client: jack.Client, key: str, value: int) -> None:
        if client is self._client and not self._lost and value > 0:
            self._tell("link_param", key, value)

    def _on_graph(self, client: jack.Client, method: str, *args) -> None:
        if client is self._client and not self._lost:
            self._tell(method, *args)

    def _tell(self, method: str, *args) -> None:
        for listener in self._listeners:
            handler = getattr(listener, method, None)
            if handler is None:
                continue
            try:
                handler(*args)
            except Exception:
                log.exception("JACK listener %s failed", method)
