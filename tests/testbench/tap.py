"""The virtual card's playback tap (cbtap, a small C program built into build/bench/) from Python:
start it on a card, stop it, load what the card played and at which card frame.

Runs in the test or benchmark process; cbtap is a child process that reads the card's timeline
ring from its shared file (the plugin, inside the bridges, never writes files).
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .meter import tool_path, wait_ready
from .procs import SandboxError, record_started, terminate
from .vcard import CardClock

POLL_DTYPE = np.dtype([("mono_ns", "<i8"), ("hw_frame", "<i8"), ("xruns_capture", "<u4"),
                       ("xruns_playback", "<u4")])


class Tap:
    """One running cbtap on the card whose shared file is `shm`, keeping `channels`."""

    def __init__(self, shm: str, out: Path, seconds: float, channels=(0, 1),
                 poll_ms: float = 5.0):
        self.out = Path(out)
        args = [str(tool_path("cbtap")), "--shm", str(shm), "--out", str(self.out),
                "--seconds", str(seconds), "--channels", ",".join(map(str, channels)),
                "--poll-ms", str(poll_ms)]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        record_started(self.proc, "cbtap", f"playback tap on {shm}")
        self.first_frame = int(wait_ready(self.proc, f"cbtap on {shm}").split()[1])

    def stop(self, timeout: float = 30.0) -> "TapRun":
        code = terminate(self.proc, timeout)
        if code not in (0, None):
            raise SandboxError(f"cbtap exited with {code}: {self.proc.stderr.read().strip()}")
        return load(self.out)


@dataclass
class TapRun:
    """What the card played: per kept channel, float32 from `first_frame` (NaN: nothing was
    written for that frame); the poll log (time, pointer frame, xrun counters)."""
    meta: dict
    polls: np.ndarray
    out: Path

    @property
    def first_frame(self) -> int:
        return int(self.meta["first_frame"])

    @property
    def clock(self) -> CardClock:
        return CardClock(**self.meta["clock"])

    def channel(self, c: int) -> np.ndarray:
        return np.fromfile(self.out / f"tap_ch{c}.f32", np.float32)


def load(out: Path) -> TapRun:
    out = Path(out)
    return TapRun(json.loads((out / "tap.json").read_text()),
                  np.fromfile(out / "polls.bin", POLL_DTYPE), out)
