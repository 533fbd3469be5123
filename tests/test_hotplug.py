"""Hotplug tests (cardbridge.hotplug); run in the test process.

First the event rules on their own (HotplugMonitor.handle_event, no netlink); then the real
thing: a child process in its own network namespace (`unshare -n`, so nothing reaches the
host) runs the real HotplugMonitor on an asyncio loop while real libudev-format netlink
events are injected with cardbridge.sandbox.udevinject.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from cardbridge.hotplug import HotplugMonitor, RateLimitedLog


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
