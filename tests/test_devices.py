"""Unit tests of the stable id and name rules (cardbridge.devices); pure, run in the test process.

Property sets are written the way udev (usb_id, path_id, hwdb, 78-sound-card.rules) fills them
for real USB and PCI cards.
"""

from __future__ import annotations

import pytest

from cardbridge import names
from cardbridge.devices import (Device, DeviceRegistry, device_from_udev, parse_stream_channels,
                                pretty_name, stable_id)

SCARLETT = {
    "ACTION": "change", "SUBSYSTEM": "sound", "SOUND_INITIALIZED": "1",
    "DEVPATH": "/devices/pci0000:00/0000:00:14.0/usb1/1-1/1-1:1.0/sound/card2",
    "ID_BUS": "usb", "ID_VENDOR": "Focusrite", "ID_VENDOR_ENC": "Focusrite", "ID_VENDOR_ID": "1235",
    "ID_MODEL": "Scarlett_2i2_USB", "ID_MODEL_ENC": "Scarlett\\x202i2\\x20USB", "ID_MODEL_ID": "8006",
    "ID_SERIAL": "Focusrite_Scarlett_2i2_USB_Y8ABC", "ID_SERIAL_SHORT": "Y8ABC",
    "ID_USB_INTERFACE_NUM": "00", "ID_USB_DRIVER": "snd-usb-audio", "ID_TYPE": "audio",
    "ID_PATH": "pci-0000:00:14.0-usb-0:1:1.0", "ID_PATH_TAG": "pci-0000_00_14_0-usb-0_1_1_0",
    "ID_ID": "usb-Focusrite_Scarlett_2i2_USB_Y8ABC-00",
    "ID_VENDOR_FROM_DATABASE": "Focusrite-Novation", "ID_MODEL_FROM_DATABASE": "Scarlett 2i2 Camera",
}


def mic(port: str, card: int) -> dict:
    """A serial-less USB mic (C-Media CM108 style) in USB port `port`, ALSA card `card`."""
    return {
        "ACTION": "change", "SUBSYSTEM": "sound", "SOUND_INITIALIZED": "1",
        "DEVPATH": f"/devices/pci0000:00/0000:00:14.0/usb1/1-{port}/1-{port}:1.0/sound/card{card}",
        "ID_BUS": "usb", "ID_VENDOR": "C-Media_Electronics_Inc.", "ID_VENDOR_ID": "0d8c",
        "ID_MODEL": "USB_PnP_Sound_Device", "ID_MODEL_ENC": "USB\\x20PnP\\x20Sound\\x20Device",
        "ID_MODEL_ID": "0014", "ID_SERIAL": "C-Media_Electronics_Inc._USB_PnP_Sound_Device",
        "ID_USB_INTERFACE_NUM": "00", "ID_TYPE": "audio",
        "ID_PATH": f"pci-0000:00:14.0-usb-0:{port}:1.0",
        "ID_MODEL_FROM_DATABASE": "Audio Adapter",
    }


ONBOARD = {
    "ACTION": "change", "SUBSYSTEM": "sound", "SOUND_INITIALIZED": "1",
    "DEVPATH": "/devices/pci0000:00/0000:00:1f.3/sound/card0",
    "ID_PATH": "pci-0000:00:1f.3", "ID_PATH_TAG": "pci-0000_00_1f_3",
    "ID_VENDOR_FROM_DATABASE": "Intel Corporation",
    "ID_MODEL_FROM_DATABASE": "Cannon Lake PCH cAVS", "SOUND_FORM_FACTOR": "internal",
}


def test_serial_device_gets_udev_by_id_style_id_and_product_name(tmp_path):
    dev = device_from_udev(SCARLETT, proc_root=str(tmp_path))
    assert dev.id == "usb-Focusrite_Scarlett_2i2_USB_Y8ABC-00"
    assert dev.name == "Scarlett 2i2 USB"
    assert dev.client_name == "Scarlett 2i2 USB"
    assert dev.bus == "usb" and dev.card_index == 2
    assert dev.card_id is None and dev.pcm == "hw:CARD=2,DEV=0"
    assert dev.capture_channels is None and dev.playback_channels is None


def test_serial_id_does_not_depend_on_port():
    moved = dict(SCARLETT, ID_PATH="pci-0000:00:14.0-usb-0:4:1.0",
                 DEVPATH="/devices/pci0000:00/0000:00:14.0/usb1/1-4/1-4:1.0/sound/card5")
    assert stable_id(moved) == stable_id(SCARLETT)


def test_serialless_twins_get_port_ids_independent_of_card_number(tmp_path):
    a, b = device_from_udev(mic("2", 1), str(tmp_path)), device_from_udev(mic("3", 2), str(tmp_path))
    assert a.id == "usb-0d8c_0014-pci-0000_00_14.0-usb-0_2_1.0"
    assert b.id == "usb-0d8c_0014-pci-0000_00_14.0-usb-0_3_1.0"
    # plugged the other way round: card numbers swap, ids stay with the ports
    assert device_from_udev(mic("2", 2), str(tmp_path)).id == a.id
    assert device_from_udev(mic("3", 1), str(tmp_path)).id == b.id
    assert a.port_label == "port 2" and b.port_label == "port 3"
    assert a.name == b.name == "USB PnP Sound Device"


def test_onboard_card_uses_path_and_database_model(tmp_path):
    dev = device_from_udev(ONBOARD, str(tmp_path))
    assert dev.id == "pci-0000_00_1f.3"
    assert dev.bus == "pci"
    assert dev.name == "Cannon Lake PCH cAVS"


@pytest.mark.parametrize("props,expected", [
    ({"ID_MODEL": "0014", "ID_MODEL_ID": "0014", "ID_MODEL_FROM_DATABASE": "CM108 Audio Controller"},
     "CM108 Audio Controller"),
    ({"ID_MODEL": "Blue_Yeti"}, "Blue Yeti"),
    ({"ID_VENDOR": "Behringer", "SOUND_FORM_FACTOR": "microphone"}, "Behringer microphone"),
    ({"DEVPATH": "/devices/virtual/sound/card7"}, "Sound card 7"),
    ({}, "Sound card"),
])
def test_pretty_name_fallbacks(props, expected):
    assert pretty_name(props) == expected


def test_non_card_events_are_not_devices():
    for devpath in ("/devices/pci0000:00/0000:00:1f.3/sound/card0/pcmC0D0p",
                    "/devices/pci0000:00/0000:00:1f.3/sound/card0/controlC0", ""):
        assert device_from_udev(dict(ONBOARD, DEVPATH=devpath)) is None
    assert device_from_udev(dict(ONBOARD, SUBSYSTEM="usb")) is None


def test_device_without_any_path_still_gets_a_stable_id(tmp_path):
    dev = device_from_udev({"SUBSYSTEM": "sound", "DEVPATH": "/devices/platform/snd_dummy.0/sound/card3"},
                           str(tmp_path))
    assert dev.id == "platform-snd_dummy.0"
    assert dev.bus == "platform"


def test_card_id_and_channels_come_from_proc_when_present(tmp_path):
    card = tmp_path / "card2"
    card.mkdir()
    (card / "id").write_text("USB\n")
    (card / "stream0").write_text(STREAM0)
    dev = device_from_udev(SCARLETT, str(tmp_path))
    assert dev.card_id == "USB" and dev.pcm == "hw:CARD=USB,DEV=0"
    assert (dev.capture_channels, dev.playback_channels) == (2, 2)


STREAM0 = """Focusrite Scarlett 2i2 USB at usb-0000:00:14.0-1, high speed : USB Audio

Playback:
  Status: Stop
  Interface 1
    Altset 1
    Format: S32_LE
    Channels: 2
    Endpoint: 0x01 (1 OUT) (ASYNC)
    Rates: 44100, 48000, 88200, 96000

Capture:
  Status: Stop
  Interface 2
    Altset 1
    Format: S32_LE
    Channels: 2
    Endpoint: 0x82 (2 IN) (ASYNC)
    Rates: 44100, 48000, 88200, 96000
"""


def test_stream0_parsing_capture_only_and_widest_altset():
    text = "Mic at usb-0000:00:14.0-2, full speed : USB Audio\n\nCapture:\n  Status: Stop\n" \
           "  Interface 1\n    Altset 1\n    Channels: 1\n  Interface 1\n    Altset 2\n    Channels: 2\n"
    assert parse_stream_channels(text) == (2, 0)
    assert parse_stream_channels("garbage\nChannels: x\n") == (0, 0)


def test_info_leaves_out_unknown_values(tmp_path):
    dev = device_from_udev(SCARLETT, str(tmp_path))
    info = dev.info()
    assert info["id"] == dev.id and info["card"] == 2 and info["present"] is True
    assert "alsa_name" not in info and "capture_channels" not in info
    assert all(v is not None for v in info.values())


# ------------------------------------------------------------------ registry


def test_registry_disambiguates_identical_models_by_port_and_keeps_names_on_replug(tmp_path):
    reg = DeviceRegistry()
    a = reg.upsert(device_from_udev(mic("2", 1), str(tmp_path)))
    b = reg.upsert(device_from_udev(mic("3", 2), str(tmp_path)))
    assert a.client_name == "USB PnP Sound Device"
    assert b.client_name == "USB PnP Sound Device (port 3)"
    reg.mark_absent(a.id)
    reg.mark_absent(b.id)
    assert not reg.get(a.id).present and reg.get(a.id).card_index is None
    # replugged in the opposite order, card numbers swapped
    b2 = reg.upsert(device_from_udev(mic("3", 1), str(tmp_path)))
    a2 = reg.upsert(device_from_udev(mic("2", 2), str(tmp_path)))
    assert (a2.id, a2.client_name) == (a.id, "USB PnP Sound Device")
    assert (b2.id, b2.client_name) == (b.id, "USB PnP Sound Device (port 3)")
    assert reg.find_by_card(index=1) is b2 and reg.find_by_card(index=2) is a2


def test_registry_seeded_names_survive_a_restart_in_any_plug_order(tmp_path):
    first = DeviceRegistry()
    first.upsert(device_from_udev(mic("2", 1), str(tmp_path)))
    first.upsert(device_from_udev(mic("3", 2), str(tmp_path)))
    remembered = first.names()
    again = DeviceRegistry(known_names=remembered)
    b = again.upsert(device_from_udev(mic("3", 1), str(tmp_path)))
    a = again.upsert(device_from_udev(mic("2", 2), str(tmp_path)))
    assert a.client_name == "USB PnP Sound Device"
    assert b.client_name == "USB PnP Sound Device (port 3)"


def test_config_override_wins_and_is_escaped(tmp_path):
    reg = DeviceRegistry(overrides={"usb-Focusrite_Scarlett_2i2_USB_Y8ABC-00": "Scarlett: main"})
    dev = reg.upsert(device_from_udev(SCARLETT, str(tmp_path)))
    assert dev.client_name == names.jack_client_name("Scarlett: main") == "Scarlett_ main"
    reg.set_override(dev.id, None)
    assert reg.get(dev.id).client_name == "Scarlett 2i2 USB"


def test_new_card_on_a_card_number_marks_its_previous_holder_absent(tmp_path):
    reg = DeviceRegistry()
    a = reg.upsert(device_from_udev(mic("2", 1), str(tmp_path)))
    reg.upsert(device_from_udev(dict(SCARLETT, DEVPATH=SCARLETT["DEVPATH"].replace("card2", "card1")),
                                str(tmp_path)))
    assert not reg.get(a.id).present
    assert [d.id for d in reg.present()] == ["usb-Focusrite_Scarlett_2i2_USB_Y8ABC-00"]


def test_twins_sharing_one_serial_fall_back_to_port_ids(tmp_path):
    def twin(port, card):
        return dict(SCARLETT, ID_PATH=f"pci-0000:00:14.0-usb-0:{port}:1.0",
                    DEVPATH=f"/devices/pci0000:00/0000:00:14.0/usb1/1-{port}/1-{port}:1.0/sound/card{card}")
    reg = DeviceRegistry()
    a = reg.upsert(device_from_udev(twin("1", 2), str(tmp_path)))
    b = reg.upsert(device_from_udev(twin("4", 3), str(tmp_path)))
    assert a.id == "usb-Focusrite_Scarlett_2i2_USB_Y8ABC-00"
    assert b.id == "usb-1235_8006-pci-0000_00_14.0-usb-0_4_1.0"
    assert b.client_name == "Scarlett 2i2 USB (port 4)"
    # the same device back in the same port (its removal missed) keeps its id
    again = reg.upsert(device_from_udev(twin("1", 5), str(tmp_path)))
    assert again.id == a.id and again.card_index == 5


def test_declared_config_device_round_trip():
    reg = DeviceRegistry()
    dev = reg.upsert(Device(id="fcm", name="Drifting card", client_name="Drifting card", bus="config",
                            card_index=None, card_id=None, pcm="fcm", declared=True))
    assert dev.info() == {"id": "fcm", "name": "Drifting card", "client_name": "Drifting card",
                          "bus": "config", "present": True, "declared": True}
