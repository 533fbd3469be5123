"""Pure rules of living beside the rest of the system: JACK client names in bytes, the state file
that cannot be read, what a state file may say, bounded memories, the cross-instance card lock.

Runs in the test process; the lock test starts a second real process holding the lock.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cardbridge import names
from cardbridge.cardlock import CardLocks
from cardbridge.config import check_bridge_options
from cardbridge.connections import MAX_PEERS_PER_PORT, ConnectionKeeper, parse_memory
from cardbridge.devices import Device, DeviceRegistry
from cardbridge.errors import InvalidArgument
from cardbridge.jacklink import JackLink
from cardbridge.jackwatch import alsa_device_of_alias
from cardbridge.manager import alsa_card_of, clean_state
from cardbridge.store import StateStore

CJK_40 = "音" * 40          # 120 bytes of UTF-8


def test_client_names_are_cut_to_63_bytes_of_whole_characters():
    name = names.jack_client_name(CJK_40)
    assert len(name.encode()) <= names.JACK_CLIENT_NAME_MAX
    assert name == "音" * 21                                    # 63 bytes, no broken character
    suffixed = names.with_suffix(CJK_40, " (port 2)")
    assert suffixed.endswith(" (port 2)") and len(suffixed.encode()) <= 63


@pytest.mark.parametrize("bad", [CJK_40, "x" * 64, "system", "cardbridge", " system "])
def test_names_jack_would_refuse_or_that_are_taken_by_jack_are_invalid(bad):
    with pytest.raises(InvalidArgument):
        check_bridge_options({"name": bad}, "Attach")


def test_a_name_of_63_bytes_is_fine():
    assert check_bridge_options({"name": "音" * 21}, "Attach") == {"name": "音" * 21}


def test_a_card_that_calls_itself_system_gets_another_client_name():
    registry = DeviceRegistry()
    dev = registry.upsert(Device(id="usb-x", name="system", client_name="system", bus="usb",
                                 card_index=3, card_id="X", pcm="hw:CARD=X,DEV=0",
                                 port_label="port 2"))
    assert dev.client_name not in names.RESERVED_CLIENT_NAMES


def test_an_unreadable_state_file_is_kept_aside_not_overwritten(tmp_path):
    (tmp_path / "state.json").mkdir()                            # EISDIR on read
    (tmp_path / "state.json" / "inside").write_text("precious")
    store = StateStore(tmp_path)
    store.load()
    store.save()
    aside = list(tmp_path.glob("state.json.corrupt-*"))
    assert len(aside) == 1 and (aside[0] / "inside").read_text() == "precious"
    assert json.loads((tmp_path / "state.json").read_text())["bridges"] == {}


def test_a_state_file_that_is_not_utf8_is_kept_aside(tmp_path):
    (tmp_path / "state.json").write_bytes(b'{"bridges": {"\xff": {}}}')
    store = StateStore(tmp_path)
    store.load()
    assert store.problem and [p.read_bytes() for p in tmp_path.glob("state.json.corrupt-*")] \
        == [b'{"bridges": {"\xff": {}}}']


def test_restored_options_are_checked_like_attach_options():
    data = {"bridges": {"a": {"period": "huge", "quality": "superb", "name": "system",
                              "periods": 3, "colour": "red"},
                        "b": "not a table", "c": {"capture": 0, "playback": 0}},
            "names": {"a": "ok", "b": "x" * 100, "c": "system"},
            "auto_attach": {"a": "yes", "b": False}, "jack_cards": {}, "seen": {"a": "then"}}
    clean_state(data)
    assert data["bridges"] == {"a": {"periods": 3}, "c": {}}
    assert data["names"] == {"a": "ok"}
    assert data["auto_attach"] == {"b": False} and data["seen"] == {}


def test_remembered_peers_per_port_are_bounded_oldest_first():
    keeper = ConnectionKeeper(None, dict, lambda memory: None, link=JackLink(None))
    for i in range(MAX_PEERS_PER_PORT + 10):
        keeper._remember("dev", "capture_1", f"peer{i}:in")
    peers = keeper.connections("dev")["capture_1"]
    assert len(peers) == MAX_PEERS_PER_PORT and "peer0:in" not in peers and "peer41:in" in peers
    stored = parse_memory({"dev": {"capture_1": [f"p{i}:x" for i in range(100)]}})
    assert len(stored["dev"]["capture_1"]) == MAX_PEERS_PER_PORT


def test_alsa_device_names_and_jack_port_aliases():
    assert [alsa_card_of(d) for d in ("hw:USB", "hw:2,0", "hw:CARD=USB,DEV=0", "plughw:1",
                                      "default")] == ["USB", "2", "USB", "1", None]
    assert alsa_device_of_alias("alsa_pcm:hw:USB:out1") == "hw:USB"
    assert alsa_device_of_alias("alsa_pcm:hw:2,0:in12") == "hw:2,0"
    assert alsa_device_of_alias("system:capture_1") is None


HOLDER = """
import sys, time
from cardbridge.cardlock import CardLocks
locks = CardLocks(sys.argv[1])
print("held" if locks.acquire(int(sys.argv[2])) else "busy", flush=True)
sys.stdin.read()
"""


def test_a_card_lock_keeps_other_instances_off_until_its_holder_lets_go_or_dies(tmp_path):
    other = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path), "3"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    try:
        assert other.stdout.readline().strip() == "held"
        mine = CardLocks(str(tmp_path))
        assert mine.acquire(3) is False and mine.acquire(4) is True
        other.kill()                        # a crash: no cleanup, the kernel drops the lock
        other.wait(10)
        assert mine.acquire(3) is True
        mine.release(3)
        os.chmod(tmp_path / "cardbridge-Audio3.lock", 0o600)   # made by another user
        assert CardLocks(str(tmp_path)).acquire(3) is True
    finally:
        if other.poll() is None:
            other.kill()
            other.wait()
