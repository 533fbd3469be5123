"""`make demo`: cardbridge on its embedded default, with no sound hardware needed.

Runs in its own process and starts, each under a unique name and stopped at the end: a private
JACK dummy server, two virtual sound cards whose clocks run at different offsets (one at
44.1 kHz), a private session bus, and the real `cardbridged` on it. It then attaches both cards
with the real `cardbridge` CLI, plays a 997 Hz tone through one card's loop (JACK → card
playback → card capture → JACK), shows the live status for about 20 seconds, measures what came
back, and stops everything cleanly.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from . import probe
from .busdaemon import PrivateBus
from .jackserver import JackServer
from .vcard import VirtualCard, plugin_path, write_alsa_config

CARDS = (
    VirtualCard("demo_usb", rate=48000, ppm=+187.0, wander_ppm=5.0, wander_period=40.0),
    VirtualCard("demo_mic", rate=44100, capture_channels=1, playback_channels=2, ppm=-342.0),
)


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def cli(env: dict, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "cardbridge_cli.main", *args], env=env,
                         capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise RuntimeError(f"cardbridge {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="cardbridge-demo", description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=20.0, help="how long to show the live status")
    args = p.parse_args(argv)
    if not plugin_path().exists():
        print(f"the virtual card plugin is not built ({plugin_path()}): run 'make demo'", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="cardbridge-demo-"))
    jack = JackServer(rate=48000, period=256, log_path=work / "jackd.log")
    bus = PrivateBus("session")
    daemon = None
    try:
        say(f"private JACK dummy server '{jack.name}' (48 kHz, 256 frames)")
        jack.start()
        alsa_path = write_alsa_config(CARDS, work / "asound.conf")
        for card in CARDS:
            print(f"   virtual card {card.name}: {card.rate} Hz, {card.ppm:+.0f} ppm"
                  f"{' with %.0f ppm wander' % card.wander_ppm if card.wander_ppm else ''},"
                  f" {card.capture_channels} in / {card.playback_channels} out")
        (work / "config.toml").write_text(
            'auto_attach = "none"\n'
            '[devices.demo_usb]\npcm = "demo_usb"\nname = "Demo USB interface"\n'
            '[devices.demo_mic]\npcm = "demo_mic"\nname = "Demo USB mic"\n')
        say("private session bus and cardbridged")
        bus.start()
        env = dict(os.environ)
        env.update(bus.env())
        env["ALSA_CONFIG_PATH"] = alsa_path
        env["HOME"] = str(work)
        env["XDG_CONFIG_HOME"] = str(work / "config")
        env["XDG_STATE_HOME"] = str(work / "state")
        env["JACK_NO_START_SERVER"] = "1"
        env.pop("NO_COLOR", None)
        daemon = subprocess.Popen(
            [sys.executable, "-m", "cardbridge.daemon", "--session", "--config",
             str(work / "config.toml"), "--jack-server", jack.name, "--no-hotplug"],
            env=env, stdout=open(work / "cardbridged.log", "w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if subprocess.run([sys.executable, "-m", "cardbridge_cli.main", "version"], env=env,
                              capture_output=True, text=True).stdout.count("0.") >= 2:
                break
            time.sleep(0.2)
        print(cli(env, "devices"))
        say("cardbridge attach demo_usb; cardbridge attach demo_mic")
        print(cli(env, "attach", "demo_usb").strip())
        print(cli(env, "attach", "demo_mic").strip())
        time.sleep(1.0)
        say(f"playing a 997 Hz tone through demo_usb's loop for {args.seconds:.0f} s")
        jenv = jack.env()
        send = subprocess.Popen([sys.executable, "-m", "testbench.probe", "--server", jack.name,
                                 "--name", "demo_tone", "--play", "Demo USB interface:playback_1",
                                 "--signal", "sine", "--seconds", str(args.seconds + 2),
                                 "--out", str(work / "send.npz")], env=jenv)
        recv = subprocess.Popen([sys.executable, "-m", "testbench.probe", "--server", jack.name,
                                 "--name", "demo_listen", "--record", "Demo USB interface:capture_1",
                                 "--signal", "silence", "--seconds", str(args.seconds + 2),
                                 "--out", str(work / "recv.npz")], env=jenv)
        end = time.monotonic() + args.seconds
        while time.monotonic() < end:
            print("\033[2J\033[H" if sys.stdout.isatty() else "", end="")
            print(f"cardbridge status   ({end - time.monotonic():4.0f} s left)\n")
            print(cli(env, "status"), flush=True)
            time.sleep(2.0)
        send.wait(timeout=60)
        recv.wait(timeout=60)
        got = np.load(work / "recv.npz")
        rec = got["recorded"]
        start = int((np.abs(rec) > 1e-3).argmax())
        say("what came back through the card")
        if start == 0 or len(rec) - start < 48000:
            print("   no tone came back (see the logs in %s)" % work)
        else:
            windows = probe.thd_n_windows_db(rec[start + 4800:], int(got["rate"]), 997.0)
            level = 20 * np.log10(np.sqrt(2) * np.sqrt(np.mean(rec[start + 4800:] ** 2)))
            print(f"   997 Hz tone back at {level:.1f} dBFS; THD+N median {np.median(windows):.1f} dB "
                  f"over {len(windows)} windows of 4096 frames")
        print("\n" + cli(env, "status"))
        say("detaching and stopping everything")
        print(cli(env, "detach", "demo_usb").strip() or "detached demo_usb")
        return 0
    except Exception as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if daemon is not None:
            daemon.terminate()
            try:
                daemon.wait(10)
            except subprocess.TimeoutExpired:
                daemon.kill()
        bus.stop()
        jack.stop()
        print(f"\nlogs kept in {work}")


if __name__ == "__main__":
    sys.exit(main())
