"""JACK side of a bridge worker: the JACK client, its ports, and the compiled callbacks on them.

`JackSide.open()`, `activate()` and `close()` run in the worker's control thread. The process,
latency and xrun callbacks are C (csrc/jackcore.c; JACK's threads, no GIL) working on the
queues (queues.py) shared with the ALSA thread. The Python callbacks registered here (shutdown,
buffer size, sample rate) run in JACK's non-real-time notification thread and only post a
message to the control thread's inbox.
"""

from __future__ import annotations

import queue
import threading
import time

import jack

from ._rtcore import ffi, lib
from .queues import Queues
from .streamcontrol import Message

# What JACK's notification thread posts to the control thread's inbox.
JACK_SHUTDOWN = "jack-shutdown"
JACK_FORMAT = "jack-format"          # the buffer size or the sample rate changed


def _as_void(ptr) -> object:
    """A pointer from JACK-Client's cffi instance as a pointer of ours."""
    return ffi.cast("void *", int(jack._ffi.cast("uintptr_t", ptr)))


class LibjackStuck(RuntimeError):
    """A JACK client could not be closed: this process must not open another one."""


class ServerNews:
    """When the main process last said that a JACK server (re)started (control thread)."""

    def __init__(self):
        self._cond = threading.Condition()
        self.up_at = 0.0

    def server_up(self) -> None:
        with self._cond:
            self.up_at = time.monotonic()
            self._cond.notify_all()

    def wait_replaced(self, since: float, timeout: float) -> bool:
        """True once a server started after `since` (monotonic), False after `timeout`."""
        with self._cond:
            return self._cond.wait_for(lambda: self.up_at > since, timeout)


class JackSide:
    def __init__(self, client_name: str, server: str | None, queues: Queues, device_label: str,
                 inbox: "queue.SimpleQueue"):
        self.client_name = client_name
        self.server = server
        self.queues = queues
        self.device_label = device_label
        self.inbox = inbox
        self.client: jack.Client | None = None
        self.jack = ffi.new("cb_jack *")
        self.jack.shared = queues.shared
        self.ports: list[jack.OwnPort] = []
        self.shutdown_at: float | None = None     # monotonic time of the shutdown callback
        self.samplerate = 0
        self.blocksize = 0
        self._abandoned: list = []

    def open(self) -> None:
        """Open the client (never starting a server) and register the ports; not activated."""
        client = jack.Client(self.client_name, use_exact_name=True, no_start_server=True,
                             servername=self.server)
        self.client = client
        self.shutdown_at = None
        self.samplerate = client.samplerate
        self.blocksize = client.blocksize
        inbox = self.inbox

        def on_shutdown(status, reason):
            self.shutdown_at = time.monotonic()
            inbox.put(Message(JACK_SHUTDOWN))

        def on_blocksize(blocksize):
            if blocksize != self.blocksize:
                self.blocksize = blocksize
                inbox.put(Message(JACK_FORMAT))

        def on_samplerate(samplerate):
            if samplerate != self.samplerate:
                self.samplerate = samplerate
                inbox.put(Message(JACK_FORMAT))

        client.set_shutdown_callback(on_shutdown)
        client.set_blocksize_callback(on_blocksize)
        client.set_samplerate_callback(on_samplerate)
        self.ports = []
        for i in range(self.queues.n_capture):
            port = client.outports.register(f"capture_{i + 1}", is_physical=True, is_terminal=True)
            self._describe(port, "capture", i + 1)
            self.jack.capture_ports[i] = _as_void(port._ptr)
            self.ports.append(port)
        for i in range(self.queues.n_playback):
            port = client.inports.register(f"playback_{i + 1}", is_physical=True, is_terminal=True)
            self._describe(port, "playback", i + 1)
            self.jack.playback_ports[i] = _as_void(port._ptr)
            self.ports.append(port)
        err = lib.cb_install(_as_void(client._ptr), self.jack)
        if err:
            raise jack.JackError(f"cannot install the process callback ({err})")

    def _describe(self, port, direction: str, index: int) -> None:
        try:
            port.set_alias(f"cardbridge:{self.device_label}:{direction}_{index}")
        except jack.JackError:
            pass
        try:
            pretty = f"{self.client_name} {'in' if direction == 'capture' else 'out'} {index}"
            self.client.set_property(port, jack.METADATA_PRETTY_NAME, pretty)
        except (AttributeError, jack.JackError):
            pass

    def activate(self) -> None:
        self.client.activate()

    @property
    def gone(self) -> bool:
        """The server told us to go (shutdown callback)."""
        return self.shutdown_at is not None

    def rt_priority(self) -> int:
        """The SCHED_FIFO priority JACK gives its clients' process threads; -1 when JACK runs
        without real-time scheduling (or no client is open)."""
        if self.client is None:
            return -1
        return int(lib.cb_rt_priority(_as_void(self.client._ptr)))

    def cycles(self) -> int:
        """Process cycles run so far (JACK's thread counts them)."""
        return int(self.queues.shared.cycles)

    def recompute_latencies(self) -> None:
        """Ask JACK to collect the port latencies the ALSA thread left in the queues."""
        if self.client is not None and not self.gone:
            lib.cb_recompute_latencies(self.jack)

    def port_names(self) -> list[str]:
        return [f"{self.client_name}:{p.shortname}" for p in self.ports]

    def close(self, news: ServerNews | None = None) -> None:
        """Close the client. After a shutdown, wait up to 1 s first, less when `news` says a
        server started since: the old one has exited then."""
        client, self.client = self.client, None
        if client is None:
            return
        if self.shutdown_at is not None:
            # jackd 1.9.21 dies of SIGPIPE (leaking its registry slot) when a client closes
            # right after the server told it to go: give the server a moment first. Closing a
            # client whose server is gone can also hang inside libjack: do it on the side. A
            # process with such a client must not open another one (libjack2 deletes every
            # client of a process whose server left at the next open, under the closing
            # thread's feet): the worker then exits, and its supervisor starts a fresh one.
            since = self.shutdown_at
            wait = max(0.0, since + 1.0 - time.monotonic())
            if news is None:
                time.sleep(wait)
            else:
                news.wait_replaced(since, wait)
            closer = threading.Thread(target=self._close_quietly, args=(client, False), daemon=True)
            closer.start()
            closer.join(2.0)
            if closer.is_alive():
                self._abandoned.append(client)  # never collected: libjack still holds it
                raise LibjackStuck("closing the JACK client of a server that left hangs in libjack")
            return
        self._close_quietly(client, True)

    @staticmethod
    def _close_quietly(client, deactivate: bool) -> None:
        if deactivate:
            try:
                client.deactivate()
            except jack.JackError:
                pass
        try:
            client.close()
        except jack.JackError:
            pass
