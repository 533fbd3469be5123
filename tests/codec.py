"""The engine's sample codec (csrc/periodpath.c) from Python, for tests: device bytes to and from
float32 frames, through the same C functions as the ALSA thread's per-period path.

Runs in the pytest process; allocates (never for the real-time loop).
"""

from __future__ import annotations

import numpy as np

from cardbridge.engine._rtcore import ffi, lib
from cardbridge.engine.pcmio import FORMAT_CODES, FORMATS

WIDTH = {name: width for name, _, width in FORMATS}


def decode(format_name: str, data: bytes, channels: int) -> np.ndarray:
    """Device bytes → float32 frames (frames, channels)."""
    samples = len(data) // WIDTH[format_name]
    out = np.zeros(samples, np.float32)
    lib.cb_decode(FORMAT_CODES[format_name], data, ffi.from_buffer("float[]", out), samples)
    return out.reshape(-1, channels)


def encode(format_name: str, frames: np.ndarray) -> bytes:
    """float32 frames → device bytes, clipped to full scale (NaN as silence)."""
    flat = np.ascontiguousarray(frames, np.float32).reshape(-1)
    out = bytearray(flat.size * WIDTH[format_name])
    lib.cb_encode(FORMAT_CODES[format_name], ffi.from_buffer("float[]", flat),
                  ffi.from_buffer(out), flat.size)
    return bytes(out)
