"""Remember the JACK connections of every bridge's ports and put them back when ports return.

Runs in the main asyncio process. The main process's JACK client (jacklink.JackLink, shared with
JackWatch) watches the graph: its port-connect, port-registration and shutdown callbacks run in
JACK's notification thread and do nothing but hand names to the loop. Bookkeeping and deciding
happen in the loop; what asks libjack (reading the graph, connecting) runs in the link's own
thread (JackLink.in_thread), never on the loop.

What is remembered, per stable device id: for each of the bridge's ports, by short name
("capture_1"), the full names of the ports it is connected to ("system:playback_1"), whoever
made the connection (jack_connect, qjackctl, a session manager, us).

A connection that disappears is forgotten only when the user removed it: it is judged SETTLE
seconds later, and kept when either end went away meanwhile (unplug, bridge restart, peer
quit), when JACK itself left, or when the bridge was reported down. Remembered connections are
made again from the loop whenever the bridge's ports come back (`bridge_up`, or its ports
re-registering) and whenever a missing peer port appears.

Persisted through the `load()`/`save(dict)` callbacks as
`{device_id: {short_port: [peer_full_name, ...]}}`. Bounded: at most MAX_PEERS_PER_PORT peers a
port (the oldest remembered goes first: a port patched to ever new clients does not grow the
state without end); devices are forgotten by the manager's pruning (`forget_device`).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from dataclasses import dataclass
from typing import Callable

import jack

from .jacklink import JackLink, cancel_task

log = logging.getLogger(__name__)

SETTLE = 1.0        # s before a vanished connection counts as removed by the user
SAVE_DELAY = 0.2    # s to gather several changes into one save
GONE_MEMORY = 30.0  # s an unregistered port name is remembered as "went away"
MAX_PEERS_PER_PORT = 32
MAX_PORTS = 256     # short port names per device (a bridge has at most 64 + 64)

# peers of a port: an insertion-ordered dict used as a set (oldest first)
Memory = dict[str, dict[str, dict[str, None]]]


@dataclass
class _Removal:
    device_id: str
    short: str      # our port, short name
    ours: str       # our port, full name
    peer: str       # the other end, full name
    at: float       # monotonic time the disconnection was reported


def parse_memory(data: object) -> Memory:
    """Validate persisted connections; drops malformed entries (with one warning)."""
    memory: Memory = {}
    dropped = 0
    if not isinstance(data, dict):
        if data not in (None, {}):
            log.warning("stored connections are not a mapping; starting with none")
        return memory
    for device_id, ports in data.items():
        if not isinstance(device_id, str) or not isinstance(ports, dict):
            dropped += 1
            continue
        for short, peers in list(ports.items())[:MAX_PORTS]:
            if not isinstance(short, str) or ":" in short or not isinstance(peers, (list, tuple)):
                dropped += 1
                continue
            good = dict.fromkeys(p for p in peers if isinstance(p, str) and ":" in p)
            while len(good) > MAX_PEERS_PER_PORT:
                del good[next(iter(good))]
            dropped += len(peers) - len(good)
            if good:
                memory.setdefault(device_id, {})[short] = good
    if dropped:
        log.warning("ignored %d malformed stored connection entries", dropped)
    return memory


def dump_memory(memory: Memory) -> dict:
    return {dev: {short: sorted(peers) for short, peers in sorted(ports.items()) if peers}
            for dev, ports in sorted(memory.items())
            if any(ports.values())}


class ConnectionKeeper:
    """Keeps the bridges' JACK connections across restarts, replugs and service restarts."""

    def __init__(self, server_name: str | None, load: Callable[[], dict],
                 save: Callable[[dict], None], link: JackLink | None = None):
        """`link` is the main process's JACK client, shared; one of its own when None."""
        self.server_name = server_name
        self._load = load
        self._save = save
        self._own_link = link is None
        self.link = link if link is not None else JackLink(server_name)
        self.link.subscribe(self)
        self._memory: Memory = {}
        self._bridges: dict[str, str] = {}      # device id -> JACK client name (bridge is up)
        self._by_client: dict[str, str] = {}    # JACK client name -> device id
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._to_sync: set[str] = set()          # device ids whose connections to restore
        self._removals: list[_Removal] = []
        self._due: list[_Removal] = []           # removals whose verdict is due (the task judges)
        self._judging = 0                        # ... and how many it is judging right now
        self._gone: dict[str, float] = {}        # port full name -> when it was unregistered
        self._settle_handle: asyncio.TimerHandle | None = None
        self._save_handle: asyncio.TimerHandle | None = None
        self._dirty = False
        self._stopping = False

    # ----------------------------------------------------------------- public interface

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            self._memory = parse_memory(self._load())
        except Exception as exc:
            log.warning("cannot load stored connections (%s); starting with none", exc)
            self._memory = {}
        self._task = asyncio.create_task(self._run(), name="connections")
        if self._own_link:
            await self.link.start()

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        for handle in (self._settle_handle, self._save_handle):
            if handle is not None:
                handle.cancel()
        await cancel_task(self._task)
        self._task = None
        if self._own_link:
            await self.link.stop()
        self._flush_save()

    def bridge_up(self, device_id: str, client_name: str) -> None:
        """The bridge's ports exist (again): record what they have, restore what they lack."""
        old = self._bridges.get(device_id)
        if old is not None and old != client_name:
            self._by_client.pop(old, None)
        self._bridges[device_id] = client_name
        self._by_client[client_name] = device_id
        self._to_sync.add(device_id)
        self._wake.set()

    def bridge_down(self, device_id: str) -> None:
        """The bridge is going away on purpose (detach, restart): its disconnections are not
        the user's doing. What it had stays remembered for the next bridge_up."""
        client_name = self._bridges.pop(device_id, None)
        if client_name is not None:
            self._by_client.pop(client_name, None)
        self._to_sync.discard(device_id)
        self._removals = [r for r in self._removals if r.device_id != device_id]

    @property
    def settling(self) -> int:
        """How many vanished connections still wait for their verdict."""
        return len(self._removals) + len(self._due) + self._judging

    def connections(self, device_id: str) -> dict[str, list[str]]:
        """What is remembered for a device: short port name -> sorted peer port names."""
        return {short: sorted(peers) for short, peers in self._memory.get(device_id, {}).items()
                if peers}

    # ----------------------------------------------------------------- main task

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()   # everything before this turn is looked at below
            if self.link.up and self._to_sync:
                pending, self._to_sync = self._to_sync, set()
                for device_id in pending:
                    await self._sync_bridge(device_id)
                continue
            if self._due:
                due, self._due = self._due, []
                self._judging = len(due)
                try:
                    await self._judge_removals(due)
                finally:
                    self._judging = 0
                continue
            await self._wake.wait()

    # ----------------------------------------------------------------- the link (loop)

    def link_up(self, client: jack.Client) -> None:
        self._to_sync.update(self._bridges)
        self._wake.set()

    def link_lost(self) -> None:
        self._removals.clear()   # JACK left: nothing vanished by the user's hand

    # ----------------------------------------------------------------- graph events (loop)

    def _ours(self, port_name: str) -> tuple[str, str] | None:
        """(device id, short port name) when the port belongs to a bridge that is up."""
        client_name, sep, short = port_name.partition(":")
        device_id = self._by_client.get(client_name) if sep else None
        return (device_id, short) if device_id is not None else None

    def link_connect(self, a: str, b: str, connected: bool) -> None:
        for ours, peer in ((a, b), (b, a)):
            owner = self._ours(ours)
            if owner is None:
                continue
            device_id, short = owner
            if connected:
                self._remember(device_id, short, peer)
            else:
                self._removals.append(_Removal(device_id, short, ours, peer, time.monotonic()))
                self._schedule_settle(SETTLE)

    def link_registration(self, port_name: str, registered: bool) -> None:
        if not registered:
            self._gone[port_name] = time.monotonic()
            return
        self._gone.pop(port_name, None)
        owner = self._ours(port_name)
        if owner is not None:
            self._to_sync.add(owner[0])
        else:
            for device_id in self._bridges:
                if any(port_name in peers for peers in self._memory.get(device_id, {}).values()):
                    self._to_sync.add(device_id)
        if self._to_sync:
            self._wake.set()

    # ----------------------------------------------------------------- bookkeeping (loop)

    def _remember(self, device_id: str, short: str, peer: str) -> None:
        ports = self._memory.setdefault(device_id, {})
        if short not in ports and len(ports) >= MAX_PORTS:
            return
        peers = ports.setdefault(short, {})
        if peer not in peers:
            peers[peer] = None
            while len(peers) > MAX_PEERS_PER_PORT:
                del peers[next(iter(peers))]      # the oldest remembered peer
            log.debug("remember %s %s <-> %s", device_id, short, peer)
            self._schedule_save()

    def forget_device(self, device_id: str) -> None:
        """Forget everything remembered for a device (the manager pruned it)."""
        if self._memory.pop(device_id, None) is not None:
            self._schedule_save()

    def _forget(self, device_id: str, short: str, peer: str) -> None:
        peers = self._memory.get(device_id, {}).get(short)
        if peers and peer in peers:
            del peers[peer]
            log.debug("forget %s %s <-> %s (removed by the user)", device_id, short, peer)
            self._schedule_save()

    def _schedule_settle(self, delay: float) -> None:
        if self._settle_handle is None and not self._stopping:
            self._settle_handle = self._loop.call_later(delay, self._settle)

    def _settle(self) -> None:
        self._settle_handle = None
        now = time.monotonic()
        self._due += [r for r in self._removals if now - r.at >= SETTLE]
        self._removals = [r for r in self._removals if now - r.at < SETTLE]
        if self._due:
            self._wake.set()
        if self._removals:
            self._schedule_settle(max(0.05, SETTLE - (now - min(r.at for r in self._removals))))

    async def _judge_removals(self, due: list[_Removal]) -> None:
        """Forget the connections the user removed (both ends still there, not connected)."""
        client = self.link.client
        if client is not None:
            candidates = [r for r in due if self._removal_could_be_the_users(r)]
            still = await self.link.in_thread(_still_connected, client,
                                              [(r.ours, r.peer) for r in candidates])
            for removal, connected in zip(candidates, still):
                if connected is False:
                    self._forget(removal.device_id, removal.short, removal.peer)
        now = time.monotonic()
        self._gone = {name: at for name, at in self._gone.items() if now - at < GONE_MEMORY}

    def _removal_could_be_the_users(self, removal: _Removal) -> bool:
        if self._bridges.get(removal.device_id) is None:
            return False                                   # bridge went down on purpose
        for name in (removal.ours, removal.peer):
            gone_at = self._gone.get(name)
            if gone_at is not None and gone_at >= removal.at - 0.001:
                return False                               # that end went away
        return True

    async def _sync_bridge(self, device_id: str) -> None:
        """Record the bridge's current connections, then make the remembered missing ones."""
        client = self.link.client
        client_name = self._bridges.get(device_id)
        if client is None or client_name is None:
            return
        wanted = {short: set(peers) for short, peers in self._memory.get(device_id, {}).items()}
        result = await self.link.in_thread(_restore, client, client_name, wanted)
        if result is None:
            return
        current, made, failed = result
        for short, peers in current.items():
            for peer in peers:
                self._remember(device_id, short, peer)
        if made or failed:
            log.info("%s: restored %d connection(s)%s", client_name, made,
                     f", {failed} failed" if failed else "")

    # ----------------------------------------------------------------- persistence

    def _schedule_save(self) -> None:
        self._dirty = True
        if self._save_handle is None and self._loop is not None and not self._stopping:
            self._save_handle = self._loop.call_later(SAVE_DELAY, self._flush_save)

    def _flush_save(self) -> None:
        if self._save_handle is not None:
            self._save_handle.cancel()
            self._save_handle = None
        if not self._dirty:
            return
        self._dirty = False
        try:
            self._save(dump_memory(self._memory))
        except Exception as exc:
            log.warning("cannot save connections: %s", exc)


# ------------------------------------------------------------------- libjack (the link's thread)

def _still_connected(client: jack.Client, pairs: list[tuple[str, str]]) -> list[bool | None]:
    """For each (our port, peer port): are they connected; None when an end is missing now."""
    out: list[bool | None] = []
    for ours_name, peer in pairs:
        try:
            ours = client.get_port_by_name(ours_name)
            client.get_port_by_name(peer)
            out.append(peer in {p.name for p in client.get_all_connections(ours)})
        except jack.JackError:
            out.append(None)
    return out


def _restore(client: jack.Client, client_name: str, wanted: dict[str, set[str]]):
    """The connections of the bridge's ports now (short name -> peers), then connect the wanted
    ones that are missing and whose peer exists; returns (current, made, failed), or None when
    JACK's port list cannot be read."""
    prefix = client_name + ":"
    try:
        all_ports = {p.name: p for p in client.get_ports()}
    except jack.JackError:
        return None
    current: dict[str, set[str]] = {}
    made = failed = 0
    for name, port in all_ports.items():
        if not name.startswith(prefix):
            continue
        short = name[len(prefix):]
        try:
            current[short] = {p.name for p in client.get_all_connections(port)}
        except jack.JackError:
            continue
        for peer in sorted(wanted.get(short, set()) - current[short]):
            if peer not in all_ports:
                continue                     # restored when that port appears
            src, dst = (name, peer) if port.is_output else (peer, name)
            try:
                client.connect(src, dst)
                made += 1
            except jack.JackErrorCode as exc:
                if exc.code != errno.EEXIST:   # else: made by a sync a moment ago
                    failed += 1
                    log.debug("cannot restore %s -> %s: %s", src, dst, exc)
            except jack.JackError as exc:
                failed += 1
                log.debug("cannot restore %s -> %s: %s", src, dst, exc)
    return current, made, failed
