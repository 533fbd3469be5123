"""ALSA side of a bridge: opening a PCM with pyalsaaudio and converting samples to and from float32.

Opening and closing run in the bridge worker's ALSA thread outside its real-time loop; the
`*_rt` converters run inside it and only write into buffers allocated by `SampleCodec`.
"""

from __future__ import annotations

import errno
import sys
from dataclasses import dataclass

import alsaaudio
import numpy as np

# Preferred order: what costs least to convert first; every format real USB cards offer.
FORMATS = (
    ("FLOAT_LE", alsaaudio.PCM_FORMAT_FLOAT_LE, 4),
    ("S32_LE", alsaaudio.PCM_FORMAT_S32_LE, 4),
    ("S24_3LE", alsaaudio.PCM_FORMAT_S24_3LE, 3),
    ("S16_LE", alsaaudio.PCM_FORMAT_S16_LE, 2),
)
_BY_CODE = {code: (name, width) for name, code, width in FORMATS}
NATIVE_FLOAT = sys.byteorder == "little"   # FLOAT_LE samples are numpy float32 as they are

# Errors that mean "the device is not there (any more)".
GONE_ERRNOS = (errno.ENODEV, errno.ENOENT, errno.ENXIO, errno.EBADFD, errno.ESHUTDOWN)
GONE_WORDS = ("No such device", "No such file", "No such device or address",
              "File descriptor in bad state", "Cannot send after transport endpoint shutdown")


class DeviceGone(Exception):
    """The PCM vanished or cannot be opened because the card is absent."""


class DeviceError(Exception):
    """The PCM exists but refuses what we need (busy, unsupported parameters)."""


def classify(exc: Exception) -> Exception:
    text = str(exc)
    if any(word in text for word in GONE_WORDS):
        return DeviceGone(text)
    return DeviceError(text)


@dataclass
class PcmParams:
    name: str
    stream: str          # "capture" | "playback"
    channels: int
    rate: int
    period: int
    periods: int
    format_name: str
    width: int


def open_pcm(device: str, stream: str, channels: int | None, rate: int, period: int,
             periods: int, strict_rate: bool = True) -> tuple[alsaaudio.PCM, PcmParams]:
    """Open `device` for blocking interleaved I/O with the best format it offers.

    With `strict_rate` False the device may settle on another rate (the bridge resamples).
    """
    kind = alsaaudio.PCM_CAPTURE if stream == "capture" else alsaaudio.PCM_PLAYBACK
    want_channels = channels if channels else 2
    last_error: Exception | None = None
    for name, code, width in FORMATS:
        try:
            pcm = alsaaudio.PCM(type=kind, mode=alsaaudio.PCM_NORMAL, device=device, rate=rate,
                                channels=want_channels, format=code, periodsize=period,
                                periods=periods)
        except alsaaudio.ALSAAudioError as exc:
            last_error = classify(exc)
            if isinstance(last_error, DeviceGone):
                raise last_error from exc
            continue
        info = pcm.info()
        got_code = info.get("format")
        if got_code not in _BY_CODE:
            pcm.close()
            last_error = DeviceError(f"unsupported sample format {info.get('format_name')}")
            continue
        got_name, got_width = _BY_CODE[got_code]
        if channels is None and info["channels"] != want_channels:
            pass  # "all the card has": accept what the device settled on
        params = PcmParams(device, stream, info["channels"], info["rate"], info["period_size"],
                           info["periods"], got_name, got_width)
        if params.rate != rate and strict_rate:
            pcm.close()
            raise DeviceError(f"{device}: {stream} runs at {params.rate} Hz, not {rate} Hz")
        return pcm, params
    raise last_error or DeviceError(f"{device}: no usable sample format")


def max_channels(device: str, stream: str) -> int | None:
    """The channel count the device offers for `stream`, or None when it cannot tell."""
    kind = alsaaudio.PCM_CAPTURE if stream == "capture" else alsaaudio.PCM_PLAYBACK
    try:
        pcm = alsaaudio.PCM(type=kind, mode=alsaaudio.PCM_NONBLOCK, device=device)
    except alsaaudio.ALSAAudioError as exc:
        err = classify(exc)
        if isinstance(err, DeviceGone) and "No such file" in str(exc):
            return 0  # the card has no such stream
        raise err from exc
    try:
        channels = pcm.getchannels()
        return max(channels) if channels else None
    except alsaaudio.ALSAAudioError:
        return None
    finally:
        pcm.close()


class SampleCodec:
    """Converts one period between the device's interleaved format and float32 frames."""

    def __init__(self, params: PcmParams, max_frames: int):
        self.params = params
        ch = params.channels
        self.floats = np.zeros((max_frames, ch), dtype=np.float32)
        self.ints = np.zeros((max_frames, ch), dtype=np.int32)
        self.raw = bytearray(max_frames * ch * params.width)
        self.raw_view = np.frombuffer(self.raw, dtype=np.uint8)
        fmt = params.format_name
        if fmt == "S16_LE":
            self.scale = 1.0 / 32768.0
        elif fmt in ("S32_LE", "S24_3LE"):
            self.scale = 1.0 / 2147483648.0
        else:
            self.scale = 1.0

    def decode_rt(self, data: bytes, frames: int) -> np.ndarray:
        """Device bytes → float32 view (frames, channels) into the codec's buffer."""
        fmt = self.params.format_name
        if fmt == "FLOAT_LE" and NATIVE_FLOAT:
            # no copy: a view of the bytes pyalsaaudio returned (read-only is fine for resampling)
            return np.frombuffer(data, dtype=np.float32,
                                 count=frames * self.params.channels).reshape(frames, -1)
        out = self.floats[:frames]
        if fmt == "FLOAT_LE":
            src = np.frombuffer(data, dtype="<f4", count=frames * self.params.channels)
            out.reshape(-1)[:] = src
        elif fmt == "S16_LE":
            src = np.frombuffer(data, dtype="<i2", count=frames * self.params.channels)
            np.multiply(src, self.scale, out=out.reshape(-1), casting="unsafe")
        elif fmt == "S32_LE":
            src = np.frombuffer(data, dtype="<i4", count=frames * self.params.channels)
            np.multiply(src, self.scale, out=out.reshape(-1), casting="unsafe")
        else:  # S24_3LE: three bytes, little endian, placed in the top of an int32
            n = frames * self.params.channels
            b = np.frombuffer(data, dtype=np.uint8, count=n * 3).reshape(n, 3)
            ints = self.ints.reshape(-1)[:n]
            ints[:] = b[:, 2]
            np.left_shift(ints, 8, out=ints)
            np.bitwise_or(ints, b[:, 1], out=ints)
            np.left_shift(ints, 8, out=ints)
            np.bitwise_or(ints, b[:, 0], out=ints)
            np.left_shift(ints, 8, out=ints)
            np.multiply(ints, self.scale, out=out.reshape(-1)[:n], casting="unsafe")
        return out

    def encode_rt(self, frames_in: np.ndarray) -> memoryview:
        """float32 (frames, channels) → device bytes (a view of the codec's buffer, or of
        `frames_in` itself, clipped in place, when the device takes native float32)."""
        frames = frames_in.shape[0]
        n = frames * self.params.channels
        fmt = self.params.format_name
        flat = frames_in.reshape(-1)
        if fmt == "FLOAT_LE" and NATIVE_FLOAT and frames_in.flags.c_contiguous:
            np.minimum(flat, 1.0, out=flat)
            np.maximum(flat, -1.0, out=flat)
            return memoryview(flat)
        if fmt == "FLOAT_LE":
            dst = np.frombuffer(self.raw, dtype="<f4", count=n)
            np.minimum(flat, 1.0, out=dst)
            np.maximum(dst, -1.0, out=dst)   # two ufunc calls: np.clip's wrappers cost more
            return memoryview(self.raw)[: n * 4]
        # the same scale as decode_rt (full scale = 2**(bits-1)), so a round trip is exact;
        # +1.0 itself clips to the largest code
        tmp = self.floats.reshape(-1)[:n]
        if fmt == "S16_LE":
            np.multiply(flat, 32768.0, out=tmp)
            np.minimum(tmp, 32767.0, out=tmp)
            np.maximum(tmp, -32768.0, out=tmp)
            dst = np.frombuffer(self.raw, dtype="<i2", count=n)
            np.rint(tmp, out=tmp)
            dst[:] = tmp
            return memoryview(self.raw)[: n * 2]
        ints = self.ints.reshape(-1)[:n]
        np.multiply(flat, 2147483648.0, out=tmp)
        np.minimum(tmp, 2147483520.0, out=tmp)   # the largest float32 below 2**31
        np.maximum(tmp, -2147483648.0, out=tmp)
        np.rint(tmp, out=tmp)
        ints[:] = tmp
        if fmt == "S32_LE":
            dst = np.frombuffer(self.raw, dtype="<i4", count=n)
            dst[:] = ints
            return memoryview(self.raw)[: n * 4]
        # S24_3LE: drop the low byte, keep three
        np.right_shift(ints, 8, out=ints)
        as_bytes = ints.view(np.uint8).reshape(n, 4)
        dst = self.raw_view[: n * 3].reshape(n, 3)
        dst[:] = as_bytes[:, :3]
        return memoryview(self.raw)[: n * 3]
