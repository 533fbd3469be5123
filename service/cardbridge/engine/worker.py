"""Bridge worker process: one per attached card, started by the supervisor in the main process.

`python -I -m cardbridge.engine.worker --spec JSON --stats PATH`

Threads of this process:
* the control thread (this module's `Worker.run`): the JACK client's life, waiting for JACK and
  for the card, the ALSA thread's start and stop, the bridge's state (its only writer) and the
  events to the main process (JSON lines on stdout, engine/protocol.py). It waits on one inbox,
  fed by the three others below, and handles one message at a time;
* the command reader: parses the main process's commands from stdin into the inbox;
* the ALSA thread (alsathread.py, stream.py): the card, the resamplers, the drift loops; it
  posts its state, log lines and latency changes into the inbox;
* JACK's threads: the compiled process callback (no Python), and the notification thread,
  whose Python callbacks post the server's shutdown and format changes into the inbox.
Log lines go to stderr (the service's journal), with their syslog priority when it is the
journal (logsetup.py), as the main process writes its own.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import logging
import math
import os
import queue
import resource
import signal
import sys
import threading
import time

import jack

from .. import bridgestats, logsetup
from .alsathread import AlsaThread, alsa_priority
from .jackside import JACK_FORMAT, JACK_SHUTDOWN, JackSide, LibjackStuck, ServerNews
from .pcmio import DeviceError, DeviceGone, max_channels
from .protocol import Command, PortsEvent, StateEvent, event_line, parse_command
from .queues import Queues
from .spec import BridgeSpec
from .stats import StatsSlot
from .streamcontrol import (STREAM_LATENCY, STREAM_NOTE, STREAM_STATE, Message, StreamControl,
                            StreamOutbox)

MCL_CURRENT = 1
MCL_FUTURE = 2
COMMAND = "command"               # inbox kind of the main process's commands
GC_EVERY = 30.0                   # seconds between the control thread's cycle collections
JACK_QUIET = 0.2                  # seconds without a process cycle: the server has stopped


LOG = logging.getLogger(f"cardbridge-worker[{os.getpid()}]")


def setup_logging() -> None:
    """This worker's lines in the main process's formats (logsetup.py: with the journald
    priority when the inherited stderr is the journal); a broken stderr loses them quietly."""
    logsetup.setup("info")
    logging.raiseExceptions = False


def log(message: str, level: int = logging.INFO) -> None:
    LOG.log(level, message)


def emit(line: str) -> None:
    try:
        sys.stdout.write(line)
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):
        pass


def lock_memory() -> None:
    """mlockall where the limit allows it; a low RLIMIT_MEMLOCK would make later allocations fail."""
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if soft != resource.RLIM_INFINITY and soft < (512 << 20):
        log("memory not locked (RLIMIT_MEMLOCK too low); page faults may cost cycles",
            logging.WARNING)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mlockall(MCL_CURRENT | MCL_FUTURE) != 0:
        err = ctypes.get_errno()
        log(f"memory not locked ({os.strerror(err)}); page faults may cost cycles",
            logging.WARNING)


class Worker:
    def __init__(self, spec: BridgeSpec, slot: StatsSlot):
        self.spec = spec
        self.slot = slot
        # SimpleQueue: put() is reentrant, so the SIGTERM handler may call it while the control
        # thread is inside get() (a Queue's lock would deadlock the worker for good there)
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.stopping = False
        self.channels: tuple[int, int] | None = None
        self.state: tuple[str, str] | None = None
        # the card's drift and headroom, kept across ALSA thread, JACK and worker restarts
        self.learnt_ppm = spec.learnt_ppm if math.isfinite(spec.learnt_ppm) else 0.0
        self.periods = spec.periods
        # "jack-up" commands: a JACK server (re)started, so the one our client saw leave has
        # exited and its client may be closed without waiting.
        self.server_news = ServerNews()
        self.alsa: AlsaThread | None = None
        self._gc_at = time.monotonic()

    # -- the inbox ------------------------------------------------------------------------------
    def read_commands(self) -> None:
        """The command reader thread: stdin lines into the inbox; end of input means stop."""
        for line in sys.stdin:
            command = parse_command(line)
            if command is None:
                continue
            if command is Command.JACK_UP:
                self.server_news.server_up()
            self.inbox.put(Message(COMMAND, command))
        self.inbox.put(Message(COMMAND, Command.STOP))

    def next_message(self, timeout: float) -> Message | None:
        """The next inbox message, or None after `timeout`; a stop command also sets
        `stopping`, and messages of an ALSA thread that was stopped are dropped."""
        try:
            message = self.inbox.get(timeout=timeout)
        except queue.Empty:
            self._collect_garbage()
            return None
        if message.kind == COMMAND and message.payload is Command.STOP:
            self.stopping = True
        source = message.source
        if source is not None and (self.alsa is None or source is not self.alsa.outbox):
            return None
        return message

    def _collect_garbage(self) -> None:
        """The cyclic GC is off (see main); collect the control thread's few cycles now and
        then, while nothing waits for this thread."""
        now = time.monotonic()
        if now - self._gc_at >= GC_EVERY:
            self._gc_at = now
            gc.collect()

    def set_state(self, state: str, reason: str = "") -> None:
        if (state, reason) != self.state:
            self.state = (state, reason)
            emit(event_line(StateEvent(state, reason)))

    # -- the life of a bridge -----------------------------------------------------------------
    def resolve_channels(self) -> tuple[tuple[int, int] | None, str]:
        """Channel counts: what the spec asks, else all the device has (probing it); with the
        reason when there are none yet."""
        spec = self.spec
        try:
            cap = spec.capture if spec.capture is not None else max_channels(spec.pcm, "capture")
            pb = spec.playback if spec.playback is not None else max_channels(spec.pcm, "playback")
        except DeviceGone as exc:
            return None, f"the card is not there ({exc})"
        except DeviceError as exc:
            log(f"cannot probe {spec.pcm}: {exc}", logging.WARNING)
            return None, f"cannot probe the card: {exc}"
        cap = cap or 0
        pb = pb or 0
        if cap + pb == 0:
            return None, "the card is not there (or has no channels to bridge)"
        return (min(cap, 64), min(pb, 64)), ""

    def run(self) -> int:
        spec = self.spec
        self.set_state(bridgestats.STARTING)
        backoff = 0.25
        while not self.stopping:
            if self.channels is None:
                self.channels, why = self.resolve_channels()
                if self.channels is None:
                    self.set_state(bridgestats.WAITING_FOR_DEVICE, why)
                    self._wait(backoff)
                    backoff = min(backoff * 1.5, 1.0)
                    continue
                self.slot.worker.set(capture_channels=self.channels[0],
                                     playback_channels=self.channels[1])
            queues = Queues(*self.channels)
            side = JackSide(spec.client_name, spec.jack_server, queues, spec.device_id, self.inbox)
            try:
                side.open()
            except jack.JackError:
                side.close()
                server = spec.jack_server or os.environ.get("JACK_DEFAULT_SERVER") or "default"
                self.set_state(bridgestats.WAITING_FOR_JACK,
                               f"no JACK server '{server}' to connect to")
                self._wait(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.25
            try:
                side.activate()
                emit(event_line(PortsEvent(spec.client_name, tuple(side.port_names()))))
                self.serve(side, queues)
            finally:
                self.stop_alsa()
                try:
                    side.close(self.server_news)
                except LibjackStuck as exc:
                    log(f"{exc}; exiting so that a fresh worker takes over", logging.ERROR)
                    return 1
            if not self.stopping:
                self.set_state(bridgestats.WAITING_FOR_JACK, "the JACK server went away")
        return 0

    def _wait(self, seconds: float) -> None:
        """Wait between attempts; any command (a card plugged, JACK started) ends the wait."""
        end = time.monotonic() + seconds
        while not self.stopping:
            left = end - time.monotonic()
            if left <= 0:
                return
            message = self.next_message(left)
            if message is not None and message.kind == COMMAND:
                return

    def serve(self, side: JackSide, queues: Queues) -> None:
        """Run the ALSA thread until JACK leaves or we are told to stop."""
        self.start_alsa(side, queues)
        while not self.stopping and not side.gone:
            message = self.next_message(0.25)
            if message is None:
                if not self.alsa.thread.is_alive() and not self.stopping and not side.gone:
                    log("ALSA thread ended unexpectedly; restarting it", logging.ERROR)
                    self.restart_alsa(side, queues)
                continue
            kind, payload = message.kind, message.payload
            if kind == STREAM_STATE:
                self.set_state(*payload)
            elif kind == STREAM_NOTE:
                log(payload, logging.WARNING)   # xruns, re-syncs, device errors
            elif kind == STREAM_LATENCY:
                side.recompute_latencies()
            elif kind == JACK_FORMAT:
                self.alsa.control.jack_format(side.samplerate, side.blocksize)
            elif kind == JACK_SHUTDOWN:
                break
            elif payload is Command.DEVICE:
                self.alsa.control.wake.set()
            elif payload is Command.RESTART:
                self.restart_alsa(side, queues)
            elif payload is Command.JACK_DOWN:
                # the main process saw the server stop; believe it once our client has seen no
                # cycle for a while (the shutdown callback follows)
                cycles = side.cycles()
                time.sleep(JACK_QUIET)
                if side.cycles() == cycles:
                    self.set_state(bridgestats.WAITING_FOR_JACK, "the JACK server stopped")

    def start_alsa(self, side: JackSide, queues: Queues) -> None:
        """A new ALSA thread, starting from the drift and headroom learnt so far."""
        self.alsa = AlsaThread(self.spec, queues, StreamControl(side.samplerate, side.blocksize),
                               self.slot.stream, StreamOutbox(self.inbox), self.spec.rate,
                               alsa_priority(side.rt_priority()), self.learnt_ppm, self.periods)
        self.alsa.start()

    def restart_alsa(self, side: JackSide, queues: Queues) -> None:
        self.stop_alsa()
        self.slot.worker.add("thread_restarts")
        self.start_alsa(side, queues)

    def stop_alsa(self) -> None:
        alsa, self.alsa = self.alsa, None
        if alsa is None:
            return
        if not alsa.stop(2.0):
            # a thread stuck in a driver call still writes its record: never start a second
            log("the ALSA thread does not stop; exiting so that a fresh worker takes over",
                logging.ERROR)
            os._exit(1)
        if alsa.has_locked:
            self.learnt_ppm = alsa.learnt_ppm
        self.periods = alsa.headroom.periods


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    parser = argparse.ArgumentParser(prog="cardbridge-worker")
    parser.add_argument("--spec", required=True, help="bridge spec as JSON")
    parser.add_argument("--stats", required=True, help="path of the shared stats slot")
    args = parser.parse_args(argv)
    spec = BridgeSpec.from_json(args.spec)
    slot = StatsSlot(args.stats)
    worker = Worker(spec, slot)

    def on_term(signum, frame):
        worker.inbox.put(Message(COMMAND, Command.STOP))

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    threading.stack_size(512 * 1024)  # locked memory: keep thread stacks small
    lock_memory()
    # Everything made so far lives as long as the process: out of the cyclic GC's sight, and
    # the GC itself off, so that it never runs in the ALSA thread (whose loop allocates nothing
    # it tracks); the control thread collects now and then (Worker._collect_garbage).
    gc.collect()
    gc.freeze()
    gc.disable()
    threading.Thread(target=worker.read_commands, name="commands", daemon=True).start()
    try:
        return worker.run()
    except Exception as exc:  # the supervisor restarts us; say why in one line
        log(f"fatal: {type(exc).__name__}: {exc}", logging.CRITICAL)
        return 1


if __name__ == "__main__":
    sys.exit(main())
