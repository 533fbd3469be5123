"""A measuring JACK client: plays a test signal into ports and records ports, sample-accurately.

Runs as its own process (`python -m testbench.probe …`) so that its Python process
callback has an interpreter to itself; used by tests, the demo and the benchmarks. The process
callback only copies between port buffers and preallocated arrays; the recording is written to
an .npz file (`signal`, `recorded` arrays, and the JACK frame time of the first recorded frame)
when the run ends.

For a round trip, run two of them (one with `--play`, one with `--record`) so that the JACK graph
has no cycle: sender → bridge playback port … card loop … bridge capture port → receiver. Each
saves the JACK frame time at which its signal/recording starts, so the two can be aligned.
"""

from __future__ import annotations

import argparse
import ctypes
import sys
import threading

import jack
import numpy as np

from .sinefit import fit_blocks


def make_signal(kind: str, rate: int, seconds: float, freq: float, level_db: float) -> np.ndarray:
    n = int(rate * seconds)
    amp = 10 ** (level_db / 20)
    t = np.arange(n, dtype=np.float64)
    if kind == "sine":
        return (amp * np.sin(2 * np.pi * freq * t / rate)).astype(np.float32)
    if kind == "impulse":
        # a click every second, each a 5-sample raised cosine (easy to locate to the sample)
        sig = np.zeros(n, np.float32)
        for start in range(rate // 2, n - 8, rate):
            sig[start:start + 5] = amp * np.hanning(7)[1:6]
        return sig
    if kind == "silence":
        return np.zeros(n, np.float32)
    raise ValueError(kind)


def run(args) -> int:
    client = jack.Client(args.name, no_start_server=True, servername=args.server)
    rate = client.samplerate
    total = int(rate * args.seconds)
    signal = make_signal(args.signal, rate, args.seconds, args.freq, args.level)
    recorded = np.zeros(total + 8192, np.float32)
    pos = {"play": 0, "rec": 0, "first_frame": -1, "xruns": 0}
    done = threading.Event()
    outport = client.outports.register("out") if args.play else None
    inport = client.inports.register("in") if args.record else None

    @client.set_process_callback
    def process(frames):
        # Positions follow JACK's frame clock, not a count of callbacks: a cycle the server
        # skipped (a stalled client, an xrun) leaves a gap instead of shifting everything after.
        now = client.last_frame_time
        if pos["first_frame"] < 0:
            pos["first_frame"] = now
        p = (now - pos["first_frame"]) & 0xFFFFFFFF
        if outport is not None:
            buf = outport.get_array()
            k = min(frames, total - p) if p < total else 0
            buf[:k] = signal[p:p + k]
            buf[k:] = 0.0
            pos["play"] = p + frames
        if inport is not None and p < total:
            k = min(frames, total - p)
            recorded[p:p + k] = inport.get_array()[:k]
            pos["rec"] = p + frames
        elif inport is not None:
            pos["rec"] = p + frames
        if (outport is None or pos["play"] >= total) and (inport is None or pos["rec"] >= total):
            done.set()

    @client.set_xrun_callback
    def xrun(delay):
        pos["xruns"] += 1

    try:
        ctypes.CDLL(None).mlockall(3)
    except OSError:
        pass
    with client:
        for port in args.play or []:
            client.connect(outport, port)
        for port in args.record or []:
            client.connect(port, inport)
        done.wait(args.seconds * 3 + 10)
    np.savez(args.out, signal=signal, recorded=recorded[:total], rate=rate,
             first_frame=pos["first_frame"], xruns=pos["xruns"])
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="cardbridge-probe", description=__doc__.splitlines()[0])
    p.add_argument("--server", default=None)
    p.add_argument("--name", default="cbprobe")
    p.add_argument("--play", action="append", help="port to feed the signal to (repeatable)")
    p.add_argument("--record", action="append", help="port to record (repeatable; mixed)")
    p.add_argument("--signal", default="sine", choices=("sine", "impulse", "silence"))
    p.add_argument("--freq", type=float, default=997.0)
    p.add_argument("--level", type=float, default=-6.0, help="dBFS")
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--out", required=True)
    return run(p.parse_args(argv))


# -- analysis (test/benchmark process) ----------------------------------------------------------

def delay_by_xcorr(sent: np.ndarray, got: np.ndarray) -> int:
    """Lag (frames, may be negative) of `got` behind `sent`, by FFT cross-correlation."""
    n = 1
    while n < len(sent) + len(got):
        n *= 2
    spec = np.fft.rfft(got, n) * np.conj(np.fft.rfft(sent, n))
    corr = np.fft.irfft(spec, n)
    lag = int(np.argmax(corr))
    if lag > n // 2:
        lag -= n
    return lag


def round_trip(send: dict, recv: dict) -> int:
    """Frames from a sender probe's impulse train to the receiver probe (JACK frame times).

    The clicks repeat every second, so the answer is taken modulo one second of frames: the
    two probes may start at any time relative to each other.
    """
    rate = int(recv["rate"])
    lag = delay_by_xcorr(send["signal"], recv["recorded"])
    return (int(recv["first_frame"]) + lag - int(send["first_frame"])) % rate


def thd_n_windows_db(x: np.ndarray, rate: int, freq: float, window: int = 4096) -> list[float]:
    """THD+N per window: residual after a four-parameter fit of the fundamental in each window
    (testbench.sinefit).

    Fitting per window follows a slowly wandering phase and frequency (the bridge's ratio
    breathing by a fraction of a ppm) the way an analyser's tracking notch does; whatever else
    is in the window — harmonics, noise, phase jitter within the window, glitches — counts.
    """
    count = len(x) // window
    if count == 0:
        return []
    fits = fit_blocks(np.asarray(x[:count * window], np.float64).reshape(count, window),
                      2 * np.pi * freq / rate)
    return [float(v) for v in fits.thd_n_db()]


if __name__ == "__main__":
    sys.exit(main())
