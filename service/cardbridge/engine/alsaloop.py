"""The ALSA thread of a bridge worker: device I/O, resampling and drift control.

Runs in one thread of the bridge worker process, at SCHED_FIFO where permitted (one above JACK's
client threads, see `alsa_priority`). Opening, closing
and recovery happen at the edges of `run()`; the per-period path (`*_rt` methods) only reads and
writes preallocated buffers, the lock-free rings of the compiled core and the stats slot. It
never logs: messages for the log are left in `notes` for the control thread to print.

Measurement (see drift.py for the loop): at every period boundary of the card, filtered by the
DLL, the pipeline content is compared with its target, both in JACK frames:
  capture:  D = V − R(t_b)   V = resampler output for every device frame read (virtual count,
                             Σ frames·ratio, so the resampler's fractional position is included)
                             R(t_b) = ring read position JACK had reached at t_b, from the last
                             cycle record interpolated with JACK's own cycle times
  playback: D = W(t_b) − C + (U − played(t_b)) / r
                             W(t_b) = ring write position of JACK at t_b (interpolated), C = JACK
                             frames taken from the ring, U = device frames the resampler produced
                             (virtual count, prefill included), played(t_b) = device frames the
                             card had played at t_b
The targets are the smallest delays that keep one device period and one JACK period of data in
flight plus a safety margin; they are also the latencies reported to JACK.
"""

from __future__ import annotations

import os
import select
import threading
import time

import numpy as np
import samplerate

from .. import names
from ..drift import PeriodDLL, RatioLoop, jack_frames_at
from ..headroom import Headroom
from ._rtcore import ffi, lib
from .jackside import JackSide
from .pcmio import FORMAT_CODES, DeviceError, DeviceGone, classify, open_pcm
from .periodpath import ResamplerError, SidePath
from .stats import INDEX, STATE_CODES, StatsSlot

import alsaaudio

CONVERTERS = {"best": "sinc_best", "medium": "sinc_medium", "fastest": "sinc_fastest",
              "linear": "linear"}
SYNC_SECONDS = 0.25       # DLL settling before the initial trim (USB cards need ~0.25 s)

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


PRIORITY_WITHOUT_RT_JACK = 10


def alsa_priority(jack_client_priority: int) -> int:
    """SCHED_FIFO priority of the ALSA thread, from JACK's priority for its clients' process
    threads (-1 when JACK is not real-time).

    One above JACK's clients: the card's deadline is its own buffer of a few periods, and a
    heavy JACK graph (plugins, a DAW) running in the clients' threads must not delay it; still
    below the JACK server's own thread. Without a real-time JACK the thread stays real-time at a
    low priority: at normal priority the card xruns as soon as the machine is busy.
    """
    if jack_client_priority < 0:
        return PRIORITY_WITHOUT_RT_JACK
    return jack_client_priority + 1


def try_realtime(priority: int) -> str | None:
    """Ask SCHED_FIFO at `priority` for the calling thread; returns a warning when it is not
    permitted."""
    try:
        lo = os.sched_get_priority_min(os.SCHED_FIFO)
        hi = os.sched_get_priority_max(os.SCHED_FIFO)
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(max(lo, min(hi, priority))))
        return None
    except (PermissionError, OSError) as exc:
        return f"real-time scheduling not permitted for the ALSA thread ({exc.strerror}); running at normal priority"


def jack_now() -> float:
    """Seconds on JACK's own clock (jack_get_time: CLOCK_MONOTONIC_RAW on Linux jack2), the clock
    of the cycle times the error is measured against."""
    return lib.cb_now_usecs() * 1e-6


class Resync(Exception):
    """Leave the streaming loop and start again (xrun, stall, JACK change)."""


class CardXrun(Resync):
    """A card xrun: `gap` = seconds since the card last delivered a period in time (None when
    the stream had not delivered one yet), for the headroom policy."""

    def __init__(self, gap: float | None):
        super().__init__()
        self.gap = gap


class AlsaBridge:
    """Owns the device streams of one bridge; `run()` is the thread body."""

    def __init__(self, spec, jack_side: JackSide, stats: StatsSlot, channels: tuple[int, int],
                 device_rate: int | None, strict_rate: bool,
                 priority: int = PRIORITY_WITHOUT_RT_JACK):
        self.spec = spec
        self.jack = jack_side
        self.stats = stats
        self.n_capture, self.n_playback = channels
        self.device_rate = device_rate
        self.strict_rate = strict_rate
        self.priority = priority
        self.stop = threading.Event()
        self.wake = threading.Event()     # set by the control thread: retry the device now
        self.notes: list[str] = []
        self.learnt_ppm = 0.0          # kept across restarts of the thread: re-lock starts from it
        self.headroom = Headroom(spec.periods, spec.max_periods)
        self.t_ok: float | None = None  # when the card last delivered a period in time
        self.loop_c = self.loop_p = None  # kept across resyncs (warm re-lock)
        self.has_locked = False
        self.drift_smooth: float | None = None
        self.xruns = 0
        self.resyncs = 0
        self.underruns = 0
        self.fatal: str | None = None
        self.cap = self.pb = None
        self.path_c = self.path_p = None   # the C per-period path of each direction
        core = jack_side.core
        self.p_cap_wr = ffi.addressof(core, "capture_wr")
        self.p_pb_rd = ffi.addressof(core, "playback_rd")
        self.thread = threading.Thread(target=self.run, name=f"alsa-{spec.client_name}", daemon=True)

    # -- control side -------------------------------------------------------------------------
    def start(self) -> None:
        self.thread.start()

    def request_stop(self, timeout: float = 2.0) -> None:
        self.stop.set()
        self.wake.set()
        self.thread.join(timeout)

    def poke(self) -> None:
        self.wake.set()

    def _pause(self, seconds: float) -> None:
        self.wake.wait(seconds)
        self.wake.clear()

    def _set_state(self, state: str) -> None:
        s = self.stats
        s.begin_rt()
        s.values[INDEX["state"]] = STATE_CODES[state]
        s.end_rt()

    # -- thread body --------------------------------------------------------------------------
    def run(self) -> None:
        warning = try_realtime(self.priority)
        if warning:
            self.notes.append(warning)
        backoff = 0.2
        while not self.stop.is_set() and not self.jack.events.shutdown.is_set():
            try:
                self._open()
                self._stream()
                backoff = 0.2
            except Resync as exc:
                self.resyncs += 1
                self.stats.add("restarts")
                if isinstance(exc, CardXrun):
                    self._after_xrun(exc.gap)
            except DeviceGone:
                self._close()
                self._set_state(names.WAITING_FOR_DEVICE)
                self.jack.core.mute_capture = 1
                self._pause(backoff)
                backoff = min(backoff * 1.5, 1.0)
            except (DeviceError, ResamplerError) as exc:
                self._close()
                self.notes.append(f"device error: {exc}")
                self._set_state(names.FAILED)
                self.fatal = str(exc)
                self._pause(min(backoff * 4, 5.0))
                backoff = min(backoff * 2, 5.0)
            finally:
                self._close()
        self.jack.core.mute_capture = 1

    def _after_xrun(self, gap: float | None) -> None:
        """A card xrun ended the stream: maybe give the card one more period (headroom.py)."""
        period_s = self.period / float(self.rate)
        before = self.headroom.periods
        if self.headroom.on_xrun(time.monotonic(), gap, period_s):
            after = self.headroom.periods
            self.notes.append(
                f"{self.spec.pcm} keeps running dry ({before} periods of {self.period} frames); "
                f"using {after} periods from now on (+{period_s * 1000:.1f} ms latency)")

    def _open(self) -> None:
        spec = self.spec
        rate = self.device_rate or self.jack.events.samplerate
        if self.n_capture:
            self.cap, self.cap_params = open_pcm(spec.pcm, "capture", self.n_capture, rate,
                                                 spec.period, self.headroom.periods,
                                                 self.strict_rate)
            rate = self.cap_params.rate
        if self.n_playback:
            self.pb, self.pb_params = open_pcm(spec.pcm, "playback", self.n_playback, rate,
                                               spec.period, self.headroom.periods, True)
        self.rate = rate
        opened = []
        if self.cap is not None:
            opened.append((self.cap_params, self.n_capture))
        if self.pb is not None:
            opened.append((self.pb_params, self.n_playback))
        for params, want in opened:
            if params.channels != want:   # the rings are laid out for the ports' channels
                raise DeviceError(f"{spec.pcm}: {params.stream} opened with {params.channels} "
                                  f"channels, not the {want} of the JACK ports")

    def _close(self) -> None:
        for attr in ("path_c", "path_p"):
            path = getattr(self, attr)
            setattr(self, attr, None)
            if path is not None:
                self.underruns += path.side.underruns
                path.close()
        for attr in ("cap", "pb"):
            pcm = getattr(self, attr)
            setattr(self, attr, None)
            if pcm is not None:
                try:
                    pcm.close()
                except alsaaudio.ALSAAudioError:
                    pass

    # -- streaming ------------------------------------------------------------------------------
    def _stream(self) -> None:
        """Start the streams, trim the initial error, then run the drift loops until a resync."""
        jk = self.jack
        core = jk.core
        ev = jk.events
        ev.changed.clear()
        fj = float(ev.samplerate)
        fd = float(self.rate)
        params = self.cap_params if self.cap is not None else self.pb_params
        self.period = params.period
        self.bufsize = params.period * params.periods
        converter = CONVERTERS.get(self.spec.quality, "sinc_medium")
        self.withheld, content_lag = resampler_lags(converter)
        self.margin = max(48, self.period // 4)  # covers late wake-ups of this thread
        learnt = 1.0 + self.learnt_ppm * 1e-6
        self.dll = PeriodDLL(self.period, fd)
        self.fd = fd
        self.t_ok = None
        self._set_state(names.SYNCING)
        core.mute_capture = 1
        self.cap_started = False
        self.cap_poll = self._poller(self.cap) if self.cap is not None else None
        self.pb_poll = self._poller(self.pb) if self.pb is not None else None
        lat_c = lat_p = 0.0
        if self.cap is not None:
            self._capture_setup(converter, fj, fd, learnt, int(ev.blocksize))
            lat_c = self.target_c + content_lag
        if self.pb is not None:
            self._playback_setup(converter, fj, fd, learnt, int(ev.blocksize))
            lat_p = self.target_p + content_lag
        jk.set_latencies(lat_c, lat_p)
        self.stats.set(capture_latency=lat_c, playback_latency=lat_p, rate=fd,
                       period=self.period, periods=params.periods, jack_rate=fj,
                       jack_period=ev.blocksize, capture_channels=self.n_capture,
                       playback_channels=self.n_playback,
                       device_format=FORMAT_CODES.get(params.format_name, 0))
        self._loop_rt()

    def _capture_setup(self, converter, fj, fd, learnt, n_jack) -> None:
        self.r_c0 = fj / fd
        self.loop_c = self._loop(self.loop_c, self.r_c0, fd, fj, n_jack, "capture",
                                 self.r_c0 / learnt)
        self.path_c = SidePath(self.jack.core, self.cap_params, converter, self.period,
                               self.r_c0)
        # A buffer of more than two periods lets this thread be late by more than a period
        # without a card xrun; the ring must then hold that much more for JACK to read meanwhile.
        late_ok = max(0, self.bufsize // self.period - 2) * self.period
        self.target_c = (self.r_c0 * (self.period + self.withheld + late_ok) + n_jack
                         + self.margin)
        self.v_count = float(lib.cb_load(self.p_cap_wr))
        self.err_c = None

    def _loop(self, old: RatioLoop | None, nominal: float, fd: float, fj: float, n_jack: int,
              direction: str, start_ratio: float) -> RatioLoop:
        """The ratio loop of one direction: the previous one re-armed warm when the clocks are
        the same (a resync keeps the learnt ratio), else a new one."""
        resync_frames = max(512.0, 2.0 * n_jack + self.period)
        if (old is not None and old.nominal_ratio == nominal and old.jack_rate == fj
                and old.resync_frames == resync_frames):
            old.reset(old.learned_ratio, warm=self.has_locked)
            return old
        loop = RatioLoop(nominal, fd / self.period, jack_rate=fj, direction=direction,
                         resync_frames=resync_frames)
        loop.reset(start_ratio)
        return loop

    def _playback_setup(self, converter, fj, fd, learnt, n_jack) -> None:
        period = self.period
        self.r_p0 = fd / fj
        self.loop_p = self._loop(self.loop_p, self.r_p0, fd, fj, n_jack, "playback",
                                 self.r_p0 * learnt)
        # Duplex: the capture read is the wait, and playback starts with the first write, at a
        # capture boundary: each write then comes one period after the last, and the buffer is
        # left full but for the margin (a card's pointer may move in steps), so that this
        # thread may be late by almost a period before the card runs dry. Playback only: the
        # blocking write is the wait.
        if self.cap is not None:
            self.prefill = self.bufsize - self.margin
        else:
            self.prefill = self.bufsize
        self.target_p = (self.prefill + self.withheld) / self.r_p0 + self.margin
        self.path_p = SidePath(self.jack.core, self.pb_params, converter, period, self.r_p0,
                               prefill=self.prefill)
        self.offset_sum = 0.0
        self.offset_n = 0
        self.err_p = None
        self.written = 0
        if self.cap is None:
            self._prefill()
        # duplex: the prefill goes out at the first capture boundary, so that both streams
        # start in a known phase (the capture read that starts capture takes a period)

    def _prefill(self) -> None:
        silence = bytes(self.prefill * self.pb_params.channels * self.pb_params.width)  # zeros
        try:
            res = self.pb.write(silence)
        except alsaaudio.ALSAAudioError as exc:
            raise classify(exc) from exc
        if res < 0:
            raise Resync()
        self.written = self.prefill

    def _loop_rt(self) -> None:
        jk = self.jack
        ev = jk.events
        cap, pb = self.cap, self.pb
        periods_seen = 0
        trimmed = False
        publish_every = max(1, int(self.fd / self.period / 8))
        sync_periods = max(8, int(SYNC_SECONDS * self.fd / self.period))
        while True:
            if self.stop.is_set() or ev.shutdown.is_set():
                return
            if ev.changed.is_set():
                raise Resync()
            if cap is not None:
                data = self._read_rt()
                cyc = jk.read_cycle_rt()
                self._capture_rt(data, cyc, trimmed)
                if pb is not None:
                    self._playback_rt(cyc, trimmed)
            else:
                self._playback_rt(None, trimmed)
                cyc = jk.read_cycle_rt()
            periods_seen += 1
            if not trimmed and periods_seen >= sync_periods and cyc is not None:
                trimmed = self._trim_rt()
            if periods_seen % publish_every == 0:
                self._publish_rt(trimmed)

    def _wait_rt(self, pcm, poller, ready_mask: int) -> None:
        """Block until the card has a period for us (poll on the PCM's descriptors).

        A plain blocking read/write would transfer what is there and then wait for a whole
        avail_min more, so on cards with a fine-grained pointer every call returns a little later
        than the last: waiting first and then transferring exactly one period keeps us on time.
        """
        while True:
            events = poller.poll(1000)
            if self.stop.is_set() or self.jack.events.shutdown.is_set():
                raise Resync()
            if not events:
                continue
            try:
                revents = pcm.polldescriptors_revents(events)
            except alsaaudio.ALSAAudioError as exc:
                raise classify(exc) from exc
            if revents & select.POLLERR:
                state = pcm.state()
                if state == alsaaudio.PCM_STATE_XRUN:
                    self._count_xrun_rt("capture overrun" if pcm is self.cap else "playback underrun")
                raise DeviceGone("the card reported an error on its descriptor")
            if revents & ready_mask:
                return

    def _poller(self, pcm) -> "select.poll":
        poller = select.poll()
        for fd, mask in pcm.polldescriptors():
            poller.register(fd, mask)
        return poller

    def _read_rt(self):
        if self.cap_started:
            self._wait_rt(self.cap, self.cap_poll, select.POLLIN)
        self.cap_started = True
        try:
            n, data = self.cap.read()
        except alsaaudio.ALSAAudioError as exc:
            raise classify(exc) from exc
        t_wake = jack_now()
        if n < 0:
            self._count_xrun_rt("capture overrun")
        self.t_ok = t_wake
        past = max(0, self.cap.avail())
        if n != self.period:
            self._resync_rt(f"the card gave {n} frames instead of a period")
        t_last = self.dll.t1
        if not self.dll.update(t_wake, past):
            self._resync_rt(self._stall_reason(t_last, t_wake))
        return data

    @staticmethod
    def _stall_reason(t_last: float, t_wake: float) -> str:
        return f"the card's period came {(t_wake - t_last) * 1000:.1f} ms after the last one"

    def _note_rt(self, text: str) -> None:
        """A line for the log, on an error path only (the list is capped)."""
        if len(self.notes) < 1000:
            self.notes.append(text)

    def _resync_rt(self, why: str) -> None:
        """Leave the stream for a restart, saying why."""
        self._note_rt(f"resync on {self.spec.pcm}: {why}")
        raise Resync()

    def _count_xrun_rt(self, what: str) -> None:
        """Count a card xrun and resync; the note (an error path, not the steady state) tells
        the log which side it was."""
        gap = None if self.t_ok is None else jack_now() - self.t_ok
        self.xruns += 1
        self._note_rt(f"{what} on {self.spec.pcm} (xrun {self.xruns}); resyncing")
        self.stats.add("xruns")
        raise CardXrun(gap)

    def _capture_rt(self, data, cyc, trimmed: bool) -> None:
        ratio = self.loop_c.ratio
        if self.path_c.capture_rt(data, ratio) < 0:
            self._resync_rt(f"capture resampler: {self.path_c.error}")
        self.v_count += self.period * ratio
        dll = self.dll
        if not dll.ready or cyc is None:
            self.err_c = None
            return
        jf = jack_frames_at(dll.t1, (cyc[0], cyc[1], cyc[2], cyc[3]))
        self.err_c = (self.v_count - (cyc[4] + (jf - cyc[0]))) - self.target_c
        if trimmed:
            self.loop_c.update(self.err_c)
            if self.loop_c.needs_resync:
                self._resync_rt(f"capture delay off by {self.err_c:.0f} frames")

    def _playback_rt(self, cyc, trimmed: bool) -> None:
        period = self.period
        dll = self.dll
        err = None
        if self.cap is None:
            # playback only: the card making room for a period is the clock
            self._wait_rt(self.pb, self.pb_poll, select.POLLOUT)
            t_wake = jack_now()
            self.t_ok = t_wake
            past = max(0, self.pb.avail() - period)
            t_last = dll.t1
            if not dll.update(t_wake, past):
                self._resync_rt(self._stall_reason(t_last, t_wake))
            cyc = self.jack.read_cycle_rt()
            if dll.ready and cyc is not None:
                # at that boundary the card had just made room for one period
                played = self.written - (self.bufsize - period)
                err = self._error_from_played_rt(cyc, played)
        elif self.written == 0:
            self._prefill()
            return
        elif dll.ready and cyc is not None:
            err = self._playback_error_rt(cyc, jack_now())
        path = self.path_p
        if path.playback_rt(self.loop_p.ratio) < 0:
            self._resync_rt(f"playback resampler: {path.error}")
        try:
            res = self.pb.write(path.payload)
        except alsaaudio.ALSAAudioError as exc:
            raise classify(exc) from exc
        if res < 0:
            self._count_xrun_rt("playback underrun")
        self.written += period
        self.err_p = err
        if trimmed and err is not None:
            self.loop_p.update(err)
            if self.loop_p.needs_resync:
                self._resync_rt(f"playback delay off by {err:.0f} frames")

    def _playback_error_rt(self, cyc, now: float) -> float:
        """Duplex: how far the card had played at the capture boundary, from its avail."""
        queued = self.bufsize - self.pb.avail()
        played_now = self.written - queued
        played = played_now - (now - self.dll.t1) * self.fd
        return self._error_from_played_rt(cyc, played)

    def _error_from_played_rt(self, cyc, played_est: float) -> float:
        # Pulling frames moves them from the ring to the device side without changing the
        # total (virtual counts), so the error may be taken before or after the pull.
        # played(t_b) = DLL frame count + a constant offset, averaged since the stream started
        self.offset_sum += played_est - self.dll.frames
        self.offset_n += 1
        played = self.dll.frames + self.offset_sum / self.offset_n
        jf = jack_frames_at(self.dll.t1, (cyc[0], cyc[1], cyc[2], cyc[3]))
        w_pos = cyc[5] + (jf - cyc[0])
        c_pos = lib.cb_load(self.p_pb_rd)
        u_count = self.path_p.side.u_count
        return (w_pos - c_pos) + (u_count - played) / self.loop_p.ratio - self.target_p

    def _trim_rt(self) -> bool:
        """Remove the start-up error at once by moving our own ring positions."""
        core = self.jack.core
        if self.cap is not None:
            if self.err_c is None:
                return False
            shift = int(round(self.err_c))
            lib.cb_capture_commit(core, -shift)
            self.v_count -= shift
        if self.pb is not None:
            if self.err_p is None:
                return False
            lib.cb_playback_consume(core, int(round(self.err_p)))
            self.offset_sum = 0.0
            self.offset_n = 0
        core.mute_capture = 0
        return True

    def _publish_rt(self, trimmed: bool) -> None:
        if self.cap is not None:
            loop, err = self.loop_c, self.err_c
        else:
            loop, err = self.loop_p, self.err_p
        # DriftPpm is for people: the integrator's estimate smoothed over ~2 s
        if self.drift_smooth is None:
            self.drift_smooth = loop.drift_ppm
        else:
            self.drift_smooth += 0.06 * (loop.drift_ppm - self.drift_smooth)
        drift = self.drift_smooth
        core = self.jack.core
        s = self.stats
        v = s.values
        s.begin_rt()
        v[I_RATIO] = loop.ratio
        v[I_DRIFT] = drift
        v[I_DELAY] = err if err is not None else 0.0
        pulled_short = self.path_p.side.underruns if self.path_p is not None else 0
        v[I_UNDERRUNS] = (self.underruns + pulled_short + core.capture_underruns
                          + core.playback_overruns)
        v[I_JACK_LOST] = core.lost_times
        v[I_LOCKED] = 1.0 if (trimmed and loop.locked) else 0.0
        v[I_HEARTBEAT] = time.monotonic()
        if trimmed and loop.locked:
            v[I_STATE] = STATE_CODES[names.RUNNING]
            self.has_locked = True
        s.end_rt()
        if trimmed and loop.locked:   # what a restart starts from: only a locked estimate
            self.learnt_ppm = drift


I_RATIO = INDEX["ratio"]
I_DRIFT = INDEX["drift_ppm"]
I_DELAY = INDEX["delay_error"]
I_UNDERRUNS = INDEX["underruns"]
I_JACK_LOST = INDEX["jack_lost"]
I_LOCKED = INDEX["locked"]
I_HEARTBEAT = INDEX["heartbeat"]
I_STATE = INDEX["state"]
