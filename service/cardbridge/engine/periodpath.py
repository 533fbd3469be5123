"""One direction of a bridge's per-period path: the device's sample format, libsamplerate and
its ring of the queues to the JACK side, all in the compiled core (csrc/periodpath.c).

A `SidePath` is made and closed by the bridge worker's ALSA thread outside its real-time loop,
which allocates every buffer; `capture_rt` and `playback_rt` run inside the loop, once per device
period, and make one C call each (no numpy, no Python objects made per period).
"""

from __future__ import annotations

import math
import os
import weakref

import samplerate

from ._rtcore import ffi, lib
from .pcmio import FORMAT_CODES, PcmParams

# libsamplerate's converter numbers (samplerate.h: SRC_SINC_BEST_QUALITY ... SRC_LINEAR)
CONVERTER_TYPES = {"sinc_best": 0, "sinc_medium": 1, "sinc_fastest": 2, "linear": 4}
RATIO_ROOM = 1.01          # the ratio never leaves ±2000 ppm of its nominal value (drift.py)


class ResamplerError(RuntimeError):
    """libsamplerate could not be used: not found in the samplerate package, or it failed."""


def bind_libsamplerate() -> None:
    """Find libsamplerate's C functions in the loaded samplerate package (once per process)."""
    path = samplerate.__file__
    if lib.cb_src_bind(os.fsencode(path)) != 0:
        raise ResamplerError(f"the samplerate package ({path}) does not export libsamplerate's "
                             "C API (src_new, src_process); cardbridge needs samplerate 0.2")


def _error_text(code: int) -> str:
    if code > 0:
        return ffi.string(lib.cb_src_strerror(code)).decode(errors="replace")
    if code == -2:
        return "the device's channel count differs from the JACK ports'"
    return "no room for the resampler's output"


class SidePath:
    """The C state of one direction: a libsamplerate converter and its preallocated buffers.

    Capture: `capture_rt(data, ratio)` decodes one period of device bytes, resamples it and
    appends it to `ring` (the queues' capture ring). Playback: `playback_rt(ratio)` resamples JACK
    frames from `ring` (the playback ring) into one device period and leaves it, encoded, in
    `payload`.
    """

    def __init__(self, ring, params: PcmParams, converter: str, period: int, ratio: float,
                 prefill: int = 0):
        bind_libsamplerate()
        ch = params.channels
        if params.stream == "capture":
            in_frames = period
            out_frames = int(math.ceil(period * ratio * RATIO_ROOM)) + 64
        else:
            in_frames = int(math.ceil(period / ratio * RATIO_ROOM)) + 8
            out_frames = 4 * period          # the fifo: never more than a period and one pull
        self.ring = ring
        self._in = ffi.new("float[]", in_frames * ch)
        self._out = ffi.new("float[]", out_frames * ch)
        self._bytes = ffi.new("char[]", period * ch * params.width)
        s = self.side = ffi.new("cb_side *")
        s.channels = ch
        s.format = FORMAT_CODES[params.format_name]
        s.width = params.width
        s.period = period
        s.in_buf = self._in
        s.in_frames = in_frames
        s.out_buf = self._out
        s.out_frames = out_frames
        s.bytes = self._bytes
        s.u_count = float(prefill)
        self.payload = ffi.buffer(self._bytes)
        err = lib.cb_side_open(s, CONVERTER_TYPES[converter])
        if err:
            raise ResamplerError(f"libsamplerate: {_error_text(err)}")
        self._close = weakref.finalize(self, lib.cb_side_close, s)

    def silence(self, frames: int) -> bytes:
        """`frames` frames of silence in the device's format (zero bytes are not silence in an
        unsigned one)."""
        ch = self.side.channels
        zeros = ffi.new("float[]", frames * ch)
        out = ffi.new("char[]", frames * ch * self.side.width)
        lib.cb_encode(self.side.format, zeros, out, frames * ch)
        return bytes(ffi.buffer(out))

    def close(self) -> None:
        self._close()

    @property
    def error(self) -> str:
        """What libsamplerate said when a call returned -1."""
        return _error_text(self.side.error)

    def capture_rt(self, data: bytes, ratio: float) -> int:
        """One period of device bytes → JACK frames in the capture ring (never more than a period,
        never read past `data`); -1 on a resampler error."""
        return lib.cb_capture_period(self.ring, self.side, data, len(data), ratio)

    def playback_rt(self, ratio: float) -> int:
        """One device period from the playback ring into `payload`; -1 on a resampler error."""
        return lib.cb_playback_period(self.ring, self.side, ratio)
