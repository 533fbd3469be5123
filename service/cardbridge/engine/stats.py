"""Per-bridge statistics slot: a small shared-memory array that a bridge worker writes and the
main process reads at 2–5 Hz.

Writers are the worker's threads (the ALSA thread writes through `publish_rt`, which only stores
floats into a preallocated array); the reader is the main asyncio process. A sequence counter
(odd while a write is under way) gives the reader a consistent copy without any lock.
"""

from __future__ import annotations

import mmap
import os

import numpy as np

from .. import names

FIELDS = (
    "seq", "state", "ratio", "drift_ppm", "delay_error", "capture_latency", "playback_latency",
    "xruns", "underruns", "restarts", "capture_channels", "playback_channels", "rate", "period",
    "periods", "jack_rate", "jack_period", "locked", "heartbeat", "device_format", "jack_lost",
)
INDEX = {name: i for i, name in enumerate(FIELDS)}
SIZE = len(FIELDS) * 8
STATE_CODES = {state: i for i, state in enumerate(names.STATES)}
FORMAT_CODES = ("", "FLOAT_LE", "S32_LE", "S24_3LE", "S16_LE")


class StatsSlot:
    """A mapped statistics array; `create=True` makes the backing file (main process side)."""

    def __init__(self, path: str, create: bool = False):
        self.path = path
        flags = os.O_RDWR | (os.O_CREAT | os.O_TRUNC if create else 0)
        fd = os.open(path, flags, 0o600)
        try:
            if create:
                os.ftruncate(fd, SIZE)
            self._map = mmap.mmap(fd, SIZE)
        finally:
            os.close(fd)
        self.values = np.frombuffer(self._map, dtype=np.float64, count=len(FIELDS))

    # -- writer side ------------------------------------------------------------------------
    def begin_rt(self) -> None:
        self.values[0] += 1.0

    def end_rt(self) -> None:
        self.values[0] += 1.0

    def set_rt(self, index: int, value: float) -> None:
        self.values[index] = value

    def set_state(self, state: str) -> None:
        self.begin_rt()
        self.values[INDEX["state"]] = STATE_CODES[state]
        self.end_rt()

    def add(self, name: str, amount: float = 1.0) -> None:
        self.begin_rt()
        self.values[INDEX[name]] += amount
        self.end_rt()

    def set(self, **fields: float) -> None:
        """Non-real-time convenience for the worker's control thread."""
        self.begin_rt()
        for key, value in fields.items():
            self.values[INDEX[key]] = value
        self.end_rt()

    # -- reader side ------------------------------------------------------------------------
    def snapshot(self) -> dict:
        for _ in range(100):
            before = self.values[0]
            copy = self.values.copy()
            if before == self.values[0] and int(before) % 2 == 0:
                break
        out = {name: float(copy[i]) for i, name in enumerate(FIELDS)}
        out["state"] = names.STATES[int(out["state"]) % len(names.STATES)]
        code = int(out["device_format"])
        out["device_format"] = FORMAT_CODES[code] if 0 <= code < len(FORMAT_CODES) else ""
        return out

    def close(self) -> None:
        self.values = None
        try:
            self._map.close()
        except BufferError:
            pass

    def unlink(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
