"""Sample conversion between the device formats and float32 (pure unit: no device needed).

Runs in the pytest process.
"""

from __future__ import annotations

import numpy as np
import pytest

from cardbridge.engine.pcmio import FORMATS, PcmParams, SampleCodec

WIDTH = {name: width for name, _, width in FORMATS}
QUANTUM = {"S16_LE": 1 / 32768, "S24_3LE": 1 / 2 ** 23, "S32_LE": 1 / 2 ** 31, "FLOAT_LE": 0.0}


def codec(fmt: str, frames: int = 256, channels: int = 2) -> SampleCodec:
    params = PcmParams("x", "playback", channels, 48000, frames, 2, fmt, WIDTH[fmt])
    return SampleCodec(params, frames)


@pytest.mark.parametrize("fmt", [name for name, _, _ in FORMATS])
def test_a_period_survives_encode_then_decode(fmt):
    rng = np.random.default_rng(1)
    frames = rng.uniform(-0.99, 0.99, (256, 2)).astype(np.float32)
    sent = frames.copy()
    data = bytes(codec(fmt).encode_rt(frames))
    assert len(data) == 256 * 2 * WIDTH[fmt]
    back = codec(fmt).decode_rt(data, 256)
    assert back.shape == (256, 2)
    # at most half a step of the format (plus float32 rounding of the scaled value)
    assert np.max(np.abs(back - sent)) <= QUANTUM[fmt] / 2 + 1.2e-7


@pytest.mark.parametrize("fmt", [name for name, _, _ in FORMATS])
def test_out_of_range_samples_are_clipped_not_wrapped(fmt):
    frames = np.array([[1.5, -3.0], [1.0, -1.0], [0.25, -0.25]], np.float32)
    back = codec(fmt, 3).decode_rt(bytes(codec(fmt, 3).encode_rt(frames.copy())), 3)
    assert back[0, 0] == pytest.approx(1.0, abs=1e-4) and back[0, 1] == pytest.approx(-1.0, abs=1e-4)
    assert back[2, 0] == pytest.approx(0.25, abs=1e-4) and back[2, 1] == pytest.approx(-0.25, abs=1e-4)


def test_a_non_contiguous_period_is_encoded_through_the_codecs_buffer():
    wide = np.linspace(-0.5, 0.5, 256 * 4, dtype=np.float32).reshape(256, 4)
    frames = wide[:, :2]                    # a strided view, as a ring slice would be
    back = codec("FLOAT_LE").decode_rt(bytes(codec("FLOAT_LE").encode_rt(frames)), 256)
    assert np.array_equal(back, frames)
