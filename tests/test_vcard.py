"""The virtual sound card through real alsa-lib and pyalsaaudio: its clock, its loop, its formats,
unplug/replug and xruns; and the peers (alsa_in, zita-a2j) running against it.

Runs in the pytest process; each scenario runs in a child Python process, because alsa-lib
reads its configuration once per process.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest

from testbench.vcard import VirtualCard


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
