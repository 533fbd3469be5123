"""The single owner of the service's state: devices, desired bridges, JACK's state.

Runs in the main asyncio process. The D-Bus layer (api.py) calls the public coroutines and
listens through `Listener`; hotplug, JACK following and the bridges report back into this module
on the same loop. Nothing here knows about D-Bus.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import Counter
from dataclasses import dataclass
from typing import Protocol

from . import __version__, names, reserve
from .cardlock import CardLocks
from .config import DEFAULT_KEYS, Config, check_bridge_options, load_config
from .devices import Device, DeviceRegistry
from .engine.supervisor import Bridge, BridgeSpec
from .errors import AlreadyAttached, CardBridgeError, InvalidArgument, NoSuchBridge, NoSuchDevice
from .reserve import DeviceReservation
from .store import StateStore

log = logging.getLogger("cardbridge.manager")

_HW_NUMBER = re.compile(r"^hw:(\d+)(,\d+)?$")
_HW_CARD = re.compile(r"^hw:CARD=([A-Za-z0-9_\-]+)(,DEV=\d+)?$")

# Why the manager holds a bridge (no worker), which events make it look again.
HOLD_ABSENT = "absent"            # the card is not plugged in: a plug
HOLD_JACK = "jack"                # the JACK server runs on it: JACK stopping, its reservation freed
HOLD_INSTANCE = "instance"        # another cardbridge bridges it: RECHECK_INTERVAL
HOLD_RESERVED = "reserved"        # its reservation's owner keeps it: the reservation freed
HOLD_BUSY = "busy"                # opening it failed with EBUSY: JACK starting or stopping, a plug
BUSY = "resource busy"            # in a worker's reason: strerror(EBUSY) of the open
RECHECK_INTERVAL = 2.0
# Bounds of what is remembered (see _prune)
MAX_WAITING_BRIDGES = 8           # auto-attached bridges kept while their card is away
MAX_REMEMBERED_DEVICES = 64       # absent devices whose names, choices and connections are kept


def alsa_card_of(device: str) -> str | None:
    """The card part of an ALSA device name: "hw:USB", "hw:2,0", "hw:CARD=USB,DEV=0",
    "plughw:1" -> "USB", "2", "USB", "1"; None when there is none."""
    _, sep, rest = device.partition(":")
    if not sep or not rest:
        return None
    card = rest.split(",", 1)[0].strip()
    card = card[5:] if card.upper().startswith("CARD=") else card
    return card.strip('"') or None


def clean_state(data: dict) -> None:
    """Drop what a state file may not say (it is read, not trusted): options that Attach would
    refuse, names JACK would refuse, choices that are not booleans."""
    for dev_id, options in list(data["bridges"].items()):
        if not isinstance(options, dict):
            log.warning("state: the bridge of %s has no valid options; forgotten", dev_id)
            del data["bridges"][dev_id]
            continue
        good = {}
        for key, value in options.items():
            try:
                good.update(check_bridge_options({key: value}, f"state [bridges.{dev_id}]"))
            except InvalidArgument as exc:
                log.warning("%s; ignored", exc)
        if good.get("capture") == 0 and good.get("playback") == 0:
            good.pop("capture")
            good.pop("playback")
        data["bridges"][dev_id] = good
    for dev_id, name in list(data["names"].items()):
        if not isinstance(name, str) or names.jack_client_name(name) != name \
                or name in names.RESERVED_CLIENT_NAMES:
            del data["names"][dev_id]
    for section in ("auto_attach", "jack_cards"):
        for dev_id, flag in list(data[section].items()):
            if not isinstance(flag, bool):
                del data[section][dev_id]
    for dev_id, when in list(data["seen"].items()):
        if isinstance(when, bool) or not isinstance(when, (int, float)):
            del data["seen"][dev_id]


class Listener(Protocol):
    def bridge_added(self, device_id: str, bridge: Bridge) -> None: ...
    def bridge_removed(self, device_id: str) -> None: ...
    def bridge_changed(self, device_id: str, changed: dict) -> None: ...
    def manager_changed(self, changed: dict) -> None: ...
    def device_added(self, device_id: str, info: dict) -> None: ...
    def device_removed(self, device_id: str) -> None: ...


@dataclass
class JackInfo:
    running: bool = False
    sample_rate: int = 0
    buffer_size: int = 0


class Manager:
    def __init__(self, config_path: str | None, state_dir: str, jack_server: str | None,
                 hotplug: bool = True, session_bus_address: str | None = None):
        self.config_path = config_path
        self.jack_server = jack_server
        self.hotplug_enabled = hotplug
        self.session_bus_address = session_bus_address
        self.config = Config()
        self.store = StateStore(state_dir)
        self.registry = DeviceRegistry()
        self.bridges: dict[str, Bridge] = {}
        self.jack = JackInfo()
        self.listener: Listener | None = None
        self.version = __version__
        self._hotplug = None
        self._link = None
        self._watch = None
        self._keeper = None
        self._running_state: dict[str, bool] = {}
        self.reserve_bus = None          # session bus connection for ReserveDevice1, if any
        self._own_reserve_bus = False
        self.cards = CardLocks()
        self._reservations: dict[str, DeviceReservation] = {}
        self._claimed: dict[str, int] = {}         # device id -> card number we hold claims on
        self._options: dict[str, dict] = {}        # device id -> the options its bridge was given
        self._attached: set[str] = set()           # bridges made by Attach (not by auto-attach)
        self._considering: set[str] = set()        # devices auto-attach is looking at
        self._holds: dict[str, str] = {}           # device id -> why the manager holds it (HOLD_*)
        self._admit_locks: dict[str, asyncio.Lock] = {}
        self._card_locks: dict[int, asyncio.Lock] = {}
        self._jack_devices: frozenset = frozenset()
        self._tasks: set[asyncio.Task] = set()
        self._recheck: asyncio.Task | None = None

    # -- life ------------------------------------------------------------------------------
    async def start(self) -> None:
        self.config = load_config(self.config_path)
        self.store.load()
        clean_state(self.store.data)
        self.registry = DeviceRegistry(known_names=dict(self.store.data["names"]),
                                       overrides=self._overrides())
        self._declare_devices()
        for device_id in self.store.data["bridges"]:
            if self.registry.get(device_id) is None:      # remembered, not plugged in (yet)
                self.registry.upsert(self._absent_device(device_id))
        loop = asyncio.get_running_loop()
        if self.hotplug_enabled and self.config.hotplug:
            from .hotplug import HotplugMonitor
            self._hotplug = HotplugMonitor(loop, self._on_device_added, self._on_device_removed)
            try:
                self._hotplug.start()
            except Exception as exc:   # no udev (containers): declared devices still work
                log.warning("hotplug unavailable: %s", exc)
                self._hotplug = None
        await self._start_reservations()
        await self._start_jack_following()
        # The cards hotplug found present already have their bridges: _add_bridge registers a
        # bridge before anything awaits, so a remembered card is never bridged twice.
        for device_id, options in list(self.store.data["bridges"].items()):
            if device_id not in self.bridges:
                self._try_add_bridge(device_id, dict(options))
        self._prune()
        self._recheck = asyncio.create_task(self._recheck_loop(), name="recheck")

    async def _start_reservations(self) -> None:
        """The bus where cards are reserved: the session bus (a session instance's own; a system
        instance's --jackdbus-bus), watched for reservations changing hands."""
        if self.reserve_bus is None and self.session_bus_address:
            self.reserve_bus = await reserve.connect(self.session_bus_address)
            self._own_reserve_bus = self.reserve_bus is not None
        if self.reserve_bus is not None:
            await reserve.watch_owners(self.reserve_bus, self._on_reservation_changed)

    async def _start_jack_following(self) -> None:
        try:
            from .connections import ConnectionKeeper
            from .jacklink import JackLink
            from .jackwatch import JackWatch
        except ImportError as exc:  # pragma: no cover - all ship with the package
            log.warning("JACK following unavailable: %s", exc)
            return
        # One JACK client for the whole main process (see jacklink), shared by both.
        self._link = JackLink(self.jack_server)
        self._watch = JackWatch(self.jack_server, self.session_bus_address, self._on_jack,
                                link=self._link)
        self._keeper = ConnectionKeeper(self.jack_server, self._load_connections,
                                        self._save_connections, link=self._link)
        await self._watch.start()
        await self._keeper.start()
        await self._link.start()

    async def stop(self) -> None:
        """Stop every bridge (their JACK clients close) and save the state."""
        if self._hotplug is not None:
            self._hotplug.stop()
        for task in [self._recheck, *self._tasks]:
            if task is not None:
                task.cancel()
        bridges = list(self.bridges.values())
        await asyncio.gather(*(b.stop() for b in bridges), return_exceptions=True)
        await asyncio.gather(*(self._release_claims(d) for d in list(self._claimed)),
                             return_exceptions=True)
        self.cards.release_all()
        for stopper in (self._keeper, self._watch, self._link):
            if stopper is not None:
                try:
                    await asyncio.wait_for(stopper.stop(), 1.0)
                except (asyncio.TimeoutError, Exception) as exc:
                    log.debug("stop: %s", exc)
        if self._own_reserve_bus and self.reserve_bus is not None:
            self.reserve_bus.disconnect()
        await self._save_now()

    def _spawn(self, coro) -> None:
        """Run `coro` on its own; failures are logged, never lost."""
        task = asyncio.ensure_future(self._guarded(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guarded(self, coro) -> None:
        try:
            await coro
        except CardBridgeError as exc:
            log.warning("%s", exc)
        except Exception:
            log.exception("unexpected error")

    # -- config ----------------------------------------------------------------------------------
    def _overrides(self) -> dict:
        return {dev_id: p["name"] for dev_id, p in
                {**{d: self.config.profile(d) for d in self.config.devices},
                 **self.config.profiles}.items() if "name" in p}

    def _declare_devices(self) -> None:
        for dev_id, declared in self.config.devices.items():
            name = declared.options.get("name", dev_id)
            dev = Device(id=dev_id, name=name, client_name=names.jack_client_name(name),
                         bus="config", card_index=None, card_id=None, pcm=declared.pcm,
                         capture_channels=declared.options.get("capture"),
                         playback_channels=declared.options.get("playback"),
                         present=True, declared=True)
            self.registry.upsert(dev)

    def _absent_device(self, device_id: str) -> Device:
        """What is known of a remembered device that has not been seen in this run."""
        name = self.store.data["names"].get(device_id) or device_id
        return Device(id=device_id, name=name, client_name=names.jack_client_name(name),
                      bus=device_id.split("-", 1)[0], card_index=None, card_id=None, pcm="",
                      present=False)

    async def reload(self) -> None:
        new = load_config(self.config_path)   # raises InvalidArgument: the old one stays
        old, self.config = self.config, new
        for dev_id in set(old.devices) - set(new.devices):
            # no longer declared: its PCM name is not trusted any more
            if dev_id in self.bridges:
                await self._remove_bridge(dev_id)
            self.store.data["bridges"].pop(dev_id, None)
            self.registry.forget(dev_id)
            if self.listener is not None:
                self.listener.device_removed(dev_id)
        for dev_id in set(old.profiles) | set(old.devices):
            if dev_id not in self._overrides():
                self.registry.set_override(dev_id, None)
        for dev_id, name in self._overrides().items():
            self.registry.set_override(dev_id, name)
        self._declare_devices()
        self._save()
        for dev_id in list(self.bridges):
            self._spawn(self._admit(dev_id))          # a declared device's PCM may have changed
        for dev in self.registry.present():
            if dev.id not in self.bridges and self._wants_bridge(dev) \
                    and dev.id not in self._considering:
                self._considering.add(dev.id)
                self._spawn(self._auto_attach(dev.id))
        self.manager_changed({"AutoAttach": self.config.auto_attach})
        log.info("configuration reloaded from %s", self.config_path)

    # -- queries ---------------------------------------------------------------------------------
    def auto_attach_of(self, dev: Device) -> bool:
        override = self.store.data["auto_attach"].get(dev.id)
        if override is not None:
            return bool(override)
        profile = self.config.profiles.get(dev.id, {})
        if "attach" in profile:
            return bool(profile["attach"])
        if dev.id in self.store.data["jack_cards"]:
            return False                  # the card JACK itself runs on
        policy = self.config.auto_attach
        return policy == "all" or (policy == "usb" and dev.bus == "usb")

    def _wants_bridge(self, dev: Device) -> bool:
        return dev.id in self.store.data["bridges"] or self.auto_attach_of(dev)

    def bridge_states(self) -> Counter:
        """How many bridges are in each state (names.STATES), for the service's status line."""
        return Counter(bridge.stats()["state"] for bridge in self.bridges.values())

    def list_devices(self) -> list[dict]:
        out = []
        for dev in self.registry.all():
            info = dev.info()
            info["attached"] = dev.id in self.bridges
            info["auto_attach"] = self.auto_attach_of(dev)
            out.append(info)
        return out

    def resolve(self, device: str) -> Device:
        """A stable id, a declared name, or an ALSA card id/number/hw: name of a known card."""
        if not isinstance(device, str) or not device or len(device) > 256:
            raise InvalidArgument("device must be a non-empty string")
        dev = self.registry.get(device)
        if dev is not None:
            return dev
        match = _HW_NUMBER.match(device)
        if device.isdigit() or match:
            index = int(device if device.isdigit() else match.group(1))
            dev = self.registry.find_by_card(index=index)
        else:
            match = _HW_CARD.match(device)
            dev = self.registry.find_by_card(card_id=match.group(1) if match else device)
        if dev is None:
            raise NoSuchDevice(f"no such device: {device}")
        return dev

    def bridge_for(self, target: str) -> str:
        """Device id of a bridge named by object path, device id or client name."""
        if not isinstance(target, str) or not target or len(target) > 1024:
            raise InvalidArgument("bridge must be a non-empty string")
        if target.startswith(names.BRIDGE_PATH_PREFIX + "/"):
            for dev_id in self.bridges:
                if names.bridge_path(dev_id) == target:
                    return dev_id
            raise NoSuchBridge(f"no such bridge: {target}")
        if target in self.bridges:
            return target
        for dev_id, bridge in self.bridges.items():
            if bridge.spec.client_name == target:
                return dev_id
        try:
            dev = self.resolve(target)
        except NoSuchDevice:
            raise NoSuchBridge(f"no such bridge: {target}") from None
        if dev.id not in self.bridges:
            raise NoSuchBridge(f"{target} is not attached")
        return dev.id

    # -- attach / detach / set -------------------------------------------------------------------
    async def attach(self, device: str, options: dict) -> str:
        persist = options.pop("persist", True)
        if not isinstance(persist, bool):
            raise InvalidArgument("persist must be a boolean")
        opts = check_bridge_options(options, "Attach")
        dev = self.resolve(device)
        if dev.declared and dev.id not in self.config.devices:
            raise NoSuchDevice(f"no such device: {device}")
        if dev.id in self.bridges:
            if dev.id in self.store.data["bridges"] or dev.id in self._attached:
                raise AlreadyAttached(f"{dev.id} is already attached")
            # attached by auto-attach: the user takes it over, with these settings (and asks
            # for a held card with the priority of someone who was told to)
            await self._change(dev.id, {**self._options.get(dev.id, {}), **opts}, persist)
            if self.bridges[dev.id].held:
                self._spawn(self._admit(dev.id))
        else:
            self._add_bridge(dev.id, opts)
            if persist:
                self.store.data["bridges"][dev.id] = opts
        self._attached.add(dev.id)
        if persist:
            self.store.data["auto_attach"].pop(dev.id, None)     # a detach's "off" ends here
        self._save()
        return dev.id

    async def set_options(self, target: str, options: dict) -> str:
        """Change a bridge in place (D-Bus Set); the new settings are remembered."""
        dev_id = self.bridge_for(target)
        opts = check_bridge_options(options, "Set")
        if not opts:
            raise InvalidArgument("Set: nothing to change")
        await self._change(dev_id, {**self._options.get(dev_id, {}), **opts}, persist=True)
        self._save()
        return dev_id

    async def _change(self, dev_id: str, opts: dict, persist: bool) -> None:
        bridge = self.bridges[dev_id]
        dev = self.registry.get(dev_id)
        spec = self._spec_for(dev, check_bridge_options(opts, "Set"))
        self._options[dev_id] = opts
        if persist:
            self.store.data["bridges"][dev_id] = opts
        spec.learnt_ppm = bridge.spec.learnt_ppm
        if spec == bridge.spec:
            return
        if self._keeper is not None:
            self._keeper.bridge_down(dev_id)
        self._running_state.pop(dev_id, None)
        bridge.spec = spec
        if bridge.proc is not None:
            await bridge.respawn()        # a new worker with the new settings
        elif bridge.held:
            self._spawn(self._admit(dev_id))
        log.info("bridge %s changed: %s", dev_id, ", ".join(f"{k}={v}" for k, v in opts.items()))

    def _spec_for(self, dev: Device, opts: dict) -> BridgeSpec:
        merged = {key: getattr(self.config, key) for key in DEFAULT_KEYS}
        merged.update({k: v for k, v in self.config.profile(dev.id).items() if k != "attach"})
        merged.update(opts)
        name = names.jack_client_name(merged.get("name") or dev.client_name)
        taken = {b.spec.client_name for d, b in self.bridges.items() if d != dev.id}
        if name in taken:
            raise AlreadyAttached(f"JACK client name '{name}' is used by another bridge")
        return BridgeSpec(device_id=dev.id, pcm=dev.pcm, client_name=name,
                          capture=merged.get("capture"), playback=merged.get("playback"),
                          rate=merged.get("rate"), period=merged["period"],
                          periods=merged["periods"], max_periods=merged["max_periods"],
                          quality=merged["quality"],
                          jack_server=self.jack_server)

    def _add_bridge(self, device_id: str, opts: dict) -> Bridge:
        """Register a bridge at once (no await before it is in `bridges`), then let _admit
        decide in the background whether it may run."""
        if device_id in self.bridges:
            return self.bridges[device_id]
        dev = self.registry.get(device_id)
        if dev is None:
            dev = self.registry.upsert(self._absent_device(device_id))
        spec = self._spec_for(dev, opts)
        bridge = Bridge(spec, lambda b, changed, d=device_id: self._on_bridge_change(d, changed))
        self.bridges[device_id] = bridge
        self._options[device_id] = dict(opts)
        if self.listener is not None:
            self.listener.bridge_added(device_id, bridge)
        self._spawn(self._admit(device_id))
        log.info("attached %s as JACK client '%s'", device_id, spec.client_name)
        return bridge

    def _try_add_bridge(self, device_id: str, opts: dict) -> None:
        try:
            self._add_bridge(device_id, opts)
        except CardBridgeError as exc:
            log.warning("cannot bridge %s: %s", device_id, exc)

    async def detach(self, target: str) -> None:
        """Stop bridging a card, and keep it so: auto-attach is off for it until attach or
        enable. Works for a remembered bridge whose card is absent too."""
        dev_id = self.bridge_for(target)
        self.store.data["bridges"].pop(dev_id, None)
        self.store.data["auto_attach"][dev_id] = False
        self._save()
        await self._remove_bridge(dev_id)
        log.info("detached %s", dev_id)

    async def _remove_bridge(self, dev_id: str) -> None:
        bridge = self._drop_bridge(dev_id)
        await bridge.stop()
        await self._release_claims(dev_id)

    def _drop_bridge(self, dev_id: str) -> Bridge:
        """Take a bridge out of the service's view at once; the caller stops it."""
        bridge = self.bridges.pop(dev_id)
        self._options.pop(dev_id, None)
        self._attached.discard(dev_id)
        self._holds.pop(dev_id, None)
        if self._keeper is not None:
            self._keeper.bridge_down(dev_id)
        self._running_state.pop(dev_id, None)
        if self.listener is not None:
            self.listener.bridge_removed(dev_id)
        return bridge

    async def restart(self, target: str) -> None:
        device_id = self.bridge_for(target)
        bridge = self.bridges[device_id]
        if self._keeper is not None:
            self._keeper.bridge_down(device_id)
        self._running_state.pop(device_id, None)
        if bridge.held or bridge.proc is None:
            await self._admit(device_id)          # look again at what held it
        else:
            await bridge.restart()

    async def set_auto_attach(self, device: str, enabled: bool) -> None:
        dev = self.resolve(device)
        self.store.data["auto_attach"][dev.id] = bool(enabled)
        self._save()
        if enabled and dev.present and dev.id not in self.bridges:
            self._add_bridge(dev.id, {})

    # -- may a bridge run? -----------------------------------------------------------------------
    async def _admit(self, dev_id: str) -> None:
        """Decide whether the bridge of `dev_id` may use its card now, and start it or hold it
        with the reason. One at a time per bridge; called on every event that may change the
        answer (plug, unplug, JACK, a reservation changing hands, another instance letting go)."""
        lock = self._admit_locks.setdefault(dev_id, asyncio.Lock())
        async with lock:
            bridge = self.bridges.get(dev_id)
            dev = self.registry.get(dev_id)
            if bridge is None or dev is None:
                await self._release_claims(dev_id)
                return
            if not dev.present:
                await self._release_claims(dev_id)
                if bridge.proc is None:
                    self._holds[dev_id] = HOLD_ABSENT
                    await bridge.hold(names.WAITING_FOR_DEVICE, "the card is not plugged in")
                else:
                    bridge.device_removed()       # the worker waits for it, ports kept
                return
            kind, why = await self._why_not(dev, bridge)
            if dev_id not in self.bridges:
                await self._release_claims(dev_id)
                return
            if why:
                await self._release_claims(dev_id)
                self._holds[dev_id] = kind
                await bridge.hold(names.WAITING_FOR_DEVICE, why)
                return
            self._holds.pop(dev_id, None)
            if bridge.proc is None:
                bridge.spec.pcm = dev.pcm
                await bridge.start()
            elif bridge.spec.pcm != dev.pcm:
                # card numbers and ids follow plug order: a new ALSA name needs a new worker
                bridge.spec.pcm = dev.pcm
                await bridge.respawn()
            else:
                bridge.device_added()

    async def _why_not(self, dev: Device, bridge: Bridge) -> tuple[str, str]:
        """(hold kind, reason) when the card may not be bridged now, else ("", "")."""
        card = dev.card_index
        if card is None:
            return "", ""                         # declared in the config: the admin's call
        if self._claimed.get(dev.id) not in (None, card):
            await self._release_claims(dev.id)    # replugged on another card number
        jacks = await self._jacks_card(dev)
        if jacks:
            return HOLD_JACK, jacks
        async with self._card_lock(card):
            for other, claimed in list(self._claimed.items()):
                if other != dev.id and claimed == card:      # a device that left this number
                    del self._claimed[other]
                    await self._unreserve(other)
            if not self.cards.acquire(card):
                return HOLD_INSTANCE, "bridged by another cardbridge instance"
            self._claimed[dev.id] = card
            refused = await self._reserve(dev, card, bridge)
        if refused:
            return HOLD_RESERVED, refused
        return "", ""

    def _card_lock(self, card: int) -> asyncio.Lock:
        """Claims on one card number (its lock file, its reservation) change one at a time."""
        return self._card_locks.setdefault(card, asyncio.Lock())

    async def _reserve(self, dev: Device, card: int, bridge: Bridge) -> str:
        """Take the card's reservation as the policy says; the refusal's reason, or ""."""
        if self.reserve_bus is None or self.config.reserve == "never":
            return ""
        explicit = dev.id in self.store.data["bridges"]
        priority = reserve.TAKE_PRIORITY if self.config.reserve == "take" or explicit \
            else reserve.ASK_PRIORITY
        held = self._reservations.get(dev.id)
        if held is not None and (held.card_index != card or held.priority != priority):
            await self._unreserve(dev.id)
            held = None
        if held is None:
            held = DeviceReservation(
                self.reserve_bus, card, "cardbridge", device_name=bridge.spec.client_name,
                priority=priority,
                on_release_requested=lambda p, d=dev.id: self._hand_over(d, p),
                on_lost=lambda d=dev.id: self._spawn(self._admit(d)))
            self._reservations[dev.id] = held
        if await held.acquire():
            return ""
        owner = await reserve.owner_of(self.reserve_bus, card)
        who = owner[1] if owner else "another application"
        hint = "" if explicit or self.config.reserve == "take" else \
            "; 'cardbridge attach' or reserve = \"take\" asks for it"
        return f"in use by {who} (it did not hand the card over{hint})"

    async def _hand_over(self, dev_id: str, priority: int) -> bool:
        """Someone with a higher priority asks for the card: stop the bridge, let it go."""
        bridge = self.bridges.get(dev_id)
        who = "JACK" if priority == reserve.INT32_MAX else f"an application of priority {priority}"
        if bridge is not None:
            self._holds[dev_id] = HOLD_RESERVED
            await bridge.hold(names.WAITING_FOR_DEVICE, f"handed over to {who}")
        card = self._claimed.pop(dev_id, None)
        if card is not None and card not in self._claimed.values():
            self.cards.release(card)
        log.info("card of %s handed over to %s", dev_id, who)
        return True

    async def _release_claims(self, dev_id: str) -> None:
        card = self._claimed.get(dev_id)
        reservation = self._reservations.get(dev_id)
        number = card if card is not None else getattr(reservation, "card_index", None)
        if number is None:
            return
        async with self._card_lock(number):
            if self._claimed.get(dev_id) == card:
                self._claimed.pop(dev_id, None)
            await self._unreserve(dev_id)
            if card is not None and card not in self._claimed.values():
                self.cards.release(card)

    async def _unreserve(self, device_id: str) -> None:
        reservation = self._reservations.pop(device_id, None)
        if reservation is not None:
            try:
                await reservation.release()
            except Exception as exc:
                log.debug("releasing the reservation of %s: %s", device_id, exc)

    async def _jacks_card(self, dev: Device) -> str:
        """Why the card is JACK's own (its ALSA driver's device, or jackdbus's reservation);
        "" when it is not. A card found so is remembered: auto-attach leaves it alone."""
        why = ""
        if self._runs_on(dev):
            why = "in use by JACK (the JACK server runs on this card)"
        else:
            ours = self._reservations.get(dev.id)
            if self.reserve_bus is not None and dev.card_index is not None \
                    and not (ours is not None and ours.owned):
                owner = await reserve.owner_of(self.reserve_bus, dev.card_index)
                if owner is not None and reserve.is_jack(owner[1]):
                    why = "in use by JACK (jackdbus holds the card's reservation)"
        if why:
            self._mark_jacks_card(dev)
        return why

    async def _auto_attach(self, dev_id: str) -> None:
        """Bridge a card auto-attach picked, unless it turns out to be JACK's own."""
        try:
            dev = self.registry.get(dev_id)
            if dev is None or not dev.present or dev_id in self.bridges \
                    or not self._wants_bridge(dev):
                return
            if await self._jacks_card(dev):
                log.info("not attaching %s: the JACK server runs on it", dev_id)
                return
            if dev_id not in self.bridges and self._wants_bridge(dev):
                self._try_add_bridge(dev_id, {})
        finally:
            self._considering.discard(dev_id)

    def _runs_on(self, dev: Device) -> bool:
        """Does the JACK server we follow run on this card (its ALSA driver's device)?"""
        if not self.jack.running:
            return False
        for device in self._jack_devices:
            card = alsa_card_of(device)
            if card is not None and card in (str(dev.card_index), dev.card_id):
                return True
        return False

    def _mark_jacks_card(self, dev: Device) -> None:
        if dev.id not in self.store.data["jack_cards"]:
            self.store.data["jack_cards"][dev.id] = True
            self._save()

    def _readmit(self, *kinds: str) -> None:
        for dev_id, kind in list(self._holds.items()):
            if kind in kinds:
                self._spawn(self._admit(dev_id))

    async def _recheck_loop(self) -> None:
        """Another instance gives no notice when it lets a card go: look again now and then."""
        while True:
            await asyncio.sleep(RECHECK_INTERVAL)
            self._readmit(HOLD_INSTANCE)

    def _on_reservation_changed(self, card: int, new_owner: str) -> None:
        if new_owner:
            return
        for dev_id, kind in list(self._holds.items()):
            dev = self.registry.get(dev_id)
            if kind in (HOLD_RESERVED, HOLD_JACK) and dev is not None and dev.card_index == card:
                self._spawn(self._admit(dev_id))

    # -- events ----------------------------------------------------------------------------------
    def _on_bridge_change(self, device_id: str, changed: dict) -> None:
        if "state" in changed:
            up = changed["state"] == names.RUNNING
            was = self._running_state.get(device_id, False)
            bridge = self.bridges.get(device_id)
            if up and not was and self._keeper is not None and bridge is not None:
                self._keeper.bridge_up(device_id, bridge.spec.client_name)
            self._running_state[device_id] = up
        reason = changed.get("state_reason")
        if isinstance(reason, str) and BUSY in reason.lower() and device_id not in self._holds:
            self._holds[device_id] = HOLD_BUSY
            self._spawn(self._hold_busy(device_id))
        if self.listener is not None and device_id in self.bridges:
            self.listener.bridge_changed(device_id, changed)

    async def _hold_busy(self, dev_id: str) -> None:
        """The worker found the card open elsewhere (EBUSY): stop trying every few seconds;
        while JACK runs it is most likely JACK's own card. Looked at again when JACK starts or
        stops, or the card is plugged in again."""
        async with self._admit_locks.setdefault(dev_id, asyncio.Lock()):
            bridge = self.bridges.get(dev_id)
            dev = self.registry.get(dev_id)
            if bridge is None or self._holds.get(dev_id) != HOLD_BUSY:
                return
            if self.jack.running and dev is not None:
                self._mark_jacks_card(dev)
                why = "in use by JACK (the card is busy while the JACK server runs)"
            else:
                why = "in use by another program (the card is busy)"
            await self._release_claims(dev_id)
            await bridge.hold(names.WAITING_FOR_DEVICE, why)

    def _on_device_added(self, dev: Device) -> None:
        dev = self.registry.upsert(dev)
        self.store.data["seen"][dev.id] = int(time.time())
        self._remember_names()
        if self.listener is not None:
            info = dev.info()
            info["attached"] = dev.id in self.bridges
            info["auto_attach"] = self.auto_attach_of(dev)
            self.listener.device_added(dev.id, info)
        if dev.id in self.bridges:
            self._spawn(self._admit(dev.id))
        elif dev.id in self.store.data["bridges"]:           # remembered: at once
            self._try_add_bridge(dev.id, dict(self.store.data["bridges"][dev.id]))
        elif self._wants_bridge(dev) and dev.id not in self._considering:
            self._considering.add(dev.id)                    # one look at a time per card
            self._spawn(self._auto_attach(dev.id))
        self._prune()

    def _on_device_removed(self, device_id: str) -> None:
        self.registry.mark_absent(device_id)
        self.store.data["seen"][device_id] = int(time.time())
        self._save()
        if device_id in self.bridges:
            self._spawn(self._admit(device_id))
        if self.listener is not None:
            self.listener.device_removed(device_id)
        self._prune()

    def _on_jack(self, state) -> None:
        was_running = self.jack.running
        self.jack = JackInfo(bool(state.running), int(state.sample_rate or 0),
                             int(state.buffer_size or 0))
        devices = frozenset(getattr(state, "alsa_devices", ()) if state.running else ())
        moved = devices != self._jack_devices or was_running != self.jack.running
        self._jack_devices = devices
        self.manager_changed({"JackRunning": self.jack.running,
                              "JackSampleRate": self.jack.sample_rate,
                              "JackBufferSize": self.jack.buffer_size})
        for dev_id, bridge in self.bridges.items():
            if dev_id in self._holds:
                continue
            if self.jack.running:
                bridge.jack_started()
            else:
                bridge.jack_stopped()
        if moved:
            # JACK took a card or let one go: bridges on JACK's card step aside, held ones look
            for dev_id in list(self.bridges):
                dev = self.registry.get(dev_id)
                if dev_id in self._holds or (dev is not None and self._runs_on(dev)):
                    self._spawn(self._admit(dev_id))

    def manager_changed(self, changed: dict) -> None:
        if self.listener is not None:
            self.listener.manager_changed(changed)

    # -- bounds ----------------------------------------------------------------------------------
    def _prune(self) -> None:
        """Keep what is remembered bounded: a device that re-enumerates with a fresh serial each
        time must not grow the state, the workers or the JACK clients without end."""
        data = self.store.data
        seen = data["seen"]
        # auto-attached bridges whose card is away: at most MAX_WAITING_BRIDGES, newest kept
        waiting = sorted((d for d, dev in ((d, self.registry.get(d)) for d in self.bridges)
                          if d not in data["bridges"] and d not in self._attached
                          and (dev is None or not dev.present)),
                         key=lambda d: seen.get(d, 0))
        for dev_id in waiting[:max(0, len(waiting) - MAX_WAITING_BRIDGES)]:
            log.info("forgetting the bridge of %s (absent, auto-attached; %d others wait)",
                     dev_id, MAX_WAITING_BRIDGES)
            bridge = self._drop_bridge(dev_id)
            self._spawn(bridge.stop())
            self._spawn(self._release_claims(dev_id))
        # devices: all that are present, bridged or declared, plus the newest absent ones
        keep = {d.id for d in self.registry.all() if d.present or d.declared} \
            | set(self.bridges) | set(data["bridges"])
        known = {d.id for d in self.registry.all()}
        for section in ("names", "seen", "auto_attach", "jack_cards", "connections"):
            known.update(data[section])
        absent = sorted(known - keep, key=lambda d: seen.get(d, 0), reverse=True)
        for dev_id in absent[MAX_REMEMBERED_DEVICES:]:
            self.registry.forget(dev_id)
            for section in ("names", "seen", "auto_attach", "jack_cards", "connections"):
                data[section].pop(dev_id, None)
            if self._keeper is not None:
                self._keeper.forget_device(dev_id)
        self._save()

    # -- persistence -----------------------------------------------------------------------------
    def _remember_names(self) -> None:
        self.store.data["names"] = self.registry.names()
        self._save()

    def _load_connections(self) -> dict:
        return dict(self.store.data.get("connections", {}))

    def _save_connections(self, memory: dict) -> None:
        self.store.data["connections"] = memory
        self._save()

    def _save(self) -> None:
        """Save the state soon, off the event loop (store.py)."""
        self.store.request_save()

    async def _save_now(self) -> None:
        """The last save, when stopping: every earlier one done, then this one."""
        await self.store.flush()
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.store.save)
        except OSError as exc:
            log.error("cannot save the state to %s: %s", self.store.path, exc.strerror)
