"""The virtual sound card through real alsa-lib and pyalsaaudio: its clock, its loop, its formats,
unplug/replug and xruns; and the peers (alsa_in, zita-a2j) running against it.

Runs in the pytest process; each scenario runs in a child Python process, because alsa-lib
reads its configuration once per process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from testbench.sinefit import fit_blocks
from testbench.vcard import VirtualCard, create_card


def run_child(env: dict, code: str, timeout: float = 60.0) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_clock_of_a_143_ppm_card_measured_over_12_seconds(virtual_cards):
    cards = virtual_cards(VirtualCard("vclock", ppm=143.0))
    out = run_child(cards.env(), """
        import time, alsaaudio, numpy as np
        pcm = alsaaudio.PCM(alsaaudio.PCM_CAPTURE, device="vclock", rate=48000, channels=2,
                            format=alsaaudio.PCM_FORMAT_S16_LE, periodsize=256, periods=8)
        # A stall of this shared machine longer than the buffer overruns the card and loses
        # frames: each overrun starts a new segment, and the longest segment is fitted.
        segments, t, n = [], [], 0
        end = time.monotonic() + 12.0
        while time.monotonic() < end:
            got, _ = pcm.read()
            if got > 0:
                n += got
                # back-date the wake-up by what the card already holds beyond this read
                t.append((time.monotonic() - pcm.avail() / 48000.0, n))
            elif got < 0:
                segments.append(t)
                t = []
        segments.append(t)
        a = np.array(max(segments, key=len)[50:])
        assert a[-1, 0] - a[0, 0] > 4.0, [len(s) for s in segments]
        slope = np.polyfit(a[:, 0] - a[0, 0], a[:, 1], 1)[0]
        print((slope / 48000.0 - 1.0) * 1e6)
    """)
    assert abs(float(out) - 143.0) < 5.0, out


def test_playback_loops_back_to_capture_in_another_process(virtual_cards):
    cards = virtual_cards(VirtualCard("vcl", ppm=-30.0))
    env = cards.env()
    player = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import alsaaudio, numpy as np
        pcm = alsaaudio.PCM(alsaaudio.PCM_PLAYBACK, device="vcl", rate=48000, channels=2,
                            format=alsaaudio.PCM_FORMAT_FLOAT_LE, periodsize=256, periods=4)
        t = np.arange(48000 * 4) / 48000.0
        tone = (0.5 * np.sin(2 * np.pi * 997 * t)).astype(np.float32)
        frames = np.repeat(tone[:, None], 2, axis=1)
        for i in range(0, len(frames), 256):
            pcm.write(frames[i:i + 256].tobytes())
    """)], env=env)
    out = run_child(env, """
        import alsaaudio, numpy as np
        pcm = alsaaudio.PCM(alsaaudio.PCM_CAPTURE, device="vcl", rate=48000, channels=2,
                            format=alsaaudio.PCM_FORMAT_FLOAT_LE, periodsize=256, periods=4)
        chunks = []
        for _ in range(48000 * 2 // 256):
            n, data = pcm.read()
            if n > 0:
                chunks.append(np.frombuffer(data, dtype=np.float32).reshape(-1, 2))
        x = np.concatenate(chunks)[:, 0]
        x = x[np.argmax(np.abs(x) > 0.1) + 2400:][:24000]
        t = np.arange(len(x)) / 48000.0
        m = np.column_stack([np.sin(2 * np.pi * 997 * t), np.cos(2 * np.pi * 997 * t)])
        coef, *_ = np.linalg.lstsq(m, x, rcond=None)
        resid = x - m @ coef
        print(np.hypot(*coef), 10 * np.log10(np.mean(resid ** 2) / (np.hypot(*coef) ** 2 / 2)))
    """)
    player.wait(timeout=30)
    amplitude, residual_db = map(float, out.split())
    assert abs(amplitude - 0.5) < 0.01
    assert residual_db < -100          # the loop itself is bit-clean float


@pytest.mark.parametrize("fmt", ["S16_LE", "S24_3LE", "S32_LE", "FLOAT_LE"])
def test_every_format_round_trips(virtual_cards, fmt):
    cards = virtual_cards(VirtualCard(f"vcf{fmt.lower()}", ppm=0.0))
    out = run_child(cards.env(), f"""
        import alsaaudio, numpy as np
        F = alsaaudio.PCM_FORMAT_{fmt}
        pb = alsaaudio.PCM(alsaaudio.PCM_PLAYBACK, device="{cards[0].name}", rate=48000,
                           channels=2, format=F, periodsize=256, periods=4)
        cap = alsaaudio.PCM(alsaaudio.PCM_CAPTURE, device="{cards[0].name}", rate=48000,
                            channels=2, format=F, periodsize=256, periods=4)
        print(pb.info()["format_name"], cap.info()["format_name"])
    """)
    assert out.split() == [fmt, fmt]


def test_unplug_wakes_a_blocked_reader_and_replug_opens_again(virtual_cards):
    cards = virtual_cards(VirtualCard("vcu", ppm=10.0))
    card = cards[0]
    reader = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import alsaaudio, time
        pcm = alsaaudio.PCM(alsaaudio.PCM_CAPTURE, device="vcu", rate=48000, channels=2,
                            format=alsaaudio.PCM_FORMAT_S16_LE, periodsize=256, periods=2)
        try:
            while True:
                pcm.read()
        except alsaaudio.ALSAAudioError as exc:
            print("gone:", exc, flush=True)
    """)], env=cards.env(), stdout=subprocess.PIPE, text=True)
    control = cards.control(card)
    time.sleep(1.0)
    control.unplug()
    out, _ = reader.communicate(timeout=20)
    assert "No such device" in out
    failed = subprocess.run([sys.executable, "-c", "import alsaaudio; alsaaudio.PCM("
                             "alsaaudio.PCM_CAPTURE, device='vcu')"], env=cards.env(),
                            capture_output=True, text=True, timeout=20)
    assert failed.returncode != 0 and "No such device" in failed.stderr
    control.replug()
    run_child(cards.env(), """
        import alsaaudio
        pcm = alsaaudio.PCM(alsaaudio.PCM_CAPTURE, device="vcu", rate=48000, channels=2,
                            format=alsaaudio.PCM_FORMAT_S16_LE, periodsize=256, periods=2)
        n, _ = pcm.read()
        assert n == 256, n
    """)


def test_capture_overrun_is_an_xrun_and_recovers(virtual_cards):
    cards = virtual_cards(VirtualCard("vcx", ppm=0.0))
    out = run_child(cards.env(), """
        import alsaaudio, time
        pcm = alsaaudio.PCM(alsaaudio.PCM_CAPTURE, device="vcx", rate=48000, channels=2,
                            format=alsaaudio.PCM_FORMAT_S16_LE, periodsize=256, periods=2)
        pcm.read()
        time.sleep(0.1)           # 100 ms: the 2-period buffer overflows
        first, _ = pcm.read()
        second, _ = pcm.read()
        print(first, second)
    """)
    first, second = map(int, out.split())
    assert first == -32 and second == 256


def test_zita_a2j_runs_against_the_card(virtual_cards, jack_server):
    cards = virtual_cards(VirtualCard("vcz", ppm=200.0))
    env = cards.env(jack_server.env())
    proc = subprocess.Popen(["zita-a2j", "-j", "zin", "-d", "vcz", "-r", "48000", "-p", "256",
                             "-n", "2", "-c", "2", "-v"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    time.sleep(6.0)
    alive = proc.poll() is None
    ports = subprocess.run(["jack_lsp", "-s", jack_server.name], capture_output=True, text=True,
                           timeout=10).stdout
    proc.terminate()
    out, _ = proc.communicate(timeout=20)
    assert alive, out
    assert "zin:capture_1" in ports
    assert "pollfd" not in out, out


# -- what the benchmarks need: a sine tied to the card's frame counter, one format, xrun counts

SINE_READER = """
    import json, time, alsaaudio, numpy as np
    from testbench.vcard import CardControl
    control = CardControl("{shm}")
    before = control.frames_at()
    pcm = alsaaudio.PCM(alsaaudio.PCM_CAPTURE, device="{name}", rate={rate}, channels=2,
                        format=alsaaudio.PCM_FORMAT_FLOAT_LE, periodsize=256, periods=4)
    n, data = pcm.read()
    after = control.frames_at()
    x = np.frombuffer(data, dtype=np.float32).reshape(-1, 2)
    print(json.dumps({{"before": before, "after": after, "x": x.astype(float).tolist()}}))
"""


def _first_frame(x: np.ndarray, rate: int, freqs: list[int], amp: float) -> int | None:
    """The card frame n0 at which x[:, c] == amp sin(2 pi f_c (n0 + i) / rate) for every
    channel, exactly (float32), or None. The phases of a fit say where to look."""
    n = len(x)
    fits = [fit_blocks(x[None, :, c], 2 * np.pi * f / rate, iterations=0) for c, f in
            enumerate(freqs)]
    theta = [float(f.phase[0]) for f in fits]                 # at frame n0 + (n - 1) / 2
    step = freqs[1] - freqs[0]
    coarse = np.mod(theta[1] - theta[0], 2 * np.pi) * rate / (2 * np.pi * step) - (n - 1) / 2
    p0 = rate / freqs[0]
    fine = np.mod(theta[0], 2 * np.pi) * p0 / (2 * np.pi) - (n - 1) / 2
    i = np.arange(n)
    # the beat repeats every rate / step frames, the sines only every `rate`: each repeat of
    # the beat is a place to refine with channel 0's phase
    near = [coarse + m * rate / step for m in range(step)]
    starts = [int(round(fine + p0 * np.round((c - fine) / p0))) for c in near]
    for cand in [s + d for s in starts for d in (-1, 0, 1)]:
        want = np.stack([amp * np.sin(2 * np.pi * ((f * (cand + i)) % rate) / rate)
                         for f in freqs], axis=1)
        if np.max(np.abs(want - x)) < 1e-6:
            return cand
    return None


def latest_frame_like(n0: int, rate: int, limit: float) -> int:
    """The largest frame <= limit that carries the same samples as n0 (the sines repeat every
    `rate` frames)."""
    return int(n0 + rate * np.floor((limit - n0) / rate))


@pytest.mark.parametrize("rate", [48000, 44100])
def test_sine_capture_is_the_cards_frame_counter(virtual_cards, rate):
    """In sine mode capture delivers, on channel c, amp sin(2 pi (997 + 2c) n / rate) at card
    frame n: what one read returns is that function at frames the card has already reached."""
    cards = virtual_cards(VirtualCard(f"vcs{rate}", rate=rate, ppm=250.0,
                                      capture_source="sine"))
    card = cards[0]
    create_card(card).close()
    out = json.loads(run_child(cards.env(), SINE_READER.format(shm=card.shm, name=card.name,
                                                             rate=rate)))
    x = np.array(out["x"])
    n0 = _first_frame(x, rate, card.sine_freqs(2), 10 ** (-6 / 20))
    assert n0 is not None, "not the card's sine at whole card frames"
    # frames the card had reached when the read returned, and not before the stream opened
    assert latest_frame_like(n0, rate, out["after"] - len(x) + 1) >= out["before"]


def test_capture_source_switches_live(virtual_cards):
    cards = virtual_cards(VirtualCard("vcsw", ppm=0.0))
    card = cards[0]
    control = create_card(card)
    assert control.capture_source == "loop"
    silent = json.loads(run_child(cards.env(), SINE_READER.format(shm=card.shm, name=card.name,
                                                                rate=48000)))
    assert np.max(np.abs(silent["x"])) == 0.0          # nothing played: the loop is silent
    control.set_capture_source("sine")
    out = json.loads(run_child(cards.env(), SINE_READER.format(shm=card.shm, name=card.name,
                                                             rate=48000)))
    assert _first_frame(np.array(out["x"]), 48000, card.sine_freqs(2), 10 ** (-6 / 20)) is not None


@pytest.mark.parametrize("fmt", ["S16_LE", "S24_LE", "FLOAT_LE"])
def test_a_card_restricted_to_one_format_offers_only_that(virtual_cards, fmt):
    cards = virtual_cards(VirtualCard(f"vco{fmt.lower()}", formats=(fmt,)))
    out = run_child(cards.env(), f"""
        import alsaaudio
        got = []
        for want in ("S16_LE", "S32_LE", "FLOAT_LE"):
            pcm = alsaaudio.PCM(alsaaudio.PCM_PLAYBACK, device="{cards[0].name}", rate=48000,
                                channels=2, format=getattr(alsaaudio, "PCM_FORMAT_" + want),
                                periodsize=256, periods=4)
            got.append(pcm.info()["format_name"])
        print(" ".join(got))
    """)
    assert out.split() == [fmt] * 3


def test_s24_le_round_trips_through_the_loop(virtual_cards):
    """24 bits in a 32-bit word: what is played comes back to the last bit."""
    cards = virtual_cards(VirtualCard("vc24", formats=("S24_LE",)))
    out = run_child(cards.env(), """
        import alsaaudio, numpy as np
        kw = dict(device="vc24", rate=48000, channels=2, format=alsaaudio.PCM_FORMAT_S24_LE,
                  periodsize=256, periods=4)
        pb = alsaaudio.PCM(alsaaudio.PCM_PLAYBACK, **kw)
        cap = alsaaudio.PCM(alsaaudio.PCM_CAPTURE, **kw)
        codes = (np.arange(256 * 2 * 40, dtype=np.int64) * 104729 % (1 << 24)) - (1 << 23)
        for k in range(40):
            pb.write(codes[k * 512:(k + 1) * 512].astype("<i4").tobytes())
        got = b""
        while len(got) < len(codes) * 4:
            n, data = cap.read()
            got += data if n > 0 else b""
        back = np.frombuffer(got, "<i4")
        start = np.nonzero(back)[0][0] // 2 * 2          # the loop's first played frame
        at = int(np.nonzero(codes == back[start])[0][0])  # codes are all different
        n = min(len(back) - start, len(codes) - at, 4096)
        print(int(n > 512 and np.array_equal(back[start:start + n], codes[at:at + n])))
    """)
    assert out.strip() == "1"


def test_each_xrun_is_counted_once(virtual_cards):
    cards = virtual_cards(VirtualCard("vcxc", ppm=0.0))
    run_child(cards.env(), """
        import alsaaudio, time
        pcm = alsaaudio.PCM(alsaaudio.PCM_CAPTURE, device="vcxc", rate=48000, channels=2,
                            format=alsaaudio.PCM_FORMAT_S16_LE, periodsize=256, periods=2)
        for _ in range(2):
            pcm.read()
            time.sleep(0.1)           # the 2-period buffer overflows: one overrun
            for _ in range(3):
                pcm.avail()           # asking again and again is still the same xrun
            assert pcm.read()[0] == -32
            assert pcm.read()[0] == 256
    """)
    control = cards.control(cards[0])
    assert control.xruns == (2, 0)
