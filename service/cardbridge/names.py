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

# JACK limits client names to jack_client_name_size() - 1 bytes (64 - 1 in jack2): bytes of
# UTF-8, not characters (40 CJK characters are 120 bytes).
JACK_CLIENT_NAME_MAX = 63
# The service's own JACK client (jacklink) and JACK's own ports: never a bridge's name.
SERVICE_CLIENT_NAME = "cardbridge"
RESERVED_CLIENT_NAMES = frozenset({SERVICE_CLIENT_NAME, "system"})

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


def bridge_path(device_id: str) -> str:
    return f"{BRIDGE_PATH_PREFIX}/{object_slug(device_id)}"


_JACK_UNSAFE = re.compile(r"[^\w .()+\-]")


def utf8_prefix(text: str, max_bytes: int) -> str:
    """The longest prefix of `text` whose UTF-8 encoding fits `max_bytes` (whole characters)."""
    return text.encode("utf-8")[:max(0, max_bytes)].decode("utf-8", errors="ignore")


def jack_client_name(name: str) -> str:
    """Make a string safe as a JACK client name: printable, no ':', at most
    JACK_CLIENT_NAME_MAX bytes of UTF-8. (Whether it is free is the caller's question:
    RESERVED_CLIENT_NAMES and the other bridges' names.)"""
    cleaned = _JACK_UNSAFE.sub("_", name.strip()) or "card"
    return utf8_prefix(cleaned, JACK_CLIENT_NAME_MAX).rstrip() or "card"


def with_suffix(base: str, suffix: str) -> str:
    """`base` + `suffix` as a JACK client name, `base` cut so that the suffix always fits."""
    room = JACK_CLIENT_NAME_MAX - len(suffix.encode("utf-8"))
    return jack_client_name(utf8_prefix(base, room).rstrip() + suffix)
