"""The ALSA thread's wait for a card period (engine/stream.py wait_for_period), on stand-ins
for a PCM whose descriptors wake the poll at once but never say ready: the wait ends with a
re-sync after its limit instead of spinning for ever. A pure unit: the real card's side is
tested in test_engine.py.

Runs in the pytest process.
"""

from __future__ import annotations

import select
import threading
import time

import alsaaudio
import pytest

from cardbridge.engine.pcmio import DeviceGone
from cardbridge.engine.sides import Xrun
from cardbridge.engine.stream import Resync, wait_for_period


class Poller:
    def __init__(self):
        self.calls = 0

    def poll(self, timeout_ms):
        self.calls += 1
        return [(3, select.POLLIN)]          # woken at once, every time


class Pcm:
    def __init__(self, revents, state=alsaaudio.PCM_STATE_RUNNING):
        self.revents = revents
        self._state = state

    def polldescriptors_revents(self, events):
        return self.revents(self) if callable(self.revents) else self.revents

    def state(self):
        return self._state


def test_a_card_that_wakes_the_poll_but_never_gets_ready_ends_in_a_resync():
    poller = Poller()
    t0 = time.monotonic()
    with pytest.raises(Resync, match="no capture period ready for 200 ms"):
        wait_for_period(poller, Pcm(0), "capture", select.POLLIN, threading.Event(), 0.2)
    assert 0.2 <= time.monotonic() - t0 < 5.0
    assert poller.calls > 1


def test_ready_returns_and_errors_say_what_they_are():
    stop = threading.Event()
    wait_for_period(Poller(), Pcm(select.POLLIN), "capture", select.POLLIN, stop, 0.2)
    with pytest.raises(Xrun, match="playback underrun"):
        wait_for_period(Poller(), Pcm(select.POLLERR, alsaaudio.PCM_STATE_XRUN), "playback",
                        select.POLLOUT, stop, 0.2)
    with pytest.raises(DeviceGone):
        wait_for_period(Poller(), Pcm(select.POLLERR, alsaaudio.PCM_STATE_DISCONNECTED),
                        "playback", select.POLLOUT, stop, 0.2)
    stop.set()
    with pytest.raises(Resync, match="stopping"):
        wait_for_period(Poller(), Pcm(0), "capture", select.POLLIN, stop, 10.0)
