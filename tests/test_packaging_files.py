"""The files in dbus/, systemd/ and debian/: units that systemd accepts, the policy enforced by a
real system-like dbus-daemon against the real service, activation files that match, one service
user everywhere, the package's version that of the code.

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

import cardbridge

from testbench.vcard import VirtualCard

from service_helpers import BUS, MGR, MIFACE, wait_for
from systemd_helpers import settings

REPO = Path(__file__).resolve().parent.parent
UNITS = {"cardbridge.service": "--session", "cardbridged.service": "--system"}
ACTIVATION = {"services": "--session", "system-services": "--system"}


def unit_text(unit: str) -> str:
    return (REPO / "systemd" / f"{unit}.in").read_text()


@pytest.mark.parametrize("unit", UNITS)
def test_unit_verifies_and_is_a_notify_service_with_a_watchdog(unit, tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "cardbridged").symlink_to("/bin/true")
    text = unit_text(unit)
    (tmp_path / unit).write_text(text.replace("@BINDIR@", str(bindir)))
    out = subprocess.run(["systemd-analyze", "verify", "--man=no", str(tmp_path / unit)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    keys = settings(text)
    assert keys["Type"] == ["notify"] and keys["BusName"] == [BUS]
    assert keys["Restart"] == ["on-failure"] and keys["WatchdogSec"]
    assert keys["ExecStart"] == [f"@BINDIR@/cardbridged {UNITS[unit]}"]
    for forbidden in ("RestrictRealtime", "MemoryDenyWriteExecute"):
        assert forbidden not in keys, forbidden


def test_only_the_system_unit_raises_real_time_limits():
    """A user's systemd cannot raise its own hard limits (the unit would fail with 205/LIMITS):
    the user unit takes what PAM gave the user (limits.d for group audio)."""
    system, user = settings(unit_text("cardbridged.service")), settings(unit_text("cardbridge.service"))
    assert system["LimitRTPRIO"] and system["LimitMEMLOCK"] == ["infinity"]
    assert not [key for key in user if key.startswith("Limit")]
    assert user["ConditionGroup"] == ["audio"]


def test_activation_files_name_the_service():
    for kind, flag in ACTIVATION.items():
        cp = configparser.ConfigParser()
        cp.read(REPO / "dbus" / kind / "org.cardbridge.CardBridge1.service.in")
        section = cp["D-BUS Service"]
        assert section["Name"] == BUS
        assert section["Exec"] == f"@BINDIR@/cardbridged {flag}"
        unit = next(u for u, f in UNITS.items() if f == flag)
        assert section["SystemdService"] == unit


def test_the_service_user_is_the_same_everywhere():
    """The system unit's user, the system activation file's user, the user sysusers.d creates
    (in group audio), the owner of the tmpfiles.d state directory and the group the D-Bus
    policy lets own the name agree; the service never runs as root."""
    unit = settings(unit_text("cardbridged.service"))
    [user] = unit["User"]
    assert user != "root"
    groups = unit["SupplementaryGroups"][0].split()
    assert "audio" in groups
    cp = configparser.ConfigParser()
    cp.read(REPO / "dbus" / "system-services" / "org.cardbridge.CardBridge1.service.in")
    assert cp["D-BUS Service"]["User"] == user
    sysusers = [line.split() for line in (REPO / "systemd" / "cardbridge.sysusers").read_text()
                .splitlines() if line.strip() and not line.startswith("#")]
    assert ["u", user] == sysusers[0][:2]          # creates the user and its group
    assert ["m", user, "audio"] in sysusers
    tmpfiles = [line.split() for line in (REPO / "systemd" / "cardbridge.tmpfiles").read_text()
                .splitlines() if line.strip() and not line.startswith("#")]
    assert ["d", "/var/lib/cardbridge", "0750", user, user] == tmpfiles[0][:5]
    assert unit["StateDirectory"] == ["cardbridge"]
    root = ET.parse(REPO / "dbus" / "org.cardbridge.CardBridge1.conf").getroot()
    owners = {(p.get("user"), p.get("group")) for p in root.findall("policy")
              if any(a.get("own") == BUS for a in p.findall("allow"))}
    assert owners == {("root", None), (None, user)}
    assert user in groups      # a drop-in with User=<the JACK user> keeps the right to own it


def test_debian_changelog_names_the_version_of_the_code():
    first = (REPO / "debian" / "changelog").read_text().splitlines()[0]
    assert first.startswith(f"cardbridge ({cardbridge.__version__}) "), first


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
