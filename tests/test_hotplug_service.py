"""Hotplug end to end: real libudev netlink events in a network namespace reach the real daemon,
which attaches the announced USB card (a virtual card standing behind ALSA's `hw` name), follows
its removal and its return, with the same JACK name and the user's connections.

Runs in the pytest process; the daemon runs inside the namespace (nsenter), jackd and the bus
outside it (both reachable through socket files).
"""

from __future__ import annotations

import json
import subprocess
import time

from cardbridge import names
from cardbridge.devices import device_from_udev
from testbench.udevinject import CARDS
from testbench.vcard import VirtualCard, create_card, hw_override_config

from service_helpers import daemon, service_workers, get_prop as prop, jack_connections, wait_for

CARD = 3


def test_usb_card_attaches_waits_and_returns_with_its_name_and_connections(
        netns, session_bus, jack_server, tmp_path):
    model = CARDS["scarlett-2i2"]
    clock = create_card(VirtualCard(f"card{CARD}", shm=str(tmp_path / f"card{CARD}.vcard"),
                                    ppm=75.0))
    env = session_bus.env(ALSA_CONFIG_PATH=hw_override_config(tmp_path), HOME=str(tmp_path))
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


def bridge_counters(address: str, path: str) -> tuple:
    return tuple(prop(address, path, name) for name in ("Xruns", "Underruns", "Restarts"))


def test_twins_and_a_third_card_unplug_undisturbed_and_replug_in_opposite_order(
        netns, session_bus, jack_server, tmp_path):
    """Two identical serial-less mics and a Scarlett. One mic leaves: its bridge waits (time
    from the udev event measured), the other two run on untouched. Both mics leave and come
    back on each other's card numbers: same ids, JACK names and connections."""
    plan = {"scarlett-2i2": 3, "usb-mic-port1": 4, "usb-mic-port2": 5}
    clocks = {card: create_card(VirtualCard(
        f"card{card}", shm=str(tmp_path / f"card{card}.vcard"), ppm=ppm,
        capture_channels=2 if card == 3 else 1, playback_channels=2 if card == 3 else 0))
        for card, ppm in ((3, 75.0), (4, 40.0), (5, -60.0))}
    env = session_bus.env(ALSA_CONFIG_PATH=hw_override_config(tmp_path), HOME=str(tmp_path))
    running = lambda p: prop(address, p, "State") == "running"  # noqa: E731
    with daemon(tmp_path, env, jack_server.name, popen=netns.popen,
                config='auto_attach = "usb"\n') as address:
        ids, paths, clients = {}, {}, {}
        for key, card in plan.items():
            dev = device_from_udev(netns.injector.plug(CARDS[key], card)[-1])
            ids[key], paths[key] = dev.id, names.bridge_path(dev.id)
        for key, path in paths.items():
            wait_for(lambda p=path: running(p), 60, f"{key} running")
            clients[key] = prop(address, path, "ClientName")
        assert len(set(ids.values())) == 3 and len(set(clients.values())) == 3
        edges = {"usb-mic-port1": "system:playback_1", "usb-mic-port2": "system:playback_2"}
        for key, peer in edges.items():
            subprocess.run(["jack_connect", "-s", jack_server.name, f"{clients[key]}:capture_1",
                            peer], check=True, timeout=10)
        time.sleep(1.5)    # the keeper records them
        before = bridge_counters(address, paths["scarlett-2i2"])
        log_mark = len((tmp_path / "daemon.log").read_text())

        # one mic leaves: the PCM vanishes, then udev says so
        clocks[4].unplug()
        t0 = time.monotonic()
        netns.injector.unplug(CARDS["usb-mic-port1"], 4)
        removal = wait_for(lambda: prop(address, paths["usb-mic-port1"], "State")
                           == "waiting-for-device", 20, "mic 1 waiting") - t0
        # The others run on: no restart, no other state than running (or re-syncing after a
        # card xrun, which this shared machine causes now and then by itself; the benchmark
        # compares their xruns with and without removals).
        seen = set()
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            seen.update(prop(address, paths[k], "State") for k in ("usb-mic-port2", "scarlett-2i2"))
            time.sleep(0.1)
        assert seen <= {"running", "syncing"}, seen
        after = bridge_counters(address, paths["scarlett-2i2"])
        # Every restart of the Scarlett's stream must have a cause of its own that its worker
        # logged (a card xrun, a late period: the machine); none may come from the removal.
        time.sleep(0.5)   # the worker prints its notes every 0.25 s
        window = (tmp_path / "daemon.log").read_text()[log_mark:]
        own = [line for line in window.splitlines() if "hw:CARD=3," in line
               and ("resync on" in line or "underrun on" in line or "overrun on" in line)]
        assert after[2] - before[2] <= len(own), ("the Scarlett's bridge restarted", window)
        print(f"\nudev remove -> waiting-for-device: {removal * 1000:.0f} ms; the Scarlett's "
              f"xruns/underruns during the next 2 s: {after[0] - before[0]}/{after[1] - before[1]}")

        # the other mic leaves too; both come back on each other's card numbers
        clocks[5].unplug()
        netns.injector.unplug(CARDS["usb-mic-port2"], 5)
        wait_for(lambda: prop(address, paths["usb-mic-port2"], "State") == "waiting-for-device",
                 20, "mic 2 waiting")
        clocks[4].replug()
        clocks[5].replug()
        t0 = time.monotonic()
        for key, card in (("usb-mic-port2", 4), ("usb-mic-port1", 5)):
            dev = device_from_udev(netns.injector.plug(CARDS[key], card)[-1])
            assert dev.id == ids[key]
        back = {}
        for key in edges:
            back[key] = wait_for(lambda p=paths[key]: running(p), 60, f"{key} back") - t0
            assert prop(address, paths[key], "ClientName") == clients[key]
        for key, peer in edges.items():
            wait_for(lambda k=key, p=peer: p in jack_connections(jack_server.name,
                                                                 f"{clients[k]}:capture_1"),
                     20, f"{key}'s connection restored")
        print(f"replug (opposite order) -> running: {max(back.values()):.2f} s; "
              f"connections restored {len(edges)} of {len(edges)}")
        assert prop(address, paths["scarlett-2i2"], "State") in ("running", "syncing")
    for clock in clocks.values():
        clock.close()


def list_devices(address: str) -> dict[str, dict]:
    out = subprocess.run(["busctl", f"--address={address}", "--json=short", "call",
                          "org.cardbridge.CardBridge1", "/org/cardbridge/CardBridge1",
                          "org.cardbridge.CardBridge1.Manager", "ListDevices"],
                         capture_output=True, text=True, timeout=20, check=True)
    return {d["id"]["data"]: {k: v["data"] for k, v in d.items()}
            for d in json.loads(out.stdout)["data"][0]}


def worker_count(address: str) -> int:
    """Bridge workers of the service on `address` (its children: other test runs on the machine
    have workers of their own)."""
    return len(service_workers(address))


def test_event_storm_and_malformed_events_leave_the_service_consistent_and_responsive(
        netns, session_bus, jack_server, tmp_path):
    """100 add/remove events in about 2 s for four USB cards, with garbage mixed in, while a
    client keeps calling the service: every call is answered, malformed events cost one log
    line each, and afterwards the devices, bridges and workers are exactly what is plugged."""
    models = [("usb-mic-port1", 4), ("usb-mic-port2", 5), ("scarlett-2i2", 3),
              ("webcam-c920", 6)]
    clocks = {key: create_card(VirtualCard(f"card{card}", shm=str(tmp_path / f"card{card}.vcard"),
                                           ppm=10.0 * card)) for key, card in models}
    for clock in clocks.values():
        clock.unplug()        # as real cards: the PCM exists only while the card is plugged
    env = session_bus.env(ALSA_CONFIG_PATH=hw_override_config(tmp_path), HOME=str(tmp_path))
    injector = netns.injector
    with daemon(tmp_path, env, jack_server.name, popen=netns.popen,
                config='auto_attach = "usb"\n') as address:
        plugged: set[str] = set()
        sent = step = 0
        call_times = []
        start = time.monotonic()
        while sent < 100:
            key, card = models[step % len(models)]
            if key in plugged:
                clocks[key].unplug()
                events = injector.unplug(CARDS[key], card)
            else:
                clocks[key].replug()
                events = injector.plug(CARDS[key], card)
            plugged.symmetric_difference_update({key})
            sent += len(events)
            step += 1
            if step % 7 == 0:      # garbage and a card event without a card number
                injector.sock.sendto(b"\x00garbage\xff" * 20, (0, 2))
                injector.send("change", "/devices/x/sound/cardX", "sound",
                              {"SOUND_INITIALIZED": "1"})
            if step % 5 == 0:      # a client asking meanwhile
                t0 = time.monotonic()
                list_devices(address)
                call_times.append(time.monotonic() - t0)
            time.sleep(max(0.0, start + 0.02 * sent - time.monotonic()))
        storm = time.monotonic() - start
        for key, card in models:             # end on a known mix: two in, two out
            if (key in ("usb-mic-port1", "scarlett-2i2")) != (key in plugged):
                if key in plugged:
                    clocks[key].unplug()
                    injector.unplug(CARDS[key], card)
                else:
                    clocks[key].replug()
                    injector.plug(CARDS[key], card)
                plugged.symmetric_difference_update({key})
        ids = {key: device_from_udev(CARDS[key].card_properties("change", card, True)).id
               for key, card in models}

        def settled() -> bool:
            devices = list_devices(address)
            present = {i for i, d in devices.items() if d.get("present")}
            if present != {ids[k] for k in plugged}:
                return False
            for key in ids:
                state = prop(address, names.bridge_path(ids[key]), "State")
                if state != ("running" if key in plugged else "waiting-for-device"):
                    return False
            return True

        wait_for(settled, 60, "the service to settle on what is plugged")
        assert worker_count(address) == len(models), "one worker per bridge, no strays"
        calls = sorted(call_times)
        print(f"\n{sent} udev events in {storm:.1f} s; ListDevices during the storm: median "
              f"{calls[len(calls) // 2] * 1000:.0f} ms, max {calls[-1] * 1000:.0f} ms "
              f"({len(calls)} calls); plugged at the end: {sorted(plugged)}")
    log = (tmp_path / "daemon.log").read_text()
    malformed = [line for line in log.splitlines() if "malformed udev event" in line]
    assert 1 <= len(malformed) <= 5, malformed    # rate-limited one-liners, never a flood
    for clock in clocks.values():
        clock.close()
