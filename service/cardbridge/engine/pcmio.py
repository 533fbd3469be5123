"""ALSA side of a bridge: opening a PCM with pyalsaaudio, and the device's sample formats.

Runs in the bridge worker's ALSA thread, outside its real-time loop (the per-period conversion
is C code: periodpath_c.py; `decode`/`encode` here give tests and tools the same codec).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

import alsaaudio
import numpy as np

from ._rtcore import ffi, lib
from .stats import FORMAT_CODES as FORMAT_NAMES

# Preferred order: what costs least to convert first; every format real USB cards offer.
FORMATS = (
    ("FLOAT_LE", alsaaudio.PCM_FORMAT_FLOAT_LE, 4),
    ("S32_LE", alsaaudio.PCM_FORMAT_S32_LE, 4),
    ("S24_3LE", alsaaudio.PCM_FORMAT_S24_3LE, 3),
    ("S16_LE", alsaaudio.PCM_FORMAT_S16_LE, 2),
)
_BY_CODE = {code: (name, width) for name, code, width in FORMATS}
_WIDTH = {name: width for name, _, width in FORMATS}
# the numbers the stats slot publishes (DeviceFormat) and the C path switches on (periodpath_c.py)
FORMAT_CODES = {name: code for code, name in enumerate(FORMAT_NAMES) if name}

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


def decode(format_name: str, data: bytes, channels: int) -> np.ndarray:
    """Device bytes → float32 frames (frames, channels), through the compiled codec that the
    ALSA thread's per-period path uses (periodpath_c.py). Not for the real-time loop: it
    allocates."""
    width = _WIDTH[format_name]
    samples = len(data) // width
    out = np.zeros(samples, np.float32)
    lib.cb_decode(FORMAT_CODES[format_name], data, ffi.from_buffer("float[]", out), samples)
    return out.reshape(-1, channels)


def encode(format_name: str, frames: np.ndarray) -> bytes:
    """float32 frames → device bytes, clipped to full scale (NaN as silence), through the
    compiled codec. Not for the real-time loop: it allocates."""
    flat = np.ascontiguousarray(frames, np.float32).reshape(-1)
    out = bytearray(flat.size * _WIDTH[format_name])
    lib.cb_encode(FORMAT_CODES[format_name], ffi.from_buffer("float[]", flat),
                  ffi.from_buffer(out), flat.size)
    return bytes(out)
