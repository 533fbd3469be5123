"""Sound-card hotplug from udev, read in the main asyncio loop (no thread, no sleeps).

Runs in the main asyncio process. A pyudev netlink Monitor filtered on subsystem `sound` is
read with `loop.add_reader`; every readable wake-up drains the socket without blocking.

When is a card there? systemd's 78-sound-card.rules make udev send a `change` event for the
card device (`.../sound/cardN`) with `SOUND_INITIALIZED=1` once all of the card's device nodes
are set up; the earlier `add` is too early to open the card. So: ready on `change` (or a
replayed `add`) carrying SOUND_INITIALIZED=1, gone on `remove`. Events for a card's children
(pcmC*, controlC*) are normal and skipped quietly; malformed events (no DEVPATH, another
subsystem, undecodable properties, a `cardX` that is no card number) are skipped with one log
line each, rate-limited. (libudev itself drops structurally invalid netlink messages before
Python sees them.)

Callbacks fire only on transitions: `on_added(Device)` when a device becomes present,
`on_removed(device_id)` when it goes. A repeated ready event is ignored; a card number or a
device id that reappears without its removal having been seen is first reported removed, so
the listener's view stays consistent even when a burst of events overflows the socket.
The Device handed to `on_added` carries the default client name; pass it through
`DeviceRegistry.upsert` to get the unique, sticky one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Callable, Mapping

from .devices import PROC_ASOUND, Device, card_index_from_devpath, device_from_udev, shares_id_with

log = logging.getLogger(__name__)

UDEV_DB = "/run/udev/data"
RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024
MAX_EVENTS_PER_WAKEUP = 512


class RateLimitedLog:
    """At most `burst` lines per `window` seconds; the rest are counted and summarised."""

    def __init__(self, logger: logging.Logger, burst: int = 10, window: float = 10.0,
                 clock: Callable[[], float] = time.monotonic):
        self._logger, self._burst, self._window, self._clock = logger, burst, window, clock
        self._window_start = -1e18
        self._count = 0
        self._suppressed = 0

    def warning(self, msg: str, *args) -> bool:
        now = self._clock()
        if now - self._window_start >= self._window:
            if self._suppressed:
                self._logger.warning("%d more malformed udev events ignored", self._suppressed)
            self._window_start, self._count, self._suppressed = now, 0, 0
        if self._count < self._burst:
            self._count += 1
            self._logger.warning(msg, *args)
            return True
        self._suppressed += 1
        return False


def _props_of(udev_device) -> dict[str, str]:
    """Plain dict of a pyudev Device's properties (may raise on undecodable data)."""
    props = {str(k): str(v) for k, v in udev_device.properties.items()}
    if udev_device.action and "ACTION" not in props:
        props["ACTION"] = udev_device.action
    return props


class HotplugMonitor:
    """Announces sound cards as they become ready and as they go away."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_added: Callable[[Device], None],
                 on_removed: Callable[[str], None], *, proc_root: str = PROC_ASOUND,
                 udev_db: str = UDEV_DB):
        self._loop = loop
        self._on_added = on_added
        self._on_removed = on_removed
        self._proc_root = proc_root
        self._udev_db = udev_db
        self._monitor = None
        self._context = None
        self._fd: int | None = None
        self._by_id: dict[str, Device] = {}
        self._malformed_log = RateLimitedLog(log)
        self.events_seen = 0             # read by the tests' udev namespace child

    # -- public --
    def start(self) -> None:
        """Listen, then announce the cards already present (a duplicate later is harmless)."""
        import pyudev  # loads libudev.so.1; imported here so pure users of this module need none

        self._context = pyudev.Context()
        self._monitor = pyudev.Monitor.from_netlink(self._context, source="udev")
        self._monitor.filter_by("sound")
        try:
            self._monitor.set_receive_buffer_size(RECEIVE_BUFFER_BYTES)
        except (OSError, ValueError):
            pass        # needs CAP_NET_ADMIN; the default buffer is fine for normal use
        self._monitor.start()
        self._fd = self._monitor.fileno()
        self._loop.add_reader(self._fd, self._on_readable)
        self._enumerate_present()

    def stop(self) -> None:
        if self._fd is not None:
            self._loop.remove_reader(self._fd)
            self._fd = None
        self._monitor = None            # pyudev closes the socket when the monitor is freed
        self._context = None

    def present(self) -> list[Device]:
        return sorted(self._by_id.values(), key=lambda d: d.id)

    # -- event intake --
    def _enumerate_present(self) -> None:
        try:
            found = list(self._context.list_devices(subsystem="sound"))
        except Exception as exc:        # noqa: BLE001 - a broken sysfs must not stop the service
            log.warning("could not list sound cards already present: %s", exc)
            return
        have_udev_db = os.path.isdir(self._udev_db)
        for udev_device in found:
            if not (udev_device.sys_name or "").startswith("card"):
                continue
            try:
                props = _props_of(udev_device)
            except Exception as exc:    # noqa: BLE001
                self._malformed_log.warning("ignoring sound card with unreadable properties: %s", exc)
                continue
            # Without udevd there is no SOUND_INITIALIZED; a card present at start-up is ready.
            if have_udev_db and props.get("SOUND_INITIALIZED") != "1":
                continue
            props.setdefault("DEVPATH", udev_device.device_path)
            props.setdefault("SUBSYSTEM", "sound")
            self._card_ready(props)

    def _on_readable(self) -> None:
        for _ in range(MAX_EVENTS_PER_WAKEUP):
            monitor = self._monitor
            if monitor is None:
                return
            try:
                udev_device = monitor.poll(timeout=0)
            except Exception as exc:    # noqa: BLE001 - e.g. ENOBUFS after an overflow
                self._malformed_log.warning("udev monitor read failed: %s", exc)
                return
            if udev_device is None:
                return
            self.events_seen += 1
            try:
                props = _props_of(udev_device)
            except Exception as exc:    # noqa: BLE001
                self._ignore("undecodable properties (%s)", exc)
                continue
            self.handle_event(props)

    def handle_event(self, props: Mapping[str, str]) -> None:
        """Act on one udev event given as its properties (ACTION, DEVPATH, SUBSYSTEM, ...)."""
        action = props.get("ACTION", "")
        devpath = props.get("DEVPATH", "")
        subsystem = props.get("SUBSYSTEM", "")
        if subsystem != "sound":
            self._ignore("event of subsystem %r, not sound", subsystem)
            return
        if not devpath or not action:
            self._ignore("sound event without %s", "DEVPATH" if not devpath else "ACTION")
            return
        sys_name = devpath.rstrip("/").rsplit("/", 1)[-1]
        if not sys_name.startswith("card"):
            return                      # pcmC*, controlC*, timer, seq: a card's children
        if card_index_from_devpath(devpath) is None:
            self._ignore("sound device %r is not a card number", sys_name)
            return
        if action == "remove":
            self._card_gone(props)
        elif action in ("change", "add") and props.get("SOUND_INITIALIZED") == "1":
            self._card_ready(props)
        # other actions (bind, unbind, a plain add before initialisation): nothing to do

    # -- transitions --
    def _card_ready(self, props: Mapping[str, str]) -> None:
        dev = device_from_udev(props, self._proc_root)
        if dev is None:
            self._ignore("sound card event %r not understood", props.get("DEVPATH"))
            return
        same_card = self._find_card(dev.card_index)
        holder = self._by_id.get(dev.id)
        if holder is not None and shares_id_with(dev, holder):
            dev.id = dev.port_id
            holder = self._by_id.get(dev.id)
        if same_card is not None and same_card.id == dev.id and same_card.devpath == dev.devpath:
            return                      # a repeated ready event for a card already announced
        if same_card is not None:       # its removal was missed; a different device has the slot
            self._announce_removed(same_card.id)
        holder = self._by_id.get(dev.id)
        if holder is not None:          # the device came back elsewhere without a remove
            self._announce_removed(holder.id)
        self._by_id[dev.id] = dev
        try:
            self._on_added(dev)
        except Exception:               # noqa: BLE001 - a listener bug must not kill hotplug
            log.exception("hotplug listener failed on added device %s", dev.id)

    def _card_gone(self, props: Mapping[str, str]) -> None:
        known = self._find_devpath(props.get("DEVPATH"))
        if known is None:
            dev = device_from_udev(props, self._proc_root)
            known = self._by_id.get(dev.id) if dev is not None else None
            if known is None:
                return                  # removal of a card never announced (not yet ready)
        self._announce_removed(known.id)

    def _announce_removed(self, device_id: str) -> None:
        if self._by_id.pop(device_id, None) is None:
            return
        try:
            self._on_removed(device_id)
        except Exception:               # noqa: BLE001
            log.exception("hotplug listener failed on removed device %s", device_id)

    def _find_card(self, index: int | None) -> Device | None:
        for dev in self._by_id.values():
            if index is not None and dev.card_index == index:
                return dev
        return None

    def _find_devpath(self, devpath: str | None) -> Device | None:
        if not devpath:
            return None
        for dev in self._by_id.values():
            if dev.devpath == devpath:
                return dev
        return None

    def _ignore(self, msg: str, *args) -> None:
        self._malformed_log.warning("ignoring malformed udev event: " + msg, *args)
