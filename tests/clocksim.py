"""Synthetic-clock simulator of one bridge direction driven by cardbridge.drift.

Runs in: the test process (pure Python + numpy, no I/O). It plays the engine's part exactly as
the ALSA thread does (wake up, read every pending period, back-date by `past`, DLL, JACK cycle
record, delay error, ratio loop, trim and resync), against:

- a card whose clock runs at rate·(1 + ppm·1e-6 + wander·1e-6·sin(2πt/T + φ)); its hardware
  pointer moves continuously (integer frames) or in 1 ms steps (USB);
- wake-ups delayed by scheduler jitter (uniform 0..jitter_us, occasionally late_ms) and by
  whole stalls (the process stops; every pending period is read on wake-up, or the buffer
  over/underruns and the engine resyncs);
- JACK cycles of jack_period frames at exactly jack_rate of the monotonic clock, times rounded
  to µs as jack_get_cycle_times() gives them, records occasionally skipped (the callback did not
  run; the C core keeps the ring counters consistent, so only the record goes stale);
- an ideal continuous resampler: JACK frames = Σ period·ratio (capture), device frames =
  Σ (JACK frames)·ratio (playback), plus a fixed filter delay.

It measures what the benchmark measures, from the true clocks: the true ratio, the loop's ratio
error, the true pipeline delay error (not the loop's own estimate), lock and re-lock times.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from cardbridge.drift import PeriodDLL, RatioLoop, jack_frames_at

CLOCK_ORIGIN = 5000.0          # CLOCK_MONOTONIC at the simulation start [s]


@dataclass
class SimConfig:
    seconds: float = 40.0
    seed: int = 1
    direction: str = "capture"          # or "playback"
    jack_rate: float = 48000.0
    jack_period: int = 256
    rate: float = 48000.0               # nominal device rate
    period: int = 256
    periods: int = 2                    # device buffer, in periods (over/underrun beyond it)
    ppm: float = 0.0
    wander_ppm: float = 0.0
    wander_period: float = 45.0
    usb_step: float = 0.0               # pointer step [s], 0.001 for USB; 0 = continuous
    jitter_us: float = 50.0             # uniform wake-up latency 0..jitter_us
    late_prob: float = 0.0              # probability of a late wake-up ...
    late_ms: tuple = (5.0, 20.0)        # ... of this many ms
    stalls: tuple = ()                  # start times [s] of whole-process stalls
    stall_seconds: float = 0.1
    skip_prob: float = 0.0              # probability that a JACK cycle record is missing
    backdate: bool = True               # engine back-dates wake-ups by `past`
    filter_delay: float = 20.0          # resampler delay [JACK frames]; constant
    trim_after: int = 8                 # periods before the initial trim (engine SYNC_PERIODS)
    warm_resync: bool = True           # resync keeps the learnt ratio and bandwidth
    link_dll: bool = False              # the loop sets the DLL's bandwidth (RatioLoop(dll=...))
    dll_kwargs: dict = field(default_factory=dict)
    loop_kwargs: dict = field(default_factory=dict)


@dataclass
class SimResult:
    config: SimConfig
    t: np.ndarray                 # simulation time of each loop update [s]
    ratio: np.ndarray             # the ratio in use after the update
    true_ratio: np.ndarray        # the ratio the two clocks call for at that time
    delay_error: np.ndarray       # true pipeline delay − target [JACK frames]
    loop_error: np.ndarray        # the loop's measured error
    locked: np.ndarray
    bandwidth: np.ndarray
    resyncs: list                 # times of resyncs
    drift_ppm: float              # loop's final estimate

    # -- metrics --------------------------------------------------------------------------------
    def ratio_error_ppm(self) -> np.ndarray:
        return (self.ratio / self.true_ratio - 1.0) * 1e6

    def window_mean_error_ppm(self, t_start: float, t_end: float) -> float:
        """(mean loop ratio / mean true ratio − 1) over [t_start, t_end), in ppm."""
        sel = (self.t >= t_start) & (self.t < t_end)
        return float((self.ratio[sel].mean() / self.true_ratio[sel].mean() - 1.0) * 1e6)

    def lock_time(self, tol_ppm: float, window: float = 10.0, step: float = 0.5) -> float:
        """Earliest t from which every `window`-second mean ratio is within tol of the truth."""
        end = self.t[-1]
        starts = np.arange(0.0, end - window + 1e-9, step)
        ok = np.array([abs(self.window_mean_error_ppm(s, s + window)) <= tol_ppm for s in starts])
        if ok.size == 0 or not ok[-1]:
            return math.inf
        bad = np.nonzero(~ok)[0]
        return float(starts[bad[-1] + 1]) if bad.size else 0.0

    def steady(self, after: float, exclude: float = 5.0) -> np.ndarray:
        """Mask of updates after `after` s and outside [stall, stall + exclude)."""
        sel = self.t >= after
        for s in list(self.config.stalls) + list(self.resyncs):
            sel &= ~((self.t >= s) & (self.t < s + exclude))
        return sel

    def ratio_p95_ppm(self, after: float) -> float:
        return float(np.percentile(np.abs(self.ratio_error_ppm()[self.steady(after)]), 95))

    def delay_pp(self, after: float) -> float:
        d = self.delay_error[self.steady(after)]
        return float(d.max() - d.min())

    def relock_time(self, stall: float, tol_ppm: float = 2.0, tol_frames: float = 2.0,
                    smooth: float = 1.0) -> float:
        """Seconds after the end of the stall at `stall` until, for good (up to the next stall),
        the `smooth`-second mean ratio error is within tol_ppm, the true delay error within
        tol_frames and the loop reports locked."""
        cfg = self.config
        t_end = stall + cfg.stall_seconds
        later = [s for s in cfg.stalls if s > stall]
        horizon = min(later) if later else self.t[-1] + 1.0
        sel = (self.t >= t_end) & (self.t < horizon)
        t = self.t[sel]
        if t.size == 0:
            return math.inf
        err = self.ratio_error_ppm()[sel]
        n = max(1, int(round(smooth * cfg.rate / cfg.period)))
        kernel = np.ones(n) / n
        mean = np.convolve(err, kernel, mode="full")[: err.size]
        good = (np.abs(mean) <= tol_ppm) & (np.abs(self.delay_error[sel]) <= tol_frames) \
            & self.locked[sel]
        good[: n - 1] = False
        if not good[-1]:
            return math.inf
        bad = np.nonzero(~good)[0]
        first = bad[-1] + 1 if bad.size else 0
        return float(t[first] - t_end)


class _Card:
    """The card's frame position as a function of simulation time."""

    def __init__(self, cfg: SimConfig, rng: np.random.Generator):
        self.rate = cfg.rate
        self.drift = 1.0 + cfg.ppm * 1e-6
        self.amp = cfg.wander_ppm * 1e-6
        self.omega = 2.0 * math.pi / cfg.wander_period
        self.phase = float(rng.uniform(0, 2 * math.pi)) if self.amp else 0.0
        self.step = cfg.usb_step
        self.step_phase = float(rng.uniform(0, cfg.usb_step)) if cfg.usb_step else 0.0

    def position(self, t: float) -> float:
        """Exact (fractional) frames elapsed at time t."""
        wander = 0.0
        if self.amp:
            wander = self.amp / self.omega * (math.cos(self.phase) - math.cos(self.omega * t + self.phase))
        return self.rate * (self.drift * t + wander)

    def speed(self, t: float) -> float:
        """Relative clock speed at time t."""
        return self.drift + self.amp * math.sin(self.omega * t + self.phase)

    def time_of(self, frames: float) -> float:
        """Exact time the card reaches `frames` (Newton)."""
        t = frames / (self.rate * self.drift)
        for _ in range(4):
            t -= (self.position(t) - frames) / (self.rate * self.speed(t))
        return t

    def pointer(self, t: float) -> int:
        """The hardware pointer ALSA reports at time t (integer frames, USB steps)."""
        if self.step:
            t = math.floor((t - self.step_phase) / self.step) * self.step + self.step_phase
        return int(math.floor(self.position(t) + 1e-9))

    def visible(self, frames: int) -> float:
        """When the pointer first shows `frames`."""
        t = self.time_of(frames)
        if self.step:
            t = math.ceil((t - self.step_phase) / self.step - 1e-9) * self.step + self.step_phase
        return t


class _Jack:
    """JACK's clock: cycles at exactly jack_rate; the last record the callback left."""

    def __init__(self, cfg: SimConfig, rng: np.random.Generator):
        self.n = cfg.jack_period
        self.cycle_time = cfg.jack_period / cfg.jack_rate
        self.rate = cfg.jack_rate
        self.t_first = float(rng.uniform(0, self.cycle_time))   # phase against the card
        self.frames0 = 1_000_000
        self.skip_prob = cfg.skip_prob
        self.salt = int(rng.integers(0, 1 << 30))
        self.callback_time = 30e-6           # the record is written this long after the start
        self.stalls = [(s, s + cfg.stall_seconds) for s in cfg.stalls]

    def position(self, t: float) -> float:
        """JACK's exact frame position at time t."""
        return self.frames0 + (t - self.t_first) * self.rate

    def _ran(self, k: int) -> bool:
        """Whether the client's callback ran in cycle k (deterministic per cycle)."""
        t_cycle = self.t_first + k * self.cycle_time
        for a, b in self.stalls:
            if a <= t_cycle < b:
                return False
        if self.skip_prob:
            return ((k * 2654435761 + self.salt) % 1000003) / 1000003.0 >= self.skip_prob
        return True

    def record_at(self, t: float):
        """The cycle record visible at time t (µs integers, like jack_get_cycle_times)."""
        n = math.floor((t - self.t_first - self.callback_time) / self.cycle_time)
        for k in range(n, n - 64, -1):
            if self._ran(k):
                t_start = self.t_first + k * self.cycle_time
                t_next = t_start + self.cycle_time
                return (self.frames0 + k * self.n, round((CLOCK_ORIGIN + t_start) * 1e6),
                        round((CLOCK_ORIGIN + t_next) * 1e6), self.n)
        return None


def simulate(cfg: SimConfig) -> SimResult:
    rng = np.random.default_rng(cfg.seed)
    card = _Card(cfg, rng)
    jack = _Jack(cfg, rng)
    capture = cfg.direction == "capture"
    nominal = cfg.jack_rate / cfg.rate if capture else cfg.rate / cfg.jack_rate
    update_rate = cfg.rate / cfg.period
    dll = PeriodDLL(cfg.period, cfg.rate, **cfg.dll_kwargs)
    loop = RatioLoop(nominal, update_rate, jack_rate=cfg.jack_rate, direction=cfg.direction,
                     dll=dll if cfg.link_dll else None, **cfg.loop_kwargs)
    target = cfg.jack_period + nominal * cfg.period + 32.0 if capture else \
        cfg.jack_period + cfg.period / nominal + 32.0
    buffer_frames = cfg.period * cfg.periods
    stalls = [(s, s + cfg.stall_seconds) for s in cfg.stalls]

    n_max = int(cfg.seconds * cfg.rate / cfg.period) + 8
    jitter = rng.uniform(0.0, cfg.jitter_us * 1e-6, n_max)
    late = rng.random(n_max) < cfg.late_prob
    jitter[late] += rng.uniform(cfg.late_ms[0] * 1e-3, cfg.late_ms[1] * 1e-3, int(late.sum()))
    read_delay = rng.uniform(0.0, 5e-6, n_max)

    out_t, out_ratio, out_true, out_delay, out_err, out_lock, out_bw = ([] for _ in range(7))
    resyncs = []

    # pipeline bookkeeping (JACK frames); `count` is the virtual JACK-side count of the
    # resampler (capture: produced; playback: consumed), `offset` the ring alignment.
    count = 0.0
    offset = 0.0
    ratio_used = loop.ratio
    trimmed = False
    since_reset = 0
    consumed = 0                      # device frames read (capture) / written-and-played
    t_free = 0.0
    wake_i = 0
    dev_start = 0.0                   # sim time the current device run started

    def resync(t_now: float) -> None:
        nonlocal trimmed, since_reset, consumed, dev_start, ratio_used
        resyncs.append(t_now)
        dll.reset()
        loop.reset(loop.learned_ratio, warm=cfg.warm_resync)
        ratio_used = loop.ratio
        trimmed = False
        since_reset = 0
        consumed = card.pointer(t_now)      # the stream restarts from the current position
        dev_start = t_now

    while True:
        boundary = consumed + cfg.period
        t_wake = max(card.visible(boundary), t_free) + jitter[wake_i % n_max]
        wake_i += 1
        for a, b in stalls:
            if a <= t_wake < b:
                t_wake = b + jitter[wake_i % n_max]
        if t_wake > cfg.seconds:
            break
        t_read = t_wake + read_delay[wake_i % n_max]
        avail = card.pointer(t_read) - consumed
        if avail > buffer_frames:
            resync(t_read)
            t_free = t_read + 1e-3
            continue
        record = jack.record_at(t_wake)
        while avail >= cfg.period:
            past = avail - cfg.period if cfg.backdate else 0
            ok = dll.update(CLOCK_ORIGIN + t_wake, past)
            consumed += cfg.period
            avail -= cfg.period
            since_reset += 1
            if not ok:
                resync(t_read)
                break
            # the ideal resampler converts this period with the ratio in use
            count += cfg.period * ratio_used if capture else cfg.period / ratio_used
            if not dll.ready or record is None:
                continue
            jf = jack_frames_at(dll.t1, *record)
            if capture:
                err = count - (jf - offset) - target
            else:
                err = (jf - offset) - count - target
            if not trimmed:
                if since_reset < cfg.trim_after:
                    continue
                shift = round(err)                      # move the ring by whole frames
                offset -= shift if capture else -shift
                err -= shift
                trimmed = True
            ratio_used = loop.update(err)
            if loop.needs_resync:
                resync(t_read)
                break
            t_b = card.time_of(consumed)                # the true boundary time
            true_pos = jack.position(t_b)
            if capture:
                true_delay = count - (true_pos - offset) - target
                true_ratio = cfg.jack_rate / (cfg.rate * card.speed(t_b))
            else:
                true_delay = (true_pos - offset) - count - target
                true_ratio = cfg.rate * card.speed(t_b) / cfg.jack_rate
            out_t.append(t_b)
            out_ratio.append(ratio_used)
            out_true.append(true_ratio)
            out_delay.append(true_delay)
            out_err.append(err)
            out_lock.append(loop.locked)
            out_bw.append(loop.bandwidth)
        t_free = t_read + 20e-6

    return SimResult(cfg, np.array(out_t), np.array(out_ratio), np.array(out_true),
                     np.array(out_delay), np.array(out_err), np.array(out_lock, bool),
                     np.array(out_bw), resyncs, loop.drift_ppm)
