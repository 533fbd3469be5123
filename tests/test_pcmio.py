"""Sample conversion between the device formats and float32 (pure unit: no device needed).

Runs in the pytest process.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from cardbridge.engine.pcmio import FORMATS

from codec import decode, encode

WIDTH = {name: width for name, _, width in FORMATS}


def quantum(fmt: str) -> float:
    """One step of an integer format at full scale 1.0; 0 for floating point."""
    if fmt.startswith("FLOAT"):
        return 0.0
    bits = int(re.match(r"[SU](\d+)", fmt).group(1))
    return 1.0 / 2 ** (bits - 1)


QUANTUM = {name: quantum(name) for name, _, _ in FORMATS}


@pytest.mark.parametrize("fmt", [name for name, _, _ in FORMATS])
def test_a_period_survives_encode_then_decode(fmt):
    rng = np.random.default_rng(1)
    frames = rng.uniform(-0.99, 0.99, (256, 2)).astype(np.float32)
    sent = frames.copy()
    data = encode(fmt, frames)
    assert len(data) == 256 * 2 * WIDTH[fmt]
    back = decode(fmt, data, 2)
    assert back.shape == (256, 2)
    # at most half a step of the format (plus float32 rounding of the scaled value)
    assert np.max(np.abs(back - sent)) <= QUANTUM[fmt] / 2 + 1.2e-7


@pytest.mark.parametrize("fmt", [name for name, _, _ in FORMATS])
def test_out_of_range_samples_are_clipped_not_wrapped(fmt):
    frames = np.array([[1.5, -3.0], [1.0, -1.0], [0.25, -0.25], [np.nan, 0.0]], np.float32)
    back = decode(fmt, encode(fmt, frames), 2)
    tol = max(1e-4, QUANTUM[fmt])          # +1.0 is the largest code: one step below 1.0
    assert back[0, 0] == pytest.approx(1.0, abs=tol) and back[0, 1] == pytest.approx(-1.0, abs=tol)
    assert back[1, 0] == pytest.approx(1.0, abs=tol) and back[1, 1] == -1.0
    assert back[2, 0] == pytest.approx(0.25, abs=tol) and back[2, 1] == pytest.approx(-0.25, abs=tol)
    assert back[3, 0] == 0.0                # NaN from a broken client is played as silence


@pytest.mark.parametrize("fmt", [name for name, _, _ in FORMATS])
def test_integer_codes_are_rounded_to_the_nearest_step(fmt):
    q = QUANTUM[fmt] or 2.0 ** -24
    frames = np.array([[0.6 * q, -0.6 * q], [0.4 * q, 3 * q]], np.float32)
    back = decode(fmt, encode(fmt, frames), 2)
    if fmt.startswith("FLOAT"):
        assert np.array_equal(back, frames)
    else:
        assert back.ravel().tolist() == pytest.approx([q, -q, 0.0, 3 * q], abs=q * 1e-3)


def test_silence_is_silence_in_every_format():
    # the playback prefill is encoded silence: zero bytes, but the midpoint code of the
    # unsigned formats (0x80 for U8)
    for fmt in WIDTH:
        data = encode(fmt, np.zeros((4, 2), np.float32))
        assert np.array_equal(decode(fmt, data, 2), np.zeros((4, 2), np.float32))
        if not fmt.startswith("U"):
            assert data == bytes(4 * 2 * WIDTH[fmt])
