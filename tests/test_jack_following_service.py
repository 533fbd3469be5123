"""The daemon follows a JACK server started and stopped through jackdbus (`jack_control`, the way
qjackctl's D-Bus mode does it): bridges wait, come back with the same ports and the
connections the user made, and survive a buffer-size change.

Runs in the pytest process; jackdbus, jackd, the daemon and its workers are real processes on a
private session bus with a private HOME.
"""

from __future__ import annotations

import statistics
import subprocess
import time

from cardbridge.sandbox.vcard import VirtualCard

from service_helpers import BUS, MGR, MIFACE, daemon, get_prop, jack_connections, wait_for

PATH = "/org/cardbridge/CardBridge1/bridge/vcj"


def test_bridges_follow_jackdbus_start_stop_and_restore_connections(jackdbus, session_bus,
                                                                     virtual_cards, tmp_path):
    cards = virtual_cards(VirtualCard("vcj", ppm=-55.0))
    env = session_bus.env(cards.env(jackdbus.env()))
    state = lambda: get_prop(address, PATH, "State")  # noqa: E731
    with daemon(tmp_path, env, jackdbus.name, "--no-hotplug",
                config='auto_attach = "none"\n[devices.vcj]\npcm = "vcj"\n') as address:
        # attached while JACK is down: the bridge waits for it
        subprocess.run(["busctl", f"--address={address}", "call", BUS, MGR, MIFACE, "Attach",
                        "sa{sv}", "vcj", "0"], check=True, capture_output=True, timeout=20)
        wait_for(lambda: state() == "waiting-for-jack", 30, "waiting-for-jack")
        assert get_prop(address, MGR, "JackRunning", MIFACE) is False
        jackdbus.start_server()
        wait_for(lambda: state() == "running", 60, "running")
        assert get_prop(address, MGR, "JackRunning", MIFACE) is True
        subprocess.run(["jack_connect", "-s", jackdbus.name, "system:capture_1", "vcj:playback_1"],
                       check=True, timeout=10)
        subprocess.run(["jack_connect", "-s", jackdbus.name, "vcj:capture_2", "system:playback_2"],
                       check=True, timeout=10)
        time.sleep(1.5)

        restart_times = []
        for _ in range(3):
            jackdbus.stop_server()
            wait_for(lambda: state() == "waiting-for-jack", 30, "waiting-for-jack after stop")
            t0 = time.monotonic()
            jackdbus.start_server()
            restart_times.append(wait_for(lambda: state() == "running", 60,
                                          "running after start") - t0)
            wait_for(lambda: "system:capture_1" in jack_connections(jackdbus.name, "vcj:playback_1")
                     and "system:playback_2" in jack_connections(jackdbus.name, "vcj:capture_2"),
                     20, "connections restored")
        print(f"JACK start → bridge running: median {statistics.median(restart_times):.2f} s "
              f"of {len(restart_times)}")

        # a buffer-size change while running: the bridge keeps its ports and connections
        jackdbus.set_buffer_size(512)
        wait_for(lambda: state() == "running"
                 and get_prop(address, MGR, "JackBufferSize", MIFACE) == 512, 60, "running at 512")
        assert "system:capture_1" in jack_connections(jackdbus.name, "vcj:playback_1")
