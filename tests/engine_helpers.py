"""Helpers for the engine tests: run Bridges from the test process (asyncio) against a real jackd
and virtual cards, and wait for conditions with deadlines (never fixed sleeps as assertions).

Runs in the pytest process; the bridges themselves are worker processes.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cardbridge import names
from cardbridge.engine.supervisor import Bridge, BridgeSpec
from testbench import probe


def jack_server_xruns(server) -> int:
    """Times the JACK dummy server lost time so far (it logs each: "JackTimedDriver::Process
    XRun"). Its cycle times then slew back to real time over seconds, and every bridge measured
    against them wanders meanwhile: steady-state figures are taken away from those moments."""
    if server is None or server.log_path is None:
        return 0
    try:
        return server.log_path.read_text(errors="replace").count("Process XRun")
    except OSError:
        return 0


def undisturbed_since(run, before: dict, jack_xruns: int) -> bool:
    """Neither the bridge (no restart, no card xrun) nor the JACK server (it lost no time, by its
    log and by the bridge's timeline) was stalled since `before` (stats) and `jack_xruns`
    (jack_server_xruns) were taken."""
    s = run.stats()
    keys = ("restarts", "xruns", "jack_lost")
    return (tuple(s[k] for k in keys) == tuple(before[k] for k in keys)
            and jack_server_xruns(run.jack_server) == jack_xruns)


class BridgeRun:
    """A Bridge plus a record of every stats change, driven from a private event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, spec: BridgeSpec, jack_server=None):
        self.loop = loop
        self.jack_server = jack_server
        self.changes: list[tuple[float, dict]] = []
        self.bridge = Bridge(spec, self._on_change)

    def _on_change(self, bridge, changed):
        self.changes.append((time.monotonic(), dict(changed)))

    def start(self):
        self.loop.run_until_complete(self.bridge.start())

    def stop(self):
        self.loop.run_until_complete(self.bridge.stop())

    def stats(self) -> dict:
        return self.bridge.stats()

    def wait(self, predicate, timeout: float, what: str) -> dict:
        """Run the loop until predicate(stats) holds; fail with the last stats otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.loop.run_until_complete(asyncio.sleep(0.1))
            s = self.stats()
            if predicate(s):
                return s
        raise AssertionError(f"timed out waiting for {what}; last stats: {self.stats()}")

    def run_for(self, seconds: float) -> None:
        self.loop.run_until_complete(asyncio.sleep(seconds))

    def states_seen(self) -> list[str]:
        return [c["state"] for _, c in self.changes if "state" in c]


def jack_latency(server: str, port: str) -> tuple[int, int]:
    """(capture latency, playback latency) max values of a port, as jack_lsp reports them."""
    out = subprocess.run(["jack_lsp", "-s", server, "-l", port], capture_output=True, text=True,
                         timeout=10).stdout
    cap = pb = 0
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("port capture latency"):
            cap = int(line.split("[")[1].split()[1])
        elif line.startswith("port playback latency"):
            pb = int(line.split("[")[1].split()[1])
    return cap, pb


def run_probes(server: str, play_port: str | None, record_port: str | None, signal: str,
               seconds: float, tmp: Path, env: dict | None = None):
    """Run a sender and/or a receiver probe at the same time; returns the loaded .npz files."""
    procs = []
    outs = {}
    for role, port in (("send", play_port), ("recv", record_port)):
        if port is None:
            continue
        out = tmp / f"{role}.npz"
        args = [sys.executable, "-m", "testbench.probe", "--server", server,
                "--name", f"probe_{role}", "--signal", signal, "--seconds", str(seconds),
                "--out", str(out)]
        args += ["--play", port] if role == "send" else ["--record", port]
        procs.append(subprocess.Popen(args, env=env or os.environ.copy()))
        outs[role] = out
    for p in procs:
        assert p.wait(timeout=seconds * 3 + 30) == 0
    return {role: np.load(path) for role, path in outs.items()}


def undisturbed_probes(run: BridgeRun, server: str, play_port: str, record_port: str,
                       signal: str, seconds: float, tmp: Path, attempts: int = 3):
    """run_probes while the bridge stays locked: a measurement during which the machine stalled
    the bridge (a card xrun, a resync: its capture is muted while it re-syncs) or the JACK server
    (it lost time) is taken again once it runs; after `attempts` disturbed ones the test is
    skipped, since the machine, not the bridge, would be measured."""
    for _ in range(attempts):
        before = run.stats()
        jx = jack_server_xruns(run.jack_server)
        res = run_probes(server, play_port, record_port, signal, seconds, tmp)
        if undisturbed_since(run, before, jx):
            return res
        run.wait(lambda s: s["state"] == names.RUNNING, 60.0, "the bridge to lock again")
        run.run_for(3.0)
    pytest.skip(f"the machine stalled the bridge during each of {attempts} measurements")
