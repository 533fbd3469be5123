"""The headroom policy on its own: when repeated short dropouts give a card one more period.

Pure unit tests (no I/O); the engine test that drives it through a real card is in test_engine.py.
"""

import pytest

from cardbridge.config import check_bridge_options, parse_config
from cardbridge.errors import InvalidArgument
from cardbridge.headroom import WINDOW_S, XRUNS, Headroom

PERIOD_S = 256 / 48000.0


def test_repeated_short_dropouts_add_one_period_at_a_time_up_to_the_ceiling():
    h = Headroom(periods=2, max_periods=4)
    now = 100.0
    raised = []
    for i in range(4 * XRUNS):
        now += 1.0
        if h.on_xrun(now, 2.5 * PERIOD_S, PERIOD_S):
            raised.append((i, h.periods))
    # every XRUNS-th dropout raises it, and it stops at the ceiling
    assert raised == [(XRUNS - 1, 3), (2 * XRUNS - 1, 4)]
    assert h.periods == 4


def test_dropouts_far_apart_do_not_add_periods():
    h = Headroom(periods=2, max_periods=4)
    for i in range(10):
        assert not h.on_xrun(1000.0 + i * (WINDOW_S / (XRUNS - 1) + 0.1), 2.5 * PERIOD_S, PERIOD_S)
    assert h.periods == 2


def test_long_stalls_are_not_the_buffers_fault():
    """A stopped process or a 100 ms freeze: one more period would not have covered it."""
    h = Headroom(periods=2, max_periods=4)
    for i in range(10):
        assert not h.on_xrun(10.0 + i * 0.5, 0.1, PERIOD_S)
    # a gap of one period more than the buffer still counts, a little longer does not
    assert not h.on_xrun(20.0, 3.2 * PERIOD_S, PERIOD_S)
    assert h.recent == []
    h.on_xrun(20.0, 2.9 * PERIOD_S, PERIOD_S)
    assert len(h.recent) == 1


def test_unknown_gap_and_fixed_latency():
    h = Headroom(periods=2, max_periods=4)
    for i in range(10):
        assert not h.on_xrun(float(i), None, PERIOD_S)   # the stream had not started
    fixed = Headroom(periods=3, max_periods=3)
    for i in range(10):
        assert not fixed.on_xrun(float(i), PERIOD_S, PERIOD_S)
    assert fixed.periods == 3
    # a ceiling below the start is the start
    assert Headroom(periods=5, max_periods=2).max_periods == 5


def test_max_periods_is_a_checked_setting():
    assert parse_config("max_periods = 3\n").max_periods == 3
    assert parse_config("").max_periods == 4
    with pytest.raises(InvalidArgument, match="max_periods"):
        parse_config("max_periods = 1\n")
    with pytest.raises(InvalidArgument, match="whole number"):
        check_bridge_options({"max_periods": "4"}, "Attach")
