"""Hotplug tests (cardbridge.hotplug); run in the test process.

First the event rules on their own (HotplugMonitor.handle_event, no netlink); then the real
thing: a child process in its own network namespace (`unshare -n`, so nothing reaches the
host) runs the real HotplugMonitor on an asyncio loop while real libudev-format netlink
events are injected with testbench.udevinject.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import select
import subprocess
import sys
import time

import pytest

from cardbridge.devices import device_from_udev
from cardbridge.hotplug import HotplugMonitor, RateLimitedLog
from testbench.udevinject import CARDS, NetNamespace, UdevInjector, build_message


def mic(port: str, card: int, action: str = "change", initialized: bool = True) -> dict:
    props = {
        "ACTION": action, "SUBSYSTEM": "sound", "SEQNUM": "1",
        "DEVPATH": f"/devices/pci0000:00/0000:00:14.0/usb1/1-{port}/1-{port}:1.0/sound/card{card}",
        "ID_BUS": "usb", "ID_VENDOR_ID": "0d8c", "ID_MODEL_ID": "0014",
        "ID_MODEL": "USB_PnP_Sound_Device", "ID_PATH": f"pci-0000:00:14.0-usb-0:{port}:1.0",
    }
    if initialized:
        props["SOUND_INITIALIZED"] = "1"
    return props


class Recorder:
    def __init__(self):
        self.events: list[tuple] = []

    def added(self, dev):
        self.events.append(("added", dev.id, dev.card_index))

    def removed(self, device_id):
        self.events.append(("removed", device_id))


@pytest.fixture
def monitor(tmp_path):
    rec = Recorder()
    loop = asyncio.new_event_loop()
    mon = HotplugMonitor(loop, rec.added, rec.removed, proc_root=str(tmp_path))
    mon.recorder = rec
    yield mon
    loop.close()


PORT2 = "usb-0d8c_0014-pci-0000_00_14.0-usb-0_2_1.0"
PORT3 = "usb-0d8c_0014-pci-0000_00_14.0-usb-0_3_1.0"


def test_card_ready_only_on_initialized_event_and_announced_once(monitor):
    monitor.handle_event(mic("2", 1, action="add", initialized=False))
    assert monitor.recorder.events == []
    monitor.handle_event(mic("2", 1))
    monitor.handle_event(mic("2", 1))             # udev re-trigger: nothing new
    assert monitor.recorder.events == [("added", PORT2, 1)]
    monitor.handle_event(mic("2", 1, action="remove", initialized=False))
    monitor.handle_event(mic("2", 1, action="remove", initialized=False))
    assert monitor.recorder.events == [("added", PORT2, 1), ("removed", PORT2)]
    assert monitor.present() == []


def test_children_of_a_card_are_skipped_quietly(monitor, caplog):
    child = dict(mic("2", 1), DEVPATH=mic("2", 1)["DEVPATH"] + "/pcmC1D0c")
    with caplog.at_level(logging.WARNING, logger="cardbridge.hotplug"):
        monitor.handle_event(child)
        monitor.handle_event(dict(child, DEVPATH=child["DEVPATH"].replace("pcmC1D0c", "controlC1")))
    assert monitor.recorder.events == [] and caplog.records == []


def test_missed_removal_is_reported_before_the_new_card(monitor):
    monitor.handle_event(mic("2", 1))
    monitor.handle_event(mic("3", 1))             # card1 now holds another device
    monitor.handle_event(mic("3", 4))             # and that device moved to card4 unannounced
    assert monitor.recorder.events == [
        ("added", PORT2, 1), ("removed", PORT2), ("added", PORT3, 1),
        ("removed", PORT3), ("added", PORT3, 4)]
    assert [d.id for d in monitor.present()] == [PORT3]


@pytest.mark.parametrize("bad", [
    {"ACTION": "change", "SUBSYSTEM": "sound", "SOUND_INITIALIZED": "1"},                  # no DEVPATH
    {"ACTION": "change", "SUBSYSTEM": "usb", "DEVPATH": "/devices/usb1/1-2/sound/card1"},  # subsystem
    {"ACTION": "change", "SUBSYSTEM": "sound", "DEVPATH": "/devices/x/sound/cardX",
     "SOUND_INITIALIZED": "1"},                                                            # no number
    {"SUBSYSTEM": "sound", "DEVPATH": "/devices/x/sound/card1"},                          # no ACTION
])
def test_malformed_events_are_ignored_with_one_log_line(monitor, caplog, bad):
    with caplog.at_level(logging.WARNING, logger="cardbridge.hotplug"):
        monitor.handle_event(bad)
    assert monitor.recorder.events == []
    assert len(caplog.records) == 1 and "ignoring malformed udev event" in caplog.records[0].getMessage()
    assert "\n" not in caplog.records[0].getMessage()


def test_malformed_event_log_is_rate_limited():
    now = [0.0]
    logger = logging.getLogger("test.ratelimit")
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    logger.addHandler(Keep())
    logger.propagate = False
    limited = RateLimitedLog(logger, burst=10, window=10.0, clock=lambda: now[0])
    for _ in range(100):
        limited.warning("bad event")
    assert len(records) == 10
    now[0] = 11.0
    limited.warning("bad event")
    assert records[10] == "90 more malformed udev events ignored" and len(records) == 12


def test_listener_errors_do_not_break_the_monitor(tmp_path, caplog):
    calls = []

    def broken(dev):
        calls.append(dev.id)
        raise RuntimeError("listener bug")

    loop = asyncio.new_event_loop()
    try:
        mon = HotplugMonitor(loop, broken, lambda i: calls.append(i), proc_root=str(tmp_path))
        with caplog.at_level(logging.ERROR, logger="cardbridge.hotplug"):
            mon.handle_event(mic("2", 1))
            mon.handle_event(mic("2", 1, action="remove"))
        assert calls == [PORT2, PORT2]
    finally:
        loop.close()


# ------------------------------------------------------------------ real netlink events in a netns

MONITOR_PROCESS = r"""
import asyncio, json, logging, sys
from cardbridge.devices import DeviceRegistry
from cardbridge.hotplug import HotplugMonitor

logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(levelname)s %(message)s")

def emit(*fields):
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()

async def main():
    loop = asyncio.get_running_loop()
    registry = DeviceRegistry()
    done = asyncio.Event()

    def added(dev):
        dev = registry.upsert(dev)
        emit("added", dev.id, dev.client_name, dev.card_index)

    def removed(device_id):
        registry.mark_absent(device_id)
        emit("removed", device_id)

    monitor = HotplugMonitor(loop, added, removed, proc_root="/nonexistent")
    monitor.start()

    def command():
        line = sys.stdin.readline().strip()
        if line == "state":
            emit("state", [d.id for d in monitor.present()], [d.id for d in registry.present()],
                 monitor.events_seen)
        else:
            done.set()

    loop.add_reader(sys.stdin.fileno(), command)
    emit("ready")
    await done.wait()
    monitor.stop()

asyncio.run(main())
"""


class MonitorProcess:
    """The real HotplugMonitor in a child process inside the namespace; reports JSON lines."""

    def __init__(self, netns):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        self.proc = netns.popen([sys.executable, "-c", MONITOR_PROCESS], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        self._buf = b""
        self.log: str | None = None
        self.pending: list = []               # events read while waiting for a state answer
        assert self.next(30) == ["ready"]

    def next(self, timeout: float = 20.0):
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            assert left > 0 and select.select([fd], [], [], left)[0], "monitor process said nothing"
            chunk = os.read(fd, 65536)
            assert chunk, "monitor process died: " + self.proc.stderr.read().decode(errors="replace")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def events(self, count: int, timeout: float = 20.0) -> list:
        return [self.next(timeout) for _ in range(count)]

    def state(self):
        self.proc.stdin.write(b"state\n")
        self.proc.stdin.flush()
        while True:
            line = self.next()
            if line[0] == "state":
                return line
            self.pending.append(line)

    def stop(self) -> str:
        """Ends the process (idempotent); returns its stderr (the log)."""
        if self.log is None:
            if not self.proc.stdin.closed:
                self.proc.stdin.close()         # the child's cue to stop its monitor and exit
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.log = self.proc.stderr.read().decode(errors="replace")
            self.proc.stdout.close()
            self.proc.stderr.close()
        return self.log


requires_root = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces and udev netlink need root")


@pytest.fixture
def bench():
    with NetNamespace() as netns, UdevInjector(netns) as injector:
        child = MonitorProcess(netns)
        try:
            yield injector, child
        finally:
            child.stop()


SCARLETT_ID = "usb-Focusrite_Scarlett_2i2_USB_Y8ABC-00"
MIC1_ID = "usb-0d8c_0014-pci-0000_00_14.0-usb-0_1_1.0"
MIC2_ID = "usb-0d8c_0014-pci-0000_00_14.0-usb-0_2_1.0"
MIC = "USB PnP Sound Device"
HDMI_ID = "pci-10de_10f0-pci-0000_01_00.1"


@requires_root
def test_real_events_plug_and_unplug(bench):
    injector, child = bench
    injector.plug("scarlett-2i2", 1)
    assert child.next() == ["added", SCARLETT_ID, "Scarlett 2i2 USB", 1]
    injector.unplug("scarlett-2i2", 1)
    assert child.next() == ["removed", SCARLETT_ID]
    assert child.state()[1:3] == [[], []]


@requires_root
def test_real_events_identical_mics_replugged_in_opposite_order(bench):
    injector, child = bench
    injector.plug("usb-mic-port1", 1)
    injector.plug("usb-mic-port2", 2)
    assert child.events(2) == [["added", MIC1_ID, MIC, 1], ["added", MIC2_ID, f"{MIC} (port 2)", 2]]
    injector.unplug("usb-mic-port1", 1)
    injector.unplug("usb-mic-port2", 2)
    assert child.events(2) == [["removed", MIC1_ID], ["removed", MIC2_ID]]
    injector.plug("usb-mic-port2", 1)           # other way round: card numbers swap
    injector.plug("usb-mic-port1", 2)
    assert child.events(2) == [["added", MIC2_ID, f"{MIC} (port 2)", 1], ["added", MIC1_ID, MIC, 2]]


@requires_root
def test_real_event_storm_leaves_a_consistent_view(bench):
    injector, child = bench
    models = [("usb-mic-port1", 1), ("usb-mic-port2", 2), ("scarlett-2i2", 3), ("webcam-c920", 4)]
    plugged: set[str] = set()
    sent = 0
    start = time.monotonic()
    step = 0
    while sent < 100:                            # 100 events paced over about 2 s
        key, card = models[step % len(models)]
        events = injector.unplug(key, card) if key in plugged else injector.plug(key, card)
        plugged.symmetric_difference_update({key})
        sent += len(events)
        step += 1
        time.sleep(max(0.0, start + 0.02 * sent - time.monotonic()))
    # netlink keeps order: once a card plugged after the storm is announced, all of it was seen
    injector.plug("hdmi-pci", 7)
    history = []
    while not history or history[-1][:2] != ["added", HDMI_ID]:
        history.append(child.next())
    state = child.state()
    expected = sorted([HDMI_ID] + [device_from_udev(CARDS[k].card_properties("change", c, True)).id
                                   for k, c in models if k in plugged])
    assert state[1] == expected and state[2] == expected
    assert len(history) > 30                     # the storm really came through as transitions
    # transitions only: per device, added and removed alternate, starting with added
    last: dict[str, str] = {}
    for kind, device_id, *_ in history:
        assert last.get(device_id, "removed") != kind, (device_id, kind)
        last[device_id] = kind


@requires_root
def test_real_malformed_events_are_ignored(bench):
    injector, child = bench
    injector.sock.sendto(b"\x00garbage\xff" * 20, (0, 2))                     # not libudev at all
    injector.send("add", "/devices/virtual/misc/foo", "misc", {"X": "1"})      # another subsystem
    injector.send("change", "/devices/x/sound/cardX", "sound", {"SOUND_INITIALIZED": "1"})
    bad_utf8 = build_message({"ACTION": "change", "DEVPATH": "/devices/y/sound/card9",
                              "SUBSYSTEM": "sound", "SEQNUM": str(injector.next_seqnum()),
                              "SOUND_INITIALIZED": "1", "ID_MODEL": "@@@@"})
    injector.sock.sendto(bad_utf8.replace(b"@@@@", b"\xff\xfe\xfd\xfc"), (0, 2))
    injector.plug("scarlett-2i2", 1)
    assert child.next() == ["added", SCARLETT_ID, "Scarlett 2i2 USB", 1]
    log = child.stop()
    malformed = [line for line in log.splitlines() if "ignoring malformed udev event" in line]
    assert len(malformed) == 2, log             # cardX and the undecodable one; libudev's
    assert "'cardX' is not a card number" in malformed[0]   # socket filter drops the others
    assert "undecodable" in malformed[1]
    assert "Traceback" not in log
