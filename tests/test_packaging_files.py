"""The files in dbus/ and systemd/: units that systemd accepts, the policy enforced by a real
system-like dbus-daemon against the real service, activation files that match.

Runs in the pytest process; the service runs as root on the private system-like bus, callers
are real `busctl` processes started with `setpriv` as nobody (with or without group audio).
"""

from __future__ import annotations

import configparser
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from testbench.vcard import VirtualCard

from service_helpers import BUS, MGR, MIFACE, wait_for

REPO = Path(__file__).resolve().parent.parent
UNITS = ("cardbridge.service", "cardbridged.service")


@pytest.mark.parametrize("unit", UNITS)
def test_unit_verifies_and_allows_real_time(unit, tmp_path):
    text = (REPO / "systemd" / unit).read_text()
    # verify needs the binary to exist: check the unit as written, pointing at a real one
    (tmp_path / unit).write_text(text.replace("/usr/bin/cardbridged", "/bin/true"))
    out = subprocess.run(["systemd-analyze", "verify", str(tmp_path / unit)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for needed in ("Type=dbus", "BusName=org.cardbridge.CardBridge1", "Restart=on-failure",
                   "LimitRTPRIO=", "LimitMEMLOCK=infinity"):
        assert needed in text, needed
    active = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    for forbidden in ("RestrictRealtime=", "MemoryDenyWriteExecute="):
        assert not any(line.startswith(forbidden) for line in active), forbidden


def test_activation_files_name_the_service():
    for kind, flag in (("services", "--session"), ("system-services", "--system")):
        cp = configparser.ConfigParser()
        cp.read(REPO / "dbus" / kind / "org.cardbridge.CardBridge1.service")
        section = cp["D-BUS Service"]
        assert section["Name"] == BUS
        assert section["Exec"].endswith(flag)


def test_policy_file_parses():
    root = ET.parse(REPO / "dbus" / "org.cardbridge.CardBridge1.conf").getroot()
    assert root.tag == "busconfig"


def as_nobody(address: str, *args: str, groups: str | None = None) -> subprocess.CompletedProcess:
    prefix = ["setpriv", "--reuid=65534", "--regid=65534"]
    prefix += [f"--groups={groups}"] if groups else ["--clear-groups"]
    return subprocess.run([*prefix, "busctl", f"--address={address}", *args],
                          capture_output=True, text=True, timeout=30)


def test_system_bus_policy_is_enforced_on_the_real_service(system_bus, jack_server,
                                                           virtual_cards, tmp_path):
    cards = virtual_cards(VirtualCard("vcp", ppm=10.0))
    (tmp_path / "config.toml").write_text('auto_attach = "none"\n[devices.vcp]\npcm = "vcp"\n')
    env = cards.env(system_bus.env())
    log = open(tmp_path / "daemon.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "cardbridge.daemon", "--system", "--config",
                             str(tmp_path / "config.toml"), "--state-dir", str(tmp_path / "state"),
                             "--jack-server", jack_server.name, "--no-hotplug"],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    address = system_bus.address
    try:
        wait_for(lambda: subprocess.run(["busctl", f"--address={address}", "status", BUS],
                                        capture_output=True).returncode == 0, 30, "the service")
        # everyone may read
        out = as_nobody(address, "call", BUS, MGR, MIFACE, "ListDevices")
        assert out.returncode == 0, out.stderr
        out = as_nobody(address, "get-property", BUS, MGR, MIFACE, "Version")
        assert out.returncode == 0, out.stderr
        out = as_nobody(address, "introspect", BUS, MGR)
        assert out.returncode == 0, out.stderr
        # nobody may not change anything
        for args in (("Attach", "sa{sv}", "vcp", "0"), ("Detach", "s", "vcp"), ("Reload",),
                     ("SetAutoAttach", "sb", "vcp", "true")):
            out = as_nobody(address, "call", BUS, MGR, MIFACE, *args)
            assert out.returncode != 0 and ("Access denied" in out.stderr or "AccessDenied" in out.stderr), \
                (args, out.stderr)
        # group audio may
        out = as_nobody(address, "call", BUS, MGR, MIFACE, "Attach", "sa{sv}", "vcp", "0", groups="29")
        assert out.returncode == 0, out.stderr
        path = out.stdout.split('"')[1]
        out = as_nobody(address, "call", BUS, path, "org.cardbridge.CardBridge1.Bridge", "Restart")
        assert "Access denied" in out.stderr or "AccessDenied" in out.stderr, out.stderr
        out = as_nobody(address, "call", BUS, path, "org.cardbridge.CardBridge1.Bridge", "Detach",
                        groups="29")
        assert out.returncode == 0, out.stderr
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
