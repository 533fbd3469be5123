"""The measuring JACK client (cbmeter, a small C program built into build/bench/) from Python:
start it, stop it, load what it recorded.

Runs in the test or benchmark process; cbmeter itself is a child process. A player plays, into
each port it is given, the sine of that port's channel tied to JACK's frame index; a recorder
records ports with JACK frame indices. Both stamp every cycle (CLOCK_MONOTONIC, _RAW,
jack_get_time, the frame time, the xrun count), so every sample can be put on one time axis.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .procs import SandboxError, record_started, terminate

CYCLE_DTYPE = np.dtype([("mono_ns", "<i8"), ("mono2_ns", "<i8"), ("raw_ns", "<i8"),
                        ("jack_us", "<u8"), ("cur_us", "<u8"), ("next_us", "<u8"),
                        ("period_us", "<f4"), ("frame_time", "<u4"), ("cur_frames", "<u4"),
                        ("nframes", "<u4"), ("xruns", "<u4"), ("pad", "<u4")])
XRUN_DTYPE = np.dtype([("mono_ns", "<i8"), ("delayed_us", "<f4"), ("pad", "<u4")])


def tool_path(name: str) -> Path:
    """A bench tool built by `make bench-tools` (build/bench/NAME)."""
    env = os.environ.get("CARDBRIDGE_BENCH_TOOLS")
    base = Path(env) if env else Path(__file__).resolve().parents[2] / "build" / "bench"
    path = base / name
    if not path.exists():
        raise SandboxError(f"{path} is missing: run 'make bench-tools'")
    return path


def wait_ready(proc: subprocess.Popen, what: str, timeout: float = 20.0) -> str:
    """The child's first stdout line, which must start with 'ready'."""
    fd = proc.stdout.fileno()
    if not select.select([fd], [], [], timeout)[0]:
        terminate(proc)
        raise SandboxError(f"{what} did not start within {timeout:g} s")
    line = proc.stdout.readline().strip()
    if not line.startswith("ready"):
        terminate(proc)
        raise SandboxError(f"{what} failed to start: {proc.stderr.read().strip() or line}")
    return line


class Meter:
    """One running cbmeter: a player (`plays` = [(port, channel)]) or a recorder (`records` =
    [port])."""

    def __init__(self, server: str, name: str, out: Path, seconds: float, env: dict,
                 plays=(), records=(), sine_hz: int = 997, sine_step_hz: int = 2,
                 level_db: float = -6.0):
        if plays and records:
            raise ValueError("a meter either plays or records (the graph must have no cycle)")
        self.out = Path(out)
        args = [str(tool_path("cbmeter")), "--server", server, "--name", name, "--seconds",
                str(seconds), "--out", str(self.out), "--sine-hz", str(sine_hz),
                "--sine-step-hz", str(sine_step_hz), "--level-db", str(level_db)]
        for port, channel in plays:
            args += ["--play", f"{port}@{channel}"]
        for port in records:
            args += ["--record", port]
        self.proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        record_started(self.proc, "cbmeter", f"measuring JACK client {name}")
        line = wait_ready(self.proc, f"cbmeter {name}")
        self.rate, self.period = map(int, line.split()[1:3])

    def stop(self, timeout: float = 30.0) -> "MeterRun":
        """End the run (SIGTERM: the meter writes its files) and load them."""
        code = terminate(self.proc, timeout)
        if code not in (0, None):
            raise SandboxError(f"cbmeter exited with {code}: {self.proc.stderr.read().strip()}")
        return load(self.out)

    def wait(self, timeout: float) -> "MeterRun":
        """Wait for the run's own end (--seconds) and load it."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        return self.stop()


@dataclass
class MeterRun:
    """What one cbmeter recorded."""
    meta: dict
    cycles: np.ndarray          # CYCLE_DTYPE
    xruns: np.ndarray           # XRUN_DTYPE
    latency: np.ndarray         # rows: mono_ns, port index, min, max
    load: np.ndarray            # rows: mono_ns, DSP load %
    out: Path

    @property
    def rate(self) -> int:
        return int(self.meta["rate"])

    @property
    def first_frame(self) -> int:
        return int(self.meta["first_frame"])

    def recording(self, k: int) -> np.ndarray:
        """What in_k received (float32, NaN where the meter missed a cycle), from first_frame."""
        return np.fromfile(self.out / f"rec_{k}.f32", np.float32)

    def ports(self, role: str) -> list[dict]:
        return [p for p in self.meta["ports"] if p["role"] == role]

    def reported_latency(self, peer: str) -> np.ndarray:
        """Rows (mono_ns, min, max) of the latency range JACK reported for `peer` each second."""
        index = [i for i, p in enumerate(self.meta["ports"]) if p["peer"] == peer]
        if not index or not len(self.latency):
            return np.zeros((0, 3))
        rows = self.latency[self.latency[:, 1] == index[0]]
        return rows[:, [0, 2, 3]]


def _table(path: Path, columns: int) -> np.ndarray:
    if not path.exists() or path.stat().st_size == 0:
        return np.zeros((0, columns))
    return np.loadtxt(path, ndmin=2)


def load(out: Path) -> MeterRun:
    out = Path(out)
    meta = json.loads((out / "meter.json").read_text())
    if meta["cycle_bytes"] != CYCLE_DTYPE.itemsize:
        raise SandboxError("cbmeter's cycle record does not match meter.py: rebuild the tools")
    return MeterRun(meta, np.fromfile(out / "cycles.bin", CYCLE_DTYPE),
                    np.fromfile(out / "xruns.bin", XRUN_DTYPE), _table(out / "latency.txt", 4),
                    _table(out / "load.txt", 2), out)
