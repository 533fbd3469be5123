"""Living beside the rest of the system, end to end: the real daemon in a network namespace with
USB cards announced by real libudev events (virtual cards behind ALSA's `hw` names), a real JACK
server, private buses, other owners of ReserveDevice1 reservations, a second daemon.

Runs in the pytest process; daemons, workers, jackd, dbus-daemons and the reservation holders
are real processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from cardbridge import names
from cardbridge.devices import device_from_udev
from testbench.udevinject import CARDS, CardModel
from testbench.vcard import VirtualCard, create_card, hw_override_config

from service_helpers import (BIFACE, BUS, MGR, MIFACE, daemon, get_prop as prop,
                             service_workers, wait_for)

CARD = 3
REPO_DBUS = __import__("pathlib").Path(__file__).resolve().parent.parent / "dbus"
SCARLETT = CARDS["scarlett-2i2"]
SCARLETT_ID = device_from_udev(SCARLETT.card_properties("change", CARD, True)).id
SCARLETT_PATH = names.bridge_path(SCARLETT_ID)


def busctl(address: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(["busctl", f"--address={address}", *args], capture_output=True,
                         text=True, timeout=30)
    if check:
        assert out.returncode == 0, out.stderr
    return out


def call(address: str, member: str, *args: str, check: bool = True):
    return busctl(address, "call", BUS, MGR, MIFACE, member, *args, check=check)


def devices(address: str) -> dict:
    out = busctl(address, "--json=short", "call", BUS, MGR, MIFACE, "ListDevices")
    return {d["id"]["data"]: {k: v["data"] for k, v in d.items()}
            for d in json.loads(out.stdout)["data"][0]}


def state(address: str, path: str = SCARLETT_PATH) -> tuple:
    return prop(address, path, "State"), prop(address, path, "StateReason")


def plug_jacks_card_and_attach_it(address: str, injector) -> None:
    """Plug the card JACK runs on: auto-attach must leave it alone; then attach it by hand."""
    injector.plug(SCARLETT, CARD)
    wait_for(lambda: SCARLETT_ID in devices(address), 20, "the card")
    time.sleep(1.5)
    assert prop(address, SCARLETT_PATH, "State") is None, "JACK's card auto-attached"
    assert devices(address)[SCARLETT_ID]["auto_attach"] is False
    call(address, "Attach", "sa{sv}", SCARLETT_ID, "0")


@pytest.fixture
def card(tmp_path):
    clock = create_card(VirtualCard(f"card{CARD}", shm=str(tmp_path / f"card{CARD}.vcard"),
                                    ppm=50.0))
    yield clock
    clock.close()


@pytest.fixture
def env(session_bus, tmp_path):
    return session_bus.env(ALSA_CONFIG_PATH=hw_override_config(tmp_path), HOME=str(tmp_path))


def test_detach_lasts_until_attach_or_enable(netns, jack_server, tmp_path, card, env):
    with daemon(tmp_path, env, jack_server.name, popen=netns.popen,
                config='auto_attach = "usb"\n') as address:
        netns.injector.plug(SCARLETT, CARD)
        wait_for(lambda: prop(address, SCARLETT_PATH, "State") == "running", 60, "auto-attach")
        call(address, "Detach", "s", SCARLETT_ID)
        assert devices(address)[SCARLETT_ID]["auto_attach"] is False
        card.unplug()
        netns.injector.unplug(SCARLETT, CARD)
        card.replug()
        netns.injector.plug(SCARLETT, CARD)
        time.sleep(1.5)
        assert prop(address, SCARLETT_PATH, "State") is None, "a detached card came back"
        assert not service_workers(address)
        # the README's quick start: attach with a name (and the card is the user's from now)
        call(address, "Attach", "sa{sv}", SCARLETT_ID, "1", "name", "s", "Scarlett")
        wait_for(lambda: prop(address, SCARLETT_PATH, "State") == "running", 60, "attach")
        assert prop(address, SCARLETT_PATH, "ClientName") == "Scarlett"
        call(address, "Detach", "s", "Scarlett")
        call(address, "SetAutoAttach", "sb", SCARLETT_ID, "true")
        wait_for(lambda: prop(address, SCARLETT_PATH, "State") == "running", 60, "enable")
        call(address, "Detach", "s", SCARLETT_ID)
        call(address, "Attach", "sa{sv}", SCARLETT_ID, "0")         # remembered from now on
    card.unplug()
    with daemon(tmp_path, env, jack_server.name, popen=netns.popen,
                config='auto_attach = "usb"\n') as address:
        # remembered, not plugged in: shown, and it can be detached
        wait_for(lambda: state(address)[1] == "the card is not plugged in", 20, "remembered")
        call(address, "Detach", "s", SCARLETT_ID)
    state_file = json.loads((tmp_path / "state" / "state.json").read_text())
    assert state_file["auto_attach"][SCARLETT_ID] is False and state_file["bridges"] == {}


def test_an_auto_attached_bridge_is_taken_over_by_attach(netns, jack_server, tmp_path, card, env):
    with daemon(tmp_path, env, jack_server.name, popen=netns.popen,
                config='auto_attach = "usb"\n') as address:
        netns.injector.plug(SCARLETT, CARD)
        wait_for(lambda: prop(address, SCARLETT_PATH, "State") == "running", 60, "auto-attach")
        out = call(address, "Attach", "sa{sv}", SCARLETT_ID, "1", "name", "s", "Scarlett")
        assert SCARLETT_PATH in out.stdout
        wait_for(lambda: prop(address, SCARLETT_PATH, "ClientName") == "Scarlett", 20, "rename")
        wait_for(lambda: prop(address, SCARLETT_PATH, "State") == "running", 60, "running again")
        out = call(address, "Attach", "sa{sv}", SCARLETT_ID, "0", check=False)
        assert "already attached" in out.stderr
        assert len(service_workers(address)) == 1


def test_a_remembered_bridge_whose_card_is_absent_is_shown_and_can_be_detached(
        netns, jack_server, tmp_path, env):
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "state.json").write_text(json.dumps(
        {"version": 1, "bridges": {SCARLETT_ID: {"name": "Scarlett"}}}))
    with daemon(tmp_path, env, jack_server.name, popen=netns.popen,
                config='auto_attach = "usb"\n') as address:
        wait_for(lambda: state(address) == ("waiting-for-device", "the card is not plugged in"),
                 20, "the remembered bridge")
        assert prop(address, SCARLETT_PATH, "ClientName") == "Scarlett"
        assert devices(address)[SCARLETT_ID]["present"] is False
        assert not service_workers(address), "no worker for a card that is not there"
        call(address, "Detach", "s", SCARLETT_PATH)
        assert prop(address, SCARLETT_PATH, "State") is None
    assert json.loads((tmp_path / "state" / "state.json").read_text())["bridges"] == {}


def test_add_remove_add_in_one_udev_batch_makes_one_bridge(netns, jack_server, tmp_path, card,
                                                           env):
    with daemon(tmp_path, env, jack_server.name, popen=netns.popen,
                config='auto_attach = "usb"\n') as address:
        netns.injector.plug(SCARLETT, CARD)
        netns.injector.unplug(SCARLETT, CARD)
        netns.injector.plug(SCARLETT, CARD)
        wait_for(lambda: prop(address, SCARLETT_PATH, "State") == "running", 60, "the bridge")
        time.sleep(1.0)
        assert len(service_workers(address)) == 1, service_workers(address)
        managed = busctl(address, "--json=short", "call", BUS, MGR,
                         "org.freedesktop.DBus.ObjectManager", "GetManagedObjects").stdout
        assert json.loads(managed)["data"][0].keys() == {SCARLETT_PATH}
        clients = subprocess.run(["jack_lsp", "-s", jack_server.name], capture_output=True,
                                 text=True).stdout
        assert sorted({p.split(":")[0] for p in clients.splitlines() if ":" in p}
                      - {"system"}) == ["Scarlett 2i2 USB"]


# A stand-in for another owner of ReserveDevice1 (jackdbus, PulseAudio), speaking the real
# protocol on the real bus: holds Audio<N> with an application name and priority until stdin
# closes.
HOLDER = textwrap.dedent("""
    import asyncio, sys
    from cardbridge.dbuslib import MessageBus
    from cardbridge.reserve import DeviceReservation

    async def main(address, card, priority, app):
        bus = await MessageBus(bus_address=address).connect()
        res = DeviceReservation(bus, card, app, priority=priority,
                                on_release_requested=lambda p: True)
        print("acquired" if await res.acquire() else "refused", flush=True)
        done = asyncio.Event()
        asyncio.get_running_loop().add_reader(sys.stdin.fileno(), done.set)
        await done.wait()
        await res.release()
        bus.disconnect()

    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]))
""")


class Holder:
    def __init__(self, address: str, card: int, priority: int, app: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, address, str(card), str(priority), app],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
        assert self.proc.stdout.readline().strip() == "acquired"

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(10)


def test_jacks_own_card_is_never_auto_attached_and_shown_in_use_by_jack(
        netns, session_bus, jack_server, tmp_path, card, env):
    jackd = Holder(session_bus.address, CARD, 2**31 - 1, "Jack audio server")
    try:
        with daemon(tmp_path, env, jack_server.name, popen=netns.popen,
                    config='auto_attach = "usb"\n') as address:
            plug_jacks_card_and_attach_it(address, netns.injector)
            wait_for(lambda: state(address)[0] == "waiting-for-device", 20, "held")
            assert "in use by JACK" in prop(address, SCARLETT_PATH, "StateReason")
            restarts = prop(address, SCARLETT_PATH, "Restarts")
            time.sleep(3.0)                  # never retried in a loop: no worker at all
            assert not service_workers(address)
            assert prop(address, SCARLETT_PATH, "Restarts") == restarts
            jackd.close()                    # JACK lets the card go: looked at again
            wait_for(lambda: prop(address, SCARLETT_PATH, "State") == "running", 60, "running")
    finally:
        jackd.close()


def test_a_refused_reservation_is_honoured_and_attach_asks_harder(
        netns, session_bus, jack_server, tmp_path, card, env):
    desktop = Holder(session_bus.address, CARD, 0, "PulseAudio Sound Server")
    try:
        with daemon(tmp_path, env, jack_server.name, popen=netns.popen,
                    config='auto_attach = "usb"\n') as address:
            netns.injector.plug(SCARLETT, CARD)
            wait_for(lambda: state(address)[0] == "waiting-for-device", 20, "held")
            assert "in use by PulseAudio Sound Server" in prop(address, SCARLETT_PATH,
                                                               "StateReason")
            assert not service_workers(address)
            # told: an explicit attach asks with a priority the desktop gives the card up to
            call(address, "Attach", "sa{sv}", SCARLETT_ID, "0")
            wait_for(lambda: prop(address, SCARLETT_PATH, "State") == "running", 60, "taken")
            owner = busctl(address, "--json=short", "get-property",
                           f"org.freedesktop.ReserveDevice1.Audio{CARD}",
                           f"/org/freedesktop/ReserveDevice1/Audio{CARD}",
                           "org.freedesktop.ReserveDevice1", "ApplicationName")
            assert json.loads(owner.stdout)["data"] == "cardbridge"
            call(address, "Detach", "s", SCARLETT_ID)
            wait_for(lambda: busctl(address, "status",
                                    f"org.freedesktop.ReserveDevice1.Audio{CARD}",
                                    check=False).returncode != 0, 10, "handed back")
    finally:
        desktop.close()


def test_one_card_one_bridge_across_two_instances(netns, make_bus, jack_server, tmp_path, card):
    """Two session instances (two users' sessions) with one lock directory: the first bridges
    the card, the second leaves it and says why, and takes over when the first lets go."""
    alsa = hw_override_config(tmp_path)
    locks = tmp_path / "locks"
    locks.mkdir()
    buses = [make_bus("session"), make_bus("session")]
    envs = [b.env(ALSA_CONFIG_PATH=alsa, HOME=str(tmp_path / f"home{i}"),
                  CARDBRIDGE_LOCK_DIR=str(locks)) for i, b in enumerate(buses)]
    with daemon(tmp_path / "one", envs[0], jack_server.name, popen=netns.popen,
                config='auto_attach = "usb"\n') as first:
        netns.injector.plug(SCARLETT, CARD)
        wait_for(lambda: prop(first, SCARLETT_PATH, "State") == "running", 60, "first")
        with daemon(tmp_path / "two", envs[1], jack_server.name, popen=netns.popen,
                    config='auto_attach = "usb"\n') as second:
            netns.injector.plug(SCARLETT, CARD)     # the second learns of the card
            wait_for(lambda: state(second) == ("waiting-for-device",
                                               "bridged by another cardbridge instance"),
                     20, "the second to leave it")
            assert not service_workers(second)
            assert prop(first, SCARLETT_PATH, "State") in ("running", "syncing")  # (a re-sync)
            call(first, "Detach", "s", SCARLETT_ID)
            wait_for(lambda: prop(second, SCARLETT_PATH, "State") == "running", 60, "take over")


def fresh_serial(i: int) -> CardModel:
    """The Scarlett as a device that re-enumerates with a new serial number every time."""
    props = dict(SCARLETT.properties)
    props["ID_SERIAL_SHORT"] = f"RE{i:04d}"
    props["ID_SERIAL"] = f"Focusrite_Scarlett_2i2_USB_RE{i:04d}"
    return CardModel(f"flaky-{i}", SCARLETT.parent, props, SCARLETT.alsa_id)


def test_a_device_with_fresh_serials_does_not_grow_state_workers_or_clients(
        netns, jack_server, tmp_path, card, env):
    from cardbridge.manager import MAX_REMEMBERED_DEVICES, MAX_WAITING_BRIDGES
    with daemon(tmp_path, env, jack_server.name, popen=netns.popen,
                config='auto_attach = "usb"\n') as address:
        for i in range(MAX_WAITING_BRIDGES + 4):
            path = names.bridge_path(device_from_udev(
                fresh_serial(i).card_properties("change", CARD, True)).id)
            netns.injector.plug(fresh_serial(i), CARD)
            wait_for(lambda: prop(address, path, "State") is not None, 20, f"bridge {i}")
            netns.injector.unplug(fresh_serial(i), CARD)
        time.sleep(3.0)
        managed = busctl(address, "--json=short", "call", BUS, MGR,
                         "org.freedesktop.DBus.ObjectManager", "GetManagedObjects").stdout
        assert len(json.loads(managed)["data"][0]) == MAX_WAITING_BRIDGES
        assert len(service_workers(address)) <= MAX_WAITING_BRIDGES
    with daemon(tmp_path, env, jack_server.name, popen=netns.popen,
                config='auto_attach = "none"\n') as address:
        for i in range(100, 100 + MAX_REMEMBERED_DEVICES + 10):
            netns.injector.plug(fresh_serial(i), CARD)
        wait_for(lambda: f"usb-Focusrite_Scarlett_2i2_USB_RE{99 + MAX_REMEMBERED_DEVICES + 10:04d}-00"
                 in devices(address), 30, "the last device")
        assert len(devices(address)) <= MAX_REMEMBERED_DEVICES + 1
    saved = json.loads((tmp_path / "state" / "state.json").read_text())
    for section in ("names", "seen"):
        assert len(saved[section]) <= MAX_REMEMBERED_DEVICES + 1, section


def reservation_owner(address: str, card: int = CARD) -> str | None:
    out = busctl(address, "--json=short", "get-property",
                 f"org.freedesktop.ReserveDevice1.Audio{card}",
                 f"/org/freedesktop/ReserveDevice1/Audio{card}",
                 "org.freedesktop.ReserveDevice1", "ApplicationName", check=False)
    return json.loads(out.stdout)["data"] if out.returncode == 0 else None


@pytest.fixture
def pulseaudio(session_bus, tmp_path, card, env):
    """The real PulseAudio of Debian 12 on the private session bus, holding card 3."""
    from testbench import pulse
    if not pulse.available():
        pytest.skip("pulseaudio is not installed (make setup installs it)")
    server = pulse.PulseAudio(env, CARD, tmp_path / "pulseaudio.log").start()
    try:
        wait_for(lambda: server.check_alive() or reservation_owner(session_bus.address)
                 == pulse.APPLICATION_NAME, 30, "PulseAudio to reserve the card")
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("bus", ["session", "system"])
def test_pulseaudio_keeps_its_card_from_auto_attach_and_hands_it_over_on_attach_and_back(
        netns, make_bus, session_bus, jack_server, tmp_path, card, env, pulseaudio, bus):
    """Against the real PulseAudio: auto-attach (reserve = "ask") leaves the card to the desktop
    and says so; `attach` asks with a priority PulseAudio gives in to, gets the card through
    ReserveDevice1 and bridges it; detach hands it back and PulseAudio takes it again. A
    system instance asks the session's reservation, on the session bus it was given."""
    from testbench.pulse import APPLICATION_NAME
    if bus == "system":
        system = make_bus("system", policy_dirs=[REPO_DBUS])
        env = system.env(env, CARDBRIDGE_SESSION_BUS_ADDRESS=session_bus.address)
    with daemon(tmp_path, env, jack_server.name, popen=netns.popen, bus=bus,
                config='auto_attach = "usb"\n') as address:
        netns.injector.plug(SCARLETT, CARD)
        wait_for(lambda: state(address)[0] == "waiting-for-device", 20, "held")
        assert APPLICATION_NAME in prop(address, SCARLETT_PATH, "StateReason")
        assert not service_workers(address)
        call(address, "Attach", "sa{sv}", SCARLETT_ID, "0")
        wait_for(lambda: prop(address, SCARLETT_PATH, "State") == "running", 60, "bridged")
        assert reservation_owner(session_bus.address) == "cardbridge"
        pulseaudio.check_alive()
        call(address, "Detach", "s", SCARLETT_ID)
        wait_for(lambda: reservation_owner(session_bus.address) == APPLICATION_NAME, 30,
                 "PulseAudio to take its card back")
    pulseaudio.check_alive()


def test_a_plain_jackd_on_the_card_is_recognised_and_the_card_looked_at_again_when_it_stops(
        netns, tmp_path, card, env, monkeypatch):
    """A real jackd with its ALSA driver on card 3 (the virtual card behind hw:3): cardbridge
    knows it from the aliases of JACK's system ports, never auto-attaches the card, holds an
    attached bridge without opening the card, and bridges it once that JACK server is gone."""
    from testbench.jackserver import JackServer

    class AlsaJack(JackServer):
        def command(self):
            return ["jackd", "-n", self.name, "--no-realtime", "-d", "alsa", "-d", f"hw:{CARD}",
                    "-r", "48000", "-p", "256", "-n", "2"]

    monkeypatch.setenv("ALSA_CONFIG_PATH", env["ALSA_CONFIG_PATH"])
    monkeypatch.setenv("JACK_NO_AUDIO_RESERVATION", "1")
    jackd = AlsaJack(log_path=tmp_path / "jackd-alsa.log").start()
    try:
        with daemon(tmp_path, env, jackd.name, popen=netns.popen,
                    config='auto_attach = "usb"\n') as address:
            wait_for(lambda: prop(address, MGR, "JackRunning", MIFACE) is True, 20, "JACK")
            plug_jacks_card_and_attach_it(address, netns.injector)
            wait_for(lambda: state(address) == ("waiting-for-device", "in use by JACK (the JACK "
                                                "server runs on this card)"), 20, "held")
            time.sleep(2.0)
            assert not service_workers(address), "the card JACK runs on is never opened"
            jackd.stop()
            wait_for(lambda: prop(address, SCARLETT_PATH, "State") == "waiting-for-jack", 30,
                     "the bridge to be started once JACK let the card go")
            dummy = JackServer(name=jackd.name, log_path=tmp_path / "jackd-dummy.log").start()
            try:
                wait_for(lambda: prop(address, SCARLETT_PATH, "State") == "running", 60,
                         "the bridge on the dummy server")
            finally:
                dummy.stop()
    finally:
        jackd.stop()


def test_a_busy_card_is_held_not_retried_and_looked_at_again_on_replug(
        netns, jack_server, tmp_path, card, env):
    """A card some program has open (EBUSY; JACK's own card when nothing else told us): the
    bridge is held with the reason instead of failing and retrying every few seconds, and looks
    again when the card is plugged in again."""
    card.set_busy(True)
    with daemon(tmp_path, env, jack_server.name, popen=netns.popen,
                config='auto_attach = "usb"\n') as address:
        netns.injector.plug(SCARLETT, CARD)
        wait_for(lambda: state(address) == ("waiting-for-device", "in use by JACK (the card is "
                                            "busy while the JACK server runs)"), 30, "held")
        wait_for(lambda: not service_workers(address), 10, "the worker to be stopped")
        restarts = prop(address, SCARLETT_PATH, "Restarts")
        time.sleep(3.0)
        assert not service_workers(address) and prop(address, SCARLETT_PATH, "Restarts") \
            == restarts, "a busy card is not retried in a loop"
        card.set_busy(False)
        card.unplug()
        netns.injector.unplug(SCARLETT, CARD)
        card.replug()
        netns.injector.plug(SCARLETT, CARD)
        wait_for(lambda: prop(address, SCARLETT_PATH, "State") == "running", 60, "running")


def test_jackdbus_on_the_card_is_recognised_from_its_driver(
        netns, jackdbus, tmp_path, card, env, monkeypatch):
    """qjackctl's way: jackdbus runs JACK with the ALSA driver on card 3."""
    monkeypatch.setenv("ALSA_CONFIG_PATH", env["ALSA_CONFIG_PATH"])
    monkeypatch.setenv("JACK_NO_AUDIO_RESERVATION", "1")
    jackdbus.stop()                          # again, with the virtual card in its environment
    jackdbus.start()
    jackdbus.control("ds", "alsa", "dps", "device", f"hw:{CARD}", "dps", "rate", "48000",
                     "dps", "period", "256", "dps", "nperiods", "2")
    with daemon(tmp_path, env, jackdbus.name, popen=netns.popen,
                config='auto_attach = "usb"\n') as address:
        jackdbus.start_server()
        wait_for(lambda: prop(address, MGR, "JackRunning", MIFACE) is True, 30, "JACK")
        plug_jacks_card_and_attach_it(address, netns.injector)
        wait_for(lambda: state(address) == ("waiting-for-device", "in use by JACK (the JACK "
                                            "server runs on this card)"), 20, "held")
        assert not service_workers(address)
        jackdbus.stop_server()
        wait_for(lambda: prop(address, SCARLETT_PATH, "State") == "waiting-for-jack", 30,
                 "the bridge to be started once JACK let the card go")


@pytest.mark.parametrize("policy", ["never", "take"])
def test_reserve_policy_never_and_take(netns, session_bus, jack_server, tmp_path, card, env,
                                       policy):
    desktop = Holder(session_bus.address, CARD, 0, "PulseAudio Sound Server") \
        if policy == "take" else None
    try:
        with daemon(tmp_path, env, jack_server.name, popen=netns.popen,
                    config=f'auto_attach = "usb"\nreserve = "{policy}"\n') as address:
            netns.injector.plug(SCARLETT, CARD)
            wait_for(lambda: prop(address, SCARLETT_PATH, "State") == "running", 60, "bridged")
            owner = reservation_owner(session_bus.address)
            assert owner == (None if policy == "never" else "cardbridge"), owner
    finally:
        if desktop is not None:
            desktop.close()


def test_the_reservation_follows_the_card_number_on_every_plug(
        netns, session_bus, jack_server, tmp_path, card, env):
    other = create_card(VirtualCard("card4", shm=str(tmp_path / "card4.vcard"), ppm=-30.0))
    try:
        with daemon(tmp_path, env, jack_server.name, popen=netns.popen,
                    config='auto_attach = "usb"\n') as address:
            netns.injector.plug(SCARLETT, CARD)
            wait_for(lambda: prop(address, SCARLETT_PATH, "State") == "running", 60, "bridged")
            assert reservation_owner(session_bus.address, CARD) == "cardbridge"
            card.unplug()
            netns.injector.unplug(SCARLETT, CARD)
            wait_for(lambda: reservation_owner(session_bus.address, CARD) is None, 20,
                     "Audio3 released on unplug")
            netns.injector.plug(SCARLETT, 4)            # back, as card 4
            wait_for(lambda: prop(address, SCARLETT_PATH, "State") == "running", 60, "again")
            assert reservation_owner(session_bus.address, 4) == "cardbridge"
            assert reservation_owner(session_bus.address, CARD) is None
            call(address, "Detach", "s", SCARLETT_ID)
            wait_for(lambda: reservation_owner(session_bus.address, 4) is None, 20, "released")
    finally:
        other.close()


def _my_workers(device_id: str) -> list[int]:
    """PIDs of bridge workers of `device_id` that are children of this (test) process."""
    out = subprocess.run(["pgrep", "-P", str(os.getpid()), "-f",
                          f"cardbridge.engine.worker.*{device_id}"], capture_output=True,
                         text=True).stdout
    return [int(pid) for pid in out.split()]


def test_a_remembered_card_present_at_start_up_is_bridged_once(tmp_path, monkeypatch):
    """System bus (no session bus to wait for), a remembered card present at start-up: the
    hotplug enumeration and the restore loop both created its bridge, the second replacing the
    first in the service's view while its worker ran on untracked. The service runs in this
    process here; only what udev's enumeration returns is given (this machine's /sys has no
    such card), everything else is real."""
    import asyncio
    import signal

    from cardbridge.hotplug import HotplugMonitor
    from cardbridge.manager import Manager

    props = SCARLETT.card_properties("change", CARD, True)
    monkeypatch.setattr(HotplugMonitor, "_enumerate_present",
                        lambda self: self._card_ready(dict(props)))
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    (state_dir / "state.json").write_text(json.dumps({"version": 1,
                                                      "bridges": {SCARLETT_ID: {}}}))
    (tmp_path / "config.toml").write_text('auto_attach = "usb"\n')

    async def scenario():
        manager = Manager(str(tmp_path / "config.toml"), str(state_dir), f"cb-none-{os.getpid()}",
                          hotplug=True, session_bus_address="")
        await manager.start()
        await asyncio.sleep(1.5)
        found = (sorted(manager.bridges), _my_workers(SCARLETT_ID))
        await manager.stop()
        return found

    bridges, workers = asyncio.run(scenario())
    strays = _my_workers(SCARLETT_ID)
    for pid in strays:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert bridges == [SCARLETT_ID]
    assert len(workers) == 1, f"{len(workers)} workers for one bridge"
    assert not strays, "a worker outlived the service's stop"
