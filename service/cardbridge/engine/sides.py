"""The two directions of a bridge's stream, each a small measurer with the same interface.

Runs in the bridge worker's ALSA thread. `CaptureSide` and `PlaybackSide` each own one PCM's
per-period transfer (periodpath.py: sample format, libsamplerate, their ring of the queues), the
measurement of their pipeline's delay against its target, and their ratio loop (drift.py). The
stream (stream.py) calls, per device period and in this order for both:

    transfer_rt(...)            move one period between the card and the ring
    measure_rt(cycle, clock)    the delay error at the period boundary, or None if unknown
    follow_rt(error)            feed it to the ratio loop (after the start-up trim)
and once, when the start-up error is known:
    trim_rt()                   remove it at once by moving this side's own ring position

Measurement, in JACK frames, at the card's period boundary t_b (clock = the card's DLL):
  capture:  E = V − R(t_b) − target
            V = resampler output for every device frame read (virtual count, Σ frames·ratio,
                so the resampler's fractional position is included); R(t_b) = the capture ring's
                read position JACK had reached at t_b, from the last cycle record interpolated on
                JACK's timeline
  playback: E = W(t_b) − C + (U − played(t_b)) / r − target
            W(t_b) = the playback ring's write position of JACK at t_b (interpolated); C = JACK
            frames taken from the ring; U = device frames the resampler produced (virtual
            count, prefill included); played(t_b) = device frames the card had played at t_b
The targets are the smallest delays that keep one device period and one JACK period of data in
flight plus a safety margin; with the resampler's content lag they are the port latencies.
"""

from __future__ import annotations

import alsaaudio
import numpy as np
import samplerate

from ..drift import PeriodDLL, RatioLoop, jack_frames_at
from .pcmio import DeviceError, PcmParams, classify
from .periodpath import SidePath
from .queues import Queues

CONVERTERS = {"best": "sinc_best", "medium": "sinc_medium", "fastest": "sinc_fastest",
              "linear": "linear"}

_lags: dict[str, tuple[float, float]] = {}


def resampler_lags(converter: str) -> tuple[float, float]:
    """(frames the converter withholds, frames its output content lags) at ratio 1, measured once."""
    if converter not in _lags:
        r = samplerate.Resampler(converter, 1)
        x = np.zeros(8192, np.float32)
        x[2000] = 1.0
        out = [r.process(x[i:i + 256], 1.0) for i in range(0, len(x), 256)]
        y = np.concatenate(out)
        withheld = len(x) - len(y)
        content = int(np.argmax(np.abs(y))) - 2000
        _lags[converter] = (float(withheld), float(content))
    return _lags[converter]


class Xrun(Exception):
    """The card ran over (capture) or dry (playback); `what` says which, for the log. The
    stream adds `gap` (seconds since the card last delivered a period in time, None before the
    first) and `period_s` on the way out, for the headroom policy."""

    def __init__(self, what: str):
        super().__init__(what)
        self.what = what
        self.gap: float | None = None
        self.period_s = 0.0


class SideFailed(Exception):
    """The per-period path failed (libsamplerate); the stream must start again."""


class Geometry:
    """What both sides of one stream share: rates, periods, margins, the resampler's lags."""

    def __init__(self, params: PcmParams, jack_rate: float, jack_period: int, quality: str):
        self.fj = float(jack_rate)
        self.fd = float(params.rate)
        self.period = params.period
        self.bufsize = params.period * params.periods
        self.n_jack = int(jack_period)
        self.converter = CONVERTERS.get(quality, "sinc_medium")
        self.withheld, self.content_lag = resampler_lags(self.converter)
        self.margin = max(48, self.period // 4)      # covers late wake-ups of the ALSA thread
        self.resync_frames = max(512.0, 2.0 * self.n_jack + self.period)


def loop_for(old: RatioLoop | None, nominal: float, geo: Geometry, direction: str,
             start_ratio: float, warm: bool) -> RatioLoop:
    """The ratio loop of one direction: the previous one re-armed when the clocks are the same
    (a resync keeps the learnt ratio; warm after a lock), else a new one from `start_ratio`."""
    if (old is not None and old.nominal_ratio == nominal and old.jack_rate == geo.fj
            and old.resync_frames == geo.resync_frames):
        old.reset(old.learned_ratio, warm=warm)
        return old
    loop = RatioLoop(nominal, geo.fd / geo.period, jack_rate=geo.fj, direction=direction,
                     resync_frames=geo.resync_frames)
    loop.reset(start_ratio)
    return loop


class CaptureSide:
    direction = "capture"

    def __init__(self, queues: Queues, pcm, params: PcmParams, geo: Geometry, learnt: float,
                 old_loop: RatioLoop | None, warm: bool):
        self.queues = queues
        self.pcm = pcm
        self.params = params
        self.geo = geo
        nominal = geo.fj / geo.fd
        self.loop = loop_for(old_loop, nominal, geo, "capture", nominal / learnt, warm)
        self.path = SidePath(queues.capture, params, geo.converter, geo.period, nominal)
        # A buffer of more than two periods lets the thread be late by more than a period
        # without a card xrun; the ring must then hold that much more for JACK to read meanwhile.
        late_ok = max(0, geo.bufsize // geo.period - 2) * geo.period
        self.target = nominal * (geo.period + geo.withheld + late_ok) + geo.n_jack + geo.margin
        self.latency = self.target + geo.content_lag
        self.virtual = float(queues.capture_written_rt())
        self.error: float | None = None

    def transfer_rt(self, data) -> None:
        ratio = self.loop.ratio
        if self.path.capture_rt(data, ratio) < 0:
            raise SideFailed(f"capture resampler: {self.path.error}")
        self.virtual += self.geo.period * ratio

    def measure_rt(self, cyc, dll: PeriodDLL) -> float | None:
        if not dll.ready or cyc is None:
            self.error = None
            return None
        jf = jack_frames_at(dll.t1, cyc[0], cyc[1], cyc[2], cyc[3])
        self.error = (self.virtual - (cyc[4] + (jf - cyc[0]))) - self.target
        return self.error

    def trim_rt(self) -> bool:
        if self.error is None:
            return False
        shift = int(round(self.error))
        self.queues.commit_capture_rt(-shift)
        self.virtual -= shift
        return True

    @property
    def underruns(self) -> int:
        return 0

    def close(self) -> None:
        self.path.close()


class PlaybackSide:
    direction = "playback"

    def __init__(self, queues: Queues, pcm, params: PcmParams, geo: Geometry, learnt: float,
                 old_loop: RatioLoop | None, warm: bool, duplex: bool):
        self.queues = queues
        self.pcm = pcm
        self.params = params
        self.geo = geo
        nominal = geo.fd / geo.fj
        self.loop = loop_for(old_loop, nominal, geo, "playback", nominal * learnt, warm)
        # Duplex: the capture read is the wait, and playback starts with the first write, at a
        # capture boundary: each write then comes one period after the last, and the buffer is
        # left full but for the margin (a card's pointer may move in steps), so that the thread
        # may be late by almost a period before the card runs dry. Playback only: the blocking
        # write is the wait.
        self.prefill = geo.bufsize - geo.margin if duplex else geo.bufsize
        self.target = (self.prefill + geo.withheld) / nominal + geo.margin
        self.latency = self.target + geo.content_lag
        self.path = SidePath(queues.playback, params, geo.converter, geo.period, nominal,
                             prefill=self.prefill)
        self.offset_sum = 0.0
        self.offset_n = 0
        self.error: float | None = None
        self.written = 0

    # -- the card ------------------------------------------------------------------------------
    def prefill_rt(self) -> None:
        """Start the card with a buffer of silence (duplex: at the first capture boundary, so
        that both streams start in a known phase)."""
        self._write(self.path.silence(self.prefill))
        self.written = self.prefill

    def transfer_rt(self) -> None:
        if self.path.playback_rt(self.loop.ratio) < 0:
            raise SideFailed(f"playback resampler: {self.path.error}")
        self._write(self.path.payload)
        self.written += self.geo.period

    def _write(self, data) -> None:
        try:
            res = self.pcm.write(data)
        except alsaaudio.ALSAAudioError as exc:
            raise classify(exc) from exc
        if res < 0:
            raise Xrun("playback underrun")

    def avail_rt(self) -> int:
        return self.pcm.avail()

    # -- measuring -----------------------------------------------------------------------------
    def measure_duplex_rt(self, cyc, dll: PeriodDLL, now: float) -> float | None:
        """Duplex: how far the card had played at the capture boundary, from its avail."""
        if not dll.ready or cyc is None:
            return None
        queued = self.geo.bufsize - self.pcm.avail()
        played_now = self.written - queued
        played = played_now - (now - dll.t1) * self.geo.fd
        return self._error_from_played(cyc, dll, played)

    def measure_alone_rt(self, cyc, dll: PeriodDLL) -> float | None:
        """Playback only: at the boundary the card had just made room for one period."""
        if not dll.ready or cyc is None:
            return None
        played = self.written - (self.geo.bufsize - self.geo.period)
        return self._error_from_played(cyc, dll, played)

    def _error_from_played(self, cyc, dll: PeriodDLL, played_est: float) -> float:
        # Pulling frames moves them from the ring to the device side without changing the
        # total (virtual counts), so the error may be taken before or after the pull.
        # played(t_b) = DLL frame count + a constant offset, averaged since the stream started
        self.offset_sum += played_est - dll.frames
        self.offset_n += 1
        played = dll.frames + self.offset_sum / self.offset_n
        jf = jack_frames_at(dll.t1, cyc[0], cyc[1], cyc[2], cyc[3])
        w_pos = cyc[5] + (jf - cyc[0])
        c_pos = self.queues.playback_taken_rt()
        u_count = self.path.side.u_count
        return (w_pos - c_pos) + (u_count - played) / self.loop.ratio - self.target

    def trim_rt(self) -> bool:
        if self.error is None:
            return False
        self.queues.consume_playback_rt(int(round(self.error)))
        self.offset_sum = 0.0
        self.offset_n = 0
        return True

    @property
    def underruns(self) -> int:
        return int(self.path.side.underruns)

    def close(self) -> None:
        self.path.close()


def check_channels(params: PcmParams, want: int, pcm_name: str) -> None:
    """The rings are laid out for the ports' channels: a device opened with others is refused."""
    if params.channels != want:
        raise DeviceError(f"{pcm_name}: {params.stream} opened with {params.channels} channels, "
                          f"not the {want} of the JACK ports")
