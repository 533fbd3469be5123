"""JACK side of a bridge worker: the JACK client, its ports, and the compiled real-time core.

Runs in the bridge worker process. `JackSide.open()`/`close()` run in the worker's control
thread; the process, latency and xrun callbacks are C code in `_rtcore` (JACK's threads, no GIL); the
Python callbacks registered here (shutdown, buffer size, sample rate) run in JACK's
non-real-time notification thread and only set flags.
"""

from __future__ import annotations

import threading
import time

import jack
import numpy as np

from ._rtcore import ffi, lib

RING_FRAMES = 1 << 15  # covers JACK periods up to 8192 and device periods up to 4096 ×2 resampled


def _as_void(ptr) -> object:
    """A pointer from JACK-Client's cffi instance as a pointer of ours."""
    return ffi.cast("void *", int(jack._ffi.cast("uintptr_t", ptr)))


class LibjackStuck(RuntimeError):
    """A JACK client could not be closed: this process must not open another one."""


class ServerNews:
    """When the main process last said that a JACK server (re)started (control threads)."""

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


class JackEvents:
    """Flags the JACK notification thread raises for the worker (plain attributes under the GIL)."""

    def __init__(self):
        self.shutdown = threading.Event()
        self.shutdown_at = 0.0                 # monotonic time of the shutdown callback
        self.blocksize = 0
        self.samplerate = 0
        self.changed = threading.Event()   # blocksize or samplerate changed: resync
        # No xrun callback in Python: it would take the GIL in JACK's notification thread right
        # when the server is late, and the ALSA thread would wait for it (measured: card xruns
        # after every JACK server stall). The compiled core counts the server's xruns itself.


class JackSide:
    def __init__(self, client_name: str, server: str | None, n_capture: int, n_playback: int,
                 device_label: str):
        self.client_name = client_name
        self.server = server
        self.n_capture = n_capture
        self.n_playback = n_playback
        self.device_label = device_label
        self.events = JackEvents()
        self.client: jack.Client | None = None
        self.core = ffi.new("cb_core *")
        self._cap_buf = ffi.new("float[]", RING_FRAMES * max(n_capture, 1))
        self._pb_buf = ffi.new("float[]", RING_FRAMES * max(n_playback, 1))
        self.capture_ring = np.frombuffer(ffi.buffer(self._cap_buf), dtype=np.float32).reshape(
            RING_FRAMES, max(n_capture, 1))
        self.playback_ring = np.frombuffer(ffi.buffer(self._pb_buf), dtype=np.float32).reshape(
            RING_FRAMES, max(n_playback, 1))
        self.ports: list[jack.OwnPort] = []
        self._cycle = ffi.new("uint64_t[6]")
        self._abandoned: list = []

    # -- control thread ---------------------------------------------------------------------
    def open(self) -> None:
        """Open the client (never starting a server) and register the ports; not activated."""
        client = jack.Client(self.client_name, use_exact_name=True, no_start_server=True,
                             servername=self.server)
        self.client = client
        ev = self.events
        ev.shutdown.clear()
        ev.blocksize = client.blocksize
        ev.samplerate = client.samplerate

        def on_shutdown(status, reason):
            ev.shutdown_at = time.monotonic()
            ev.shutdown.set()

        def on_blocksize(blocksize):
            if ev.blocksize and blocksize != ev.blocksize:
                ev.changed.set()
            ev.blocksize = blocksize

        def on_samplerate(samplerate):
            if ev.samplerate and samplerate != ev.samplerate:
                ev.changed.set()
            ev.samplerate = samplerate

        client.set_shutdown_callback(on_shutdown)
        client.set_blocksize_callback(on_blocksize)
        client.set_samplerate_callback(on_samplerate)

        c = self.core
        c.n_capture = self.n_capture
        c.n_playback = self.n_playback
        c.capture_ring = self._cap_buf
        c.playback_ring = self._pb_buf
        c.capture_size = RING_FRAMES
        c.playback_size = RING_FRAMES
        c.mute_capture = 1
        self.ports = []
        for i in range(self.n_capture):
            port = client.outports.register(f"capture_{i + 1}", is_physical=True, is_terminal=True)
            self._describe(port, "capture", i + 1)
            c.capture_ports[i] = _as_void(port._ptr)
            self.ports.append(port)
        for i in range(self.n_playback):
            port = client.inports.register(f"playback_{i + 1}", is_physical=True, is_terminal=True)
            self._describe(port, "playback", i + 1)
            c.playback_ports[i] = _as_void(port._ptr)
            self.ports.append(port)
        err = lib.cb_install(_as_void(client._ptr), c)
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

    def rt_priority(self) -> int:
        """The SCHED_FIFO priority JACK gives its clients' process threads; -1 when JACK runs
        without real-time scheduling (or no client is open)."""
        if self.client is None:
            return -1
        return int(lib.cb_rt_priority(_as_void(self.client._ptr)))

    def close(self, news: ServerNews | None = None) -> None:
        """Close the client. After a shutdown, wait up to 1 s first, less when `news` says a
        server started since: the old one has exited then."""
        client, self.client = self.client, None
        if client is None:
            return
        if self.events.shutdown.is_set():
            # jackd 1.9.21 dies of SIGPIPE (leaking its registry slot) when a client closes
            # right after the server told it to go: give the server a moment first. Closing a
            # client whose server is gone can also hang inside libjack: do it on the side. A
            # process with such a client must not open another one (libjack2 deletes every
            # client of a process whose server left at the next open, under the closing
            # thread's feet): the worker then exits, and its supervisor starts a fresh one.
            since = self.events.shutdown_at
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

    def port_names(self) -> list[str]:
        return [f"{self.client_name}:{p.shortname}" for p in self.ports]

    def set_latencies(self, capture: int, playback: int) -> None:
        self.core.capture_latency = max(0, int(round(capture)))
        self.core.playback_latency = max(0, int(round(playback)))
        if self.client is not None:
            lib.cb_recompute_latencies(self.core)

    # -- ALSA thread (real-time) ----------------------------------------------------------------
    def read_cycle_rt(self):
        """(frames, usecs, next_usecs, nframes, capture_rd, playback_wr) of the last cycle, or None."""
        if lib.cb_read_cycle(self.core, self._cycle) != 0:
            return None
        return self._cycle
