"""The daemon follows a JACK server started and stopped through jackdbus (`jack_control`, the way
qjackctl's D-Bus mode does it): bridges wait, come back with the same ports and the
connections the user made, and survive a buffer-size change.

Runs in the pytest process; jackdbus, jackd, the daemon and its workers are real processes on a
private session bus with a private HOME.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

from cardbridge.sandbox.vcard import VirtualCard

BUS = "org.cardbridge.CardBridge1"
MGR = "/org/cardbridge/CardBridge1"
PATH = "/org/cardbridge/CardBridge1/bridge/vcj"
BIFACE = "org.cardbridge.CardBridge1.Bridge"


def get(address, path, iface, name):
    out = subprocess.run(["busctl", f"--address={address}", "--json=short", "get-property", BUS,
                          path, iface, name], capture_output=True, text=True, timeout=20)
    return json.loads(out.stdout)["data"] if out.returncode == 0 else None


def wait_for(fn, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if fn():
            return time.monotonic()
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def connections(server, port):
    out = subprocess.run(["jack_lsp", "-s", server, "-c", port], capture_output=True, text=True,
                         timeout=10).stdout.splitlines()
    return [line.strip() for line in out[1:] if line.startswith((" ", "\t"))]


def test_bridges_follow_jackdbus_start_stop_and_restore_connections(jackdbus, session_bus,
                                                                     virtual_cards, tmp_path):
    cards = virtual_cards(VirtualCard("vcj", ppm=-55.0))
    (tmp_path / "config.toml").write_text('auto_attach = "none"\n[devices.vcj]\npcm = "vcj"\n')
    env = cards.env(jackdbus.env())
    env.update(session_bus.env())
    address = session_bus.address
    log = open(tmp_path / "daemon.log", "w")
    daemon = subprocess.Popen([sys.executable, "-m", "cardbridge.daemon", "--session", "--config",
                               str(tmp_path / "config.toml"), "--state-dir", str(tmp_path / "state"),
                               "--jack-server", jackdbus.name, "--no-hotplug"],
                              env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: get(address, MGR, "org.cardbridge.CardBridge1.Manager", "Version"), 30,
                 "the service")
        # attached while JACK is down: the bridge waits for it
        subprocess.run(["busctl", f"--address={address}", "call", BUS, MGR,
                        "org.cardbridge.CardBridge1.Manager", "Attach", "sa{sv}", "vcj", "0"],
                       check=True, capture_output=True, timeout=20)
        wait_for(lambda: get(address, PATH, BIFACE, "State") == "waiting-for-jack", 30,
                 "waiting-for-jack")
        assert get(address, MGR, "org.cardbridge.CardBridge1.Manager", "JackRunning") is False
        jackdbus.start_server()
        wait_for(lambda: get(address, PATH, BIFACE, "State") == "running", 60, "running")
        assert get(address, MGR, "org.cardbridge.CardBridge1.Manager", "JackRunning") is True
        subprocess.run(["jack_connect", "-s", jackdbus.name, "system:capture_1", "vcj:playback_1"],
                       check=True, timeout=10)
        subprocess.run(["jack_connect", "-s", jackdbus.name, "vcj:capture_2", "system:playback_2"],
                       check=True, timeout=10)
        time.sleep(1.5)

        restart_times = []
        for _ in range(3):
            jackdbus.stop_server()
            wait_for(lambda: get(address, PATH, BIFACE, "State") == "waiting-for-jack", 30,
                     "waiting-for-jack after stop")
            t0 = time.monotonic()
            jackdbus.start_server()
            t1 = wait_for(lambda: get(address, PATH, BIFACE, "State") == "running", 60,
                          "running after start")
            restart_times.append(t1 - t0)
            wait_for(lambda: "system:capture_1" in connections(jackdbus.name, "vcj:playback_1")
                     and "system:playback_2" in connections(jackdbus.name, "vcj:capture_2"),
                     20, "connections restored")
        print(f"JACK start → bridge running: median {statistics.median(restart_times):.2f} s "
              f"of {len(restart_times)}")

        # a buffer-size change while running: the bridge keeps its ports and connections
        jackdbus.set_buffer_size(512)
        wait_for(lambda: get(address, PATH, BIFACE, "State") == "running"
                 and get(address, MGR, "org.cardbridge.CardBridge1.Manager", "JackBufferSize") == 512,
                 60, "running at 512")
        assert "system:capture_1" in connections(jackdbus.name, "vcj:playback_1")
    finally:
        daemon.terminate()
        try:
            daemon.wait(10)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        log.close()
    assert "Traceback" not in (tmp_path / "daemon.log").read_text()
