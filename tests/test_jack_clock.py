"""The rings follow the card's clock when the JACK server loses time.

A JACK dummy server that wakes up late (stopped, or a host that took the CPU away) starts its
next cycle late without moving its frame counter on: JACK's clock lost that time. A card does
not stop meanwhile, so the compiled process callback skips the frames of the lost time, as it
does for skipped cycles, and the ring counters keep the pace of real time. Without it, every such
hiccup of the server moved the rings out of phase with the card and the bridge had to re-sync.

Runs in the pytest process: a JackSide (the worker's JACK client and rings) on a real jackd.
"""

import contextlib
import os
import queue
import random
import signal
import time

import pytest

from cardbridge.engine._rtcore import lib
from cardbridge.engine.jackside import JackSide
from cardbridge.engine.queues import Queues

from engine_helpers import jack_server_xruns

RATE = 48000
PERIOD = 256


def last_cycle(side: JackSide):
    """The record of the last cycle, waiting while the timeline holds it: after a move of the
    server's schedule it does for a quarter second more (the move is checked), up to 0.6 s."""
    for _ in range(1000):
        cyc = side.queues.read_cycle_rt()
        if cyc is not None:
            return cyc
        time.sleep(0.001)
    raise AssertionError("the timeline held the cycle record for a second")


def counters(side: JackSide) -> tuple[float, int, int, int]:
    """(now, JACK's own frame count, the timeline's frame count, capture ring read position)."""
    cyc = last_cycle(side)
    return time.monotonic(), int(side.queues.shared.jack_frames), int(cyc[0]), int(cyc[4])


def timeline_position(side: JackSide) -> float:
    """Where the timeline says JACK's frame count is now, less real time (both in frames)."""
    cyc = last_cycle(side)
    now = lib.cb_now_usecs()
    return int(cyc[0]) + (now - int(cyc[1])) * RATE / 1e6 - now * RATE / 1e6


@contextlib.contextmanager
def active_side(server, name: str):
    """A duplex JackSide on `server`, activated and given a second to run, closed afterwards."""
    side = JackSide(name, server.name, Queues(2, 2), name, queue.SimpleQueue())
    side.open()
    try:
        side.activate()
        time.sleep(1.0)
        yield side
    finally:
        side.close()


def test_ring_counters_keep_real_time_when_jack_loses_time(jack_server):
    with active_side(jack_server, "clockcheck") as side:
        t0, jack0, line0, rd0 = counters(side)
        times0 = side.queues.shared.lost_times
        for _ in range(4):
            os.kill(jack_server.pid, signal.SIGSTOP)
            time.sleep(0.06)
            os.kill(jack_server.pid, signal.SIGCONT)
            time.sleep(0.5)
        t1, jack1, line1, rd1 = counters(side)
        times = side.queues.shared.lost_times - times0
    real = (t1 - t0) * RATE
    lost = real - (jack1 - jack0)
    if lost < 4 * 0.03 * RATE:
        pytest.skip(f"this jackd caught up after its stops (lost only {lost:.0f} frames)")
    assert times >= 4, (times, lost, side.queues.shared.lost_frames, side.queues.shared.skipped_frames)
    # the timeline and the capture ring were read at the pace of real time, within a few periods
    # of sampling them (at cycle starts) and of the timeline's own filtering
    assert abs((line1 - line0) - real) < 4 * PERIOD, (line1 - line0, real, lost)
    assert abs((rd1 - rd0) - real) < 4 * PERIOD, (rd1 - rd0, real, lost)


def test_skips_do_not_add_up_to_a_drift(jack_server):
    """Stops from just over a period (the server restarts its schedule a fraction of a period
    later) to several periods: each is skipped to within a frame, so that forty of them leave the
    timeline where real time is. A frame too many or too few at each, once a second, would be a
    drift of 20 ppm that every bridge on this server would learn."""
    rnd = random.Random(7)
    with active_side(jack_server, "clockdrift") as side:
        time.sleep(2.0)            # the timeline leaves its wide start
        before = timeline_position(side)
        times0 = side.queues.shared.lost_times
        for _ in range(40):
            os.kill(jack_server.pid, signal.SIGSTOP)
            time.sleep(rnd.uniform(0.006, 0.03))
            os.kill(jack_server.pid, signal.SIGCONT)
            time.sleep(rnd.uniform(0.35, 0.6))
        after = timeline_position(side)
        times = side.queues.shared.lost_times - times0
    assert times >= 20, times
    # relative to real time, in frames (at 48 kHz a frame is 21 us)
    assert abs(after - before) < 24, (after - before, times)


def test_timeline_follows_a_quiet_server(jack_server):
    """No stall: the timeline is JACK's frame count, nothing is skipped."""
    with active_side(jack_server, "clockquiet") as side:
        _, jack0, line0, _ = counters(side)
        time.sleep(2.0)
        _, jack1, line1, _ = counters(side)
        lost = side.queues.shared.lost_times
    if jack_server_xruns(jack_server):
        pytest.skip("the machine stalled the JACK server")
    assert lost == 0
    # sampled at different moments of a cycle: JACK's count may be a cycle further
    assert abs((line1 - line0) - (jack1 - jack0)) <= 256
