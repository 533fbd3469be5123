"""The queues between a bridge's JACK callback and its ALSA thread (the C struct cb_shared).

Made by the worker's control thread for each JACK session and handed to both sides: the JACK
side (jackside.py) installs the compiled callbacks on it, the ALSA thread (alsathread.py) gets
this object and nothing else of JACK. Two rings of interleaved float frames (capture: written by
the ALSA thread, read by JACK's process thread; playback: the other way round), the record of
JACK's last cycle (written by JACK's thread, sequence-locked), a mute flag and the two port
latencies (written by the ALSA thread), and JACK-side counters (written by JACK's thread).
Every position and flag has exactly one writer; see csrc/rtcore.h.

The `*_rt` methods run in the ALSA thread's per-period path: one C call each, nothing made.
"""

from __future__ import annotations

from ._rtcore import ffi, lib

RING_FRAMES = 1 << 15  # covers JACK periods up to 8192 and device periods up to 4096 ×2 resampled


class Queues:
    def __init__(self, n_capture: int, n_playback: int, ring_frames: int = RING_FRAMES):
        if ring_frames & (ring_frames - 1):
            raise ValueError("ring_frames must be a power of two")
        self.shared = ffi.new("cb_shared *")
        self._buffers = (ffi.new("float[]", ring_frames * max(n_capture, 1)),
                         ffi.new("float[]", ring_frames * max(n_playback, 1)))
        sh = self.shared
        for ring, data, channels in ((sh.capture, self._buffers[0], n_capture),
                                     (sh.playback, self._buffers[1], n_playback)):
            ring.data = data
            ring.size = ring_frames
            ring.channels = channels
        sh.mute_capture = 1
        self.capture = ffi.addressof(sh, "capture")      # cb_ring *
        self.playback = ffi.addressof(sh, "playback")
        self._capture_wr = ffi.addressof(self.capture, "wr")
        self._playback_rd = ffi.addressof(self.playback, "rd")
        self._cycle = ffi.new("uint64_t[6]")

    @property
    def n_capture(self) -> int:
        return int(self.shared.capture.channels)

    @property
    def n_playback(self) -> int:
        return int(self.shared.playback.channels)

    # -- the ALSA thread --------------------------------------------------------------------
    def read_cycle_rt(self):
        """(frames, usecs, next_usecs, nframes, capture_rd, playback_wr) of JACK's last cycle,
        or None when there is none yet or the timeline holds it (a late server cycle)."""
        if lib.cb_read_cycle(self.shared, self._cycle) != 0:
            return None
        return self._cycle

    def capture_written_rt(self) -> int:
        return lib.cb_load(self._capture_wr)

    def playback_taken_rt(self) -> int:
        return lib.cb_load(self._playback_rd)

    def commit_capture_rt(self, frames: int) -> None:
        """Move the capture write position by `frames` (may be negative: take frames back)."""
        lib.cb_capture_commit(self.shared, frames)

    def consume_playback_rt(self, frames: int) -> None:
        """Move the playback read position by `frames` (may be negative)."""
        lib.cb_playback_consume(self.shared, frames)

    def mute_rt(self, mute: bool) -> None:
        """While muted, JACK's capture ports give silence and nothing counts as an underrun."""
        self.shared.mute_capture = 1 if mute else 0

    def set_latencies(self, capture: float, playback: float) -> None:
        """What the latency callback reports (JACK frames); the control thread then asks JACK to
        recompute (JackSide.recompute_latencies)."""
        self.shared.capture_latency = max(0, int(round(capture)))
        self.shared.playback_latency = max(0, int(round(playback)))

    # -- counters of JACK's process thread (read anywhere) ------------------------------------
    @property
    def jack_underruns(self) -> int:
        """Cycles that found the capture ring short plus cycles that overran the playback ring."""
        return int(self.shared.capture_underruns + self.shared.playback_overruns)

    @property
    def lost_times(self) -> int:
        return int(self.shared.lost_times)
