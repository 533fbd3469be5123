"""ReserveDevice1 on a real private session bus (cardbridge.reserve); runs in the test process.

The other party is real too: busctl for property reads and RequestRelease calls, and a second
Python process holding or asking for the same card with its own DeviceReservation (the protocol
is symmetric, so both roles are exercised against each other).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time

import pytest

from cardbridge.dbuslib import MessageBus
from cardbridge.reserve import DeviceReservation
from testbench.busdaemon import PrivateBus

pytestmark = pytest.mark.timeout(60)

# The second party: holds (or bids for) Audio<N> with a given priority and answer, reports on
# stdout, and lets go when stdin closes.
OTHER_PARTY = textwrap.dedent("""
    import asyncio, sys
    from cardbridge.dbuslib import MessageBus
    from cardbridge.reserve import DeviceReservation

    async def main(address, card, priority, answer):
        bus = await MessageBus(bus_address=address).connect()
        loop = asyncio.get_running_loop()
        gone = asyncio.Event()
        def on_lost():
            print("lost", flush=True)
        res = DeviceReservation(bus, card, "other-app", device_name="Other device",
                                priority=priority, on_release_requested=lambda p: answer == "yes",
                                on_lost=on_lost)
        print("acquired" if await res.acquire() else "refused", flush=True)
        loop.add_reader(sys.stdin.fileno(), gone.set)
        await gone.wait()
        await res.release()
        bus.disconnect()

    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]))
""")


@pytest.fixture
def session_bus():
    with PrivateBus("session") as bus:
        yield bus.address


class OtherParty:
    def __init__(self, address: str, card: int, priority: int, answer: str):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        self.proc = subprocess.Popen([sys.executable, "-c", OTHER_PARTY, address, str(card),
                                      str(priority), answer],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

    async def line(self, timeout: float = 20.0) -> str:
        loop = asyncio.get_running_loop()
        return (await asyncio.wait_for(loop.run_in_executor(None, self.proc.stdout.readline), timeout)).strip()

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def busctl(address: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["busctl", f"--address={address}", *args], capture_output=True, text=True,
                          timeout=20)


def name_owner_exists(address: str, name: str) -> bool:
    return busctl(address, "call", "org.freedesktop.DBus", "/org/freedesktop/DBus",
                  "org.freedesktop.DBus", "NameHasOwner", "s", name).stdout.strip() == "b true"


async def wait_until(predicate, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def run(coro):
    return asyncio.run(coro)


def test_acquire_free_card_serves_properties_and_answers_release_requests(session_bus):
    async def scenario():
        bus = await MessageBus(bus_address=session_bus).connect()
        answers = []

        def decide(priority):
            answers.append(priority)
            return priority >= 1000

        res = DeviceReservation(bus, 3, "cardbridge", device_name="USB Mic (port 2)",
                                on_release_requested=decide)
        assert await res.acquire() is True and res.owned
        path = "/org/freedesktop/ReserveDevice1/Audio3"
        name = "org.freedesktop.ReserveDevice1.Audio3"
        loop = asyncio.get_running_loop()

        def get(prop):
            return busctl(session_bus, "get-property", name, path, "org.freedesktop.ReserveDevice1", prop)

        assert (await loop.run_in_executor(None, get, "ApplicationName")).stdout.strip() == 's "cardbridge"'
        assert (await loop.run_in_executor(None, get, "ApplicationDeviceName")).stdout.strip() \
            == 's "USB Mic (port 2)"'
        assert (await loop.run_in_executor(None, get, "Priority")).stdout.strip() == "i 10"

        def ask(priority):
            return busctl(session_bus, "call", name, path, "org.freedesktop.ReserveDevice1",
                          "RequestRelease", "i", str(priority)).stdout.strip()

        assert await loop.run_in_executor(None, ask, 5) == "b false"      # lower: refused unasked
        assert await loop.run_in_executor(None, ask, 10) == "b false"     # equal: refused unasked
        assert await loop.run_in_executor(None, ask, 100) == "b false"    # higher: we decide no
        assert await loop.run_in_executor(None, ask, 5000) == "b true"    # higher: we decide yes
        assert answers == [100, 5000]

        await res.release()
        assert not res.owned
        assert not await loop.run_in_executor(None, name_owner_exists, session_bus, name)
        bus.disconnect()

    run(scenario())


def test_higher_priority_application_takes_card_when_we_agree(session_bus):
    async def scenario():
        bus = await MessageBus(bus_address=session_bus).connect()
        lost = asyncio.Event()
        res = DeviceReservation(bus, 4, on_release_requested=lambda p: True, on_lost=lost.set)
        assert await res.acquire()
        other = OtherParty(session_bus, 4, 1000, "no")
        try:
            assert await other.line() == "acquired"
            await asyncio.wait_for(lost.wait(), 20)
            assert not res.owned
        finally:
            other.close()
        bus.disconnect()

    run(scenario())


def test_higher_priority_application_is_refused_while_card_in_use(session_bus):
    async def scenario():
        bus = await MessageBus(bus_address=session_bus).connect()
        res = DeviceReservation(bus, 5, on_release_requested=lambda p: False)
        assert await res.acquire()
        other = OtherParty(session_bus, 5, 1000, "yes")
        try:
            assert await other.line() == "refused"
            assert res.owned
        finally:
            other.close()
        await res.release()
        bus.disconnect()

    run(scenario())


def test_we_take_card_from_lower_priority_owner_that_agrees(session_bus):
    async def scenario():
        bus = await MessageBus(bus_address=session_bus).connect()
        other = OtherParty(session_bus, 6, 0, "yes")          # PulseAudio-like
        try:
            assert await other.line() == "acquired"
            res = DeviceReservation(bus, 6)
            assert await res.acquire() is True
            assert await other.line() == "lost"
            await res.release()
        finally:
            other.close()
        bus.disconnect()

    run(scenario())


def test_we_cannot_take_card_from_higher_priority_owner(session_bus):
    async def scenario():
        bus = await MessageBus(bus_address=session_bus).connect()
        other = OtherParty(session_bus, 7, 2**31 - 1, "yes")   # jackdbus-like: never gives it up
        try:
            assert await other.line() == "acquired"
            res = DeviceReservation(bus, 7)
            assert await res.acquire() is False
            assert not res.owned
            await res.release()
        finally:
            other.close()
        bus.disconnect()

    run(scenario())


def test_no_bus_means_nothing_to_coordinate():
    async def scenario():
        res = DeviceReservation(None, 1)
        assert await res.acquire() is True
        await res.release()

    run(scenario())
