"""Opening a card's PCMs with pyalsaaudio, and what its errors mean.

Runs in the bridge worker: the ALSA thread opens and closes PCMs between runs of its stream, the
control thread probes a card's channel counts. The per-period sample conversion is C
(csrc/periodpath.c).
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

import alsaaudio

from ..bridgestats import FORMATS as FORMAT_NAMES
from ._rtcore import lib

# Preferred order: full resolution first, then what costs least to convert; every format
# ALSA cards offer for linear PCM (the C codec handles each: csrc/periodpath.c).
PREFERENCE = ("FLOAT_LE", "S32_LE", "S24_LE", "S24_3LE", "S16_LE", "FLOAT64_LE", "S32_BE",
              "S24_BE", "S24_3BE", "S16_BE", "FLOAT_BE", "U32_LE", "U24_3LE", "U16_LE", "S8", "U8")
# the numbers the stats slot publishes (DeviceFormat) and the C codec switches on
FORMAT_CODES = {name: code for code, name in enumerate(FORMAT_NAMES) if name}
FORMATS = tuple((name, getattr(alsaaudio, "PCM_FORMAT_" + name),
                 lib.cb_format_width(FORMAT_CODES[name])) for name in PREFERENCE)
_BY_CODE = {code: (name, width) for name, code, width in FORMATS}

# Errors that mean "the device is not there (any more)". pyalsaaudio gives only alsa-lib's
# message (snd_strerror: the C library's strerror, in this process's locale), so the texts are
# those of the errnos, taken from the same C library.
GONE_ERRNOS = (errno.ENODEV, errno.ENOENT, errno.ENXIO, errno.EBADFD, errno.ESHUTDOWN)
_GONE_TEXTS = tuple(os.strerror(code) for code in GONE_ERRNOS)
_NO_SUCH_FILE = os.strerror(errno.ENOENT)


class DeviceGone(Exception):
    """The PCM vanished or cannot be opened because the card is absent."""


class DeviceError(Exception):
    """The PCM exists but refuses what we need (busy, unsupported parameters)."""


def classify(exc: Exception) -> Exception:
    text = str(exc)
    if any(word in text for word in _GONE_TEXTS):
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
        # with channels None ("all the card has") the device may settle on other than 2
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
        if isinstance(err, DeviceGone) and _NO_SUCH_FILE in str(exc):
            return 0  # the card has no such stream
        raise err from exc
    try:
        channels = pcm.getchannels()
        return max(channels) if channels else None
    except alsaaudio.ALSAAudioError:
        return None
    finally:
        pcm.close()
