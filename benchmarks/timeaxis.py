"""One time axis for JACK and the virtual cards: when each JACK frame happened, in CLOCK_MONOTONIC.

Runs in the benchmark process, on what the measuring JACK client (testbench.meter) stamped
each cycle. The facts it rests on (jack2 1.9.21 as Debian 12 ships it, checked on this machine
by `benchmarks/run.py --clock-check`):

* jack_get_time() and the dummy driver's schedule use CLOCK_MONOTONIC_RAW (jack2's
  linux/JackLinuxTime.c prefers it since 1.9.18), while the virtual cards run on
  CLOCK_MONOTONIC. The two differ by the NTP frequency correction (none on this VM, up to
  hundreds of ppm elsewhere); every run measures RAW against MONOTONIC from the stamps of every
  cycle and converts with that fit.
* The dummy driver (JackTimedDriver) wakes cycle k of a schedule at anchor + k·period/rate on
  its clock: a straight line, whatever each wake-up's lateness. After an xrun (a cycle ending
  past the next one's start) it re-anchors at the end of the cycle after the late one, so the
  line moves later while the frame counter goes on: the server lost time. Each stretch between
  xrun notices is one segment; its line is the lower envelope of the cycles' callback times
  (the earliest wake-up of the segment, a few microseconds after the schedule).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GUARD_CYCLES = 3          # cycles after an xrun notice that may still belong to either segment
NOTICE_LAG = 6            # cycles an xrun notice may come after the schedule moved
EARLY_NS = 2_000          # a cycle this far below a line is not on it
CLUSTER_CYCLES = 40       # xrun notices closer than this are one event
SHORT_CYCLES = 100        # a segment shorter than this has a less certain lower envelope ...
MOVE_NS = 15_000          # ... a move of the line is believed above this (long segments)
SHORT_MOVE_NS = 150_000   # ... or this (short ones)


@dataclass
class JackTimeline:
    rate: int
    raw_to_mono: tuple[float, float]    # mono_ns = a + b * raw_ns
    seg_raw_start: np.ndarray           # raw ns at which each segment starts
    seg_offset: np.ndarray              # raw ns of frame 0 on each segment's line
    seg_lost_frames: np.ndarray         # frames the schedule moved at each segment start
    clock_residual_ns: float            # worst |mono - fit(raw)| over the run
    jack_time_is_raw: bool              # jack_get_time() read CLOCK_MONOTONIC_RAW

    def _raw(self, mono_ns):
        a, b = self.raw_to_mono
        return (np.asarray(mono_ns, np.float64) - a) / b

    def frames_at(self, mono_ns) -> np.ndarray:
        """The JACK frame (fractional, JACK's own numbering) at CLOCK_MONOTONIC time mono_ns."""
        raw = self._raw(mono_ns)
        s = np.clip(np.searchsorted(self.seg_raw_start, raw, side="right") - 1, 0, None)
        return (raw - self.seg_offset[s]) * self.rate / 1e9

    def time_of(self, frames, near_mono_ns) -> np.ndarray:
        """CLOCK_MONOTONIC ns of JACK frame `frames`, on the segment in force at near_mono_ns."""
        raw_near = self._raw(near_mono_ns)
        s = np.clip(np.searchsorted(self.seg_raw_start, raw_near, side="right") - 1, 0, None)
        raw = self.seg_offset[s] + np.asarray(frames, np.float64) * 1e9 / self.rate
        a, b = self.raw_to_mono
        return a + b * raw

    @property
    def raw_vs_mono_ppm(self) -> float:
        return (self.raw_to_mono[1] - 1.0) * 1e6


def unwrap_frames(frame_time: np.ndarray) -> np.ndarray:
    """JACK's 32-bit frame times as a monotonic 64-bit count (float64)."""
    f = frame_time.astype(np.int64)
    step = np.diff(f)
    wraps = np.concatenate([[0], np.cumsum(step < -(1 << 31))])
    return (f + wraps * (1 << 32)).astype(np.float64)


def build(cycles: np.ndarray, rate: int) -> JackTimeline:
    """The timeline from one meter's cycle records (testbench.meter.CYCLE_DTYPE)."""
    if len(cycles) < 16:
        raise ValueError("too few JACK cycles to build a time axis")
    mono = (cycles["mono_ns"].astype(np.float64) + cycles["mono2_ns"]) / 2
    raw = cycles["raw_ns"].astype(np.float64)
    # RAW -> MONOTONIC: a straight line through every cycle's stamps (relative to the first,
    # for precision), and how far any stamp is from it
    r0, m0 = raw[0], mono[0]
    b, a_rel = np.polyfit(raw - r0, mono - m0, 1)
    resid = (mono - m0) - (a_rel + b * (raw - r0))
    a = m0 + a_rel - b * r0
    jack_raw = np.median(cycles["jack_us"].astype(np.float64) * 1000 - raw)
    jack_mono = np.median(cycles["jack_us"].astype(np.float64) * 1000 - mono)
    frames = unwrap_frames(cycles["frame_time"])
    offset = raw - frames * 1e9 / rate          # segment offset + this cycle's lateness
    # segments: candidates where the xrun counter moved (the notice comes a cycle or two after
    # the driver re-anchored; those cycles are later than the old line anyway). Most notices
    # are clients that missed a cycle, not a moved schedule: a candidate stays a boundary only
    # when the line after it is clearly later than before (a schedule only ever moves later).
    counts = cycles["xruns"].astype(np.int64)
    moved = np.nonzero(np.diff(counts) > 0)[0] + 1
    starts = [0]
    for m in moved:
        if m - starts[-1] > CLUSTER_CYCLES:
            starts.append(int(m))
    bounds = starts + [len(cycles)]
    seg_start, seg_off, seg_first = [], [], []
    for i in range(len(starts)):
        lo, hi = bounds[i], bounds[i + 1]
        off = float(offset[min(lo + GUARD_CYCLES, hi - 1):hi].min())
        long_enough = hi - lo >= SHORT_CYCLES
        if seg_off and not (off - seg_off[-1] > (MOVE_NS if long_enough else SHORT_MOVE_NS)):
            seg_off[-1] = min(seg_off[-1], float(offset[seg_first[-1]:hi].min()))
            continue
        # the first cycle on the new line: the notice may come a few cycles after the move;
        # cycles before the move lie below the new line
        first = max(lo - NOTICE_LAG, seg_first[-1] + 1 if seg_first else 0)
        below = np.nonzero(offset[first:lo + GUARD_CYCLES] < off - EARLY_NS)[0]
        first = first + int(below[-1]) + 1 if len(below) else first
        seg_start.append(first)
        seg_off.append(off)
        seg_first.append(min(lo + GUARD_CYCLES, hi - 1))
    # a segment whose line came out no later than the one before (its early cycles were only
    # late ones, the lower envelope caught up later) was no move: one line for both
    k = 1
    while k < len(seg_off):
        if seg_off[k] - seg_off[k - 1] < MOVE_NS / 3:
            seg_off[k - 1] = min(seg_off[k - 1], seg_off[k])
            del seg_off[k], seg_start[k]
        else:
            k += 1
    # a move nobody was told of (before our xrun callback was in place, or a notice lost in a
    # burst): cycles below their segment's line came before it; they get a line of their own
    idx, offs = [], []
    bounds = seg_start + [len(cycles)]
    for i, off in enumerate(seg_off):
        below = np.nonzero(offset[bounds[i]:bounds[i + 1]] < off - EARLY_NS)[0]
        if len(below):
            cut = bounds[i] + int(below[-1]) + 1
            idx.append(bounds[i])
            offs.append(float(offset[bounds[i]:cut].min()))
            idx.append(cut)
        else:
            idx.append(bounds[i])
        offs.append(off)
    seg_off = np.array(offs)
    # each segment starts where its first cycle sits on its line
    seg_raw = seg_off + frames[np.array(idx)] * 1e9 / rate
    lost = np.concatenate([[0.0], np.diff(seg_off) * rate / 1e9])
    return JackTimeline(rate, (float(a), float(b)), seg_raw, seg_off, lost,
                        float(np.abs(resid).max()), bool(abs(jack_raw) < abs(jack_mono)))
