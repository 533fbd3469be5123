"""Bridge worker process: one per attached card, started by the supervisor in the main process.

`python -m cardbridge.engine.worker --spec JSON --stats PATH`

Threads of this process: the control thread (this module's `main`: JACK client lifecycle,
waiting for JACK and for the device, commands from stdin), one reader thread for stdin, the ALSA
thread (alsaloop.py) and JACK's own threads running the compiled callbacks. Events for the main
process are JSON lines on stdout; log lines go to stderr (the service's journal).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import queue
import resource
import signal
import sys
import threading

import jack

from .. import names
from .alsaloop import AlsaBridge, alsa_priority
from .jackside import JackSide, ServerNews
from .pcmio import DeviceError, DeviceGone, max_channels
from .spec import BridgeSpec
from .stats import StatsSlot

MCL_CURRENT = 1
MCL_FUTURE = 2


def log(message: str) -> None:
    print(f"cardbridge-worker[{os.getpid()}]: {message}", file=sys.stderr, flush=True)


def emit(kind: str, **payload) -> None:
    payload["event"] = kind
    try:
        sys.stdout.write(json.dumps(payload) + "\n")
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):
        pass


def lock_memory() -> None:
    """mlockall where the limit allows it; a low RLIMIT_MEMLOCK would make later allocations fail."""
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if soft != resource.RLIM_INFINITY and soft < (512 << 20):
        log("memory not locked (RLIMIT_MEMLOCK too low); page faults may cost cycles")
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mlockall(MCL_CURRENT | MCL_FUTURE) != 0:
        err = ctypes.get_errno()
        log(f"memory not locked ({os.strerror(err)}); page faults may cost cycles")


class Worker:
    def __init__(self, spec: BridgeSpec, stats: StatsSlot):
        self.spec = spec
        self.stats = stats
        # SimpleQueue: put() is reentrant, so the SIGTERM handler may call it while the main
        # thread is inside get() (a Queue's lock would deadlock the worker for good there)
        self.commands: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.stopping = False
        self.channels: tuple[int, int] | None = None
        self.jack_side: JackSide | None = None
        self.alsa: AlsaBridge | None = None
        self.device_rate: int | None = spec.rate
        # the card's drift, kept across ALSA thread, JACK and worker restarts
        self.learnt_ppm = spec.learnt_ppm if math.isfinite(spec.learnt_ppm) else 0.0
        self.periods = spec.periods    # raised by the ALSA thread after repeated dropouts
        # "jack-up" commands: a JACK server (re)started, so the one our client saw leave has
        # exited and its client may be closed without waiting.
        self.server_news = ServerNews()

    # -- commands ---------------------------------------------------------------------------
    def read_commands(self) -> None:
        for line in sys.stdin:
            if line.strip() == "jack-up":
                self.server_news.server_up()
            self.commands.put(line.strip())
        self.commands.put("stop")  # the supervisor went away

    def wait_command(self, timeout: float) -> str | None:
        try:
            cmd = self.commands.get(timeout=timeout)
        except queue.Empty:
            return None
        if cmd == "stop":
            self.stopping = True
        return cmd

    # -- the life of a bridge -----------------------------------------------------------------
    def resolve_channels(self) -> tuple[int, int] | None:
        """Channel counts: what the spec asks, else all the device has (probing it)."""
        spec = self.spec
        try:
            cap = spec.capture if spec.capture is not None else max_channels(spec.pcm, "capture")
            pb = spec.playback if spec.playback is not None else max_channels(spec.pcm, "playback")
        except DeviceGone:
            return None
        except DeviceError as exc:
            log(f"cannot probe {spec.pcm}: {exc}")
            return None
        cap = cap or 0
        pb = pb or 0
        if cap + pb == 0:
            return None
        return min(cap, 64), min(pb, 64)

    def run(self) -> int:
        spec = self.spec
        self.stats.set_state(names.STARTING)
        backoff = 0.25
        while not self.stopping:
            if self.channels is None:
                self.channels = self.resolve_channels()
                if self.channels is None:
                    self.stats.set_state(names.WAITING_FOR_DEVICE)
                    self.wait_command(backoff)
                    backoff = min(backoff * 1.5, 1.0)
                    continue
                self.stats.set(capture_channels=self.channels[0], playback_channels=self.channels[1])
            side = JackSide(spec.client_name, spec.jack_server, self.channels[0], self.channels[1],
                            spec.device_id)
            try:
                side.open()
            except jack.JackError:
                side.close()
                self.stats.set_state(names.WAITING_FOR_JACK)
                self.wait_command(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.25
            self.jack_side = side
            try:
                side.activate()
                emit("ports", ports=side.port_names(), client=spec.client_name)
                self.serve(side)
            finally:
                self.stop_alsa()
                side.close(self.server_news)
                self.jack_side = None
            if not self.stopping:
                self.stats.set_state(names.WAITING_FOR_JACK)
                emit("jack-gone")
        return 0

    def serve(self, side: JackSide) -> None:
        """Run the ALSA thread until JACK leaves or we are told to stop."""
        alsa = self.start_alsa(side)
        reported = 0
        while not self.stopping and not side.events.shutdown.is_set():
            cmd = self.wait_command(0.25)
            while reported < len(alsa.notes):
                log(alsa.notes[reported])
                reported += 1
            if cmd == "device":
                alsa.poke()
            elif cmd == "restart":
                self.stop_alsa()
                self.stats.add("restarts")
                alsa = self.start_alsa(side)
                reported = 0
            elif (not alsa.thread.is_alive() and not self.stopping
                  and not side.events.shutdown.is_set()):
                log("ALSA thread ended unexpectedly; restarting it")
                self.stats.add("restarts")
                self.stop_alsa()
                alsa = self.start_alsa(side)
                reported = 0

    def start_alsa(self, side: JackSide) -> AlsaBridge:
        """A new ALSA thread, starting from the drift learnt so far."""
        alsa = AlsaBridge(self.spec, side, self.stats, self.channels, self.device_rate,
                          strict_rate=self.spec.rate is not None, priority=alsa_priority(side.rt_priority()))
        alsa.learnt_ppm = self.learnt_ppm
        alsa.headroom.periods = max(alsa.headroom.periods, self.periods)
        self.alsa = alsa
        alsa.start()
        return alsa

    def stop_alsa(self) -> None:
        alsa, self.alsa = self.alsa, None
        if alsa is not None:
            alsa.request_stop(2.0)
            if alsa.has_locked:
                self.learnt_ppm = alsa.learnt_ppm
            self.periods = alsa.headroom.periods


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cardbridge-worker")
    parser.add_argument("--spec", required=True, help="bridge spec as JSON")
    parser.add_argument("--stats", required=True, help="path of the shared stats slot")
    args = parser.parse_args(argv)
    spec = BridgeSpec.from_json(args.spec)
    stats = StatsSlot(args.stats)
    worker = Worker(spec, stats)

    def on_term(signum, frame):
        worker.commands.put("stop")

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    threading.stack_size(512 * 1024)  # locked memory: keep thread stacks small
    lock_memory()
    threading.Thread(target=worker.read_commands, name="commands", daemon=True).start()
    try:
        return worker.run()
    except Exception as exc:  # the supervisor restarts us; say why in one line
        log(f"fatal: {type(exc).__name__}: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
