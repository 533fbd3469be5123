"""Drift controller (cardbridge.drift) on synthetic clocks: unit checks and whole-loop simulations.

Runs in: the test process. Pure computation, fixed seeds; every threshold is on simulated
quantities (ratio, delay, simulated seconds), never on wall-clock time.
"""

from __future__ import annotations

import math

import pytest

from cardbridge.drift import PeriodDLL, RatioLoop, jack_frames_at
from clocksim import SimConfig, simulate

pytestmark = pytest.mark.timeout(120)


# -- units -------------------------------------------------------------------------------------
def test_jack_frames_at_interpolates_and_extrapolates():
    cycle = (1000, 2_000_000, 2_005_000, 256)           # 256 frames over 5 ms
    assert jack_frames_at(2.0, *cycle) == pytest.approx(1000)
    assert jack_frames_at(2.0025, *cycle) == pytest.approx(1128)
    assert jack_frames_at(2.010, *cycle) == pytest.approx(1512)   # beyond t_next
    assert jack_frames_at(1.995, *cycle) == pytest.approx(744)    # before t_start
    assert jack_frames_at(2.0, 5, 10, 10, 256) == 5            # degenerate record


def _feed(dll, times, pasts=None):
    return [dll.update(t, 0 if pasts is None else p) for t, p in zip(times, pasts or [0] * len(times))]


def test_dll_exact_on_clean_timestamps():
    rate, period = 48000.0, 256
    true_rate = rate * (1 + 300e-6)
    dll = PeriodDLL(period, rate)
    times = [100.0 + k * period / true_rate for k in range(1, 2000)]
    assert all(_feed(dll, times))
    assert dll.ready
    assert dll.t1 == pytest.approx(times[-1], abs=1e-9)
    assert dll.t0 == pytest.approx(times[-2], abs=1e-9)
    assert dll.frames == period * len(times)
    assert dll.rate_estimate == pytest.approx(true_rate, rel=1e-8)
    assert dll.time_at(dll.frames + period) == pytest.approx(times[-1] + period / true_rate, abs=1e-9)


def test_dll_backdates_and_takes_several_periods_per_wakeup():
    rate, period = 48000.0, 256
    dll = PeriodDLL(period, rate)
    pt = period / rate
    for k in range(1, 200):
        assert dll.update(50.0 + k * pt + 0.0007, 0.0007 * rate)   # woke 0.7 ms late
    # a late wake-up with three periods pending: same t_wake, decreasing `past`
    t_wake = 50.0 + 202 * pt + 0.0003
    for pending in (2, 1, 0):
        assert dll.update(t_wake, pending * period + 0.0003 * rate)
    assert dll.t1 == pytest.approx(50.0 + 202 * pt, abs=1e-7)
    assert dll.rate_estimate == pytest.approx(rate, rel=1e-6)


def test_dll_detects_stall_and_backwards_time():
    dll = PeriodDLL(256, 48000.0)
    pt = 256 / 48000.0
    for k in range(1, 100):
        dll.update(10.0 + k * pt, 0)
    assert dll.update(10.0 + 100 * pt + 0.1, 0) is False      # 100 ms stall, no back-dating
    assert not dll.ready and dll.frames == 256 and dll.resets == 1
    assert dll.update(10.0 + 101 * pt + 0.1, 0) and dll.ready
    assert dll.update(5.0, 0) is False                          # time went backwards
    assert dll.resets == 2


def test_loop_sign_clamp_and_resync():
    loop = RatioLoop(1.0, 187.5)
    for _ in range(20):
        loop.update(+1.0)                       # too much buffered → lower ratio
    assert loop.ratio < 1.0 and not loop.needs_resync
    loop.reset()
    for _ in range(20):
        loop.update(-1.0)
    assert loop.ratio > 1.0
    loop.reset()
    loop.update(600.0)                          # beyond resync_frames: ignored, flagged
    assert loop.needs_resync and loop.ratio == 1.0
    loop.reset()
    loop.update(float("nan"))
    assert loop.needs_resync
    loop.reset()
    for _ in range(20000):                      # a card far beyond the clamp
        loop.update(-400.0)
        if loop.needs_resync:
            break
    assert loop.needs_resync
    assert loop.ratio <= 1.0 + 2000e-6 + 1e-12


def test_loop_reset_keeps_learnt_ratio_and_drift_sign():
    cap = RatioLoop(48000 / 44100, 44100 / 256, direction="capture")
    cap.reset(48000 / 44100 / (1 + 100e-6))     # card 100 ppm fast
    assert cap.ratio == pytest.approx(48000 / 44100 / (1 + 100e-6))
    assert cap.drift_ppm == pytest.approx(100.0, abs=1e-6)
    pb = RatioLoop(44100 / 48000, 44100 / 256, direction="playback")
    pb.reset(44100 / 48000 * (1 + 100e-6))
    assert pb.drift_ppm == pytest.approx(100.0, abs=1e-6)
    pb.reset(pb.ratio, warm=True)
    assert pb.bandwidth < pb.start_bandwidth


def test_loop_bad_arguments_raise_value_error():
    with pytest.raises(ValueError):
        RatioLoop(0.0, 100.0)
    with pytest.raises(ValueError):
        RatioLoop(1.0, 100.0, direction="sideways")
    with pytest.raises(ValueError):
        PeriodDLL(0, 48000.0)


# -- whole loop on synthetic clocks ---------------------------------------------------------------
def _check_steady(r, after=20.0, p95=1.0, pp=2.0):
    assert not r.resyncs
    assert r.ratio_p95_ppm(after) <= p95
    assert r.delay_pp(after) <= pp
    assert r.locked[-1]


@pytest.mark.parametrize("ppm", [-1000, -500, -100, 0, 143, 500, 1000])
def test_offsets_lock_fast_and_hold(ppm):
    r = simulate(SimConfig(ppm=ppm, seconds=40, seed=1000 + ppm))
    # the mean ratio of the first 10 s (from the start) is already within 2 ppm of the truth
    assert abs(r.window_mean_error_ppm(0.0, 10.0)) <= 2.0
    assert r.lock_time(2.0) <= (0.0 if abs(ppm) <= 500 else 2.0)
    assert r.drift_ppm == pytest.approx(ppm, abs=0.5)
    _check_steady(r)


@pytest.mark.parametrize("ppm", [-500, 0, 500])
def test_wander_lock_within_10s(ppm):
    """20 ppm sinusoidal wander (45 s period) on top of the offset."""
    r = simulate(SimConfig(ppm=ppm, wander_ppm=20, wander_period=45, seconds=40, seed=3))
    assert abs(r.window_mean_error_ppm(0.0, 10.0)) <= 2.0
    assert r.lock_time(2.0) == 0.0             # every 10 s window from the start is within 2 ppm
    assert not r.resyncs
    # tracking a 20 ppm / 45 s wander costs ratio accuracy (≈2 ppm p95), not delay stability
    assert r.ratio_p95_ppm(20.0) <= 3.0
    assert r.delay_pp(20.0) <= 2.0


def test_scheduler_jitter_and_late_wakeups():
    r = simulate(SimConfig(ppm=-300, jitter_us=300, late_prob=0.01, late_ms=(5, 20),
                           periods=6, seconds=40, seed=5))
    _check_steady(r)


def test_usb_pointer_steps_need_backdating():
    # 0-300 µs wake-up latency after each 1 ms step stays in the timestamps even when
    # back-dated; trimming after 48 periods (0.25 s) instead of 8 keeps DLL noise out of the trim.
    base = dict(ppm=77, usb_step=0.001, jitter_us=300, seconds=40, seed=6, trim_after=48)
    good = simulate(SimConfig(**base))
    bad = simulate(SimConfig(backdate=False, **base))
    assert not good.resyncs and not bad.resyncs
    assert abs(good.window_mean_error_ppm(0.0, 10.0)) <= 2.0
    assert bad.lock_time(2.0) > good.lock_time(2.0) + 10.0     # 9 s vs 29.5 s here
    assert good.ratio_p95_ppm(20.0) * 5 < bad.ratio_p95_ppm(20.0)
    assert good.delay_pp(20.0) * 4 < bad.delay_pp(20.0)
    assert good.delay_pp(20.0) <= 2.0          # ratio p95 with USB steps: ≈8-10 ppm (112 without)


@pytest.mark.parametrize("direction,ppm", [("capture", 200), ("playback", -200)])
def test_44k1_card_on_48k_jack(direction, ppm):
    r = simulate(SimConfig(rate=44100, ppm=ppm, direction=direction, seconds=40, seed=7))
    assert abs(r.window_mean_error_ppm(0.0, 10.0)) <= 2.0
    assert r.drift_ppm == pytest.approx(ppm, abs=0.5)
    _check_steady(r)


def test_skipped_jack_cycles():
    r = simulate(SimConfig(ppm=200, skip_prob=0.05, seconds=40, seed=8))
    assert abs(r.window_mean_error_ppm(0.0, 10.0)) <= 2.0
    _check_steady(r)


def test_stall_relocks_within_5s_20_of_20():
    times = []
    for seed in range(20):
        stall = 18.0 + 0.05 * seed
        r = simulate(SimConfig(ppm=-400 + 40 * seed, seconds=26, seed=100 + seed, stalls=(stall,)))
        assert r.resyncs, "a 100 ms stall overruns a 2-period buffer"
        times.append(r.relock_time(stall))
    assert max(times) <= 5.0, times


def test_stall_without_overrun_is_absorbed():
    """A buffer deep enough for the stall: every pending period is read, no resync at all."""
    r = simulate(SimConfig(ppm=300, periods=32, seconds=30, seed=9, stalls=(15.0,)))
    assert not r.resyncs
    assert r.delay_pp(20.0) <= 2.0
    assert not math.isinf(r.relock_time(15.0))
