"""A bridge worker told to stop by signals: however many arrive and whenever, it exits.

Runs in the pytest process; the worker is a real `cardbridge.engine.worker` process, waiting for
a card that is not there (its main thread then sits in its command loop, where a signal handler
that took the command queue's lock used to deadlock it for good).
"""

from __future__ import annotations

import os
import signal
import subprocess

from cardbridge import names
from cardbridge.engine.protocol import StateEvent, parse_event
from cardbridge.engine.spec import BridgeSpec
from cardbridge.engine.stats import StatsSlot
from cardbridge.engine.supervisor import worker_command


def test_a_burst_of_sigterms_stops_the_worker(tmp_path):
    slot = StatsSlot(str(tmp_path / "stats"), create=True)
    spec = BridgeSpec(device_id="nowhere", pcm="nowhere", client_name="cbsig",
                      jack_server=f"cbsig-absent-{os.getpid()}")
    env = dict(os.environ, JACK_NO_START_SERVER="1")
    worker = subprocess.Popen(worker_command(spec, slot.path), env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        waiting = (names.WAITING_FOR_DEVICE, names.WAITING_FOR_JACK)
        state = None
        for line in worker.stdout:       # the worker's events, until it says it waits
            event = parse_event(line)
            if isinstance(event, StateEvent):
                state = event.state
                if state in waiting:
                    break
        assert state in waiting
        for _ in range(500):
            worker.send_signal(signal.SIGTERM)
        # 0, or killed by one of the last signals once Python, exiting, gave them back to the
        # system; never still there (before, one burst in about six left it deadlocked)
        assert worker.wait(15) in (0, -signal.SIGTERM)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
