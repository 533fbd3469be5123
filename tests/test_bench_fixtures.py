"""The test bench itself, against the real components; runs in the test process.

Each fixture of conftest.py does its job: a real client connects to the JACK dummy server and
sees a buffer-size change; a crashed server's registry slot and /dev/shm files are freed by
name and a new server starts; jackdbus starts and stops its server through `jack_control`, as
`busctl … IsStarted` observes; the system-like bus really enforces a policy against an
unprivileged caller; libudev-format events reach an unmodified pyudev monitor inside a network
namespace and nothing reaches the host.
"""

import json
import os
import select
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from testbench import jackserver, procs
from testbench.jackserver import JackServer, server_answers, server_slots
from testbench.procs import SandboxError
from testbench.udevinject import (CARDS, NETLINK_KOBJECT_UEVENT, UDEV_GROUP,
                                           UdevInjector, build_message)

pytestmark = pytest.mark.timeout(120)

CHILD_ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))


class LineReader:
    """Lines of a child's stdout, read with a deadline (never a fixed sleep)."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.buf = b""

    def until(self, predicate, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while True:
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                text = line.decode(errors="replace").strip()
                if predicate(text):
                    return text
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise AssertionError("child gave no expected line in time")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError("child closed its output")
            self.buf += chunk


def stop_child(proc: subprocess.Popen) -> None:
    if proc.stdin:
        proc.stdin.close()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout:
        proc.stdout.close()


# ---------------------------------------------------------------------------------------------
# JACK

JACK_CLIENT = textwrap.dedent("""
    import sys, jack
    client = jack.Client("cbbench-probe", no_start_server=True, servername=sys.argv[1])
    @client.set_blocksize_callback
    def blocksize(frames):
        print("blocksize", frames, flush=True)
    client.activate()
    print("ready", client.samplerate, client.blocksize, flush=True)
    sys.stdin.read()
    client.deactivate()
    client.close()
""")


def jack_client(server: JackServer) -> tuple[subprocess.Popen, LineReader]:
    proc = subprocess.Popen([sys.executable, "-c", JACK_CLIENT, server.name], env=server.env(),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    return proc, LineReader(proc)


def test_a_client_connects_and_sees_a_buffer_size_change(jack_server):
    assert server_answers(jack_server.name)
    slot = [s for s in server_slots() if s.name == jack_server.name]
    assert slot and slot[0].pid == jack_server.pid and slot[0].alive

    proc, lines = jack_client(jack_server)
    try:
        assert lines.until(lambda l: l.startswith("ready")) == "ready 48000 256"
        ports = procs.run_tool(["jack_lsp", "-s", jack_server.name],
                               env=jack_server.env()).stdout.split()
        assert "system:playback_1" in ports
        jack_server.set_buffer_size(512)
        assert lines.until(lambda l: l.startswith("blocksize") and l != "blocksize 256") \
            == "blocksize 512"
    finally:
        stop_child(proc)
    assert proc.returncode == 0


def shm_files_of(name: str) -> list[str]:
    return [f for f in os.listdir("/dev/shm") if f"_{name}_" in f]


def segments_of(pid: int) -> list[str]:
    reg = jackserver._Registry(writable=False)
    try:
        return [reg.segment(i)[2] for i in range(reg.entries) if reg.segment(i)[0] == pid]
    finally:
        reg.close()


def test_a_crashed_server_is_cleaned_up_by_name_and_a_new_one_starts(tmp_path):
    crashed = JackServer(log_path=tmp_path / "crashed.log").start()
    pid = crashed.pid
    try:
        assert segments_of(pid), "a running server owns shm segments"
        crashed.kill9()
        leaked = [s for s in server_slots() if s.name == crashed.name]
        assert leaked and not leaked[0].alive, "SIGKILL leaves the slot behind (like a crash)"
        assert shm_files_of(crashed.name)
    finally:
        crashed.stop()
    assert not [s for s in server_slots() if s.name == crashed.name]
    assert not shm_files_of(crashed.name)
    assert not segments_of(pid)
    assert all(not os.path.exists(f"/dev/shm/{seg.lstrip('/')}") for seg in segments_of(pid))

    with JackServer(log_path=tmp_path / "next.log") as fresh:
        assert server_answers(fresh.name)
    assert not [s for s in server_slots() if s.name == fresh.name]


def test_cleanup_refuses_to_touch_a_live_server(jack_server):
    with pytest.raises(SandboxError):
        jackserver.free_server_leftovers(jack_server.name, (jack_server.pid,))
    # Without our PID it must still leave a live server's slot alone.
    assert jackserver.free_server_leftovers(jack_server.name) == []
    assert server_answers(jack_server.name)


def test_slot_report_is_one_line():
    report = jackserver.slot_report()
    assert report.startswith("JACK server slots: ") and "\n" not in report
    assert 0 <= jackserver.slots_in_use() <= jackserver.MAX_SERVERS


# ---------------------------------------------------------------------------------------------
# jackdbus


def is_started_via_busctl(jackdbus) -> str:
    return procs.run_tool(["busctl", f"--address={jackdbus.address}", "call",
                           "org.jackaudio.service", "/org/jackaudio/Controller",
                           "org.jackaudio.JackControl", "IsStarted"]).stdout.strip()


def test_jackdbus_starts_and_stops_its_server_through_jack_control(jackdbus):
    assert is_started_via_busctl(jackdbus) == "b false"
    assert not jackdbus.is_started()

    jackdbus.start_server()
    assert is_started_via_busctl(jackdbus) == "b true"
    assert jackdbus.is_started()
    assert procs.run_tool(["jack_bufsize"], env=jackdbus.env()).stdout.strip() == "256"
    assert [s for s in server_slots() if s.name == jackdbus.name and s.pid == jackdbus.pid]

    jackdbus.set_buffer_size(512)
    assert procs.run_tool(["jack_bufsize"], env=jackdbus.env()).stdout.strip() == "512"

    jackdbus.stop_server()
    assert is_started_via_busctl(jackdbus) == "b false"
    assert not server_answers(jackdbus.name)
    assert jackdbus.log_path.exists(), "jackdbus uses the private HOME"


# ---------------------------------------------------------------------------------------------
# D-Bus


def test_session_bus_listens_on_a_socket_file_reachable_from_another_namespace(session_bus,
                                                                               netns):
    assert session_bus.address.startswith("unix:path=")
    assert session_bus.socket_path.is_socket()
    done = netns.run(["busctl", f"--address={session_bus.address}", "call",
                      "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                      "GetId"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr


POLICY = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <policy user="root">
    <allow own="org.cardbridge.BenchTest1"/>
    <allow send_destination="org.cardbridge.BenchTest1"/>
  </policy>
  <policy group="audio">
    <allow send_destination="org.cardbridge.BenchTest1" send_interface="org.cardbridge.BenchTest1"
           send_member="Write"/>
  </policy>
  <policy context="default">
    <allow send_destination="org.cardbridge.BenchTest1" send_interface="org.cardbridge.BenchTest1"
           send_member="Read"/>
  </policy>
</busconfig>
"""

BENCH_SERVICE = textwrap.dedent("""
    import asyncio, sys
    from cardbridge.dbuslib import MessageBus, ServiceInterface, method

    class Bench(ServiceInterface):
        def __init__(self):
            super().__init__("org.cardbridge.BenchTest1")

        @method()
        def Read(self) -> "s":
            return "read"

        @method()
        def Write(self, value: "s") -> "s":
            return "wrote " + value

    async def main(address):
        bus = await MessageBus(bus_address=address).connect()
        bus.export("/org/cardbridge/BenchTest1", Bench())
        await bus.request_name("org.cardbridge.BenchTest1")
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        bus.disconnect()

    asyncio.run(main(sys.argv[1]))
""")


def call_as(bus, who: list[str], member: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*who, "busctl", f"--address={bus.address}", "call",
                           "org.cardbridge.BenchTest1", "/org/cardbridge/BenchTest1",
                           "org.cardbridge.BenchTest1", member, *args],
                          capture_output=True, text=True, timeout=30)


NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
NOBODY_IN_AUDIO = ["setpriv", "--reuid=65534", "--regid=65534", "--groups=29"]


def test_system_bus_enforces_policy_against_unprivileged_callers(make_bus, tmp_path):
    policy_dir = tmp_path / "policy"
    policy_dir.mkdir()
    (policy_dir / "org.cardbridge.BenchTest1.conf").write_text(POLICY)
    bus = make_bus("system", policy_dirs=[policy_dir])
    assert bus.socket_path.is_socket() and bus.env()["DBUS_SYSTEM_BUS_ADDRESS"] == bus.address

    service = subprocess.Popen([sys.executable, "-c", BENCH_SERVICE, bus.address],
                               env=CHILD_ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        LineReader(service).until(lambda l: l == "ready")
        denied = call_as(bus, NOBODY, "Write", "s", "x")
        assert denied.returncode != 0 and "denied" in denied.stderr.lower(), denied.stderr
        allowed_read = call_as(bus, NOBODY, "Read")
        assert allowed_read.returncode == 0 and allowed_read.stdout.strip() == 's "read"'
        audio = call_as(bus, NOBODY_IN_AUDIO, "Write", "s", "x")
        assert audio.returncode == 0 and audio.stdout.strip() == 's "wrote x"', audio.stderr
        root = call_as(bus, [], "Write", "s", "y")
        assert root.returncode == 0, root.stderr
    finally:
        stop_child(service)


def test_system_bus_fixture_starts_with_the_project_policy(system_bus):
    text = system_bus.config_path.read_text()
    assert "<type>system</type>" in text and '<deny own="*"/>' in text
    done = procs.run_tool(["busctl", f"--address={system_bus.address}", "call",
                           "org.freedesktop.DBus", "/org/freedesktop/DBus",
                           "org.freedesktop.DBus", "ListNames"])
    assert "org.freedesktop.DBus" in done.stdout


# ---------------------------------------------------------------------------------------------
# udev

MONITOR = textwrap.dedent("""
    import json, sys, pyudev
    monitor = pyudev.Monitor.from_netlink(pyudev.Context())
    monitor.filter_by("sound")
    monitor.start()
    print("ready", flush=True)
    while True:
        device = monitor.poll(timeout=60)
        if device is None:
            break
        print(json.dumps(dict(device.properties)), flush=True)
""")


def host_udev_listener() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_KOBJECT_UEVENT)
    sock.bind((0, 1 << (UDEV_GROUP - 1)))
    sock.setblocking(False)
    return sock


def drain(sock: socket.socket) -> list[bytes]:
    got = []
    while True:
        try:
            got.append(sock.recv(65536))
        except BlockingIOError:
            return got


def normalised(props: dict) -> dict:
    """libudev keeps tags in a set: their order in TAGS/CURRENT_TAGS is not preserved."""
    out = dict(props)
    for key in ("TAGS", "CURRENT_TAGS"):
        if key in out:
            out[key] = sorted(t for t in out[key].split(":") if t)
    return out


def test_udev_events_reach_pyudev_inside_the_namespace_only(netns):
    host = host_udev_listener()
    monitor = netns.popen([sys.executable, "-c", MONITOR], env=CHILD_ENV,
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    try:
        lines = LineReader(monitor)
        lines.until(lambda l: l == "ready")
        inj = netns.injector
        other = inj.send("add", "/devices/pci0000:00/0000:00:14.0/usb1/1-3", "usb",
                         {"ID_VENDOR_ID": "1235"}, devtype="usb_device")
        plugged = inj.plug("scarlett-2i2", 7)
        unplugged = inj.unplug("scarlett-2i2", 7)
        sent = plugged + unplugged
        received = [json.loads(lines.until(lambda l: l.startswith("{"))) for _ in sent]
        for want, got in zip(sent, received):
            assert normalised(got) == normalised(want)   # every property, in every event
        assert [e["ACTION"] for e in received] == ["add", "add", "change", "remove", "remove"]
        card = received[2]
        scarlett = CARDS["scarlett-2i2"]
        assert card["SOUND_INITIALIZED"] == "1" and "SOUND_INITIALIZED" not in received[0]
        assert card["DEVPATH"] == scarlett.devpath(7)
        for key in ("ID_VENDOR_ID", "ID_MODEL_ID", "ID_VENDOR", "ID_MODEL", "ID_SERIAL",
                    "ID_SERIAL_SHORT", "ID_PATH", "ID_PATH_TAG", "ID_BUS", "ID_ID"):
            assert card[key] == scarlett.properties[key]
        assert other["SEQNUM"] not in {e["SEQNUM"] for e in received}, "usb event filtered out"
    finally:
        monitor.kill()
        monitor.wait()
        monitor.stdout.close()
    leaked = [m for m in drain(host) if b"card7" in m or other["DEVPATH"].encode() in m]
    host.close()
    assert leaked == [], "injected events must not reach the host namespace"


def test_namespace_has_only_loopback(netns):
    done = netns.run(["ip", "-o", "link"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0
    assert [line.split(":")[1].strip() for line in done.stdout.splitlines()] == ["lo"]


def test_injector_refuses_the_host_namespace_and_bad_events(netns):
    with pytest.raises(SandboxError, match="host"):
        UdevInjector()
    with pytest.raises(ValueError, match="DEVPATH"):
        netns.injector.send_properties({"ACTION": "add", "SUBSYSTEM": "sound", "SEQNUM": "5"})
    with pytest.raises(ValueError, match="SEQNUM 0"):
        netns.injector.send("add", "/devices/x/sound/card1", "sound", seqnum=0)


def test_message_layout_matches_libudev():
    msg = build_message({"ACTION": "add", "DEVPATH": "/d/sound/card1", "SUBSYSTEM": "sound",
                         "SEQNUM": "1", "TAGS": ":seat:"})
    assert msg[:8] == b"libudev\0" and msg[8:12] == bytes.fromhex("feedcafe")
    header_size = int.from_bytes(msg[12:16], sys.byteorder)
    offset = int.from_bytes(msg[16:20], sys.byteorder)
    length = int.from_bytes(msg[20:24], sys.byteorder)
    assert header_size == offset == 40 and len(msg) == offset + length
    assert msg[28:32] == bytes(4), "no DEVTYPE: zero devtype hash"
    assert msg[32:40] != bytes(8), "a tag sets bloom bits"
    assert msg[offset:].split(b"\0")[:-1] == [b"ACTION=add", b"DEVPATH=/d/sound/card1",
                                              b"SUBSYSTEM=sound", b"SEQNUM=1", b"TAGS=:seat:"]
