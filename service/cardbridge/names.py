"""Fixed public names (D-Bus, JACK) and the escaping that turns user strings into them.

Pure functions and constants; used from the main process and the bridge workers alike.
"""

from __future__ import annotations

import re

# States a bridge reports (Bridge.State), defined with the table of bridge statistics.
from .bridgestats import (FAILED, RUNNING, STARTING, STATES, SYNCING,  # noqa: F401
                          WAITING_FOR_DEVICE, WAITING_FOR_JACK)

BUS_NAME = "org.cardbridge.CardBridge1"
MANAGER_PATH = "/org/cardbridge/CardBridge1"
BRIDGE_PATH_PREFIX = MANAGER_PATH + "/bridge"
MANAGER_IFACE = "org.cardbridge.CardBridge1.Manager"
BRIDGE_IFACE = "org.cardbridge.CardBridge1.Bridge"
ERROR_PREFIX = "org.cardbridge.CardBridge1.Error"

QUALITIES = ("best", "medium", "fastest", "linear")

# JACK limits client names to jack_client_name_size() - 1 bytes (64 - 1 in jack2).
JACK_CLIENT_NAME_MAX = 63

_PATH_SAFE = re.compile(r"[A-Za-z0-9]")


def object_slug(device_id: str) -> str:
    """Escape a stable device id into one valid D-Bus object path element.

    Letters and digits pass; every other byte becomes `_XX` (hex), so the mapping is
    injective and reversible (the same scheme systemd uses for unit paths).
    """
    if not device_id:
        return "_"
    out = []
    for byte in device_id.encode("utf-8"):
        ch = chr(byte)
        out.append(ch if byte < 128 and _PATH_SAFE.match(ch) else f"_{byte:02x}")
    return "".join(out)


def slug_to_device_id(slug: str) -> str:
    """Inverse of object_slug()."""
    raw = bytearray()
    i = 0
    while i < len(slug):
        if slug[i] == "_" and i + 3 <= len(slug):
            raw.append(int(slug[i + 1:i + 3], 16))
            i += 3
        else:
            raw.extend(slug[i].encode())
            i += 1
    return raw.decode("utf-8", errors="replace")


def bridge_path(device_id: str) -> str:
    return f"{BRIDGE_PATH_PREFIX}/{object_slug(device_id)}"


_JACK_UNSAFE = re.compile(r"[^\w .()+\-]")


def jack_client_name(name: str) -> str:
    """Make a string safe as a JACK client name: printable, no ':', bounded length."""
    cleaned = _JACK_UNSAFE.sub("_", name.strip()) or "card"
    return cleaned[:JACK_CLIENT_NAME_MAX]
