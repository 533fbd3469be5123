"""One run of a bridge's stream: the card's PCMs, their clock, both directions, period by period.

Runs in the bridge worker's ALSA thread (SCHED_FIFO where permitted). `Stream.run()` is the
real-time loop: per device period it waits for the card, moves one period each way (sides.py),
timestamps the period boundary on JACK's clock (the DLL of drift.py), measures each direction's
delay error against JACK's last cycle (the queues' cycle record) and lets each ratio loop
follow it. It reads nothing but its queues and the control slot, and writes nothing but its
sides' rings, the stream record of the statistics slot and, on transitions only, a message to
the control thread. It returns when told to stop or when JACK's format changed, and raises
`Resync` (start again), `Xrun` (sides.py), DeviceGone or DeviceError on the way out.

Per period it allocates nothing that the project controls; what remains is pyalsaaudio's
`read()`, which returns a new bytes object.
"""

from __future__ import annotations

import select
import time

import alsaaudio

from .. import bridgestats
from ..drift import PeriodDLL
from ._rtcore import lib
from .pcmio import DeviceGone, classify
from .sides import CaptureSide, Geometry, PlaybackSide, SideFailed, Xrun
from .streamcontrol import StreamControl, StreamOutbox

SYNC_SECONDS = 0.25       # DLL settling before the initial trim (USB cards need ~0.25 s)
SILENT_PERIODS = 8        # a card that makes no period ready for this many periods ...
SILENT_MIN_S = 0.5        # ... and at least this long has stopped: start the stream again


class Resync(Exception):
    """Leave the streaming loop and start again, saying why."""


def jack_now() -> float:
    """Seconds on JACK's own clock (jack_get_time), the clock of the cycle records."""
    return lib.cb_now_usecs() * 1e-6


class Stream:
    def __init__(self, control: StreamControl, outbox: StreamOutbox, record, queues,
                 capture, playback, geo: Geometry, label: str):
        self.control = control
        self.outbox = outbox
        self.record = record
        self.queues = queues
        self.capture: CaptureSide | None = capture
        self.playback: PlaybackSide | None = playback
        self.geo = geo
        self.label = label
        self.dll = PeriodDLL(geo.period, geo.fd)
        self.t_ok: float | None = None       # when the card last delivered a period in time
        self.trimmed = False
        self.locked_once = False
        self.drift_smooth: float | None = None
        self._generation = control.jack_generation
        self._cap_started = False
        self._pollers = {}
        for side in (capture, playback):
            if side is not None:
                poller = select.poll()
                for fd, mask in side.pcm.polldescriptors():
                    poller.register(fd, mask)
                self._pollers[side.direction] = poller
        self._i = {key: record.index[key] for key in
                   ("ratio", "drift_ppm", "delay_error", "underruns", "jack_lost", "locked")}

    # -- the loop --------------------------------------------------------------------------------
    def run(self) -> None:
        """Start the card, trim the initial error, then follow it until told otherwise."""
        try:
            self._run_rt()
        except Xrun as exc:
            # for the headroom policy: how long since the card last delivered in time
            exc.gap = None if self.t_ok is None else jack_now() - self.t_ok
            exc.period_s = self.geo.period / self.geo.fd
            raise

    def _run_rt(self) -> None:
        geo = self.geo
        control = self.control
        periods_seen = 0
        publish_every = max(1, int(geo.fd / geo.period / 8))
        sync_periods = max(8, int(SYNC_SECONDS * geo.fd / geo.period))
        cap, pb = self.capture, self.playback
        queues = self.queues
        if pb is not None and cap is None:
            pb.prefill_rt()
        while True:
            if control.stop.is_set():
                return
            if control.jack_generation != self._generation:
                raise Resync("JACK's buffer size or sample rate changed")
            if cap is not None:
                data = self._read_rt()
                cyc = queues.read_cycle_rt()
                cap.transfer_rt(data)
                error = cap.measure_rt(cyc, self.dll)
                if self.trimmed and error is not None:
                    self._follow_rt(cap, error)
                if pb is not None:
                    self._duplex_playback_rt(pb, cyc)
            else:
                self._playback_alone_rt(pb)
                cyc = queues.read_cycle_rt()
            periods_seen += 1
            if not self.trimmed and periods_seen >= sync_periods and cyc is not None:
                self.trimmed = self._trim_rt()
            if periods_seen % publish_every == 0:
                self._publish_rt()

    def _follow_rt(self, side, error: float) -> None:
        side.loop.update(error)
        if side.loop.needs_resync:
            raise Resync(f"{side.direction} delay off by {error:.0f} frames")

    def _duplex_playback_rt(self, pb: PlaybackSide, cyc) -> None:
        if pb.written == 0:
            pb.prefill_rt()
            return
        error = pb.measure_duplex_rt(cyc, self.dll, jack_now())
        pb.transfer_rt()
        pb.error = error
        if self.trimmed and error is not None:
            self._follow_rt(pb, error)

    def _playback_alone_rt(self, pb: PlaybackSide) -> None:
        """Playback only: the card making room for a period is the clock."""
        self._wait_rt(pb, select.POLLOUT)
        t_wake = jack_now()
        self.t_ok = t_wake
        past = max(0, pb.avail_rt() - self.geo.period)
        self._boundary_rt(t_wake, past)
        error = pb.measure_alone_rt(self.queues.read_cycle_rt(), self.dll)
        pb.transfer_rt()
        pb.error = error
        if self.trimmed and error is not None:
            self._follow_rt(pb, error)

    def _read_rt(self):
        cap = self.capture
        if self._cap_started:
            self._wait_rt(cap, select.POLLIN)
        self._cap_started = True
        try:
            n, data = cap.pcm.read()
        except alsaaudio.ALSAAudioError as exc:
            raise classify(exc) from exc
        t_wake = jack_now()
        if n < 0:
            raise Xrun("capture overrun")
        self.t_ok = t_wake
        past = max(0, cap.pcm.avail())
        if n != self.geo.period:
            raise Resync(f"the card gave {n} frames instead of a period")
        self._boundary_rt(t_wake, past)
        return data

    def _boundary_rt(self, t_wake: float, past: float) -> None:
        t_last = self.dll.t1
        if not self.dll.update(t_wake, past):
            raise Resync(f"the card's period came {(t_wake - t_last) * 1000:.1f} ms after the "
                         "last one")

    def _wait_rt(self, side, ready_mask: int) -> None:
        """Block until the card has a period for us (poll on the PCM's descriptors).

        A plain blocking read/write would transfer what is there and then wait for a whole
        avail_min more, so on cards with a fine-grained pointer every call returns a little later
        than the last: waiting first and then transferring exactly one period keeps us on time.
        """
        limit = max(SILENT_MIN_S, SILENT_PERIODS * self.geo.period / self.geo.fd)
        wait_for_period(self._pollers[side.direction], side.pcm, side.direction, ready_mask,
                        self.control.stop, limit)

    def _trim_rt(self) -> bool:
        """Remove the start-up error at once by moving our own ring positions."""
        for side in (self.capture, self.playback):
            if side is not None and not side.trim_rt():
                return False
        self.queues.mute_rt(False)
        return True

    # -- publishing ------------------------------------------------------------------------------
    def _publish_rt(self) -> None:
        side = self.capture if self.capture is not None else self.playback
        loop = side.loop
        # DriftPpm is for people: the integrator's estimate smoothed over ~2 s
        if self.drift_smooth is None:
            self.drift_smooth = loop.drift_ppm
        else:
            self.drift_smooth += 0.06 * (loop.drift_ppm - self.drift_smooth)
        locked = self.trimmed and loop.locked
        rec = self.record
        v = rec.values
        i = self._i
        rec.begin()
        v[i["ratio"]] = loop.ratio
        v[i["drift_ppm"]] = self.drift_smooth
        v[i["delay_error"]] = side.error if side.error is not None else 0.0
        v[i["underruns"]] = (self.underruns_before + self._underruns_now())
        v[i["jack_lost"]] = self.queues.lost_times
        v[i["locked"]] = 1.0 if locked else 0.0
        rec.end()
        if locked and not self.locked_once:
            self.locked_once = True
            self.outbox.state(bridgestats.RUNNING)

    underruns_before = 0

    def _underruns_now(self) -> int:
        pb = self.playback.underruns if self.playback is not None else 0
        return pb + self.queues.jack_underruns

    def close(self) -> int:
        """Release the sides' C state; returns the underruns this stream counted."""
        counted = self._underruns_now() - self.queues.jack_underruns
        for side in (self.capture, self.playback):
            if side is not None:
                side.close()
        return counted

    @property
    def learnt_ppm(self) -> float | None:
        """The drift a restart may start from: only a locked estimate."""
        return self.drift_smooth if self.locked_once else None

    @staticmethod
    def now() -> float:
        return time.monotonic()


def wait_for_period(poller, pcm, direction: str, ready_mask: int, stop, limit: float) -> None:
    """Poll the PCM's descriptors until it says `ready_mask`; an xrun, a card gone or told to
    stop end the wait with the matching exception. A card that makes nothing ready for `limit`
    seconds has stopped (a hung driver, or a PCM left in a state where its descriptors wake the
    poll at once and the card never gets ready, on which the loop would spin at full CPU with
    the bridge in `syncing` for good): Resync, which starts the stream again."""
    deadline = time.monotonic() + limit
    while True:
        events = poller.poll(min(1000, max(1, int(limit * 1000))))
        if stop.is_set():
            raise Resync("stopping")
        if events:
            try:
                revents = pcm.polldescriptors_revents(events)
            except alsaaudio.ALSAAudioError as exc:
                raise classify(exc) from exc
            if revents & select.POLLERR:
                if pcm.state() == alsaaudio.PCM_STATE_XRUN:
                    raise Xrun("capture overrun" if direction == "capture"
                               else "playback underrun")
                raise DeviceGone("the card reported an error on its descriptor")
            if revents & ready_mask:
                return
        if time.monotonic() > deadline:
            raise Resync(f"the card made no {direction} period ready for {limit * 1000:.0f} ms "
                         f"(its state: {pcm.state()})")
