"""A bridge's shared statistics slot: a small file in shared memory, one record per writer.

Written in the bridge worker, read in the main process (the supervisor, 4 times a second).
The layout comes from the table of bridge statistics (cardbridge/bridgestats.py): one record for
the ALSA thread ("stream") and one for the worker's control thread ("worker"), each a sequence
counter followed by its values as float64. Each record has exactly one writer, which makes the
counter odd while it writes and even when done; the reader copies a record until it sees the
same even counter before and after, so it never takes a torn record and never takes a lock.

`Record.values` is the writer's preallocated array: the ALSA thread stores floats into it
between `begin()` and `end()` and allocates nothing.
"""

from __future__ import annotations

import mmap
import os

import numpy as np

from .. import bridgestats

WRITERS = ("stream", "worker")
LAYOUT = {writer: bridgestats.of_source(writer) for writer in WRITERS}
_OFFSETS = {}
_at = 0
for _writer in WRITERS:
    _OFFSETS[_writer] = _at
    _at += 1 + len(LAYOUT[_writer])
SIZE = _at * 8


class Record:
    """One writer's part of the slot: `index[key]` into `values`, guarded by `values[0]`-1."""

    def __init__(self, mapping: mmap.mmap, writer: str):
        keys = LAYOUT[writer]
        self.keys = keys
        self._seq = np.frombuffer(mapping, dtype=np.float64, count=1, offset=_OFFSETS[writer] * 8)
        self.values = np.frombuffer(mapping, dtype=np.float64, count=len(keys),
                                    offset=(_OFFSETS[writer] + 1) * 8)
        self.index = {key: i for i, key in enumerate(keys)}

    # -- the writer ---------------------------------------------------------------------------
    def begin(self) -> None:
        self._seq[0] += 1.0

    def end(self) -> None:
        self._seq[0] += 1.0

    def set(self, **fields: float) -> None:
        """Store several values as one consistent update (not for the per-period path)."""
        self.begin()
        for key, value in fields.items():
            self.values[self.index[key]] = value
        self.end()

    def add(self, key: str, amount: float = 1.0) -> None:
        self.begin()
        self.values[self.index[key]] += amount
        self.end()

    def get(self, key: str) -> float:
        """The writer's own last value (only the writer may rely on it without a copy)."""
        return float(self.values[self.index[key]])

    # -- a reader -----------------------------------------------------------------------------
    def snapshot(self) -> dict[str, float] | None:
        """A consistent copy, or None if the writer kept writing during 100 attempts."""
        for _ in range(100):
            before = float(self._seq[0])
            if int(before) % 2:
                continue
            copy = self.values.copy()
            if float(self._seq[0]) == before:
                return {key: float(copy[i]) for i, key in enumerate(self.keys)}
        return None


class StatsSlot:
    """The mapped slot; `create=True` makes the backing file (main process side)."""

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
        self.stream = Record(self._map, "stream")
        self.worker = Record(self._map, "worker")
        self._last: dict[str, float] = {key: 0.0 for writer in WRITERS for key in LAYOUT[writer]}

    def snapshot(self) -> dict[str, float]:
        """Every value of both records; a record caught mid-write keeps its previous copy."""
        for record in (self.stream, self.worker):
            copy = record.snapshot()
            if copy is not None:
                self._last.update(copy)
        return dict(self._last)

    def close(self) -> None:
        self.stream = self.worker = None
        try:
            self._map.close()
        except BufferError:    # a numpy view is still alive somewhere; the map goes with it
            pass

    def unlink(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
