"""The compiled per-period path (engine/periodpath.py, csrc/periodpath.c) on queues of its own:
no JACK server and no card, the rings are read and written here as the process callback would.

Runs in the pytest process.
"""

from __future__ import annotations

import numpy as np
import pytest

from cardbridge.engine._rtcore import ffi, lib
from cardbridge.engine.pcmio import FORMATS, PcmParams
from cardbridge.engine.periodpath import SidePath
from cardbridge.engine.queues import RING_FRAMES, Queues

from codec import decode, encode

WIDTH = {name: width for name, _, width in FORMATS}
PERIOD = 256


class Core:
    """Stereo queues, with the JACK side's writes into the playback ring done here."""

    def __init__(self, channels: int = 2):
        self.queues = Queues(channels, channels)
        sh = self.queues.shared
        self.capture_ring = np.frombuffer(ffi.buffer(sh.capture.data, RING_FRAMES * channels * 4),
                                          np.float32).reshape(-1, channels)
        self.playback_ring = np.frombuffer(ffi.buffer(sh.playback.data,
                                                      RING_FRAMES * channels * 4),
                                           np.float32).reshape(-1, channels)

    @property
    def capture(self):
        return self.queues.capture

    @property
    def playback(self):
        return self.queues.playback

    def jack_writes(self, frames: np.ndarray) -> None:
        """What the process callback does with the playback ports' buffers."""
        ring = self.queues.shared.playback
        for i, frame in enumerate(frames):
            self.playback_ring[(ring.wr + i) % RING_FRAMES] = frame
        ring.wr += len(frames)


def params(stream: str, fmt: str = "S16_LE", channels: int = 2) -> PcmParams:
    return PcmParams("x", stream, channels, 48000, PERIOD, 2, fmt, WIDTH[fmt])


def sine(frames: int, start: int = 0, channels: int = 2) -> np.ndarray:
    t = np.arange(start, start + frames)
    return np.repeat((0.5 * np.sin(2 * np.pi * 997 * t / 48000))[:, None], channels, 1).astype(
        np.float32)


@pytest.mark.parametrize("fmt", [name for name, _, _ in FORMATS])
def test_capture_decodes_resamples_and_appends_to_the_ring(fmt):
    jack = Core()
    path = SidePath(jack.capture, params("capture", fmt), "sinc_medium", PERIOD, 1.0)
    try:
        made = 0
        for k in range(40):
            n = path.capture_rt(encode(fmt, sine(PERIOD, k * PERIOD)), 1.0)
            assert n >= 0
            made += n
    finally:
        path.close()
    # every frame in, one frame out (less what the filter still holds)
    assert jack.queues.shared.capture.wr == made
    assert 40 * PERIOD - 200 < made <= 40 * PERIOD
    got = jack.capture_ring[made - 4 * PERIOD:made, 0]
    assert 0.49 < np.max(np.abs(got)) < 0.51


@pytest.mark.parametrize("fmt", [name for name, _, _ in FORMATS])
def test_the_playback_prefill_is_silence_in_the_devices_format(fmt):
    """Zero bytes are silence only in signed and float formats: U8's is 0x80 in every byte."""
    jack = Core()
    path = SidePath(jack.playback, params("playback", fmt), "sinc_medium", PERIOD, 1.0)
    try:
        data = path.silence(16)
    finally:
        path.close()
    assert len(data) == 16 * 2 * path.side.width
    assert np.array_equal(decode(fmt, data, 2), np.zeros((16, 2), np.float32))
    if fmt == "U8":
        assert data == b"\x80" * 32


def test_capture_at_a_ratio_makes_that_many_more_jack_frames():
    jack = Core()
    path = SidePath(jack.capture, params("capture", "FLOAT_LE"), "sinc_fastest", PERIOD, 1.001)
    try:
        made = [path.capture_rt(encode("FLOAT_LE", sine(PERIOD, k * PERIOD)), 1.001)
                for k in range(400)]
    finally:
        path.close()
    steady = sum(made[100:])
    assert steady == pytest.approx(300 * PERIOD * 1.001, abs=2)


def test_playback_pulls_a_period_from_the_ring_and_counts_what_it_took():
    jack = Core()
    path = SidePath(jack.playback, params("playback", "S32_LE"), "sinc_medium", PERIOD, 1.0,
                    prefill=100)
    try:
        jack.jack_writes(sine(20 * PERIOD))
        out = []
        taken = 0
        for _ in range(16):
            n = path.playback_rt(1.0)
            assert n > 0
            taken += n
            out.append(decode("S32_LE", bytes(path.payload), 2))
        assert jack.queues.shared.playback.rd == taken
        assert path.side.u_count == pytest.approx(100 + taken)
        assert path.side.underruns == 0
    finally:
        path.close()
    played = np.concatenate(out)
    assert played.shape == (16 * PERIOD, 2)
    assert 0.49 < np.max(np.abs(played[8 * PERIOD:])) < 0.51


def test_playback_plays_silence_not_an_old_ring_lap_when_jack_is_late():
    jack = Core()
    # a ring length ago JACK wrote a loud lap; the frames due now are not written yet
    jack.playback_ring[:] = 0.9
    path = SidePath(jack.playback, params("playback", "FLOAT_LE"), "linear", PERIOD, 1.0)
    try:
        jack.jack_writes(np.zeros((PERIOD // 2, 2), np.float32))
        # the ring's old content is still there for the frames JACK did not write
        jack.playback_ring[PERIOD // 2:] = 0.9
        assert path.playback_rt(1.0) > 0
        assert path.side.underruns == 1
        played = decode("FLOAT_LE", bytes(path.payload), 2)
        assert np.max(np.abs(played)) == 0.0
    finally:
        path.close()


def test_capture_takes_only_the_whole_frames_it_was_given():
    jack = Core()
    path = SidePath(jack.capture, params("capture", "S24_3LE"), "linear", PERIOD, 1.0)
    try:
        short = encode("S24_3LE", sine(100))[:-1]      # 99 whole frames and a broken one
        made = path.capture_rt(short, 1.0)
        assert 0 < made <= 99
        assert path.capture_rt(encode("S24_3LE", sine(4 * PERIOD)), 1.0) <= PERIOD + 2
    finally:
        path.close()


def test_a_device_with_other_channels_than_the_ring_is_refused_not_overrun():
    jack = Core(channels=1)
    path = SidePath(jack.capture, params("capture", channels=2), "linear", PERIOD, 1.0)
    try:
        assert path.capture_rt(encode("S16_LE", sine(PERIOD)), 1.0) == -1
        assert "channel count" in path.error
        assert jack.queues.shared.capture.wr == 0
    finally:
        path.close()


def test_a_closed_path_can_be_closed_again():
    jack = Core()
    path = SidePath(jack.capture, params("capture"), "linear", PERIOD, 1.0)
    path.close()
    path.close()
    assert path.side.src == ffi.NULL
    assert lib.cb_src_bind(b"/nonexistent/samplerate.so") == 0   # bound once, stays bound
