"""The ALSA thread of a bridge worker: opens the card, runs its stream, and starts again.

One thread per JACK session of the worker, at SCHED_FIFO where permitted (one above JACK's
client threads, see `alsa_priority`). It receives only its queues (queues.py), its command slot
(StreamControl), its record of the statistics slot and an outbox to the control thread — never
the JACK client. Around each run of the stream (stream.py) it opens and closes the PCMs, says
its state (syncing; waiting for the device; failed, with the reason), counts the runs and gives a
card that keeps running dry one more period (headroom.py).
"""

from __future__ import annotations

import os
import threading
import time

import alsaaudio

from .. import bridgestats
from ..headroom import Headroom
from .pcmio import DeviceError, DeviceGone, open_pcm
from .periodpath import ResamplerError
from .sides import CaptureSide, Geometry, PlaybackSide, SideFailed, Xrun, check_channels
from .spec import BridgeSpec
from .stream import Resync, Stream
from .streamcontrol import StreamControl, StreamOutbox

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
        return (f"real-time scheduling not permitted for the ALSA thread ({exc.strerror}); "
                "running at normal priority")


class AlsaThread:
    """`start()`/`stop()` from the control thread; `run()` is the thread body."""

    def __init__(self, spec: BridgeSpec, queues, control: StreamControl, record,
                 outbox: StreamOutbox, device_rate: int | None, priority: int,
                 learnt_ppm: float, periods: int):
        self.spec = spec
        self.queues = queues
        self.control = control
        self.record = record
        self.outbox = outbox
        self.device_rate = device_rate
        self.strict_rate = spec.rate is not None
        self.priority = priority
        self.learnt_ppm = learnt_ppm        # the card's drift: where a new stream starts from
        self.headroom = Headroom(max(spec.periods, periods), spec.max_periods)
        self.loops: dict[str, object] = {}  # kept across runs of the stream (warm re-lock)
        self.has_locked = False
        self.thread = threading.Thread(target=self.run, name=f"alsa-{spec.client_name}",
                                       daemon=True)

    # -- the control thread ------------------------------------------------------------------
    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float = 2.0) -> bool:
        """Ask the thread to end and wait for it; False if it is still running (stuck)."""
        self.control.stop.set()
        self.control.wake.set()
        self.thread.join(timeout)
        return not self.thread.is_alive()

    # -- the thread --------------------------------------------------------------------------
    def run(self) -> None:
        warning = try_realtime(self.priority)
        if warning:
            self.outbox.note(warning)
        backoff = 0.2
        control = self.control
        while not control.stop.is_set():
            try:
                self._run_stream()
                backoff = 0.2
            except Resync as exc:
                self.record.add("resyncs")
                if str(exc) != "stopping":
                    self.outbox.note(f"resync on {self.spec.pcm}: {exc}")
            except Xrun as exc:
                self._after_xrun(exc)
            except DeviceGone as exc:
                self.outbox.state(bridgestats.WAITING_FOR_DEVICE, f"the card is gone ({exc})")
                control.pause(backoff)
                backoff = min(backoff * 1.5, 1.0)
            except (DeviceError, ResamplerError, SideFailed) as exc:
                self.outbox.note(f"device error: {exc}")
                self.outbox.state(bridgestats.FAILED, str(exc))
                control.pause(min(backoff * 4, 5.0))
                backoff = min(backoff * 2, 5.0)
        self.queues.mute_rt(True)

    def _run_stream(self) -> None:
        spec = self.spec
        control = self.control
        jack_rate, jack_period = control.jack_rate, control.jack_period
        pcms = []
        stream = None
        try:
            rate = self.device_rate or jack_rate
            cap = pb = None
            if self.queues.n_capture:
                pcm, params = open_pcm(spec.pcm, "capture", self.queues.n_capture, rate,
                                       spec.period, self.headroom.periods, self.strict_rate)
                pcms.append(pcm)
                check_channels(params, self.queues.n_capture, spec.pcm)
                rate = params.rate
                cap = (pcm, params)
            if self.queues.n_playback:
                pcm, params = open_pcm(spec.pcm, "playback", self.queues.n_playback, rate,
                                       spec.period, self.headroom.periods, True)
                pcms.append(pcm)
                check_channels(params, self.queues.n_playback, spec.pcm)
                pb = (pcm, params)
            first = (cap or pb)[1]
            geo = Geometry(first, jack_rate, jack_period, spec.quality)
            self.outbox.state(bridgestats.SYNCING, "locking to the card's clock")
            self.queues.mute_rt(True)
            learnt = 1.0 + self.learnt_ppm * 1e-6
            warm = self.has_locked
            sides = []
            try:
                if cap is not None:
                    sides.append(CaptureSide(self.queues, cap[0], cap[1], geo, learnt,
                                             self.loops.get("capture"), warm))
                if pb is not None:
                    sides.append(PlaybackSide(self.queues, pb[0], pb[1], geo, learnt,
                                              self.loops.get("playback"), warm,
                                              duplex=cap is not None))
            except BaseException:
                for side in sides:
                    side.close()
                raise
            capture = sides[0] if cap is not None else None
            playback = sides[-1] if pb is not None else None
            for side in sides:
                self.loops[side.direction] = side.loop
            stream = Stream(control, self.outbox, self.record, self.queues, capture, playback,
                            geo, spec.pcm)
            stream.underruns_before = int(self.record.get("underruns"))
            lat_c = capture.latency if capture is not None else 0.0
            lat_p = playback.latency if playback is not None else 0.0
            self.queues.set_latencies(lat_c, lat_p)
            self.outbox.latencies_changed()
            self.record.set(capture_latency=round(lat_c), playback_latency=round(lat_p),
                            rate=geo.fd, period=geo.period, periods=first.periods,
                            jack_rate=geo.fj, jack_period=jack_period,
                            device_format=bridgestats.FORMATS.index(first.format_name))
            stream.run()
        finally:
            if stream is not None:
                if stream.learnt_ppm is not None:
                    self.learnt_ppm = stream.learnt_ppm
                    self.has_locked = True
                stream.close()
            self.queues.mute_rt(True)
            for pcm in pcms:
                try:
                    pcm.close()
                except alsaaudio.ALSAAudioError:
                    pass

    def _after_xrun(self, xrun: Xrun) -> None:
        """A card xrun ended the stream: count it, say it, maybe give the card one more period
        (headroom.py)."""
        self.record.add("xruns")
        self.record.add("resyncs")
        xruns = int(self.record.get("xruns"))
        self.outbox.note(f"{xrun.what} on {self.spec.pcm} (xrun {xruns}); resyncing")
        period_s = xrun.period_s
        before = self.headroom.periods
        if self.headroom.on_xrun(time.monotonic(), xrun.gap, period_s):
            self.outbox.note(
                f"{self.spec.pcm} keeps running dry ({before} periods of {self.spec.period} "
                f"frames); using {self.headroom.periods} periods from now on "
                f"(+{period_s * 1000:.1f} ms latency)")
