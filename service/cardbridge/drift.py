"""Drift control of one bridge: a DLL on ALSA period times and the resampling-ratio loop.

Runs in: the bridge worker's ALSA real-time thread, once per ALSA period (the classes are pure
arithmetic on floats: no I/O, no logging, no locks, no allocation beyond float objects; the
engine calls them from its `*_rt` functions). Constructors and `reset()` may run anywhere.

The chain, per ALSA period (one call of each):

1. PeriodDLL — time of the period boundary.
   Measured boundary time  t_m = t_wake − past / rate      [s]
       (`past` = frames the card had already moved beyond the boundary when we woke; this
       back-dating removes wake-up latency and, for USB cards whose pointer moves in 1 ms
       steps, the step quantisation.)
   Second-order DLL (Adriaensen, "Using a DLL to filter time", LAC 2005), per boundary:
       e  = t_m − (t1 + T)                 prediction error      [s]
       t0 = t1;  t1 = t1 + T + b·e;  T = T + c·e
       b = √2·ω, c = ω², ω = 2π·B·T_nom  (B = bandwidth in Hz, T_nom = period / rate)
   The first boundaries use growing-memory gains (b = 2(2n−1)/(n(n+1)), c = 6/(n(n+1)): a
   least-squares line, exact from the 2nd boundary) until the DLL gains are larger; B is
   `start_bandwidth` (1 Hz) for `start_seconds`, then narrows as 1/elapsed to `bandwidth`
   (0.1 Hz). `bandwidth` may be raised at any time (RatioLoop(dll=...) does it).
   `frames` counts device frames up to t1 (one period per update, since the last reset).
   Stall / jump: e > `stall_periods`·T or t_m more than one period before t1 → reset, the
   boundary becomes the first one of a new run, update() returns False (engine resyncs).

2. jack_frames_at(t, frames, t_start_us, t_next_us, nframes) — JACK's frame position at time t,
   linear in the cycle record:  frames + nframes·(t·1e6 − t_start)/(t_next − t_start).
   The engine's records come from the process callback's own timeline of cycle starts, which
   counts the time a late JACK server lost (engine/rtcore_build.py), not from JACK's cycle-time
   DLL, which drags such a loss along for seconds.

3. RatioLoop — the resampling ratio (output rate / input rate of the resampler).
   Input: the delay error E [JACK frames] = measured pipeline content − target, at the boundary.
   Sign: E > 0 means too much is buffered; a higher ratio makes E grow in both directions
   (capture: more JACK frames produced per device frame; playback: fewer JACK frames consumed
   per device frame), so the loop lowers the ratio when E > 0.
   Per update (zita-ajbridge / PipeWire spa_dll form), with w = 2π·B/update_rate [rad/update],
   N = jack_rate/update_rate [JACK frames per update]:
       z1 += a·(2w/N · E − z1);  z2 += a·(z1 − z2)       a = 1 − exp(−20·w)  (two lowpasses at ~20·B)
       z3 += (w/2)·z2                                   integrator (the learnt clock offset)
       ratio = nominal · (1 − (z2 + z3))
   For a step of relative ratio δ per update the error moves by N·δ, so the closed loop is
   E'' + 2ω E' + ω² E = 0 (ω = 2π·B): critically damped, natural frequency B Hz, independent of
   the period. z2 + z3 and z3 are clamped to ±max_ppm·1e-6.
   Bandwidth: `start_bandwidth` (1 Hz) for the first `wide_seconds` (3 s), then halved every
   `adapt_seconds` (2 s) block down to `max_bandwidth` (0.14 Hz); from there it adapts within
   [min_bandwidth, max_bandwidth] = [0.07, 0.14] Hz, by at most ×/÷1.1 per block, towards the
   balance of tracking error (mean ratio error of the block, from the change of the block-mean
   error) and ratio noise (rms of the ratio around its trend in the block): see _adapt().
   needs_resync: |E| > resync_frames (the update is then ignored), a non-finite E, or the
   integrator pinned at the clamp.
   locked: the smoothed |E| has stayed below `lock_frames` for `lock_seconds`.
   drift_ppm (from the integrator only): card clock offset against JACK, + = card runs fast.
       capture  (ratio ≈ f_jack/f_card): drift = (nominal / r_int − 1)·1e6
       playback (ratio ≈ f_card/f_jack): drift = (r_int / nominal − 1)·1e6
   reset(ratio, warm=False): start again from `ratio` (e.g. `learned_ratio`, the integrator's
   ratio at the last locked update) or from the nominal ratio; warm=True (after a resync of a
   loop that had locked) skips the wide phase and starts at 2× the last steady bandwidth, which
   re-locks in ≈1-2.5 s instead of ≈5-14 s.

Engine wiring, per ALSA period (capture shown; playback the same with its own error):
    ok = dll.update(t_wake, past)           # False → resync (the DLL has restarted)
    produced += period · ratio_used         # virtual JACK frames for every device frame read
    if dll.ready:
        jf = jack_frames_at(dll.t1, *cycle)
        E  = produced − (jf − read_offset) − target      # remove the first E at once (trim)
        ratio_used = loop.update(E)
        if loop.needs_resync: resync; loop.reset(loop.learned_ratio, warm=True)
"""

from __future__ import annotations

import math

TWO_PI = 2.0 * math.pi
SQRT2 = math.sqrt(2.0)


def jack_frames_at(t: float, frames: float, t_start: float, t_next: float, nframes: float) -> float:
    """JACK frame position at time t [s] from a cycle record: its first frame, its start and the
    next cycle's start [us], its length (plain numbers: nothing made per call)."""
    span = t_next - t_start
    if span <= 0:
        return float(frames)
    return frames + nframes * (t * 1e6 - t_start) / span


class PeriodDLL:
    """Second-order DLL on the back-dated ALSA period boundary times of one device."""

    __slots__ = ("period", "rate", "bandwidth", "start_bandwidth", "start_seconds",
                 "stall_periods", "nominal_period_time", "ready", "t0", "t1", "frames",
                 "period_time", "updates", "resets", "_elapsed", "_bw", "_b", "_c")

    def __init__(self, period: int, rate: float, bandwidth: float = 0.1, *,
                 start_bandwidth: float = 1.0, start_seconds: float = 0.5,
                 stall_periods: float = 4.0):
        if period <= 0 or not rate > 0:
            raise ValueError("period and rate must be positive")
        self.period = int(period)
        self.rate = float(rate)
        self.bandwidth = float(bandwidth)
        self.start_bandwidth = max(float(start_bandwidth), self.bandwidth)
        self.start_seconds = float(start_seconds)
        self.stall_periods = float(stall_periods)
        self.nominal_period_time = self.period / self.rate
        self.resets = 0
        self.reset()

    def reset(self) -> None:
        """Forget everything; the next update() is the first boundary of a new run."""
        self.ready = False
        self.t0 = 0.0
        self.t1 = 0.0
        self.frames = 0
        self.updates = 0
        self.period_time = self.nominal_period_time
        self._elapsed = 0.0
        self._bw = -1.0
        self._set_bandwidth(self.start_bandwidth)

    @property
    def rate_estimate(self) -> float:
        """Filtered device rate [frames/s] of the card against CLOCK_MONOTONIC."""
        return self.period / self.period_time


    def time_at(self, frames: float) -> float:
        """Time [s] at which the card reached `frames` (same count as `frames`), linear from t1."""
        return self.t1 + (frames - self.frames) * (self.period_time / self.period)

    def _set_bandwidth(self, bw: float) -> None:
        if bw != self._bw:
            self._bw = bw
            w = TWO_PI * bw * self.nominal_period_time
            self._b = SQRT2 * w
            self._c = w * w

    def _start(self, t: float) -> None:
        self.t1 = t
        self.t0 = t - self.period_time
        self.frames = self.period
        self.updates = 1
        self.ready = False

    def update(self, t_wake: float, past: float = 0.0) -> bool:
        """One period boundary: t_wake [s, CLOCK_MONOTONIC], past = frames beyond it at t_wake.

        Returns False when the time is inconsistent with the run so far (stall, jump, clock
        going backwards): the DLL has then restarted with this boundary as its first one.
        """
        if past < 0:
            past = 0.0
        t = t_wake - past / self.rate
        if self.updates == 0:
            self._start(t)
            return True
        dt = self.period_time
        predicted = self.t1 + dt
        err = t - predicted
        if not (-2.0 * dt < err < self.stall_periods * dt):
            self.resets += 1
            self.reset()
            self._start(t)
            return False
        # Outliers (a late wake-up that back-dating could not explain) move the filter by at
        # most a quarter period.
        limit = 0.25 * dt
        if err > limit:
            err = limit
        elif err < -limit:
            err = -limit
        self._elapsed += self.nominal_period_time
        bw = self.start_bandwidth
        if self._elapsed > self.start_seconds:
            bw *= self.start_seconds / self._elapsed
        self._set_bandwidth(bw if bw > self.bandwidth else self.bandwidth)
        b, c = self._b, self._c
        n = self.updates + 1
        start_b = 2.0 * (2 * n - 1) / (n * (n + 1.0))
        if start_b > b:
            # first boundaries: growing-memory (least-squares line) gains, exact from the start
            b = start_b
            c = 6.0 / (n * (n + 1.0))
        self.t0 = self.t1
        self.t1 = predicted + b * err
        self.period_time = dt + c * err
        self.frames += self.period
        self.updates = n
        self.ready = True
        return True


class RatioLoop:
    """Critically damped second-order loop from the delay error to the resampling ratio."""

    __slots__ = ("nominal_ratio", "update_rate", "max_ppm", "jack_rate", "direction",
                 "resync_frames", "start_bandwidth", "min_bandwidth", "max_bandwidth", "wide_seconds",
                 "adapt_seconds", "lock_frames", "lock_seconds",
                 "ratio", "bandwidth", "needs_resync", "locked", "learned_ratio",
                 "updates", "last_error", "_limit", "_z1", "_z2", "_z3", "_a", "_k1", "_k3",
                 "_elapsed", "_block_n", "_block_sum", "_block_len", "_x_sum", "_x_sq",
                 "_x_idx", "_corr_ref", "_prev_mean",
                 "_abs_smooth", "_smooth_a", "_quiet", "_lock_len", "dll", "dll_factor", "smoothing", "balance", "max_step",
                 "_steady_bw")

    def __init__(self, nominal_ratio: float, update_rate: float, max_ppm: float = 2000.0, *,
                 jack_rate: float = 48000.0, direction: str = "capture",
                 resync_frames: float = 512.0, start_bandwidth: float = 1.0,
                 min_bandwidth: float = 0.07, max_bandwidth: float = 0.14,
                 wide_seconds: float = 3.0,
                 adapt_seconds: float = 2.0,
                 lock_frames: float = 2.0, lock_seconds: float = 1.0,
                 dll: PeriodDLL | None = None, dll_factor: float = 1.0,
                 smoothing: float = 20.0, balance: float = 1.0, max_step: float = 1.1):
        if not nominal_ratio > 0 or not update_rate > 0 or not jack_rate > 0:
            raise ValueError("nominal_ratio, update_rate and jack_rate must be positive")
        if direction not in ("capture", "playback"):
            raise ValueError("direction must be 'capture' or 'playback'")
        self.nominal_ratio = float(nominal_ratio)
        self.update_rate = float(update_rate)
        self.max_ppm = float(max_ppm)
        self.jack_rate = float(jack_rate)
        self.direction = direction
        self.resync_frames = float(resync_frames)
        # Above ~update_rate/60 the discrete loop stops behaving like the continuous one.
        top = self.update_rate / 60.0
        self.start_bandwidth = min(float(start_bandwidth), top)
        self.max_bandwidth = min(float(max_bandwidth), self.start_bandwidth)
        self.min_bandwidth = min(float(min_bandwidth), self.max_bandwidth)
        self.wide_seconds = float(wide_seconds)
        self.adapt_seconds = float(adapt_seconds)
        self.lock_frames = float(lock_frames)
        self.lock_seconds = float(lock_seconds)
        self._limit = self.max_ppm * 1e-6
        self._block_len = max(8, int(round(self.adapt_seconds * self.update_rate)))
        self._lock_len = max(1, int(round(self.lock_seconds * self.update_rate)))
        self._smooth_a = 1.0 - math.exp(-1.0 / (0.25 * self.update_rate))
        self.learned_ratio = self.nominal_ratio
        self._steady_bw = self.max_bandwidth
        self.dll = dll
        self.dll_factor = float(dll_factor)
        self.smoothing = float(smoothing)
        self.balance = float(balance)
        self.max_step = float(max_step)
        self.reset()

    # -- state ----------------------------------------------------------------------------------
    def reset(self, ratio: float | None = None, warm: bool = False) -> None:
        """Start again from `ratio` (a learnt estimate, e.g. `learned_ratio`) or the nominal one.

        Cold (default): wide bandwidth for `wide_seconds`, then narrowing. Warm (after a resync
        of a loop that was locked): no wide phase, start at twice the last steady bandwidth.
        """
        z3 = 0.0
        if ratio is not None and ratio > 0 and math.isfinite(ratio):
            z3 = 1.0 - ratio / self.nominal_ratio
            z3 = min(max(z3, -self._limit), self._limit)
        self._z1 = 0.0
        self._z2 = 0.0
        self._z3 = z3
        self.ratio = self.nominal_ratio * (1.0 - z3)
        self.learned_ratio = self.ratio
        self.needs_resync = False
        self.locked = False
        self.updates = 0
        self.last_error = 0.0
        self._elapsed = 0.0
        self._abs_smooth = 0.0
        self._quiet = 0
        self._block_n = 0
        self._block_sum = 0.0
        self._x_sum = 0.0
        self._x_sq = 0.0
        self._x_idx = 0.0
        self._corr_ref = 0.0
        self._prev_mean = None
        start = self.start_bandwidth
        if warm:
            self._elapsed = self.wide_seconds
            start = min(max(2.0 * self._steady_bw, self.min_bandwidth), self.max_bandwidth)
        self.bandwidth = -1.0
        self._set_bandwidth(start)

    def _set_bandwidth(self, bw: float) -> None:
        if bw != self.bandwidth:
            self.bandwidth = bw
            w = TWO_PI * bw / self.update_rate
            frames_per_update = self.jack_rate / self.update_rate
            self._a = 1.0 - math.exp(-self.smoothing * w)
            self._k1 = 2.0 * w / frames_per_update
            self._k3 = 0.5 * w
            dll = self.dll
            if dll is not None:
                # the DLL's phase lag passes straight into the ratio: keep it wider than the loop
                dll.bandwidth = min(dll.start_bandwidth, self.dll_factor * bw)

    @property
    def drift_ppm(self) -> float:
        """Estimated clock offset of the card against JACK [ppm], + = card runs fast."""
        r_int = self.nominal_ratio * (1.0 - self._z3)
        if self.direction == "capture":
            return (self.nominal_ratio / r_int - 1.0) * 1e6
        return (r_int / self.nominal_ratio - 1.0) * 1e6


    # -- per period -----------------------------------------------------------------------------
    def update(self, error: float) -> float:
        """One delay error [JACK frames, + = too much buffered]; returns the new ratio."""
        if not math.isfinite(error) or abs(error) > self.resync_frames:
            self.needs_resync = True
            self.locked = False
            return self.ratio
        self.last_error = error
        a = self._a
        self._z1 += a * (self._k1 * error - self._z1)
        self._z2 += a * (self._z1 - self._z2)
        z3 = self._z3 + self._k3 * self._z2
        limit = self._limit
        if z3 >= limit or z3 <= -limit:
            z3 = limit if z3 > 0 else -limit
            self.needs_resync = True
        self._z3 = z3
        corr = self._z2 + z3
        if corr > limit:
            corr = limit
        elif corr < -limit:
            corr = -limit
        self.ratio = self.nominal_ratio * (1.0 - corr)
        self.updates += 1
        self._track_lock(error)
        self._adapt(error, corr)
        return self.ratio

    def _track_lock(self, error: float) -> None:
        self._abs_smooth += self._smooth_a * (abs(error) - self._abs_smooth)
        if self._abs_smooth < self.lock_frames:
            if self._quiet < self._lock_len:
                self._quiet += 1
        else:
            self._quiet = 0
        self.locked = self._quiet >= self._lock_len
        if self.locked:
            self.learned_ratio = self.nominal_ratio * (1.0 - self._z3)
            self._steady_bw = self.bandwidth

    def _adapt(self, error: float, corr: float) -> None:
        """Move the bandwidth towards the balance of tracking error and ratio noise.

        Per block of `adapt_seconds`: tracking = mean ratio error over the block, from the change
        of the block-mean delay error (ΔE / (T·jack_rate)); noise = rms of the ratio around its
        straight-line trend within the block. Tracking error falls as B⁻², ratio noise grows
        about as B^1.5, so their sum is smallest where tracking = balance·noise; each block moves
        B by (tracking / (balance·noise))^(1/3.5), by at most ×/÷`max_step`, within
        [min_bandwidth, max_bandwidth] (halving from a wider start until it is inside).
        """
        self._elapsed += 1.0 / self.update_rate
        if self._elapsed < self.wide_seconds:
            return
        n = self._block_n
        if n == 0:
            self._corr_ref = corr
        x = corr - self._corr_ref
        self._block_sum += error
        self._x_sum += x
        self._x_sq += x * x
        self._x_idx += n * x
        n += 1
        self._block_n = n
        if n < self._block_len:
            return
        mean = self._block_sum / n
        xm = self._x_sum / n
        im = (n - 1) / 2.0
        i_var = (n * n - 1) / 12.0
        cov = self._x_idx / n - im * xm
        noise_var = self._x_sq / n - xm * xm - cov * cov / i_var
        noise = math.sqrt(noise_var) if noise_var > 1e-24 else 1e-12
        self._block_n = 0
        self._block_sum = 0.0
        self._x_sum = 0.0
        self._x_sq = 0.0
        self._x_idx = 0.0
        prev = self._prev_mean
        self._prev_mean = mean
        if prev is None or self.bandwidth > self.max_bandwidth:
            step = 0.5
        else:
            tracking = abs(mean - prev) / (self.adapt_seconds * self.jack_rate)
            step = (tracking / (self.balance * noise)) ** (1.0 / 3.5)
            step = min(max(step, 1.0 / self.max_step), self.max_step)
        bw = self.bandwidth * step
        if step < 1.0 and self.bandwidth > self.max_bandwidth:
            bw = max(bw, self.max_bandwidth)
        else:
            bw = min(max(bw, self.min_bandwidth), self.max_bandwidth)
        self._set_bandwidth(bw)
