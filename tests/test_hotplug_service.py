"""Hotplug end to end: real libudev netlink events in a network namespace reach the real daemon,
which attaches the announced USB card (a virtual card standing behind ALSA's `hw` name), follows
its removal and its return, with the same JACK name and the user's connections.

Runs in the pytest process; the daemon runs inside the namespace (nsenter), jackd and the bus
outside it (both reachable through socket files).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from cardbridge import names
from cardbridge.devices import device_from_udev
from cardbridge.sandbox.udevinject import CARDS
from cardbridge.sandbox.vcard import VirtualCard, create_card, plugin_path

from service_helpers import daemon, get_prop as prop, jack_connections, wait_for

CARD = 3


def hw_override(directory: Path) -> str:
    """An ALSA config where hw:CARD=N opens the virtual card whose clock file is cardN.vcard."""
    conf = directory / "asound.conf"
    conf.write_text(f'''pcm_type.cbvcard {{ lib "{plugin_path()}" }}
pcm.!hw {{
    @args [ CARD DEV SUBDEV ]
    @args.CARD {{ type string }}
    @args.DEV {{ type integer default 0 }}
    @args.SUBDEV {{ type integer default -1 }}
    type cbvcard
    shm {{ @func concat strings [ "{directory}/card" $CARD ".vcard" ] }}
}}
''')
    return f"/usr/share/alsa/alsa.conf:{conf}"


def test_usb_card_attaches_waits_and_returns_with_its_name_and_connections(
        netns, session_bus, jack_server, tmp_path):
    model = CARDS["scarlett-2i2"]
    clock = create_card(VirtualCard(f"card{CARD}", shm=str(tmp_path / f"card{CARD}.vcard"),
                                    ppm=75.0))
    env = session_bus.env(ALSA_CONFIG_PATH=hw_override(tmp_path), HOME=str(tmp_path))
    with daemon(tmp_path, env, jack_server.name, popen=netns.popen,
                config='auto_attach = "usb"\n') as address:
        sent = netns.injector.plug(model, CARD)
        dev = device_from_udev(sent[-1])
        path = names.bridge_path(dev.id)
        wait_for(lambda: prop(address, path, "State") == "running", 60, "the bridge to run")
        client = prop(address, path, "ClientName")
        assert client == dev.client_name
        # the card is claimed the way PulseAudio/PipeWire/jackdbus hand cards over
        owner = subprocess.run(["busctl", f"--address={address}", "status",
                                f"org.freedesktop.ReserveDevice1.Audio{CARD}"],
                               capture_output=True, text=True, timeout=10)
        assert owner.returncode == 0, owner.stderr
        subprocess.run(["jack_connect", "-s", jack_server.name, "system:capture_1",
                        f"{client}:playback_1"], check=True, timeout=10)
        time.sleep(1.5)   # the keeper records it

        # unplug: the PCM vanishes and udev says so
        clock.unplug()
        netns.injector.unplug(model, CARD)
        wait_for(lambda: prop(address, path, "State") == "waiting-for-device", 20,
                 "waiting-for-device")
        ports = subprocess.run(["jack_lsp", "-s", jack_server.name], capture_output=True,
                               text=True).stdout
        assert f"{client}:capture_1" in ports, "ports are kept while the card is away"

        # replug: same id, same JACK name, connection back
        clock.replug()
        netns.injector.plug(model, CARD)
        wait_for(lambda: prop(address, path, "State") == "running", 60, "the bridge to return")
        assert prop(address, path, "ClientName") == client
        wait_for(lambda: "system:capture_1" in jack_connections(jack_server.name,
                                                                 f"{client}:playback_1"),
                 20, "the connection to be restored")
    clock.close()


def test_identical_mics_keep_their_names_whatever_the_plug_order(netns, session_bus, jack_server,
                                                                  tmp_path):
    clocks = [create_card(VirtualCard(f"card{n}", shm=str(tmp_path / f"card{n}.vcard"),
                                      capture_channels=1, playback_channels=0, ppm=ppm))
              for n, ppm in ((4, 40.0), (5, -60.0))]
    env = session_bus.env(ALSA_CONFIG_PATH=hw_override(tmp_path), HOME=str(tmp_path))
    with daemon(tmp_path, env, jack_server.name, popen=netns.popen,
                config='auto_attach = "usb"\n') as address:
        first = {}
        for key, card in (("usb-mic-port1", 4), ("usb-mic-port2", 5)):
            dev = device_from_udev(netns.injector.plug(CARDS[key], card)[-1])
            first[key] = (dev.id, names.bridge_path(dev.id))
        assert first["usb-mic-port1"][0] != first["usb-mic-port2"][0]
        clients = {}
        for key, (dev_id, path) in first.items():
            wait_for(lambda p=path: prop(address, p, "State") == "running", 60, f"{key} running")
            clients[key] = prop(address, path, "ClientName")
        assert len(set(clients.values())) == 2
        for key, card in (("usb-mic-port1", 4), ("usb-mic-port2", 5)):
            netns.injector.unplug(CARDS[key], card)
        for key, (dev_id, path) in first.items():
            wait_for(lambda p=path: prop(address, p, "State") == "waiting-for-device", 20,
                     f"{key} waiting")
        # back in the opposite order: the card numbers swap, the identities must not
        for key, card in (("usb-mic-port2", 4), ("usb-mic-port1", 5)):
            dev = device_from_udev(netns.injector.plug(CARDS[key], card)[-1])
            assert dev.id == first[key][0]
        for key, (dev_id, path) in first.items():
            wait_for(lambda p=path: prop(address, p, "State") == "running", 60, f"{key} back")
            assert prop(address, path, "ClientName") == clients[key]
    for clock in clocks:
        clock.close()
