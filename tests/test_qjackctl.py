"""The real qjackctl, headless, in its JACK D-Bus mode: it starts and stops JACK through
jackdbus, its "Execute script after Startup" line attaches a card with the CLI, and the bridge
follows every start and stop with its ports and connections.

Runs in the pytest process. qjackctl (Debian's, Qt offscreen), jackdbus, the daemon and its
worker are real processes: jackdbus and the daemon on a private session bus; qjackctl's own
remote-control signals (`dbus-send / org.rncbc.qjackctl.start`), which it listens for on the
system bus, travel on a second private bus given to it as its system bus. Private HOME, so
the user's qjackctl settings are never read or written.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testbench.vcard import VirtualCard

from service_helpers import daemon, get_prop, jack_connections, wait_for

pytestmark = pytest.mark.skipif(shutil.which("qjackctl") is None, reason="qjackctl not installed")

PATH = "/org/cardbridge/CardBridge1/bridge/vcq"


def qjackctl_config(home: Path, server: str, after_startup: str) -> None:
    """QjackCtl.conf: JACK D-Bus mode, start JACK at launch, no ALSA sequencer, no dialogs."""
    conf = home / ".config" / "rncbc.org" / "QjackCtl.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(f"""[Options]
Singleton=false
StartJack=true
StopJack=true
PostStartupScript=true
PostStartupScriptShell={after_startup}
AlsaSeqEnabled=false
DBusEnabled=true
JackDBusEnabled=true
QueryClose=false
QueryShutdown=false
QueryRestart=false
SystemTray=false
ServerConfig=false
StdoutCapture=false

[Settings]
Driver=dummy
ServerName={server}
SampleRate=48000
Frames=256
Realtime=false
""")


def send_qjackctl(command_bus: str, member: str) -> None:
    subprocess.run(["dbus-send", f"--bus={command_bus}", "--type=signal", "/",
                    f"org.rncbc.qjackctl.{member}"], check=True, timeout=10)


def through_qjackctl(command_bus: str, jackdbus, member: str) -> None:
    """qjackctl's start or stop, until JACK stays in that state for 2 s. On a loaded machine
    qjackctl was seen here calling StartServer again 0.15 s after its own StopServer (a start
    of its own still pending); the bridges follow that too, but this test wants JACK down."""
    wanted = member == "start"
    for _ in range(3):
        send_qjackctl(command_bus, member)
        wait_for(lambda: jackdbus.is_started() == wanted, 30, f"qjackctl to {member} JACK")
        time.sleep(2.0)
        if jackdbus.is_started() == wanted:
            return
    raise AssertionError(f"qjackctl does not keep JACK {'started' if wanted else 'stopped'}")


def test_qjackctl_in_dbus_mode_starts_and_stops_jack_and_the_bridge_follows(
        jackdbus, session_bus, make_bus, virtual_cards, tmp_path):
    cards = virtual_cards(VirtualCard("vcq", ppm=75.0))
    command_bus = make_bus("session")
    env = session_bus.env(cards.env(jackdbus.env()))
    cli = str(Path(sys.executable).with_name("cardbridge"))
    state = lambda: get_prop(address, PATH, "State")  # noqa: E731
    with daemon(tmp_path, env, jackdbus.name, "--no-hotplug",
                config='auto_attach = "none"\n[devices.vcq]\npcm = "vcq"\n') as address:
        home = tmp_path / "qjackctl-home"
        qjackctl_config(home, jackdbus.name, f"{cli} --session attach vcq")
        qenv = dict(env, HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"),
                    QT_QPA_PLATFORM="offscreen", DBUS_SYSTEM_BUS_ADDRESS=command_bus.address,
                    PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
        log = open(tmp_path / "qjackctl.log", "w")
        qjackctl = subprocess.Popen(["qjackctl"], env=qenv, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        try:
            # qjackctl starts JACK through jackdbus, then runs the after-startup line, which
            # attaches the card (the CLI returns at once; the bridge comes up on its own).
            wait_for(lambda: state() == "running", 60, "the bridge attached by qjackctl's script")
            assert jackdbus.is_started()
            subprocess.run(["jack_connect", "-s", jackdbus.name, "vcq:capture_1",
                            "system:playback_1"], check=True, timeout=10)
            time.sleep(1.5)

            for _ in range(2):
                through_qjackctl(command_bus.address, jackdbus, "stop")
                wait_for(lambda: state() == "waiting-for-jack", 30, "waiting-for-jack")
                assert get_prop(address, "/org/cardbridge/CardBridge1", "JackRunning",
                                "org.cardbridge.CardBridge1.Manager") is False
                through_qjackctl(command_bus.address, jackdbus, "start")
                wait_for(lambda: state() == "running", 60, "running after qjackctl's start")
                wait_for(lambda: "system:playback_1" in jack_connections(jackdbus.name,
                                                                         "vcq:capture_1"),
                         20, "the connection restored")
            assert qjackctl.poll() is None, "qjackctl exited"
        finally:
            qjackctl.terminate()
            try:
                qjackctl.wait(10)
            except subprocess.TimeoutExpired:
                qjackctl.kill()
                qjackctl.wait()
            log.close()
