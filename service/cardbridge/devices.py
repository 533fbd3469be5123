"""Sound cards as stable devices: identity and names from udev properties, and the registry.

Pure code of the main asyncio process (no I/O except reading a few small /proc/asound files when
they exist). Everything works from udev properties alone, because inside a test namespace /sys
has nothing to say.

Stable id scheme (`stable_id()`; the same string ListDevices shows and Attach accepts):

* A device with a real serial number (`ID_SERIAL_SHORT` set) gets the id udev itself uses for
  `/dev/snd/by-id` and `ID_ID`: ``<ID_BUS>-<ID_SERIAL>-<ID_USB_INTERFACE_NUM>``, e.g.
  ``usb-Focusrite_Scarlett_2i2_USB_Y8ABC-00``. It follows the device to any port.
* A device without a serial (cheap USB mics, onboard cards) is identified by the physical port
  it sits in plus what it is: ``<bus>-<vendor id>_<product id>-<ID_PATH>`` with ':' made '_',
  e.g. ``usb-0d8c_0014-pci-0000_00_14.0-usb-0_2_1.0``. Two identical devices in two ports get
  two ids, whatever order they were plugged in; moving one to another port makes it a new
  device (which is the only identity such hardware has).
* Without ID_PATH the parent device path of DEVPATH stands in for the port
  (``platform-snd_aloop.0``); vendor/product ids are left out when unknown, and the bus is not
  repeated when the path starts with it (onboard ``pci-0000_00_1f.3``).
  `ID_SERIAL` alone (without ID_SERIAL_SHORT) is only "Vendor_Model" and never identifies.

Names: `name` is the model as the device reports it (ID_MODEL_ENC, else ID_MODEL with '_' as
spaces, unless that is only the hex product id), else ID_MODEL_FROM_DATABASE, else the vendor
with the form factor, else the ALSA card id. `client_name` starts as the escaped `name`;
`DeviceRegistry.upsert` makes it unique: a device whose name is already taken by another known
device gets its port (or serial) appended, "USB PnP Sound Device (port 2)". Names are sticky:
once given, an id keeps its client name for the registry's lifetime (also while absent), and a
registry seeded with remembered names (`DeviceRegistry(known_names=...)`) keeps them across
service restarts. Per-device names from the config (`overrides`) win over everything.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from . import names

PROC_ASOUND = "/proc/asound"

_CARD_SYSNAME = re.compile(r"^card(\d+)$")
_HEX_ID = re.compile(r"^[0-9a-fA-F]{4}$")
_USB_PORT = re.compile(r"-usb-\d+:([0-9.]+)")          # ID_PATH "...-usb-0:1.4:1.0" → "1.4"
_USB_IFACE_IN_DEVPATH = re.compile(r"/(\d+)-([0-9.]+):\d+\.\d+/sound/card\d+$")
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9._+\-]")
_ENC_ESCAPE = re.compile(r"\\x([0-9a-fA-F]{2})")


@dataclass
class Device:
    id: str                    # stable id (module docstring)
    name: str                  # human name, e.g. "Scarlett 2i2 USB"
    client_name: str           # default JACK client name, unique and stable after upsert()
    bus: str                   # "usb", "pci", "platform", "config", ...
    card_index: int | None     # current ALSA card number, None when absent
    card_id: str | None        # current ALSA card id, e.g. "Mic_1"
    pcm: str                   # what the engine opens
    capture_channels: int | None = None
    playback_channels: int | None = None
    present: bool = True
    declared: bool = False     # declared in the config file
    # Extra facts (not needed by most callers):
    devpath: str | None = None          # udev DEVPATH of the card while present
    path: str | None = None             # udev ID_PATH (physical port), when known
    port_label: str | None = None       # "port 2", "port 1.4": what disambiguates the name
    serial: str | None = None           # ID_SERIAL_SHORT, when the device has one
    port_id: str | None = None          # the port-based id, used if a serial turns out shared

    def info(self) -> dict:
        """ListDevices entry. Keys whose value is unknown are left out (a{sv} has no None)."""
        out = {
            "id": self.id,
            "name": self.name,
            "client_name": self.client_name,
            "bus": self.bus,
            "present": self.present,
            "declared": self.declared,
        }
        optional = {
            "card": self.card_index if self.present else None,
            "alsa_name": self.card_id if self.present else None,
            "capture_channels": self.capture_channels,
            "playback_channels": self.playback_channels,
            "path": self.path,
        }
        out.update({k: v for k, v in optional.items() if v is not None})
        return out


# ---------------------------------------------------------------------------------------------
# From udev properties


def card_index_from_devpath(devpath: str | None) -> int | None:
    """`/devices/.../sound/card2` → 2; None for anything that is not a card device."""
    if not devpath:
        return None
    match = _CARD_SYSNAME.match(devpath.rstrip("/").rsplit("/", 1)[-1])
    return int(match.group(1)) if match else None


def _clean(value: str | None) -> str:
    return " ".join((value or "").split())


def _decode_enc(value: str | None) -> str:
    """udev's *_ENC values escape unsafe bytes as \\xNN."""
    if not value:
        return ""
    raw = _ENC_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), value)
    return _clean(raw)


def _id_part(value: str) -> str:
    return _ID_UNSAFE.sub("_", value.replace(":", "_").replace("/", "-")).strip("_-")


def bus_of(props: Mapping[str, str]) -> str:
    bus = props.get("ID_BUS", "")
    id_path = props.get("ID_PATH", "")
    devpath = props.get("DEVPATH", "")
    if bus:
        return bus
    if "-usb-" in id_path or id_path.startswith("usb-") or "/usb" in devpath:
        return "usb"
    if id_path:
        return id_path.split("-", 1)[0] or "unknown"
    for marker, name in (("/devices/pci", "pci"), ("/devices/platform/", "platform"),
                         ("/devices/virtual/", "virtual")):
        if devpath.startswith(marker):
            return name
    return "unknown"


def port_label(props: Mapping[str, str]) -> str | None:
    """A short human label of the physical port: "port 2", "port 1.4" (USB), else the path."""
    id_path = props.get("ID_PATH", "")
    match = _USB_PORT.search(id_path)
    if match:
        return f"port {match.group(1)}"
    match = _USB_IFACE_IN_DEVPATH.search(props.get("DEVPATH", ""))
    if match:
        return f"port {match.group(2)}"
    if id_path:
        return id_path
    parent = _parent_of_card(props.get("DEVPATH", ""))
    return parent or None


def _parent_of_card(devpath: str) -> str:
    """`/devices/platform/snd_aloop.0/sound/card1` → "platform-snd_aloop.0"."""
    path = re.sub(r"/sound/card\d+/?$", "", devpath or "")
    path = path.removeprefix("/devices/")
    return _id_part(path) if path else ""


def has_real_serial(props: Mapping[str, str]) -> bool:
    return bool(props.get("ID_SERIAL_SHORT", "").strip()) and bool(props.get("ID_SERIAL", "").strip())


def port_based_id(props: Mapping[str, str]) -> str:
    bus = bus_of(props)
    vendor, product = (props.get(key, "").lower().removeprefix("0x")       # PCI: "0x10de"
                       for key in ("ID_VENDOR_ID", "ID_MODEL_ID"))
    what = f"{vendor}_{product}" if vendor and product else ""
    where = _id_part(props.get("ID_PATH", "")) or _parent_of_card(props.get("DEVPATH", ""))
    parts = [p for p in (_id_part(what), where) if p]
    if not parts:
        # Nothing physical to go by: the best we have is the ALSA card id (or index).
        parts.append(_id_part(props.get("ID_ALSA_CARD_ID", "") or props.get("SOUND_CARD_ID", ""))
                     or f"card{card_index_from_devpath(props.get('DEVPATH')) or 0}")
    if not parts[0].startswith(bus + "-"):
        parts.insert(0, bus)            # "pci-0000_00_1f.3" already says its bus
    return "-".join(parts)


def stable_id(props: Mapping[str, str]) -> str:
    if has_real_serial(props):
        bus = bus_of(props)
        serial = _id_part(props["ID_SERIAL"])
        iface = props.get("ID_USB_INTERFACE_NUM", "")
        return f"{bus}-{serial}-{_id_part(iface)}" if iface else f"{bus}-{serial}"
    return port_based_id(props)


def pretty_name(props: Mapping[str, str], card_id: str | None = None) -> str:
    model_id = props.get("ID_MODEL_ID", "")
    model = _decode_enc(props.get("ID_MODEL_ENC")) or _clean(props.get("ID_MODEL", "").replace("_", " "))
    if model and model.lower() == model_id.lower() and _HEX_ID.match(model):
        model = ""          # usb_id's fallback when the device has no product string
    if model:
        return model
    db_model = _clean(props.get("ID_MODEL_FROM_DATABASE"))
    if db_model:
        return db_model
    vendor = (_decode_enc(props.get("ID_VENDOR_ENC")) or _clean(props.get("ID_VENDOR", "").replace("_", " "))
              or _clean(props.get("ID_VENDOR_FROM_DATABASE")))
    if vendor and _HEX_ID.match(vendor) and vendor.lower() == props.get("ID_VENDOR_ID", "").lower():
        vendor = ""
    form = _clean(props.get("SOUND_FORM_FACTOR"))
    if vendor:
        return f"{vendor} {form}" if form and form != "internal" else vendor
    if card_id:
        return card_id
    index = card_index_from_devpath(props.get("DEVPATH"))
    return f"Sound card {index}" if index is not None else "Sound card"


# ---------------------------------------------------------------------------------------------
# From /proc/asound (when it exists; not in test namespaces)


def _read_small(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read(65536)
    except OSError:
        return None


def card_id_for(props: Mapping[str, str], index: int | None, proc_root: str = PROC_ASOUND) -> str | None:
    for key in ("ID_ALSA_CARD_ID", "SOUND_CARD_ID", "CARD_ID"):
        value = props.get(key, "").strip()
        if value:
            return value
    if index is None:
        return None
    text = _read_small(os.path.join(proc_root, f"card{index}", "id"))
    value = (text or "").strip()
    return value or None


def parse_stream_channels(text: str) -> tuple[int | None, int | None]:
    """(capture, playback) channel counts from a USB card's /proc/asound/cardN/stream0.

    The widest altsetting of each direction counts; a direction the file does not list has 0.
    """
    best = {"Capture": 0, "Playback": 0}
    section = None
    for line in text.splitlines():
        head = line.strip()
        if not line.startswith((" ", "\t")) and head.rstrip(":") in best and head.endswith(":"):
            section = head.rstrip(":")
            continue
        if not line.startswith((" ", "\t")) and head:
            section = None
            continue
        if section and head.startswith("Channels:"):
            try:
                best[section] = max(best[section], int(head.split(":", 1)[1].split()[0]))
            except (ValueError, IndexError):
                continue
    return best["Capture"], best["Playback"]


def channels_for(index: int | None, proc_root: str = PROC_ASOUND) -> tuple[int | None, int | None]:
    if index is None:
        return None, None
    text = _read_small(os.path.join(proc_root, f"card{index}", "stream0"))
    if text is None:
        return None, None
    return parse_stream_channels(text)


def pcm_for(card_id: str | None, index: int | None) -> str:
    if card_id:
        return f"hw:CARD={card_id},DEV=0"
    if index is not None:
        return f"hw:CARD={index},DEV=0"
    return ""


def device_from_udev(props: Mapping[str, str], proc_root: str = PROC_ASOUND) -> Device | None:
    """A Device for a udev event/record of a sound *card* (`.../sound/cardN`), else None."""
    if props.get("SUBSYSTEM", "sound") != "sound":
        return None
    devpath = props.get("DEVPATH", "")
    index = card_index_from_devpath(devpath)
    if index is None:
        return None
    card_id = card_id_for(props, index, proc_root)
    capture, playback = channels_for(index, proc_root)
    name = pretty_name(props, card_id)
    serial = props.get("ID_SERIAL_SHORT", "").strip() or None
    return Device(
        id=stable_id(props),
        name=name,
        client_name=names.jack_client_name(name),
        bus=bus_of(props),
        card_index=index,
        card_id=card_id,
        pcm=pcm_for(card_id, index),
        capture_channels=capture,
        playback_channels=playback,
        present=True,
        devpath=devpath,
        path=props.get("ID_PATH") or None,
        port_label=port_label(props),
        serial=serial if has_real_serial(props) else None,
        port_id=port_based_id(props),
    )


def shares_id_with(new: Device, holder: Device) -> bool:
    """True if `new` is a different physical device that got the same serial-based id as the
    present `holder` (some makers give a whole batch one serial). Same port = same device (a
    replug whose removal was missed); a different port while the holder is present = a twin.
    """
    return bool(holder.present and new.port_id and new.port_id != new.id
                and new.devpath and holder.devpath and new.devpath != holder.devpath
                and holder.port_id and holder.port_id != new.port_id)


# ---------------------------------------------------------------------------------------------
# Registry


@dataclass
class DeviceRegistry:
    """Every device known in this service's lifetime, present or not; owner of client names.

    `known_names` seeds remembered client names per id (persist `names()` to keep them across
    restarts); `overrides` are per-device names from the config and always win.
    """

    known_names: Mapping[str, str] = field(default_factory=dict)
    overrides: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._devices: dict[str, Device] = {}
        self._names: dict[str, str] = dict(self.known_names)
        self.overrides = dict(self.overrides)

    # -- queries --
    def get(self, device_id: str) -> Device | None:
        return self._devices.get(device_id)

    def all(self) -> list[Device]:
        return sorted(self._devices.values(), key=lambda d: d.id)

    def present(self) -> list[Device]:
        return [d for d in self.all() if d.present]

    def find_by_card(self, index: int | None = None, card_id: str | None = None) -> Device | None:
        for dev in self._devices.values():
            if not dev.present:
                continue
            if index is not None and dev.card_index == index:
                return dev
            if card_id is not None and dev.card_id == card_id:
                return dev
        return None

    def names(self) -> dict[str, str]:
        """Client names given so far, by id (to persist)."""
        return dict(self._names)

    # -- changes --
    def set_override(self, device_id: str, name: str | None) -> Device | None:
        """Set (or clear with None) the config name of a device; returns it if known."""
        if name:
            self.overrides[device_id] = name
        else:
            self.overrides.pop(device_id, None)
        dev = self._devices.get(device_id)
        if dev is not None:
            dev.client_name = self._client_name_for(dev)
        return dev

    def upsert(self, dev: Device) -> Device:
        """Record a device (new or back); returns the stored Device with its final client name.

        A device whose serial-based id is held by another *present* card in another port (a
        serial shared by a batch of devices) falls back to its port-based id (`shares_id_with`).
        """
        holder = self._devices.get(dev.id)
        if holder is not None and shares_id_with(dev, holder):
            dev.id = dev.port_id
            holder = self._devices.get(dev.id)
        # A card number belongs to one present device: whoever had it is gone.
        if dev.card_index is not None:
            for other in self._devices.values():
                if other.present and other.id != dev.id and other.card_index == dev.card_index \
                        and not other.declared:
                    self._set_absent(other)
        if holder is None:
            dev.client_name = self._client_name_for(dev)
            self._devices[dev.id] = dev
            return dev
        holder.name = dev.name or holder.name
        holder.bus = dev.bus or holder.bus
        holder.card_index = dev.card_index
        holder.card_id = dev.card_id
        holder.pcm = dev.pcm or holder.pcm
        if dev.capture_channels is not None:
            holder.capture_channels = dev.capture_channels
        if dev.playback_channels is not None:
            holder.playback_channels = dev.playback_channels
        holder.present = dev.present
        holder.declared = holder.declared or dev.declared
        holder.devpath = dev.devpath
        holder.path = dev.path or holder.path
        holder.port_label = dev.port_label or holder.port_label
        holder.serial = dev.serial or holder.serial
        holder.port_id = dev.port_id or holder.port_id
        holder.client_name = self._client_name_for(holder)
        return holder

    def forget(self, device_id: str) -> None:
        """Drop a device and its name (no longer declared; pruned after long absence)."""
        self._devices.pop(device_id, None)
        self._names.pop(device_id, None)

    def mark_absent(self, device_id: str) -> Device | None:
        dev = self._devices.get(device_id)
        if dev is not None:
            self._set_absent(dev)
        return dev

    # -- internals --
    @staticmethod
    def _set_absent(dev: Device) -> None:
        dev.present = False
        dev.card_index = None
        dev.card_id = None
        dev.devpath = None

    def _taken(self, exclude_id: str) -> set[str]:
        taken = set(names.RESERVED_CLIENT_NAMES)
        taken.update(n for i, n in self._names.items() if i != exclude_id)
        taken.update(n for i, n in self.overrides.items() if i != exclude_id)
        return taken

    def _client_name_for(self, dev: Device) -> str:
        override = self.overrides.get(dev.id)
        if override:
            return names.jack_client_name(override)
        sticky = self._names.get(dev.id)
        if sticky:
            return sticky
        taken = self._taken(dev.id)
        base = names.jack_client_name(dev.name or dev.client_name or dev.id)
        chosen = None
        for candidate in self._candidates(base, dev):
            if candidate not in taken:
                chosen = candidate
                break
        if chosen is None:          # pathological: every qualified form is taken too
            n = 2
            while names.with_suffix(base, f" #{n}") in taken:
                n += 1
            chosen = names.with_suffix(base, f" #{n}")
        self._names[dev.id] = chosen
        return chosen

    @staticmethod
    def _candidates(base: str, dev: Device) -> Iterable[str]:
        yield base
        qualifiers = [dev.port_label, dev.serial, dev.path, dev.id]
        for qualifier in qualifiers:
            if qualifier:
                yield names.with_suffix(base, f" ({qualifier})")
