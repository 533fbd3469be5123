"""What libsamplerate alone costs a stereo duplex bridge, per quality, in % of one core.

Runs as its own process (`.venv/bin/python benchmarks/resampler_cost.py [--seconds S]`): two
stereo resamplers (capture and playback) fed 256-frame blocks at ratios just off 1, as the
bridge's ALSA thread feeds them at 48 kHz / 256, timed by process CPU time (through
samplerate's Python API, which adds about 3 µs per call; the bridge calls the same library from
its C path). The rest of a bridge's CPU (benchmarks/run.py, loop scenario) is waiting for and
reading the card (poll, alsa-lib and the card's plugin), the Python side of the ALSA thread (the
drift loops) and the JACK callback.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import samplerate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "service"))

from cardbridge.engine.alsaloop import CONVERTERS  # noqa: E402

RATE = 48000
BLOCK = 256


def cost_percent(converter: str, seconds: float) -> float:
    """CPU time of resampling `seconds` of stereo audio both ways, as % of one core."""
    block = (np.random.default_rng(1).standard_normal((BLOCK, 2)) * 0.1).astype(np.float32)
    capture, playback = samplerate.Resampler(converter, 2), samplerate.Resampler(converter, 2)
    blocks = int(seconds * RATE / BLOCK)
    t0 = time.process_time()
    for _ in range(blocks):
        capture.process(block, 1.0001)
        playback.process(block, 0.9999)
    return (time.process_time() - t0) / seconds * 100


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=10.0, help="audio seconds per quality")
    args = p.parse_args(argv)
    print("| quality | libsamplerate converter | % of one core, stereo duplex at 48 kHz |")
    print("|---|---|---|")
    for quality, converter in CONVERTERS.items():
        print(f"| {quality} | {converter} | {cost_percent(converter, args.seconds):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
