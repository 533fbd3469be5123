"""udev without udevd: libudev-format netlink events, sent inside a private network namespace.

Runs in the test process (or in any process placed inside the namespace). udevd announces
processed devices to netlink group 2 of NETLINK_KOBJECT_UEVENT with a small binary header in
front of the NUL-separated KEY=VALUE properties (systemd's `monitor_netlink_header`):

    offset  field                       byte order
    0       "libudev\\0"                 -
    8       magic 0xfeedcafe            big-endian (matched by in-kernel socket filters)
    12      header size (40)            host
    16      properties offset (40)      host
    20      properties length           host
    24      MurmurHash2(subsystem)      big-endian
    28      MurmurHash2(devtype) or 0   big-endian
    32      tag bloom, high 32 bits     big-endian
    36      tag bloom, low 32 bits      big-endian

An unmodified `pyudev.Monitor.from_netlink(pyudev.Context())` (libudev) receives these when
they come from uid 0, with every property; its `filter_by()` socket filter uses the hashes.
Netlink is per network namespace, so sending inside a private namespace (`NetNamespace`)
reaches only the processes placed in it: nothing leaks to the host. `UdevInjector` refuses to
send in the namespace of PID 1 unless told `allow_host=True`.

The `CARDS` table holds property sets of real sound cards as udev reports them for the
`sound/cardN` device, and `UdevInjector.plug()/unplug()` sends the event sequence a real plug
or unplug produces (card `add`, control device `add`, card `change` with SOUND_INITIALIZED=1;
`remove` in reverse order).
"""

from __future__ import annotations

import ctypes
import itertools
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Mapping

from .procs import SandboxError, record_started, terminate

NETLINK_KOBJECT_UEVENT = 15
UDEV_GROUP = 2
UDEV_MAGIC = 0xFEEDCAFE
HEADER = struct.Struct("=8sIIIIIIII")          # byte-order handled per field below
CLONE_NEWNET = 0x40000000
REQUIRED = ("ACTION", "DEVPATH", "SUBSYSTEM", "SEQNUM")


# ---------------------------------------------------------------------------------------------
# Message format


def murmurhash2(data: bytes, seed: int = 0) -> int:
    """32-bit MurmurHash2 (Austin Appleby), as udev uses it for the subsystem/devtype filters."""
    m, r, mask = 0x5BD1E995, 24, 0xFFFFFFFF
    length = len(data)
    h = (seed ^ length) & mask
    blocks = length // 4
    for i in range(blocks):
        k = int.from_bytes(data[4 * i:4 * i + 4], "little")
        k = (k * m) & mask
        k ^= k >> r
        k = (k * m) & mask
        h = (h * m) & mask
        h ^= k
    tail = data[4 * blocks:]
    if len(tail) == 3:
        h ^= tail[2] << 16
    if len(tail) >= 2:
        h ^= tail[1] << 8
    if tail:
        h ^= tail[0]
        h = (h * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    h ^= h >> 15
    return h


def tag_bloom(tags) -> int:
    """udev's 64-bit bloom filter of device tags (four bits per tag from its hash)."""
    bits = 0
    for tag in tags:
        h = murmurhash2(tag.encode())
        for shift in (0, 6, 12, 18):
            bits |= 1 << ((h >> shift) & 63)
    return bits


def build_message(properties: Mapping[str, str]) -> bytes:
    """The netlink datagram for one event: header + KEY=VALUE\\0… exactly as given."""
    body = b"".join(f"{k}={v}".encode() + b"\0" for k, v in properties.items())
    subsystem = properties.get("SUBSYSTEM", "")
    devtype = properties.get("DEVTYPE", "")
    tags = [t for t in properties.get("TAGS", "").split(":") if t]
    bloom = tag_bloom(tags)
    header = b"libudev\0" + struct.pack(">I", UDEV_MAGIC)
    header += struct.pack("=III", HEADER.size, HEADER.size, len(body))
    header += struct.pack(">IIII", murmurhash2(subsystem.encode()) if subsystem else 0,
                          murmurhash2(devtype.encode()) if devtype else 0,
                          bloom >> 32, bloom & 0xFFFFFFFF)
    assert len(header) == HEADER.size
    return header + body


def _check_properties(properties: Mapping[str, str]) -> None:
    for key, value in properties.items():
        if not key or "=" in key or "\0" in key or "\n" in key:
            raise ValueError(f"invalid udev property name {key!r}")
        if "\0" in str(value) or "\n" in str(value):
            raise ValueError(f"invalid value for udev property {key}")
    missing = [k for k in REQUIRED if not properties.get(k)]
    if missing:
        raise ValueError(f"udev event without {', '.join(missing)}")
    if properties["SEQNUM"] in ("0", 0):
        raise ValueError("udev event with SEQNUM 0 (libudev drops it)")


# ---------------------------------------------------------------------------------------------
# Network namespace

_HOLDER = (
    "import ctypes, os, sys\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    f"if libc.unshare({CLONE_NEWNET}) != 0:\n"
    "    sys.stdout.write('error ' + os.strerror(ctypes.get_errno()) + '\\n'); sys.exit(1)\n"
    "sys.stdout.write('ready\\n'); sys.stdout.flush()\n"
    "sys.stdin.read()\n"          # lives until its stdin closes: our stop() or our death
)


def _setns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns({path})")
    finally:
        os.close(fd)


def _netns_inode(path: str) -> int:
    return os.stat(path).st_ino


class NetNamespace:
    """A fresh network namespace held open by a tiny holder process (torn down by PID).

    `popen()`/`run()` start commands inside it (via `nsenter --net`); `socket()` creates a
    socket inside it from this process. The namespace vanishes when the holder and every
    process placed in it have exited. The holder exits by itself when its creator dies.
    """

    def __init__(self):
        self.holder: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        return self.holder.pid if self.holder is not None else None

    @property
    def path(self) -> str:
        if self.holder is None or self.holder.poll() is not None:
            raise SandboxError("network namespace is not running")
        return f"/proc/{self.holder.pid}/ns/net"

    def start(self, timeout: float = 20.0) -> "NetNamespace":
        if self.holder is not None and self.holder.poll() is None:
            return self
        self.holder = subprocess.Popen([sys.executable, "-c", _HOLDER], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                       start_new_session=True)
        record_started(self.holder, "netns-holder", "private network namespace")
        line = _readline(self.holder.stdout, timeout)
        if line != "ready":
            self.stop()
            raise SandboxError(f"cannot create a network namespace: {line or 'no answer'}")
        return self

    def wrap(self, args: list[str]) -> list[str]:
        """The command line that runs `args` inside this namespace."""
        return ["nsenter", f"--net={self.path}", "--", *args]

    def popen(self, args: list[str], **kwargs) -> subprocess.Popen:
        """Start a process inside the namespace (its PID is the command's own)."""
        return subprocess.Popen(self.wrap(list(args)), **kwargs)

    def run(self, args: list[str], **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(self.wrap(list(args)), **kwargs)

    def socket(self, family: int, type_: int, proto: int = 0) -> socket.socket:
        """A socket that lives in this namespace, created from the calling process."""
        result: dict = {}

        def make():   # setns changes only this short-lived thread's namespace
            try:
                _setns(self.path)
                result["sock"] = socket.socket(family, type_, proto)
            except OSError as exc:
                result["error"] = exc

        worker = threading.Thread(target=make, name="netns-socket")
        worker.start()
        worker.join()
        if "error" in result:
            raise SandboxError(f"cannot create a socket in the namespace: {result['error']}")
        return result["sock"]

    def stop(self, timeout: float = 10.0) -> None:
        if self.holder is None:
            return
        if self.holder.stdin is not None:
            try:
                self.holder.stdin.close()
            except OSError:
                pass
        try:
            self.holder.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        terminate(self.holder, timeout)
        if self.holder.stdout is not None:
            self.holder.stdout.close()

    def __enter__(self) -> "NetNamespace":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _readline(stream, timeout: float) -> str:
    import select
    deadline = time.monotonic() + timeout
    buf = b""
    fd = stream.fileno()
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            break
        chunk = os.read(fd, 256)
        if not chunk:
            break
        buf += chunk
    return buf.decode(errors="replace").strip()


# ---------------------------------------------------------------------------------------------
# Real cards


@dataclass(frozen=True)
class CardModel:
    """A sound card as udev describes its `sound/cardN` device (DEVPATH is `parent/sound/cardN`)."""

    key: str
    parent: str                          # sysfs path of the USB interface / PCI function
    properties: Mapping[str, str]        # what udev's rules add (ID_*, SOUND_FORM_FACTOR, …)
    alsa_id: str                         # ALSA card id the kernel gives it (/proc/asound/cardN/id)
    tags: tuple[str, ...] = ("seat",)

    def devpath(self, card: int) -> str:
        return f"{self.parent}/sound/card{card}"

    def card_properties(self, action: str, card: int, initialized: bool) -> dict:
        props = {"ACTION": action, "DEVPATH": self.devpath(card), "SUBSYSTEM": "sound"}
        props.update(self.properties)
        if initialized:
            props["SOUND_INITIALIZED"] = "1"
        if self.tags:
            props["TAGS"] = props["CURRENT_TAGS"] = ":" + ":".join(self.tags) + ":"
        return props

    def control_properties(self, action: str, card: int) -> dict:
        props = {"ACTION": action, "DEVPATH": f"{self.devpath(card)}/controlC{card}",
                 "SUBSYSTEM": "sound", "DEVNAME": f"/dev/snd/controlC{card}",
                 "MAJOR": "116", "MINOR": str(card * 32)}
        props.update({k: v for k, v in self.properties.items() if k.startswith("ID_PATH")})
        props["TAGS"] = props["CURRENT_TAGS"] = ":uaccess:seat:"
        return props


def _usb(key: str, port: str, interface: str, vendor_id: str, model_id: str, vendor: str,
         model: str, serial_short: str | None, alsa_id: str, revision: str,
         interfaces: str, vendor_db: str, model_db: str | None = None,
         form_factor: str | None = None, bus_number: int = 1) -> CardModel:
    """Property set udev builds for a USB audio card (usb_id + path_id + sound-card rules)."""
    ifnum = interface.split(".")[1].zfill(2)
    path = f"pci-0000:00:14.0-usb-0:{port}:{interface}"
    serial = f"{vendor}_{model}" + (f"_{serial_short}" if serial_short else "")
    props = {
        "ID_VENDOR": vendor, "ID_VENDOR_ID": vendor_id, "ID_MODEL": model,
        "ID_MODEL_ENC": model.replace("_", "\\x20"), "ID_MODEL_ID": model_id,
        "ID_REVISION": revision, "ID_SERIAL": serial,
        "ID_TYPE": "audio", "ID_BUS": "usb", "ID_USB_INTERFACES": interfaces,
        "ID_USB_INTERFACE_NUM": ifnum, "ID_USB_DRIVER": "snd-usb-audio",
        "ID_VENDOR_FROM_DATABASE": vendor_db,
        "ID_PATH": path, "ID_PATH_TAG": path.replace(":", "_").replace(".", "_"),
        "ID_ID": f"usb-{serial}-{ifnum}",
        "ID_FOR_SEAT": "sound-" + path.replace(":", "_").replace(".", "_"),
    }
    if vendor != vendor_id:          # a device without a vendor string has no ID_VENDOR_ENC
        props["ID_VENDOR_ENC"] = vendor.replace("_", "\\x20")
    if serial_short:
        props["ID_SERIAL_SHORT"] = serial_short
    if model_db:
        props["ID_MODEL_FROM_DATABASE"] = model_db
    if form_factor:
        props["SOUND_FORM_FACTOR"] = form_factor
    parent = (f"/devices/pci0000:00/0000:00:14.0/usb{bus_number}/{bus_number}-{port}/"
              f"{bus_number}-{port}:{interface}")
    return CardModel(key, parent, props, alsa_id)


SCARLETT_2I2 = _usb("scarlett-2i2", "3", "1.0", "1235", "8210", "Focusrite",
                    "Scarlett_2i2_USB", "Y8ABC", "USB", "0651",
                    ":010100:010200:ff0100:ff0200:fe0100:", "Focusrite-Novation",
                    "Scarlett 2i2 3rd Gen")
USB_MIC_PORT1 = _usb("usb-mic-port1", "1", "1.0", "0d8c", "0014", "C-Media_Electronics_Inc.",
                     "USB_PnP_Sound_Device", None, "Device", "0100",
                     ":010100:010200:030000:", "C-Media Electronics, Inc.",
                     "Audio Adapter (Unitek Y-247A)")
USB_MIC_PORT2 = _usb("usb-mic-port2", "2", "1.0", "0d8c", "0014", "C-Media_Electronics_Inc.",
                     "USB_PnP_Sound_Device", None, "Device_1", "0100",
                     ":010100:010200:030000:", "C-Media Electronics, Inc.",
                     "Audio Adapter (Unitek Y-247A)")
WEBCAM_C920 = _usb("webcam-c920", "4", "1.2", "046d", "082d", "046d", "HD_Pro_Webcam_C920",
                   "A1B2C3D4", "C920", "0011", ":0e0100:0e0200:010100:010200:", "Logitech, Inc.",
                   "HD Pro Webcam C920", form_factor="webcam")
HDMI_PCI = CardModel(
    "hdmi-pci", "/devices/pci0000:00/0000:00:01.0/0000:01:00.1",
    {
        "ID_BUS": "pci", "ID_VENDOR_ID": "0x10de", "ID_MODEL_ID": "0x10f0",
        "ID_PCI_CLASS_FROM_DATABASE": "Multimedia controller",
        "ID_PCI_SUBCLASS_FROM_DATABASE": "Audio device",
        "ID_VENDOR_FROM_DATABASE": "NVIDIA Corporation",
        "ID_MODEL_FROM_DATABASE": "GP104 High Definition Audio Controller",
        "ID_PATH": "pci-0000:01:00.1", "ID_PATH_TAG": "pci-0000_01_00_1",
        "ID_FOR_SEAT": "sound-pci-0000_01_00_1",
    },
    "NVidia")

CARDS: dict[str, CardModel] = {c.key: c for c in
                               (SCARLETT_2I2, USB_MIC_PORT1, USB_MIC_PORT2, WEBCAM_C920, HDMI_PCI)}


# ---------------------------------------------------------------------------------------------
# The injector


def _in_host_namespace() -> bool:
    try:
        return _netns_inode("/proc/thread-self/ns/net") == _netns_inode("/proc/1/ns/net")
    except OSError:
        return True          # cannot tell: assume the worst


class UdevInjector:
    """Sends libudev-format events to netlink group 2.

    netns: the namespace to send in (a `NetNamespace`); default: the caller's own, which must
    not be the host's (PID 1's) unless `allow_host=True`. Use as a context manager or close().
    """

    _seqnums = itertools.count(int(time.time()) % 100000 * 10 + 1)

    def __init__(self, netns: NetNamespace | None = None, allow_host: bool = False):
        if netns is not None:
            self.sock = netns.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_KOBJECT_UEVENT)
        else:
            if _in_host_namespace() and not allow_host:
                raise SandboxError("refusing to inject udev events into the host's network "
                                   "namespace; pass netns=NetNamespace()")
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW,
                                      NETLINK_KOBJECT_UEVENT)
        self.sock.bind((0, 0))
        self.sent: list[dict] = []

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "UdevInjector":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def next_seqnum(self) -> int:
        return next(self._seqnums)

    def send(self, action: str, devpath: str, subsystem: str,
             properties: Mapping[str, str] | None = None, devtype: str | None = None,
             seqnum: int | None = None) -> dict:
        """One event; ACTION, DEVPATH, SUBSYSTEM, DEVTYPE, SEQNUM first, then `properties`.

        Returns the properties sent (with the SEQNUM and USEC_INITIALIZED it used).
        """
        props = {"ACTION": action, "DEVPATH": devpath, "SUBSYSTEM": subsystem}
        if devtype:
            props["DEVTYPE"] = devtype
        props["SEQNUM"] = str(seqnum if seqnum is not None else self.next_seqnum())
        props["USEC_INITIALIZED"] = str(int(time.monotonic() * 1e6))
        for key, value in (properties or {}).items():
            if key not in ("ACTION", "DEVPATH", "SUBSYSTEM", "DEVTYPE", "SEQNUM"):
                props[key] = str(value)
        return self.send_properties(props)

    def send_properties(self, props: Mapping[str, str]) -> dict:
        """Send exactly these properties (validated: libudev drops events without the basics)."""
        props = {k: str(v) for k, v in props.items()}
        _check_properties(props)
        try:
            self.sock.sendto(build_message(props), (0, UDEV_GROUP))
        except ConnectionRefusedError:
            pass                              # nobody listening yet: like udevd, not an error
        self.sent.append(props)
        return props

    # -- whole plug/unplug sequences of a real card
    def _card_event(self, model: CardModel, action: str, card: int, initialized: bool) -> dict:
        props = model.card_properties(action, card, initialized)
        return self.send(action, props.pop("DEVPATH"), props.pop("SUBSYSTEM"),
                         {k: v for k, v in props.items() if k != "ACTION"})

    def _control_event(self, model: CardModel, action: str, card: int) -> dict:
        props = model.control_properties(action, card)
        return self.send(action, props.pop("DEVPATH"), props.pop("SUBSYSTEM"),
                         {k: v for k, v in props.items() if k != "ACTION"})

    def plug(self, model: CardModel | str, card: int) -> list[dict]:
        """add card → add controlC → change card with SOUND_INITIALIZED=1 (what udev emits)."""
        model = CARDS[model] if isinstance(model, str) else model
        return [self._card_event(model, "add", card, initialized=False),
                self._control_event(model, "add", card),
                self._card_event(model, "change", card, initialized=True)]

    def unplug(self, model: CardModel | str, card: int) -> list[dict]:
        """remove controlC → remove card (the card keeps its udev properties on remove)."""
        model = CARDS[model] if isinstance(model, str) else model
        return [self._control_event(model, "remove", card),
                self._card_event(model, "remove", card, initialized=True)]
