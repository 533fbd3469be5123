"""The main process's handle of a bridge (engine/supervisor.py) with real worker processes.

The workers wait for a card that is not there, so no JACK server is needed: what is checked is
how they are started, watched, started again and given up, and that the state is the worker's.

Runs in the pytest process (a private asyncio loop); the workers are its children.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from cardbridge import names
from cardbridge.engine import supervisor
from cardbridge.engine.spec import BridgeSpec
from cardbridge.engine.supervisor import Bridge


@pytest.fixture
def loop():
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


def spec(name: str) -> BridgeSpec:
    return BridgeSpec(device_id=name, pcm=f"cbabsent_{name}", client_name=name,
                      jack_server=f"cbsup-absent-{os.getpid()}")


def workers_of(bridge: Bridge) -> list[int]:
    """PIDs of every live worker process started for this bridge (by its stats slot path)."""
    path = bridge._slot.path.encode()
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
            with open(f"/proc/{pid}/stat", "rb") as f:
                zombie = f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
        except OSError:
            continue
        if path in args and b"cardbridge.engine.worker" in args and not zombie:
            found.append(int(pid))
    return found


def run_until(loop, predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        loop.run_until_complete(asyncio.sleep(0.05))
        if predicate():
            return
    raise AssertionError(f"timed out waiting for {what}")


def test_the_state_is_the_workers_with_its_reason(loop):
    bridge = Bridge(spec("cbstate"))
    loop.run_until_complete(bridge.start())
    try:
        run_until(loop, lambda: bridge.stats()["state"] == names.WAITING_FOR_DEVICE, 30,
                  "the worker to say it waits for its card")
        assert "not there" in bridge.stats()["state_reason"]
    finally:
        loop.run_until_complete(bridge.stop())


def test_code_planted_in_the_working_directory_never_runs_in_a_worker(loop, tmp_path,
                                                                       monkeypatch):
    """`python -m` puts the current directory first on the import path: a cardbridge/ package
    there would have been imported by every worker (as root, for a system service)."""
    marker = tmp_path / "planted-code-ran"
    planted = tmp_path / "cwd" / "cardbridge" / "engine"
    planted.mkdir(parents=True)
    for pkg in (planted.parent, planted):
        (pkg / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (planted / "worker.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "cwd"))
    bridge = Bridge(spec("cbplant"))
    loop.run_until_complete(bridge.start())
    try:
        run_until(loop, lambda: bridge.stats()["state"] == names.WAITING_FOR_DEVICE, 30,
                  "the worker to run")
    finally:
        loop.run_until_complete(bridge.stop())
    assert not marker.exists()


def test_a_respawn_during_the_back_off_leaves_one_worker(loop, monkeypatch):
    """The worker dies; while the supervisor waits to start it again, the card comes back on
    another ALSA name and the manager asks for a new worker: one worker, not two."""
    monkeypatch.setattr(supervisor, "RESTART_BACKOFF", (0.6, 0.6))
    bridge = Bridge(spec("cbrace"))
    loop.run_until_complete(bridge.start())
    try:
        run_until(loop, lambda: len(workers_of(bridge)) == 1, 20, "the worker")
        os.kill(workers_of(bridge)[0], signal.SIGKILL)
        run_until(loop, lambda: bridge.proc is None, 20, "the death to be seen")
        loop.run_until_complete(bridge.respawn())
        loop.run_until_complete(asyncio.sleep(1.5))      # past the back-off
        assert len(workers_of(bridge)) == 1
        assert bridge.proc is not None and workers_of(bridge) == [bridge.proc.pid]
    finally:
        loop.run_until_complete(bridge.stop())


def test_a_worker_that_keeps_dying_is_given_up_and_restart_tries_again(loop, monkeypatch):
    monkeypatch.setattr(supervisor, "RESTART_BACKOFF", (0.05, 0.1))
    bridge = Bridge(spec("cbgiveup"))
    loop.run_until_complete(bridge.start())
    try:
        for _ in range(supervisor.GIVE_UP_AFTER):
            run_until(loop, lambda: workers_of(bridge) and bridge.proc is not None
                      and workers_of(bridge) == [bridge.proc.pid], 20, "a worker")
            os.kill(bridge.proc.pid, signal.SIGKILL)
            run_until(loop, lambda: not workers_of(bridge), 20, "the worker to die")
        run_until(loop, lambda: bridge.stats()["state"] == names.FAILED, 20, "giving up")
        assert "kept exiting" in bridge.stats()["state_reason"]
        loop.run_until_complete(asyncio.sleep(0.5))
        assert workers_of(bridge) == []                  # no more attempts on its own
        loop.run_until_complete(bridge.restart())
        run_until(loop, lambda: bridge.stats()["state"] == names.WAITING_FOR_DEVICE, 30,
                  "a worker again after Restart")
        assert len(workers_of(bridge)) == 1
    finally:
        loop.run_until_complete(bridge.stop())
