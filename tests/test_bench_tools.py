"""The benchmark's measuring pieces against real components: the C measuring JACK client
(cbmeter) plays and records sample-exact sines tied to JACK's frame index; the playback tap
(cbtap) reads what a virtual card played at the card's frame; and, as pure units, the JACK
time axis, the per-direction analysis on signals made with a known delay, the matrix's coverage.

Runs in the test process; cbmeter, cbtap and the card's writer are child processes.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from testbench.meter import CYCLE_DTYPE, Meter
from testbench.tap import Tap
from testbench.vcard import CardClock, VirtualCard, create_card

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import cells  # noqa: E402
import direction  # noqa: E402
import timeaxis  # noqa: E402

pytestmark = pytest.mark.timeout(180)
LEVEL = 10 ** (-6 / 20)


def sine(freq: float, frames, rate: int) -> np.ndarray:
    return LEVEL * np.sin(2 * np.pi * ((freq * np.asarray(frames, np.int64)) % rate) / rate)


def test_meter_records_what_the_player_plays_at_each_jack_frame(jack_server, tmp_path):
    env = jack_server.env()
    player = Meter(jack_server.name, "play", tmp_path / "play", 30, env,
                   plays=[("system:playback_1", 0), ("system:playback_2", 1)])
    recorder = Meter(jack_server.name, "rec", tmp_path / "rec", 4, env,
                     records=["play:out_0", "play:out_1"])
    rec = recorder.wait(30)
    play = player.stop()
    assert rec.meta["ports"][0]["connected_ns"] > 0
    # cycles near an xrun notice: JACK may have run the recorder without the player's output
    notices = np.nonzero(np.diff(rec.cycles["xruns"].astype(np.int64)) > 0)[0] + 1
    near_xrun = {int(f) for i in notices
                 for f in rec.cycles["frame_time"][max(0, i - 4):i + 2]}
    for k, freq in enumerate((997, 999)):
        x = rec.recording(k)
        got = np.nonzero(np.isfinite(x) & (x != 0))[0]
        assert len(got) > rec.rate                       # a second at least, once connected
        frames = rec.first_frame + got
        wrong = np.abs(x[got] - sine(freq, frames, rec.rate)) > 1e-6
        # every sample exact, but in whole cycles JACK ran out of order at an xrun
        starts = {int(f) - int(f) % rec.meta["period"] for f in frames[wrong]}
        assert starts <= {f - f % rec.meta["period"] for f in near_xrun}, sorted(starts)[:5]
    # every cycle stamped: frame times a period apart (or whole periods, if one was missed)
    steps = np.diff(play.cycles["frame_time"].astype(np.int64))
    assert len(play.cycles) > 100 and np.all(steps % play.meta["period"] == 0)
    line = timeaxis.build(play.cycles, play.rate)
    mono = (play.cycles["mono_ns"].astype(np.float64) + play.cycles["mono2_ns"]) / 2
    # a callback never runs before its cycle's place on JACK's schedule
    assert np.all(line.frames_at(mono) - timeaxis.unwrap_frames(play.cycles["frame_time"]) > -1)


def test_tap_reads_what_the_card_played_at_the_cards_frames(virtual_cards, tmp_path):
    cards = virtual_cards(VirtualCard("vtap", ppm=77.0))
    card = cards[0]
    control = create_card(card)
    tap = Tap(card.shm, tmp_path / "tap", 30, channels=(0, 1), poll_ms=5)
    writer = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import alsaaudio, numpy as np
        pcm = alsaaudio.PCM(alsaaudio.PCM_PLAYBACK, device="vtap", rate=48000, channels=2,
                            format=alsaaudio.PCM_FORMAT_FLOAT_LE, periodsize=256, periods=4)
        ramp = ((np.arange(48000) + 1) * 1e-5).astype(np.float32)
        frames = np.stack([ramp, -ramp], axis=1)
        for i in range(0, len(frames), 256):
            pcm.write(frames[i:i + 256].tobytes())
    """)], env=cards.env(), capture_output=True, text=True, timeout=60)
    assert writer.returncode == 0, writer.stderr
    run = tap.stop()
    control.close()
    x0, x1 = run.channel(0), run.channel(1)
    played = np.nonzero(np.isfinite(x0))[0]
    assert len(played) > 40000
    first = played[0]
    assert np.all(np.isnan(x0[:first]))                  # nothing was written for those frames
    seq = x0[first:first + len(played)]
    want = ((np.arange(len(seq)) + 1) * 1e-5).astype(np.float32)
    n = min(len(seq), 48000)
    assert np.array_equal(seq[:n][np.isfinite(seq[:n])], want[:n][np.isfinite(seq[:n])])
    assert np.array_equal(x1[played], -x0[played])
    assert run.meta["clock"]["ppm"] == 77.0 and run.meta["lost"] == 0


# -- pure units -------------------------------------------------------------------------------

def synthetic_cycles(rate=48000, period=256, seconds=20.0, slew_ppm=20.0, move_at=10.0,
                     move_us=1500.0, false_alarm_at=5.0, seed=3):
    """Cycle records of a JACK dummy server: the schedule on CLOCK_MONOTONIC_RAW, callbacks
    late by 5-200 us (3 ms once, with an xrun notice but no move), one re-anchor 1.5 ms later
    with its xrun notice; CLOCK_MONOTONIC runs `slew_ppm` fast of RAW."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate / period)
    k = np.arange(n)
    frames = k * period
    sched = 1e12 + frames * 1e9 / rate
    moved = frames / rate >= move_at
    sched = sched + np.where(moved, move_us * 1e3, 0.0)
    late = rng.uniform(5e3, 200e3, n)
    late[::50] = 5e3
    alarm = int(false_alarm_at * rate / period)
    late[alarm] = 3e6
    raw = sched + late
    mono = 5e12 + (raw - 1e12) * (1 + slew_ppm * 1e-6)
    xruns = np.zeros(n, np.uint32)
    xruns[alarm + 2:] += 1
    xruns[int(np.argmax(moved)) + 1:] += 1
    c = np.zeros(n, CYCLE_DTYPE)
    c["mono_ns"] = mono
    c["mono2_ns"] = mono
    c["raw_ns"] = raw
    c["jack_us"] = raw / 1000
    c["frame_time"] = frames
    c["nframes"] = period
    c["xruns"] = xruns
    return c, sched, mono


def test_time_axis_follows_the_schedule_not_the_late_callbacks():
    c, sched, mono = synthetic_cycles()
    line = timeaxis.build(c, 48000)
    assert line.jack_time_is_raw
    assert line.raw_vs_mono_ppm == pytest.approx(20.0, abs=0.01)
    assert len(line.seg_offset) == 2                     # the false alarm moved nothing
    assert line.seg_lost_frames[1] == pytest.approx(1500e-6 * 48000, abs=0.3)
    sched_mono = 5e12 + (sched + 5e3 - 1e12) * (1 + 20e-6)   # earliest callbacks: 5 us late
    err = line.frames_at(sched_mono) - c["frame_time"].astype(float)
    assert np.max(np.abs(err)) < 0.01


def analysis_rig(card_rate=44100, ppm=120.0, seconds=20.0):
    c, _, _ = synthetic_cycles(seconds=seconds + 2)
    line = timeaxis.build(c, 48000)
    t0 = int(c["mono_ns"][0])
    clock = CardClock(card_rate, t0, t0, 0.0, ppm, 0.0, 60.0)
    return c, line, clock, t0


@pytest.mark.parametrize("channels", [2, 1])
def test_capture_analysis_recovers_a_known_delay_and_ratio_error(channels):
    c, line, clock, t0 = analysis_rig()
    err_ppm = 0.5
    j = np.arange(int(48000 * 0.5), int(48000 * 20))          # JACK frames from 0.5 s
    delay = 600.0 + err_ppm * 1e-6 * (j - j[0])              # the bridge's delay, growing
    near = line.time_of(j.astype(float), np.interp(j, c["frame_time"].astype(float), c["mono_ns"].astype(float)))
    t_card = line.time_of(j - delay, near)
    n = clock.position(t_card, pointer=False)
    recs = [(LEVEL * np.sin(2 * np.pi * ((997 + 2 * ch) * np.mod(n, 44100)) / 44100)).astype(np.float32)
            for ch in range(channels)]
    recs = [np.concatenate([np.zeros(int(48000 * 0.5), np.float32), r]) for r in recs]
    for r in recs:
        r[48000 * 12:48000 * 12 + 9000] = 0.0                 # a dropout
    s = direction.capture_series(recs, 0, 48000, line, clock, [997, 999], LEVEL, t0, c,
                                 guess_frames=590.0 if channels == 1 else None)
    # every block but the one across JACK's schedule move (at 10 s) and the dropout's edges
    good = (s.state == direction.GOOD) & (np.abs(s.t - 10.0) > 0.1)
    t = s.t[good]
    want = 600.0 + err_ppm * 1e-6 * 48000 * (t - t[0])
    off = np.abs(s.delay[good] - (want + (s.delay[good][0] - want[0])))
    assert np.sum(off > 0.01) <= 2
    assert abs(np.nanmedian(s.delay[good][:5]) - 600.0) < 0.1
    assert (s.state == direction.DROPOUT).sum() >= 2
    layout = type("L", (), {"seconds": 19.5, "steady_from": 5.0, "settle": 5.0})
    fig = direction.assess(s, 48000, layout, {}, [], [], (600.0, 600.0))
    assert fig["ratio_err_median_ppm"] == pytest.approx(err_ppm, abs=0.05)
    assert fig["lock_2ppm_s"] is not None
    steady = (t >= 5.0) & (t < 19.5)
    assert fig["latency_error"] == pytest.approx(np.median(want[steady]) - 600.0, abs=0.05)
    windows = {w["from"]: w for w in fig["thd_windows"]}
    assert windows[10.0]["dropouts"] >= 2 and windows[10.0]["thd_n_db"] > -30
    assert windows[0.0]["thd_n_db"] < -120                    # float32: a clean window


def test_playback_analysis_recovers_a_known_delay():
    c, line, clock, t0 = analysis_rig(card_rate=96000, ppm=-800.0)
    first = int(clock.position(t0 + 1e9, pointer=False))
    n = np.arange(first, first + 96000 * 18)
    t_card = clock.time_of(n)
    jn = line.frames_at(t_card) - 900.0                      # the JACK frame each card frame carries
    chans = [(LEVEL * np.sin(2 * np.pi * ((997 + 2 * ch) * np.mod(jn, 48000)) / 48000)).astype(np.float32)
             for ch in range(2)]
    chans[0][96000 * 5:96000 * 5 + 400] = np.nan              # the card played nothing there
    s = direction.playback_series(chans, first, 48000, line, clock, [997, 999], LEVEL, t0)
    good = s.state == direction.GOOD
    assert np.nanmax(np.abs(s.delay[good] - 900.0)) < 0.02
    assert (s.state == direction.DROPOUT).sum() >= 1


def test_the_matrix_covers_every_value_of_every_dimension():
    assert cells.coverage() == {k: [] for k in cells.coverage()}
    assert all(len(cell.cards) == 4 for cell in cells.CELLS)
    assert set(cells.QUICK) <= {cell.name for cell in cells.CELLS}


def test_report_shows_each_direction_against_its_targets(tmp_path):
    import report
    c, line, clock, t0 = analysis_rig()
    j = np.arange(0, int(48000 * 20))
    near = line.time_of(j.astype(float), np.interp(j, c["frame_time"].astype(float),
                                                   c["mono_ns"].astype(float)))
    n = clock.position(line.time_of(j - 600.0, near), pointer=False)
    recs = [(LEVEL * np.sin(2 * np.pi * ((997 + 2 * ch) * np.mod(n, 44100)) / 44100))
            .astype(np.float32) for ch in range(2)]
    s = direction.capture_series(recs, 0, 48000, line, clock, [997, 999], LEVEL, t0, c)
    layout = type("L", (), {"seconds": 19.5, "steady_from": 5.0, "settle": 5.0})
    fig = direction.assess(s, 48000, layout, {}, [], [], (600.0, 600.0))
    card = {"card": "t1a", "key": "a", "describe": "44.1 kHz +120 ppm", "cpu_percent": 3.0,
            "card_xruns": {"capture": 0, "playback": 0}, "bridge": {}, "capture": fig}
    silent = dict(card, capture=dict(fig, start_s=None), bridge={"exited": ["gone"]})
    jack = {"xruns": 0, "lost_time_events": 0, "lost_frames": 0.0, "jack_time_is_raw": True,
            "raw_vs_mono_ppm": 0.0}
    data = {"meta": {"command": "x", "machine": "m", "when": "now", "method": "M",
                     "kinds": ["cardbridge", "zita"], "cells": [{"name": "t1", "describe": "D"}]},
            "matrix": [{"cell": "t1", "kind": "cardbridge", "cards": [card], "jack": jack},
                       {"cell": "t1", "kind": "zita", "cards": [silent], "jack": jack}]}
    text = report.markdown(data)
    row = next(ln for ln in text.splitlines() if ln.startswith("| a: "))
    assert "| 0 ✓ · 0 ✓ |" in row                          # latency as reported, both
    assert "zita on a (capture): gone" in text
    assert "| t1 | cardbridge | 1/1 |" in text              # locked to 2 ppm within 10 s
    assert report.plots(data, tmp_path) == [tmp_path / "t1a.png"]


def test_what_the_peers_say_about_their_xruns():
    import bridges
    zita = "Starting synchronisation.\n  0.1 1.0 0\nDetected excessive timing errors, waiting 10 seconds.\nStarting synchronisation.\n  -nan -nan 0\n"
    assert bridges.said_xruns("zita-a2j", zita) == 1
    assert "went NaN" in bridges.peer_breakdown("zita-a2j", zita)
    alsa = "selected sample format: 24bit\nerr = -32\nerr = -11\nerr = -32\nWrite error: Resource temporarily unavailable\n"
    assert bridges.said_xruns("alsa_out", alsa) == 2
    assert "exited" in bridges.peer_breakdown("alsa_out", alsa)
