"""What a listener gets, per direction of each card, measured against the card's own clock.

Runs in the benchmark process after a stage run (stage.py), on its files. Both directions carry
a sine per channel that is an exact function of its source's frame index: capture, the card's
own sine (channel c: sine_hz + c·step Hz at card frame n); playback, the measuring client's sine
at JACK frame j. Blocks of about 85 ms are fitted (four parameters: the tone's amplitude, phase,
offset and frequency); a block's phase says which source frame it came from, modulo one period
of the tone, and the phase difference of channels 0 and 1 (2 Hz apart) says it modulo half a
second, so the delay is absolute (a mono card: continuity from the delay the bridge reports).
With the card's clock (testbench.vcard.CardClock) and JACK's (timeaxis.JackTimeline) on one
time axis, each block gives the direction's delay in JACK frames:

  capture:  D = j − J(T_card(n))   j: the block's JACK frame, n: the card frame it carries
  playback: D = J(T_card(n)) − j   n: the block's card frame, j: the JACK frame it carries

(J: JACK frame at a CLOCK_MONOTONIC time, T_card: the time the card's sample clock reaches a
frame), the figure JACK's port latency ranges describe. A bridge applying exactly the true
ratio (card rate / JACK rate on one clock, wander included) keeps D constant; the slope of D is
the applied ratio's error.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from testbench.sinefit import fit_blocks
from timeaxis import unwrap_frames

BLOCK_48K = 4096              # block length at 48 kHz (scaled with the rate: ~85 ms)
WINDOW_S = 4.0                # ratio error windows
WINDOW_STEP_S = 0.5
RELOCK_WINDOW_S = 2.0         # after an event: shorter windows, finer steps
RELOCK_STEP_S = 0.25
HOLD_S = 5.0                  # a lock holds this long
THD_WINDOW_S = 10.0
THD_TARGET_DB = -96.0         # the target for every window without a card xrun
NO_SIGNAL = 0.5               # a block whose tone is below half its level carries no signal
CLEAN_DB = -40.0              # a block this clean carries its tone for sure (start, continuity)
BEFORE_S = 5.0                # delay before an event: median over this long ...
GUARD_S = 0.3                 # ... ending this long before it
XRUN_SETTLE_S = 2.0           # steady windows leave out a card xrun and this long after it
SETTLED_S = 5.0               # without a re-lock, the delay after an event is read this long after

PRE, GOOD, DROPOUT, GAP = 0, 1, 2, 3


@dataclass
class Series:
    """One direction of one card, per block."""
    direction: str
    t: np.ndarray             # s since the bridges started (block centre)
    delay: np.ndarray         # JACK frames (NaN: unknown)
    thd_db: np.ndarray        # the block's THD+N (dB; 0 for a dropout)
    damage: np.ndarray        # residual power counted for THD+N (nominal power for a dropout)
    state: np.ndarray         # PRE (no signal yet), GOOD, DROPOUT, GAP (the meter missed it)
    nominal_power: float
    block_s: float
    ambiguity: float = 0.0    # a mono card's delay is known only modulo this (JACK frames)


def _blocks(x: np.ndarray, n: int):
    k = len(x) // n
    b = x[:k * n].reshape(k, n).astype(np.float64)
    nan = np.isnan(b)
    frac = nan.mean(axis=1)
    return np.where(nan, 0.0, b), frac


def _resolve(frames0: np.ndarray, period0: float, coarse: np.ndarray | None,
             expected: np.ndarray, beat_period: float, guess: float | None,
             clean: np.ndarray) -> np.ndarray:
    """Source frames carried by each block: frames0 (mod period0) made absolute with the
    two-channel coarse value (mod beat_period) near `expected − delay`, or for a mono card by
    continuity (over `clean` blocks) from `guess` (the delay, in source frames)."""
    out = np.full(len(frames0), np.nan)
    if coarse is not None:
        lo = 0.02 * beat_period
        delay = np.mod(expected - coarse + lo, beat_period) - lo
        near = expected - delay
        out = frames0 + period0 * np.round((near - frames0) / period0)
        return out
    last = guess
    for i in range(len(frames0)):
        if not np.isfinite(frames0[i]) or last is None:
            continue
        near = expected[i] - last
        out[i] = frames0[i] + period0 * np.round((near - frames0[i]) / period0)
        if clean[i]:                  # only a clean block carries the delay on to the next
            last = expected[i] - out[i]
    return out


def _states(fits0, nan_frac, level, gap_means_dropout: bool):
    amp_ok = fits0.amplitude >= NO_SIGNAL * level
    state = np.where(amp_ok & (nan_frac < 0.1), GOOD, DROPOUT)
    if not gap_means_dropout:
        state = np.where(nan_frac >= 0.1, GAP, state)
    # the tone has started at the first block that carries it cleanly (not a half-filled one)
    clean = np.nonzero((state == GOOD) & (fits0.thd_n_db() < CLEAN_DB))[0]
    first = clean[0] if len(clean) else len(state)
    state[:first] = np.where(state[:first] == GAP, GAP, PRE)
    return state


@dataclass
class _Carried:
    """What the blocks of one direction carry: state, THD+N and lost power per block, and the
    source frame each block's centre came from (NaN where unknown)."""
    state: np.ndarray
    thd: np.ndarray
    damage: np.ndarray
    frames: np.ndarray
    nominal: float
    ambiguity: float              # frames of the source the result is known modulo (mono)


def _carried(channels: list, n: int, w0, freqs: list, source_rate: int, expected: np.ndarray,
             guess, level: float, gap_means_dropout: bool) -> _Carried:
    """Fit the blocks of channel 0 (four parameters from w0) and 1 (its phase only); say which
    source frame each block's centre carries, near `expected` − delay (two channels: the 2 Hz
    beat; mono: continuity from `guess`, the delay in source frames)."""
    b0, frac0 = _blocks(channels[0], n)
    fits0 = fit_blocks(b0, w0)
    fits1 = None
    if len(channels) > 1:
        b1 = _blocks(channels[1], n)[0][:len(b0)]
        fits1 = fit_blocks(b1, fits0.w * freqs[1] / freqs[0], iterations=0)
    state = _states(fits0, frac0, level, gap_means_dropout)
    nominal = level ** 2 / 2
    damage = np.where(state == DROPOUT, nominal, fits0.residual_power)
    thd = np.where(state == DROPOUT, 0.0, fits0.thd_n_db())
    period0 = source_rate / freqs[0]
    frames0 = np.where(state == GOOD, np.mod(fits0.phase, 2 * np.pi) * period0 / (2 * np.pi),
                       np.nan)
    coarse, beat = None, 0.0
    if fits1 is not None:
        beat = source_rate / (freqs[1] - freqs[0])
        coarse = np.mod(fits1.phase - fits0.phase, 2 * np.pi) * beat / (2 * np.pi)
    frames = _resolve(frames0, period0, coarse, expected, beat, guess,
                      fits0.thd_n_db() < CLEAN_DB)
    return _Carried(state, thd, damage, frames, nominal, 0.0 if fits1 is not None else period0)


def capture_series(recordings: list, first_frame: int, jack_rate: int, timeline, clock,
                   freqs: list, level: float, t0_ns: int, cycles, guess_frames=None) -> Series:
    """The capture direction from the recorder's channels 0 (and 1) of one card."""
    n = int(round(BLOCK_48K * jack_rate / 48000))
    centre = first_frame + np.arange(len(recordings[0]) // n) * n + (n - 1) / 2
    near = np.interp(centre, unwrap_frames(cycles["frame_time"]),
                     (cycles["mono_ns"].astype(np.float64) + cycles["mono2_ns"]) / 2)
    t_centre = timeline.time_of(centre, near)                       # JACK frame -> time
    w0 = 2 * np.pi * freqs[0] * clock.speed(t_centre) / clock.rate / jack_rate
    guess = guess_frames * clock.rate / jack_rate if guess_frames is not None else None
    got = _carried(recordings, n, w0, freqs, clock.rate, clock.position(t_centre, pointer=False),
                   guess, level, gap_means_dropout=False)
    delay = centre - timeline.frames_at(clock.time_of(got.frames))
    return Series("capture", (t_centre - t0_ns) / 1e9, np.where(got.state == GOOD, delay, np.nan),
                  got.thd, got.damage, got.state, got.nominal, n / jack_rate,
                  got.ambiguity * jack_rate / clock.rate)


def playback_series(channels: list, first_frame: int, jack_rate: int, timeline, clock,
                    freqs: list, level: float, t0_ns: int, guess_frames=None) -> Series:
    """The playback direction from the tap's channels 0 (and 1) of one card."""
    n = int(round(BLOCK_48K * clock.rate / 48000))
    centre = first_frame + np.arange(len(channels[0]) // n) * n + (n - 1) / 2
    t_centre = clock.time_of(centre)                                # card frame -> time
    w0 = 2 * np.pi * freqs[0] / clock.speed(t_centre)
    expected = timeline.frames_at(t_centre)                         # JACK frame at that time
    got = _carried(channels, n, w0, freqs, jack_rate, expected, guess_frames, level,
                   gap_means_dropout=True)
    return Series("playback", (t_centre - t0_ns) / 1e9,
                  np.where(got.state == GOOD, expected - got.frames, np.nan), got.thd,
                  got.damage, got.state, got.nominal, n / clock.rate, got.ambiguity)


# -- figures ------------------------------------------------------------------------------------

def theil_sen(t: np.ndarray, d: np.ndarray) -> float:
    i, j = np.triu_indices(len(t), 1)
    dt = t[j] - t[i]
    keep = dt > 0
    return float(np.median((d[j] - d[i])[keep] / dt[keep]))


def ratio_error(s: Series, jack_rate: int, length: float, step: float, t_from: float,
                t_to: float) -> tuple[np.ndarray, np.ndarray]:
    """(window end times, ratio error in ppm) for windows of `length` s ending every `step` s
    from t_from + length to t_to, each entirely inside [t_from, t_to]; NaN where fewer than
    60 % of the window's blocks carry a delay."""
    ends = np.arange(t_from + length, t_to + 1e-9, step)
    out = np.full(len(ends), np.nan)
    ok = np.isfinite(s.delay)
    need = 0.6 * length / s.block_s
    for i, e in enumerate(ends):
        sel = ok & (s.t > e - length) & (s.t <= e)
        if sel.sum() >= max(need, 4):
            out[i] = theil_sen(s.t[sel], s.delay[sel]) / jack_rate * 1e6
    return ends, out


def lock_time(ends: np.ndarray, err: np.ndarray, limit: float, hold: float = HOLD_S):
    """The first window end from which every window in the next `hold` s is within ±limit."""
    good = np.isfinite(err) & (np.abs(err) <= limit)
    for i, e in enumerate(ends):
        span = (ends >= e) & (ends <= e + hold)
        if ends[-1] < e + hold:
            return None
        if good[i] and good[span].all():
            return float(e)
    return None


def median_between(s: Series, a: float, b: float) -> float | None:
    sel = np.isfinite(s.delay) & (s.t >= a) & (s.t < b)
    return float(np.median(s.delay[sel])) if sel.sum() >= 3 else None


def after_event(s: Series, jack_rate: int, start: float, end: float, until: float) -> dict:
    """Re-lock after an event that ran from `start` to `end` (s): the first moment from which
    the ratio error (2 s windows after `end`) stays within ±2 ppm for 5 s, and the delay then
    against the delay before the event."""
    before = median_between(s, start - BEFORE_S, start - GUARD_S)
    ends, err = ratio_error(s, jack_rate, RELOCK_WINDOW_S, RELOCK_STEP_S, end, until)
    relock = lock_time(ends, err, 2.0) if len(ends) else None
    # the delay once re-locked, else where it is 5 s after the event
    a = relock if relock is not None else min(end + SETTLED_S, until - 3.0)
    after = median_between(s, a, min(a + 3.0, until))
    return {"relock_s": None if relock is None else relock - end,
            "delay_before": before, "delay_after": after,
            "delay_jump": None if before is None or after is None else after - before}


def thd_windows(s: Series, length: float, end: float) -> list[dict]:
    """THD+N per `length`-s window from 0 to `end`: the residual power of every block after the
    first signal (a dropout counts as the whole tone lost) over the tone's nominal power."""
    out = []
    for a in np.arange(0.0, end - 1e-9, length):
        sel = (s.t >= a) & (s.t < a + length) & ((s.state == GOOD) | (s.state == DROPOUT))
        if not sel.any():
            continue
        total = 10 * np.log10(max(s.damage[sel].sum(), 1e-30) / (s.nominal_power * sel.sum()))
        out.append({"from": float(a), "to": float(a + length), "thd_n_db": float(total),
                    "worst_block_db": float(np.max(s.thd_db[sel])),
                    "dropouts": int((s.state[sel] == DROPOUT).sum())})
    return out


def rounded(values, digits: int) -> list:
    """A series for results.json: floats to `digits` decimals, None where not finite."""
    return [round(float(v), digits) if np.isfinite(v) else None for v in values]


def count_in(times, a: float, b: float) -> int:
    times = np.asarray(times, np.float64)
    return int(((times >= a) & (times < b)).sum())


def trimmed(s: Series, end: float) -> Series:
    """The blocks that lie entirely within the run (the bridges stop at `end`)."""
    keep = s.t + s.block_s / 2 <= end
    return Series(s.direction, s.t[keep], s.delay[keep], s.thd_db[keep], s.damage[keep],
                  s.state[keep], s.nominal_power, s.block_s, s.ambiguity)


def assess(s: Series, jack_rate: int, layout, events: dict, card_xrun_s, jack_xrun_s,
           reported: tuple | None) -> dict:
    """The figures of one direction: lock, steady ratio error, THD+N per window, latency,
    re-lock after the run's events, what happened at natural card xruns."""
    s = trimmed(s, layout.seconds)
    first_event = min([v[0] for v in events.values()] + [layout.seconds])
    ends, err = ratio_error(s, jack_rate, WINDOW_S, WINDOW_STEP_S, 0.0, layout.seconds)
    before_events = ends <= first_event
    started = s.t[s.state == GOOD]
    fig = {"direction": s.direction, "start_s": float(started[0]) if len(started) else None,
           "lock_2ppm_s": lock_time(ends[before_events], err[before_events], 2.0),
           "lock_10ppm_s": lock_time(ends[before_events], err[before_events], 10.0)}
    # steady: windows from steady_from on, outside each event and its settling time, and
    # without a card xrun (what one costs is measured at the xrun: natural_xruns)
    steady = np.isfinite(err) & (ends >= layout.steady_from)
    for a, b in events.values():
        steady &= ~((ends > a) & (ends - WINDOW_S < b + layout.settle))
    outside_events = steady.copy()
    for x in card_xrun_s:
        steady &= ~((ends > x) & (ends - WINDOW_S < x + XRUN_SETTLE_S))
    vals = np.abs(err[steady])
    fig["steady_windows"] = int(len(vals))
    fig["windows_with_card_xruns"] = int((outside_events & ~steady).sum())
    fig["ratio_err_median_ppm"] = float(np.median(vals)) if len(vals) else None
    fig["ratio_err_p95_ppm"] = float(np.percentile(vals, 95)) if len(vals) else None
    fig["ratio_err_max_ppm"] = float(vals.max()) if len(vals) else None
    # THD+N per window, and what each window held
    windows = thd_windows(s, THD_WINDOW_S, layout.seconds)
    for w in windows:
        w["card_xruns"] = count_in(card_xrun_s, w["from"], w["to"])
        w["jack_xruns"] = count_in(jack_xrun_s, w["from"], w["to"])
        w["events"] = [name for name, (a, b) in events.items()
                       if a < w["to"] and b > w["from"]]
    clean = [w["thd_n_db"] for w in windows if not w["card_xruns"] and not w["events"]]
    fig["thd_windows"] = windows
    fig["thd_n_worst_db"] = max(clean) if clean else None
    fig["thd_n_median_db"] = float(np.median(clean)) if clean else None
    fig["thd_n_windows_clean"] = len(clean)
    fig["thd_n_windows_passing"] = sum(1 for v in clean if v <= THD_TARGET_DB)
    fig["dropout_blocks"] = int((s.state == DROPOUT).sum())
    fig["gap_blocks"] = int((s.state == GAP).sum())
    # latency: measured before the first event against what the bridge reports to JACK
    measured = median_between(s, layout.steady_from, first_event)
    fig["latency_measured"] = measured
    fig["latency_reported"] = reported
    # mono: the delay is resolved near the reported one, so it is known modulo a tone period
    fig["latency_ambiguity"] = s.ambiguity
    if measured is not None and reported is not None:
        lo, hi = reported
        fig["latency_error"] = measured - lo if measured < lo else measured - hi if measured > hi else 0.0
    else:
        fig["latency_error"] = None
    # events
    ordered = sorted(events.items(), key=lambda kv: kv[1][0])
    for i, (name, (a, b)) in enumerate(ordered):
        until = ordered[i + 1][1][0] if i + 1 < len(ordered) else layout.seconds
        fig[name] = after_event(s, jack_rate, a, b, until)
    # natural card xruns, away from the events: did the delay come back within a frame?
    natural = []
    for x in card_xrun_s:
        if any(a - 1.0 <= x <= b + layout.settle for a, b in events.values()):
            continue
        before = median_between(s, x - BEFORE_S, x - GUARD_S)
        after = median_between(s, x + 3.0, x + 6.0)
        natural.append({"t": float(x), "delay_jump": None if before is None or after is None
                        else after - before})
    fig["natural_xruns"] = natural
    fig["series"] = {"t": rounded(s.t, 3), "delay": rounded(s.delay, 3),
                     "err_t": rounded(ends, 2), "err_ppm": rounded(err, 3)}
    return fig
