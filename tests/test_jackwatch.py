"""JackWatch against real JACK servers; runs in the test process (asyncio.run per test).

jackdbus is the real one, driven by `jack_control` on a private session bus with a private
HOME and a unique engine name (conftest `jackdbus`); plain jackd is the real one with a unique
server name (sandbox JackServer), killed with SIGKILL in one test and replaced by a new server
of the same name.
"""

from __future__ import annotations

import asyncio
import subprocess
import time

import pytest

from cardbridge.jackwatch import JackState, JackWatch
from testbench.jackserver import JackServer

pytestmark = pytest.mark.timeout(90)


async def wait_until(predicate, timeout: float, step: float = 0.05) -> bool:
    """Poll `predicate` in the loop until it holds or `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(step)
    return bool(predicate())


def jackd_processes_named(name: str) -> list[str]:
    out = subprocess.run(["pgrep", "-af", "jackd"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if f"-n {name} " in line]


@pytest.fixture
def stopped_jack_server(tmp_path):
    """A JackServer (dummy, 48 kHz / 256) with a unique name, not started yet."""
    server = JackServer(rate=48000, period=256, log_path=tmp_path / "jackd.log")
    yield server
    server.stop()


class Recorder:
    """The on_change listener: keeps every JackState reported, in order."""

    def __init__(self):
        self.states: list[JackState] = []

    def __call__(self, state: JackState) -> None:
        self.states.append(state)


def test_follows_jackdbus_start_stop_buffer_size_and_restart(jackdbus):
    async def scenario():
        seen = Recorder()
        watch = JackWatch(jackdbus.name, jackdbus.address, seen)
        await watch.start()
        try:
            assert await wait_until(lambda: watch.jackdbus_present, 10)
            assert not watch.state.running

            await asyncio.to_thread(jackdbus.control, "start")
            assert await wait_until(lambda: watch.state.running, 20), seen.states
            assert watch.state == JackState(True, 48000, 256)

            # The qjackctl way: new driver period, then switch master (`jack_control dps … sm`).
            await asyncio.to_thread(jackdbus.set_buffer_size, 512)
            assert await wait_until(lambda: watch.state.buffer_size == 512, 20), seen.states
            assert watch.state.running and watch.state.sample_rate == 48000

            await asyncio.to_thread(jackdbus.control, "stop")
            assert await wait_until(lambda: not watch.state.running, 20), seen.states
            reports_until_stopped = len(seen.states)

            await asyncio.to_thread(jackdbus.set_buffer_size, 256)
            await asyncio.to_thread(jackdbus.control, "start")
            assert await wait_until(lambda: watch.state.running, 20), seen.states
            assert watch.state == JackState(True, 48000, 256)
            # One "down" report for the stop, none repeated while JACK was away.
            assert [s.running for s in seen.states[:reports_until_stopped]].count(False) == 1

            # jackdbus itself exits with its server running, then comes back (NameOwnerChanged).
            await asyncio.to_thread(jackdbus.stop)
            assert await wait_until(lambda: not watch.state.running, 20), seen.states
            assert await wait_until(lambda: not watch.jackdbus_present, 10)
            await asyncio.to_thread(jackdbus.start)
            assert await wait_until(lambda: watch.jackdbus_present, 10)
            await asyncio.to_thread(jackdbus.control, "start")
            assert await wait_until(lambda: watch.state.running, 20), seen.states
        finally:
            await watch.stop()

    asyncio.run(scenario())


def test_follows_plain_jackd_through_kill_and_new_server(stopped_jack_server):
    server = stopped_jack_server

    async def scenario():
        seen = Recorder()
        watch = JackWatch(server.name, "", seen)   # "" = do not look for jackdbus
        await watch.start()
        try:
            # Polling must never start a server.
            await asyncio.sleep(1.0)
            assert not watch.state.running and seen.states == []
            assert jackd_processes_named(server.name) == []

            await asyncio.to_thread(server.start)
            assert await wait_until(lambda: watch.state.running, 20)
            assert watch.state == JackState(True, 48000, 256)

            await asyncio.to_thread(server.kill9)
            assert await wait_until(lambda: not watch.state.running, 20)

            await asyncio.to_thread(server.stop)    # frees the dead server's slot and files
            server.period = 128
            await asyncio.to_thread(server.start)   # a new server, same name
            assert await wait_until(lambda: watch.state.running, 20)
            assert watch.state == JackState(True, 48000, 128)

            await asyncio.to_thread(server.set_buffer_size, 512)
            assert await wait_until(lambda: watch.state.buffer_size == 512, 20)

            await asyncio.to_thread(server.stop)
            assert await wait_until(lambda: not watch.state.running, 20)
            assert [s.running for s in seen.states] == [True, False, True, True, False]
        finally:
            await watch.stop()

    asyncio.run(scenario())


def test_jackdbus_running_another_server_does_not_hide_plain_jackd(jackdbus, jack_server):
    async def scenario():
        # jackdbus keeps its own (unique) engine name; the watch follows the plain server.
        seen = Recorder()
        watch = JackWatch(jack_server.name, jackdbus.address, seen)
        await watch.start()
        try:
            assert await wait_until(lambda: watch.jackdbus_present, 10)
            assert await wait_until(lambda: watch.state.running, 20)
            await asyncio.to_thread(jackdbus.control, "start")   # the other server
            await asyncio.to_thread(jackdbus.control, "stop")
            await asyncio.sleep(0.5)
            assert watch.state.running
            assert [s.running for s in seen.states] == [True]
        finally:
            await watch.stop()

    asyncio.run(scenario())


def test_unreachable_session_bus_means_plain_following_only(jack_server):
    async def scenario():
        watch = JackWatch(jack_server.name, "unix:path=/nonexistent/cardbridge-test-bus",
                          Recorder())
        await watch.start()                        # one warning, no exception
        try:
            assert not watch.jackdbus_present
            assert await wait_until(lambda: watch.state.running, 20)
        finally:
            await watch.stop()

    asyncio.run(scenario())
