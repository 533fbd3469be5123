"""A bridge worker told to stop by signals: however many arrive and whenever, it exits.

Runs in the pytest process; the worker is a real `cardbridge.engine.worker` process, waiting for
a card that is not there (its main thread then sits in its command loop, where a signal handler
that took the command queue's lock used to deadlock it for good).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from cardbridge import names
from cardbridge.engine.spec import BridgeSpec
from cardbridge.engine.stats import StatsSlot


def test_a_burst_of_sigterms_stops_the_worker(tmp_path):
    slot = StatsSlot(str(tmp_path / "stats"), create=True)
    spec = BridgeSpec(device_id="nowhere", pcm="nowhere", client_name="cbsig",
                      jack_server=f"cbsig-absent-{os.getpid()}")
    env = dict(os.environ, JACK_NO_START_SERVER="1")
    worker = subprocess.Popen([sys.executable, "-m", "cardbridge.engine.worker", "--spec",
                               spec.to_json(), "--stats", slot.path], env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        waiting = (names.WAITING_FOR_DEVICE, names.WAITING_FOR_JACK)
        while slot.snapshot()["state"] not in waiting and time.monotonic() < deadline:
            time.sleep(0.05)
        assert slot.snapshot()["state"] in waiting
        for _ in range(500):
            worker.send_signal(signal.SIGTERM)
        # 0, or killed by one of the last signals once Python, exiting, gave them back to the
        # system; never still there (before, one burst in about six left it deadlocked)
        assert worker.wait(15) in (0, -signal.SIGTERM)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
