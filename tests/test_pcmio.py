"""Sample conversion between the device formats and float32 (pure unit: no device needed).

Runs in the pytest process.
"""

from __future__ import annotations

import numpy as np
import pytest

from cardbridge.engine.pcmio import FORMATS

from codec import decode, encode

WIDTH = {name: width for name, _, width in FORMATS}
QUANTUM = {"S16_LE": 1 / 32768, "S24_3LE": 1 / 2 ** 23, "S32_LE": 1 / 2 ** 31, "FLOAT_LE": 0.0}


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
    assert back[0, 0] == pytest.approx(1.0, abs=1e-4) and back[0, 1] == pytest.approx(-1.0, abs=1e-4)
    assert back[1, 0] == pytest.approx(1.0, abs=1e-4) and back[1, 1] == -1.0
    assert back[2, 0] == pytest.approx(0.25, abs=1e-4) and back[2, 1] == pytest.approx(-0.25, abs=1e-4)
    assert back[3, 0] == 0.0                # NaN from a broken client is played as silence


@pytest.mark.parametrize("fmt", [name for name, _, _ in FORMATS])
def test_integer_codes_are_rounded_to_the_nearest_step(fmt):
    q = QUANTUM[fmt] or 2.0 ** -24
    frames = np.array([[0.6 * q, -0.6 * q], [0.4 * q, 3 * q]], np.float32)
    back = decode(fmt, encode(fmt, frames), 2)
    if fmt == "FLOAT_LE":
        assert np.array_equal(back, frames)
    else:
        assert back.ravel().tolist() == pytest.approx([q, -q, 0.0, 3 * q], abs=q * 1e-3)


def test_silence_is_all_zero_bytes_in_every_format():
    # the playback prefill writes zero bytes as silence
    for fmt in WIDTH:
        assert encode(fmt, np.zeros((4, 2), np.float32)) == bytes(4 * 2 * WIDTH[fmt])
