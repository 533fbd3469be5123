"""The single owner of the service's state: devices, desired bridges, JACK's state.

Runs in the main asyncio process. The D-Bus layer (api.py) calls the public coroutines and
listens through `Listener`; hotplug, JACK following and the bridges report back into this module
on the same loop. Nothing here knows about D-Bus.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from typing import Protocol

from . import __version__, names
from .config import DEFAULT_KEYS, Config, check_bridge_options, load_config
from .devices import Device, DeviceRegistry
from .engine.supervisor import Bridge, BridgeSpec
from .errors import AlreadyAttached, InvalidArgument, NoSuchBridge, NoSuchDevice
from .store import StateStore

log = logging.getLogger("cardbridge.manager")

_HW_NUMBER = re.compile(r"^hw:(\d+)(,\d+)?$")
_HW_CARD = re.compile(r"^hw:CARD=([A-Za-z0-9_\-]+)(,DEV=\d+)?$")


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
        self._reservations: dict[str, object] = {}

    # -- life ------------------------------------------------------------------------------
    async def start(self) -> None:
        self.config = load_config(self.config_path)
        state = self.store.load()
        self.registry = DeviceRegistry(known_names=dict(state["names"]), overrides=self._overrides())
        self._declare_devices()
        loop = asyncio.get_running_loop()
        if self.hotplug_enabled and self.config.hotplug:
            from .hotplug import HotplugMonitor
            self._hotplug = HotplugMonitor(loop, self._on_device_added, self._on_device_removed)
            try:
                self._hotplug.start()
            except Exception as exc:   # no udev (containers): declared devices still work
                log.warning("hotplug unavailable: %s", exc)
                self._hotplug = None
        await self._start_jack_following()
        for device_id, options in list(self.store.data["bridges"].items()):
            if device_id in self.bridges:
                continue
            try:
                await self._create_bridge(device_id, dict(options), persist=True)
            except Exception as exc:
                log.warning("cannot restore the bridge of %s: %s", device_id, exc)

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
        bridges = list(self.bridges.values())
        await asyncio.gather(*(b.stop() for b in bridges), return_exceptions=True)
        await asyncio.gather(*(self._unreserve(d) for d in list(self._reservations)),
                             return_exceptions=True)
        for stopper in (self._keeper, self._watch, self._link):
            if stopper is not None:
                try:
                    await asyncio.wait_for(stopper.stop(), 1.0)
                except (asyncio.TimeoutError, Exception) as exc:
                    log.debug("stop: %s", exc)
        await self._save_now()

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

    async def reload(self) -> None:
        new = load_config(self.config_path)   # raises InvalidArgument: the old one stays
        self.config = new
        for dev_id, name in self._overrides().items():
            self.registry.set_override(dev_id, name)
        self._declare_devices()
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
        policy = self.config.auto_attach
        return policy == "all" or (policy == "usb" and dev.bus == "usb")

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
        if target.startswith(names.BRIDGE_PATH_PREFIX + "/"):
            dev_id = names.slug_to_device_id(target[len(names.BRIDGE_PATH_PREFIX) + 1:])
            if dev_id in self.bridges:
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

    # -- attach / detach -------------------------------------------------------------------------
    async def attach(self, device: str, options: dict) -> str:
        persist = options.pop("persist", True)
        if not isinstance(persist, bool):
            raise InvalidArgument("persist must be a boolean")
        opts = check_bridge_options(options, "Attach")
        dev = self.resolve(device)
        if dev.id in self.bridges:
            raise AlreadyAttached(f"{dev.id} is already attached")
        if dev.declared and dev.pcm != self.config.devices.get(dev.id, dev).pcm:
            raise NoSuchDevice(f"no such device: {device}")
        await self._create_bridge(dev.id, opts, persist)
        return dev.id

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

    async def _create_bridge(self, device_id: str, opts: dict, persist: bool) -> None:
        dev = self.registry.get(device_id)
        if dev is None:
            # persisted but not seen yet (unplugged USB device): wait for hotplug
            if persist:
                self.store.data["bridges"][device_id] = opts
            return
        spec = self._spec_for(dev, opts)
        bridge = Bridge(spec, lambda b, changed, d=device_id: self._on_bridge_change(d, changed))
        self.bridges[device_id] = bridge
        if persist:
            self.store.data["bridges"][device_id] = opts
            self._save()
        if self.listener is not None:
            self.listener.bridge_added(device_id, bridge)
        if not dev.present:
            bridge.device_removed()
        await self._reserve(dev)
        await bridge.start()
        log.info("attached %s as JACK client '%s'", device_id, spec.client_name)

    async def _reserve(self, dev: Device) -> None:
        """Claim the card with org.freedesktop.ReserveDevice1 so that PulseAudio/PipeWire let go
        of it (as jackdbus does); we hand it back only when it is not bridged any more."""
        if self.reserve_bus is None or dev.card_index is None or dev.id in self._reservations:
            return
        from .reserve import DeviceReservation
        reservation = DeviceReservation(
            self.reserve_bus, dev.card_index, "cardbridge", device_name=dev.client_name,
            on_release_requested=lambda priority, d=dev.id: d not in self.bridges)
        try:
            if await reservation.acquire():
                self._reservations[dev.id] = reservation
            else:
                log.warning("card %s is reserved by another application; bridging it anyway",
                            dev.id)
        except Exception as exc:
            log.warning("cannot reserve card %s: %s", dev.id, exc)

    async def _unreserve(self, device_id: str) -> None:
        reservation = self._reservations.pop(device_id, None)
        if reservation is not None:
            try:
                await reservation.release()
            except Exception as exc:
                log.debug("releasing the reservation of %s: %s", device_id, exc)

    async def detach(self, target: str) -> None:
        dev_id = self.bridge_for(target)
        bridge = self.bridges.pop(dev_id)
        if self._keeper is not None:
            self._keeper.bridge_down(dev_id)
        self._running_state.pop(dev_id, None)
        self.store.data["bridges"].pop(dev_id, None)
        self._save()
        if self.listener is not None:
            self.listener.bridge_removed(dev_id)
        await bridge.stop()
        await self._unreserve(dev_id)
        log.info("detached %s", dev_id)

    async def restart(self, device_id: str) -> None:
        bridge = self.bridges.get(device_id)
        if bridge is None:
            raise NoSuchBridge(f"no such bridge: {device_id}")
        if self._keeper is not None:
            self._keeper.bridge_down(device_id)
        self._running_state.pop(device_id, None)
        await bridge.restart()

    async def set_auto_attach(self, device: str, enabled: bool) -> None:
        dev = self.resolve(device)
        self.store.data["auto_attach"][dev.id] = bool(enabled)
        self._save()
        if enabled and dev.present and dev.id not in self.bridges:
            await self._create_bridge(dev.id, {}, persist=True)

    # -- events ----------------------------------------------------------------------------------
    def _on_bridge_change(self, device_id: str, changed: dict) -> None:
        if "state" in changed:
            up = changed["state"] == names.RUNNING
            was = self._running_state.get(device_id, False)
            bridge = self.bridges.get(device_id)
            if up and not was and self._keeper is not None and bridge is not None:
                self._keeper.bridge_up(device_id, bridge.spec.client_name)
            self._running_state[device_id] = up
        if self.listener is not None and device_id in self.bridges:
            self.listener.bridge_changed(device_id, changed)

    def _on_device_added(self, dev: Device) -> None:
        dev = self.registry.upsert(dev)
        self._remember_names()
        if self.listener is not None:
            info = dev.info()
            info["attached"] = dev.id in self.bridges
            info["auto_attach"] = self.auto_attach_of(dev)
            self.listener.device_added(dev.id, info)
        bridge = self.bridges.get(dev.id)
        if bridge is not None:
            asyncio.ensure_future(self._guarded(self._replug(dev, bridge)))
            return
        wanted = dev.id in self.store.data["bridges"] or self.auto_attach_of(dev)
        if wanted:
            opts = dict(self.store.data["bridges"].get(dev.id, {}))
            asyncio.ensure_future(self._guarded(self._create_bridge(dev.id, opts, persist=True)))

    async def _replug(self, dev: Device, bridge: Bridge) -> None:
        """The card came back. Its ALSA name is resolved fresh on every plug (card numbers and
        ids follow plug order): a new name needs a new worker, the same one only a nudge."""
        bridge.device_added()
        if bridge.spec.pcm != dev.pcm:
            bridge.spec.pcm = dev.pcm
            await bridge.respawn()      # a new worker, starting from the drift learnt so far

    async def _guarded(self, coro) -> None:
        try:
            await coro
        except Exception as exc:
            log.warning("%s", exc)

    def _on_device_removed(self, device_id: str) -> None:
        self.registry.mark_absent(device_id)
        bridge = self.bridges.get(device_id)
        if bridge is not None:
            bridge.device_removed()
        if self.listener is not None:
            self.listener.device_removed(device_id)

    def _on_jack(self, state) -> None:
        self.jack = JackInfo(bool(state.running), int(state.sample_rate or 0),
                             int(state.buffer_size or 0))
        self.manager_changed({"JackRunning": self.jack.running,
                              "JackSampleRate": self.jack.sample_rate,
                              "JackBufferSize": self.jack.buffer_size})
        for bridge in self.bridges.values():
            if self.jack.running:
                bridge.jack_started()
            else:
                bridge.jack_stopped()

    def manager_changed(self, changed: dict) -> None:
        if self.listener is not None:
            self.listener.manager_changed(changed)

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
