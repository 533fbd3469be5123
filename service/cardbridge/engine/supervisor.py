"""Main-process handle of one bridge: starts, watches and restarts its worker process.

Runs in the main (asyncio) process. Commands go to the worker's stdin and events come from its
stdout, both as engine/protocol.py says; statistics come from the shared slot (engine/stats.py),
read 4 times a second. The bridge's state is the worker's: the last state event it sent (the
worker's control thread is its only writer). This module only adds what a worker cannot say
itself: that it has exited and is being started again, or that it kept exiting and was given up;
and, while the main process holds the bridge (`hold`: no worker at all), why it is held.
Changes reach `on_change` (≤ 5 Hz for numbers, at once for the state).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import sys
import tempfile
import time
from typing import Callable

from .. import bridgestats
from ..bridgestats import BY_KEY, STATS
from .protocol import Command, PortsEvent, StateEvent, command_line, parse_event
from .spec import BridgeSpec
from .stats import StatsSlot

__all__ = ["Bridge", "BridgeSpec"]

log = logging.getLogger("cardbridge.bridge")

POLL_INTERVAL = 0.25          # stats read rate (4 Hz)
STOP_TIMEOUT = 1.5
RESTART_BACKOFF = (0.5, 5.0)  # first and longest wait before starting a dead worker again
STABLE_AFTER = 30.0           # a worker that ran this long starts the back-off afresh
GIVE_UP_AFTER = 8             # exits in a row, each before STABLE_AFTER, before giving up
MAX_DRIFT_PPM = 2000.0

# Stream values that are 0 until the worker's first stream: shown from the spec until then.
_FROM_SPEC_UNTIL_STREAMING = {"rate": "rate", "period": "period", "periods": "periods",
                              "capture_channels": "capture", "playback_channels": "playback"}


def _shm_dir() -> str:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()


def worker_command(spec: BridgeSpec, stats_path: str) -> list[str]:
    """The worker's command line: isolated mode (-I), so that neither the environment's
    PYTHON* variables nor the directory the service was started from can put other code on its
    import path."""
    return [sys.executable, "-I", "-m", "cardbridge.engine.worker", "--spec", spec.to_json(),
            "--stats", stats_path]


class Bridge:
    def __init__(self, spec: BridgeSpec, on_change: Callable[["Bridge", dict], None] | None = None):
        self.spec = spec
        self.on_change = on_change
        self.proc: asyncio.subprocess.Process | None = None
        self._slot: StatsSlot | None = None
        self._poller: asyncio.Task | None = None
        self._watcher: asyncio.Task | None = None
        self._lifecycle = asyncio.Lock()      # start/stop/respawn one at a time
        self._stopping = False
        self._process_restarts = 0
        self._exits_in_a_row = 0
        self._ports: list[str] = []
        self._last: dict = {}
        self._state = StateEvent(bridgestats.STARTING, "starting the worker")
        self.held = False

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        async with self._lifecycle:
            if self.proc is not None:
                return
            self._stopping = False
            self.held = False
            self._exits_in_a_row = 0
            self._open_slot()
            await self._spawn()

    async def hold(self, state: str, reason: str) -> None:
        """Keep the bridge from running, for a reason only the main process knows (the card is
        JACK's, another instance bridges it, its reservation was refused, it is absent): its
        worker, if any, is stopped, and `state` with `reason` is the bridge's state until
        start(). With no worker there is no other writer of the state."""
        async with self._lifecycle:
            self._stopping = True
            self.held = True
            proc, self.proc = self.proc, None
            await self._end(proc)
            self._open_slot()
            self._set_state(StateEvent(state, reason))

    def _open_slot(self) -> None:
        """The statistics slot and its reader, made once (the lifecycle lock is held)."""
        if self._slot is None:
            fd, path = tempfile.mkstemp(prefix="cardbridge-stats-", dir=_shm_dir())
            os.close(fd)
            self._slot = StatsSlot(path, create=True)
        if self._poller is None:
            self._poller = asyncio.create_task(self._poll_stats(),
                                               name=f"stats-{self.spec.client_name}")

    async def _spawn(self) -> None:
        """Start a worker (the lifecycle lock is held) and a task that watches it."""
        self._set_state(StateEvent(bridgestats.STARTING, "starting the worker"))
        self.proc = await asyncio.create_subprocess_exec(
            *worker_command(self.spec, self._slot.path), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, env=dict(os.environ))
        self._watcher = asyncio.create_task(self._watch(self.proc, time.monotonic()),
                                            name=f"worker-{self.spec.client_name}")

    async def _watch(self, proc: asyncio.subprocess.Process, started: float) -> None:
        """Read the worker's events; when it dies unasked, start it again with back-off, and
        give up after GIVE_UP_AFTER quick exits in a row."""
        assert proc.stdout is not None
        while True:
            line = await proc.stdout.readline()
            if not line:
                break
            event = parse_event(line)
            if isinstance(event, StateEvent):
                self._set_state(event)
            elif isinstance(event, PortsEvent):
                self._ports = list(event.ports)
                self._notify({"ports": self._ports})
        code = await proc.wait()
        async with self._lifecycle:
            if self._stopping or proc is not self.proc:
                return
            self.proc = None
            self._process_restarts += 1
            self.spec.learnt_ppm = self.learnt_drift()
            lived = time.monotonic() - started
            self._exits_in_a_row = 1 if lived >= STABLE_AFTER else self._exits_in_a_row + 1
            if self._exits_in_a_row >= GIVE_UP_AFTER:
                log.error("bridge %s: worker exited with %s, %d times in a row; giving up "
                          "(Restart() tries again)", self.spec.client_name, code,
                          self._exits_in_a_row)
                self._set_state(StateEvent(bridgestats.FAILED,
                                           f"the worker kept exiting (status {code}); given up"))
                return
            delay = min(RESTART_BACKOFF[0] * 2 ** (self._exits_in_a_row - 1), RESTART_BACKOFF[1])
            log.warning("bridge %s: worker exited with %s; starting it again in %.1f s",
                        self.spec.client_name, code, delay)
            self._set_state(StateEvent(bridgestats.STARTING,
                                       f"the worker exited (status {code}); starting it again"))
        await asyncio.sleep(delay)
        async with self._lifecycle:
            if not self._stopping and self.proc is None:
                await self._spawn()

    async def stop(self) -> None:
        async with self._lifecycle:
            self._stopping = True
            self.held = False
            proc, self.proc = self.proc, None
            await self._end(proc)
            if self._poller is not None:
                self._poller.cancel()
                self._poller = None
            if self._slot is not None:
                self._slot.unlink()
                self._slot.close()
                self._slot = None

    async def _end(self, proc) -> None:
        if proc is None or proc.returncode is not None:
            return
        try:
            proc.stdin.write(command_line(Command.STOP))
            await proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError, RuntimeError):
            pass
        try:
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()

    async def respawn(self) -> None:
        """A new worker for the same bridge (the card is now another ALSA device), keeping the
        statistics slot and the drift learnt so far."""
        async with self._lifecycle:
            if self._stopping:
                return
            self.spec.learnt_ppm = self.learnt_drift()
            proc, self.proc = self.proc, None
            await self._end(proc)
            self._exits_in_a_row = 0
            await self._spawn()

    async def restart(self) -> None:
        """D-Bus Restart: the worker starts its stream again; a given-up worker is started."""
        async with self._lifecycle:
            if self.proc is None and not self._stopping and self._slot is not None:
                self._exits_in_a_row = 0
                await self._spawn()
                return
        self._send(Command.RESTART)

    def _send(self, command: Command) -> None:
        proc = self.proc
        if proc is not None and proc.returncode is None and proc.stdin is not None:
            try:
                proc.stdin.write(command_line(command))
            except (BrokenPipeError, ConnectionResetError, RuntimeError):
                pass

    def learnt_drift(self) -> float:
        """The card's clock offset the worker had measured (ppm), for a worker to start from."""
        snap = self._slot.snapshot() if self._slot is not None else {}
        drift = snap.get("drift_ppm", 0.0)
        if snap.get("locked") and math.isfinite(drift) and abs(drift) < MAX_DRIFT_PPM:
            return drift
        return self.spec.learnt_ppm

    # -- what the main process learns about the card and JACK: passed on, never a state ----------
    def device_removed(self) -> None:
        self._send(Command.DEVICE)

    def device_added(self) -> None:
        self._send(Command.DEVICE)

    def jack_stopped(self) -> None:
        self._send(Command.JACK_DOWN)

    def jack_started(self) -> None:
        self._send(Command.JACK_UP)

    # -- statistics -----------------------------------------------------------------------------
    def _set_state(self, event: StateEvent) -> None:
        if event != self._state:
            self._state = event
            log.info("bridge %s: %s%s", self.spec.client_name, event.state,
                     f" ({event.reason})" if event.reason else "")
            self._notify_stats()

    def stats(self) -> dict:
        """Every entry of the statistics table (bridgestats.STATS), by key, never NaN."""
        spec = self.spec
        snap = self._slot.snapshot() if self._slot is not None else {}
        out: dict = {}
        for stat in STATS:
            if stat.source == "spec":
                raw = {"device": spec.device_id, "client_name": spec.client_name,
                       "quality": spec.quality}[stat.key]
            elif stat.source == "event":
                raw = self._state.state if stat.key == "state" else self._state.reason
            elif stat.source == "derived":
                continue
            else:
                raw = snap.get(stat.key, 0.0)
                if not raw and stat.key in _FROM_SPEC_UNTIL_STREAMING:
                    raw = getattr(spec, _FROM_SPEC_UNTIL_STREAMING[stat.key]) or 0
            out[stat.key] = bridgestats.published_value(stat, raw)
        out["ratio"] = out["ratio"] or 1.0
        out["device_format"] = bridgestats.FORMATS[out["device_format"]] \
            if out["device_format"] < len(bridgestats.FORMATS) else ""
        out["latency"] = max(out["capture_latency"], out["playback_latency"])
        out["restarts"] = bridgestats.published_value(
            BY_KEY["restarts"], out["resyncs"] + out["thread_restarts"] + self._process_restarts)
        return out

    async def _poll_stats(self) -> None:
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            self._notify_stats()

    def _notify_stats(self) -> None:
        if self._slot is None:
            return
        current = self.stats()
        changed = {k: v for k, v in current.items() if self._last.get(k) != v}
        self._last = current
        if changed:
            self._notify(changed)

    def _notify(self, changed: dict) -> None:
        if self.on_change is not None:
            try:
                self.on_change(self, changed)
            except Exception:  # a listener's bug must not stop the stats
                log.exception("bridge %s: change listener failed", self.spec.client_name)
