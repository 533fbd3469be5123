"""Main-process handle of one bridge: starts, watches and restarts its worker process.

Runs in the main (asyncio) process. The worker is controlled over its stdin (one command per
line), reports events as JSON lines on its stdout, and publishes statistics in a shared slot
that this module reads at 4 Hz, turning changes into `on_change` calls (≤ 5 Hz).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import sys
import tempfile
import time
from typing import Callable

from .. import names
from .spec import BridgeSpec
from .stats import StatsSlot

__all__ = ["Bridge", "BridgeSpec"]

log = logging.getLogger("cardbridge.bridge")

POLL_INTERVAL = 0.25          # stats read rate (4 Hz)
STOP_TIMEOUT = 1.5
RESTART_BACKOFF = (0.5, 5.0)
STAT_KEYS = ("state", "ratio", "drift_ppm", "delay_error", "latency", "xruns", "underruns",
             "restarts", "capture_channels", "playback_channels", "rate", "period", "periods",
             "quality", "client_name")


def _shm_dir() -> str:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()


class Bridge:
    def __init__(self, spec: BridgeSpec, on_change: Callable[["Bridge", dict], None] | None = None):
        self.spec = spec
        self.on_change = on_change
        self.proc: asyncio.subprocess.Process | None = None
        self._slot: StatsSlot | None = None
        self._tasks: list[asyncio.Task] = []
        self._stopping = False
        self._process_restarts = 0
        self._ports: list[str] = []
        self._last: dict = {}
        self._forced_state: str | None = None
        self._forced_since = 0.0
        # JACK went away: until the worker reports its ports on the new server, a "running"
        # left in its stats slot is from the old one (its card thread may still stream).
        self._awaiting_ports = False
        self._exited = asyncio.Event()

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        if self.proc is not None:
            return
        self._stopping = False
        fd, path = tempfile.mkstemp(prefix="cardbridge-stats-", dir=_shm_dir())
        os.close(fd)
        self._slot = StatsSlot(path, create=True)
        await self._spawn()
        self._tasks = [asyncio.create_task(self._poll_stats(), name=f"stats-{self.spec.client_name}")]

    async def _spawn(self) -> None:
        env = dict(os.environ)
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cardbridge.engine.worker", "--spec", self.spec.to_json(),
            "--stats", self._slot.path, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, env=env)
        self._exited.clear()
        asyncio.create_task(self._watch(self.proc), name=f"worker-{self.spec.client_name}")

    async def _watch(self, proc: asyncio.subprocess.Process) -> None:
        """Read the worker's events; when it dies unasked, restart it with back-off."""
        assert proc.stdout is not None
        while True:
            line = await proc.stdout.readline()
            if not line:
                break
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == "ports":
                self._awaiting_ports = False
                self._ports = list(event.get("ports", []))
                self._notify({"ports": self._ports})
        code = await proc.wait()
        self._exited.set()
        if self._stopping or proc is not self.proc:
            return
        self._process_restarts += 1
        self.spec.learnt_ppm = self.learnt_drift()
        log.warning("bridge %s: worker exited with %s; restarting", self.spec.client_name, code)
        delay = min(RESTART_BACKOFF[0] * (2 ** min(self._process_restarts - 1, 4)), RESTART_BACKOFF[1])
        await asyncio.sleep(delay)
        if not self._stopping:
            await self._spawn()

    async def stop(self) -> None:
        self._stopping = True
        proc, self.proc = self.proc, None
        if proc is not None and proc.returncode is None:
            try:
                proc.stdin.write(b"stop\n")
                await proc.stdin.drain()
            except (BrokenPipeError, ConnectionResetError, RuntimeError):
                pass
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
        for task in self._tasks:
            task.cancel()
        self._tasks = []
        if self._slot is not None:
            self._slot.unlink()
            self._slot.close()
            self._slot = None

    async def restart(self) -> None:
        self._send("restart")

    def _send(self, command: str) -> None:
        proc = self.proc
        if proc is not None and proc.returncode is None and proc.stdin is not None:
            try:
                proc.stdin.write(command.encode() + b"\n")
            except (BrokenPipeError, ConnectionResetError, RuntimeError):
                pass

    def learnt_drift(self) -> float:
        """The card's clock offset the worker had measured (ppm), for a worker to start from."""
        snap = self._slot.snapshot() if self._slot is not None else {}
        drift = float(snap.get("drift_ppm", 0.0) or 0.0)
        if snap.get("locked") and math.isfinite(drift) and abs(drift) < 2000.0:
            return drift
        return self.spec.learnt_ppm

    # -- hints ----------------------------------------------------------------------------------
    def _force(self, state: str | None) -> None:
        """A hint from the main process: shown until the worker proves otherwise by streaming
        again after the hint (its heartbeat moves on)."""
        self._forced_state = state
        self._forced_since = time.monotonic()

    def device_removed(self) -> None:
        self._force(names.WAITING_FOR_DEVICE)
        self._send("device")
        self._notify_stats()

    def device_added(self) -> None:
        self._force(None)
        self._send("device")

    def jack_stopped(self) -> None:
        self._awaiting_ports = True
        self._force(names.WAITING_FOR_JACK)
        self._send("jack-down")
        self._notify_stats()

    def jack_started(self) -> None:
        self._force(None)
        self._send("jack-up")

    # -- stats ------------------------------------------------------------------------------------
    @property
    def state(self) -> str:
        return self.stats()["state"]

    def port_names(self) -> list[str]:
        return list(self._ports)

    def stats(self) -> dict:
        spec = self.spec
        snap = self._slot.snapshot() if self._slot is not None else {}
        state = snap.get("state", names.STARTING)
        if (self._forced_state and state in (names.RUNNING, names.SYNCING, names.STARTING)
                and snap.get("heartbeat", 0.0) <= self._forced_since):
            state = self._forced_state
        elif self._awaiting_ports and state in (names.RUNNING, names.SYNCING):
            state = names.WAITING_FOR_JACK
        latency = int(round(max(snap.get("capture_latency", 0.0), snap.get("playback_latency", 0.0))))
        return {
            "state": state,
            "ratio": snap.get("ratio", 0.0) or 1.0,
            "drift_ppm": snap.get("drift_ppm", 0.0),
            "delay_error": snap.get("delay_error", 0.0),
            "latency": latency,
            "capture_latency": int(round(snap.get("capture_latency", 0.0))),
            "playback_latency": int(round(snap.get("playback_latency", 0.0))),
            "xruns": int(snap.get("xruns", 0)),
            "underruns": int(snap.get("underruns", 0)),
            "restarts": int(snap.get("restarts", 0)) + self._process_restarts,
            "capture_channels": int(snap.get("capture_channels", 0) or (spec.capture or 0)),
            "playback_channels": int(snap.get("playback_channels", 0) or (spec.playback or 0)),
            "rate": int(snap.get("rate", 0) or (spec.rate or 0)),
            "period": int(snap.get("period", 0) or spec.period),
            "periods": int(snap.get("periods", 0) or spec.periods),
            "quality": spec.quality,
            "client_name": spec.client_name,
            "jack_period": int(snap.get("jack_period", 0)),
            "jack_rate": int(snap.get("jack_rate", 0)),
            "locked": bool(snap.get("locked", 0.0)),
            "device_format": snap.get("device_format", ""),
            # times the JACK server lost time (a late schedule), skipped in the rings
            "jack_lost": int(snap.get("jack_lost", 0)),
        }

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

