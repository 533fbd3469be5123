"""ConnectionKeeper against a real JACK server; runs in the test process (asyncio.run per test).

Bridges are stood in for by real JACK clients in subprocesses (JACK-Client), named and ported
like bridges; connections are made and removed by the real `jack_connect`/`jack_disconnect`
and read back with `jack_lsp -c`, so nothing is checked through the keeper's own eyes.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time

import pytest

from cardbridge.connections import ConnectionKeeper, dump_memory, parse_memory
from testbench.jackserver import JackServer

pytestmark = pytest.mark.timeout(120)

MIC = "USB Mic (port 2)"       # a bridge's client name, spaces and parentheses included
MIC_ID = "usb-Acme_Mic_123-00"

# A JACK client with fixed ports; "up" opens and activates it, "down" closes it, "quit" ends.
STAND_IN = textwrap.dedent("""
    import sys, time, jack
    jack.set_error_function(lambda m: None)
    jack.set_info_function(lambda m: None)
    name, outs, ins = sys.argv[1], sys.argv[2], sys.argv[3]
    client = None
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "up":
            deadline = time.monotonic() + 20
            while True:
                try:
                    client = jack.Client(name, use_exact_name=True, no_start_server=True)
                    break
                except jack.JackError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            for port in filter(None, outs.split(",")):
                client.outports.register(port)
            for port in filter(None, ins.split(",")):
                client.inports.register(port)
            client.activate()
        elif cmd == "down" and client is not None:
            client.deactivate()
            client.close()
            client = None
        elif cmd == "quit":
            break
        print(cmd, flush=True)
    if client is not None:
        client.deactivate()
        client.close()
""")


class StandIn:
    """A JACK client in a subprocess, driven line by line."""

    def __init__(self, server: JackServer, name: str, outs: list[str], ins: list[str]):
        env = dict(server.env(), PYTHONPATH=os.pathsep.join(sys.path))
        self.proc = subprocess.Popen([sys.executable, "-c", STAND_IN, name, ",".join(outs),
                                      ",".join(ins)], env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

    def _do(self, command: str) -> None:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == command, f"stand-in failed at {command}"

    async def up(self) -> None:
        await asyncio.to_thread(self._do, "up")

    async def down(self) -> None:
        await asyncio.to_thread(self._do, "down")

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def stand_ins(jack_server):
    made: list[StandIn] = []

    def make(name: str, outs: list[str], ins: list[str]) -> StandIn:
        made.append(StandIn(jack_server, name, outs, ins))
        return made[-1]

    yield make
    for stand_in in made:
        stand_in.close()


class Store:
    """The load/save pair the service gives the keeper (StateStore's `connections` section)."""

    def __init__(self, initial: dict | None = None):
        self.data = initial or {}
        self.saves = 0

    def load(self) -> dict:
        return self.data

    def save(self, data: dict) -> None:
        self.data = data
        self.saves += 1


def jack_tool(server: JackServer, *args: str) -> str:
    return subprocess.run(list(args), env=server.env(), capture_output=True, text=True,
                          timeout=30, check=True).stdout


def graph(server: JackServer) -> set[frozenset]:
    """Every connection of the server, as unordered port pairs (`jack_lsp -c`)."""
    edges = set()
    current = None
    for line in jack_tool(server, "jack_lsp", "-c").splitlines():
        if not line.strip():
            continue
        if line[0].isspace():
            edges.add(frozenset((current, line.strip())))
        else:
            current = line.strip()
    return edges


def edge(a: str, b: str) -> frozenset:
    return frozenset((a, b))


async def wait_until(predicate, timeout: float = 20, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(step)
    return bool(predicate())


async def wait_for_graph(server: JackServer, wanted: set, timeout: float = 20) -> set:
    deadline = time.monotonic() + timeout
    while True:
        now = await asyncio.to_thread(graph, server)
        if wanted <= now or time.monotonic() > deadline:
            return now
        await asyncio.sleep(0.1)


async def connect(server: JackServer, a: str, b: str) -> None:
    await asyncio.to_thread(jack_tool, server, "jack_connect", a, b)


async def disconnect(server: JackServer, a: str, b: str) -> None:
    await asyncio.to_thread(jack_tool, server, "jack_disconnect", a, b)


MIC_EDGES = {edge(f"{MIC}:capture_1", "system:playback_1"),
             edge(f"{MIC}:capture_2", "system:playback_2"),
             edge("system:capture_1", f"{MIC}:playback_1")}
MIC_MEMORY = {"capture_1": ["system:playback_1"], "capture_2": ["system:playback_2"],
              "playback_1": ["system:capture_1"]}


async def connect_mic(server: JackServer) -> None:
    await connect(server, f"{MIC}:capture_1", "system:playback_1")
    await connect(server, f"{MIC}:capture_2", "system:playback_2")
    await connect(server, "system:capture_1", f"{MIC}:playback_1")


def test_records_restores_after_reregistration_and_forgets_user_removals(jack_server, stand_ins):
    mic = stand_ins(MIC, ["capture_1", "capture_2"], ["playback_1"])
    store = Store()

    async def scenario():
        keeper = ConnectionKeeper(jack_server.name, store.load, store.save)
        await keeper.start()
        try:
            await mic.up()
            keeper.bridge_up(MIC_ID, MIC)
            await connect_mic(jack_server)
            assert await wait_until(lambda: keeper.connections(MIC_ID) == MIC_MEMORY)
            assert await wait_until(lambda: store.data == {MIC_ID: MIC_MEMORY})

            # The bridge's client goes away and comes back (replug, worker restart); nobody
            # calls bridge_down: the vanished connections are kept and restored.
            await mic.down()
            assert await wait_until(lambda: keeper.settling == 0)
            assert keeper.connections(MIC_ID) == MIC_MEMORY
            await mic.up()
            keeper.bridge_up(MIC_ID, MIC)
            assert MIC_EDGES <= await wait_for_graph(jack_server, MIC_EDGES)

            # The user removes one: forgotten, and not restored after the next comeback.
            await disconnect(jack_server, f"{MIC}:capture_2", "system:playback_2")
            assert await wait_until(lambda: "capture_2" not in keeper.connections(MIC_ID))
            assert await wait_until(lambda: "capture_2" not in store.data[MIC_ID])
            await mic.down()
            await mic.up()
            wanted = MIC_EDGES - {edge(f"{MIC}:capture_2", "system:playback_2")}
            now = await wait_for_graph(jack_server, wanted)
            assert wanted <= now
            assert edge(f"{MIC}:capture_2", "system:playback_2") not in now
        finally:
            await keeper.stop()

    asyncio.run(scenario())


@pytest.mark.parametrize("how", ["stop", "kill9"])
def test_restores_after_jack_server_restart_and_service_restart(jack_server, stand_ins, how):
    mic = stand_ins(MIC, ["capture_1", "capture_2"], ["playback_1"])
    store = Store()

    async def scenario():
        keeper = ConnectionKeeper(jack_server.name, store.load, store.save)
        await keeper.start()
        try:
            await mic.up()
            keeper.bridge_up(MIC_ID, MIC)
            await connect_mic(jack_server)
            assert await wait_until(lambda: keeper.connections(MIC_ID) == MIC_MEMORY)

            if how == "kill9":                           # a crash: no goodbye from JACK
                await asyncio.to_thread(jack_server.kill9)
            await asyncio.to_thread(jack_server.stop)    # everybody's connections vanish
            await mic.down()                             # the bridge waits for JACK
            await asyncio.to_thread(jack_server.start)
            await mic.up()
            keeper.bridge_up(MIC_ID, MIC)                # the manager: bridge running again
            assert MIC_EDGES <= await wait_for_graph(jack_server, MIC_EDGES)
            assert keeper.connections(MIC_ID) == MIC_MEMORY
        finally:
            await keeper.stop()
        assert store.data == {MIC_ID: MIC_MEMORY}

        # Service restart: a new keeper knows them from the store alone.
        await mic.down()
        await mic.up()
        second = ConnectionKeeper(jack_server.name, store.load, store.save)
        await second.start()
        try:
            second.bridge_up(MIC_ID, MIC)
            assert MIC_EDGES <= await wait_for_graph(jack_server, MIC_EDGES)
        finally:
            await second.stop()

    asyncio.run(scenario())


def test_peer_port_that_comes_back_is_reconnected(jack_server, stand_ins):
    mic = stand_ins(MIC, ["capture_1"], ["playback_1"])
    synth = stand_ins("Synth", ["out_1"], ["in_1"])
    store = Store()
    wanted = {edge("Synth:out_1", f"{MIC}:playback_1"), edge(f"{MIC}:capture_1", "Synth:in_1")}

    async def scenario():
        keeper = ConnectionKeeper(jack_server.name, store.load, store.save)
        await keeper.start()
        try:
            await mic.up()
            await synth.up()
            keeper.bridge_up(MIC_ID, MIC)
            await connect(jack_server, "Synth:out_1", f"{MIC}:playback_1")
            await connect(jack_server, f"{MIC}:capture_1", "Synth:in_1")
            assert await wait_until(lambda: len(keeper.connections(MIC_ID)) == 2)

            await synth.down()                            # the peer quits: kept
            assert await wait_until(lambda: keeper.settling == 0)
            assert len(keeper.connections(MIC_ID)) == 2
            await synth.up()                              # and comes back: reconnected
            assert wanted <= await wait_for_graph(jack_server, wanted)
        finally:
            await keeper.stop()

    asyncio.run(scenario())


def test_bad_stored_connections_are_ignored_not_fatal(jack_server, stand_ins):
    mic = stand_ins(MIC, ["capture_1"], [])
    store = Store({MIC_ID: {"capture_1": ["system:playback_1", 7, "nocolon"], "bad:name": ["x:y"],
                            "capture_9": "system:playback_2"},
                   "other": "garbage", 5: {}})

    async def scenario():
        keeper = ConnectionKeeper(jack_server.name, store.load, store.save)
        await keeper.start()
        try:
            await mic.up()
            keeper.bridge_up(MIC_ID, MIC)
            wanted = {edge(f"{MIC}:capture_1", "system:playback_1")}
            assert wanted <= await wait_for_graph(jack_server, wanted)
        finally:
            await keeper.stop()

    asyncio.run(scenario())


def test_memory_round_trip():
    memory = parse_memory({"dev": {"capture_1": ["b:x", "a:y"], "capture_2": []}})
    assert dump_memory(memory) == {"dev": {"capture_1": ["a:y", "b:x"]}}
    assert parse_memory(None) == {} and parse_memory([1, 2]) == {}
