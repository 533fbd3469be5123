"""JackWatch against real JACK servers; runs in the test process (asyncio.run per test).

jackdbus is the real one, driven by `jack_control` on a private session bus with a private
HOME and a unique engine name; plain jackd is the real one with a unique server name, killed
with SIGKILL in one test and replaced by a new server of the same name.
"""

from __future__ import annotations

import asyncio
import glob
import itertools
import os
import signal
import subprocess
import time

import pytest

from cardbridge.jackwatch import JackState, JackWatch

pytestmark = pytest.mark.timeout(90)

# ----------------------------------------------------------------------------- bench helpers
# (also used by test_connections.py; to be replaced by the shared tests/conftest.py fixtures)

_serial = itertools.count(1)

BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={path}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


def unique_server_name(tag: str) -> str:
    return f"cbt-{tag}-{os.getpid()}-{next(_serial)}"


async def wait_until(predicate, timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(step)
    return bool(predicate())


def jack_env(**extra) -> dict:
    return dict(os.environ, JACK_NO_START_SERVER="1", **extra)


def server_answers(name: str) -> bool:
    return subprocess.run(["jack_lsp", "-s", name], env=jack_env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, timeout=20).returncode == 0


def jackd_processes_named(name: str) -> list[str]:
    out = subprocess.run(["pgrep", "-af", "jackd"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if f"-n {name} " in line]


def remove_server_leftovers(name: str) -> None:
    """/dev/shm files a killed server or client of ours left behind (never anybody else's)."""
    for path in glob.glob(f"/dev/shm/jack_sem.*_{name}_*") + glob.glob(f"/dev/shm/jack_{name}_*"):
        try:
            os.unlink(path)
        except OSError:
            pass


class PlainJackd:
    """A real jackd with the dummy driver under a unique name; start() may be called again."""

    def __init__(self, name: str):
        self.name = name
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def start(self, period: int = 256) -> None:
        if self.proc is not None:
            # Reap the previous server: a zombie still "exists" for JACK's registry, which
            # would then refuse the new server of the same name.
            self.proc.wait(10)
        self.proc = subprocess.Popen(["jackd", "-n", self.name, "-d", "dummy", "-r", "48000",
                                      "-p", str(period)], env=jack_env(),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not server_answers(self.name):
            assert self.proc.poll() is None, "jackd exited at start"
            assert time.monotonic() < deadline, "jackd did not come up"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None:
            self.proc.wait(10)
        if self.proc is not None and self.proc.returncode != 0:
            # A server that died badly keeps its registry slot: a clean run under the same
            # name reclaims it.
            self.proc = None
            self.start()
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)
        self.proc = None
        remove_server_leftovers(self.name)


class JackDbus:
    """A private session bus with a real jackdbus on it, engine named `name`, dummy driver."""

    def __init__(self, tmp_path, name: str):
        self.tmp = tmp_path
        self.name = name
        self.bus_proc = None
        self.jackdbus_proc = None
        self.address = ""

    def env(self) -> dict:
        return jack_env(HOME=str(self.tmp / "home"), DBUS_SESSION_BUS_ADDRESS=self.address)

    def start(self) -> None:
        (self.tmp / "home").mkdir(exist_ok=True)
        conf = self.tmp / "session.conf"
        conf.write_text(BUS_CONFIG.format(path=self.tmp / "bus"))
        self.bus_proc = subprocess.Popen(["dbus-daemon", "--nofork", f"--config-file={conf}",
                                          "--print-address"], stdout=subprocess.PIPE,
                                         stderr=subprocess.DEVNULL, text=True)
        self.address = self.bus_proc.stdout.readline().strip()
        assert self.address, "dbus-daemon did not start"
        self.jackdbus_proc = subprocess.Popen(["jackdbus", "auto"], env=self.env(),
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for args in (["eps", "name", self.name], ["ds", "dummy"], ["dps", "rate", "48000"],
                     ["dps", "period", "256"]):
            self.control_sync(*args)

    def control_sync(self, *args: str) -> None:
        deadline = time.monotonic() + 20
        while True:
            done = subprocess.run(["jack_control", *args], env=self.env(), capture_output=True,
                                  text=True, timeout=30)
            if done.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.1)   # jackdbus may not own its name yet
        assert done.returncode == 0, f"jack_control {' '.join(args)}: {done.stdout}{done.stderr}"

    async def control(self, *args: str) -> None:
        await asyncio.to_thread(self.control_sync, *args)

    def stop(self) -> None:
        if self.jackdbus_proc is not None:
            subprocess.run(["jack_control", "stop"], env=self.env(), capture_output=True,
                           timeout=30)
            subprocess.run(["jack_control", "exit"], env=self.env(), capture_output=True,
                           timeout=30)
            try:
                self.jackdbus_proc.wait(10)
            except subprocess.TimeoutExpired:
                self.jackdbus_proc.terminate()
                self.jackdbus_proc.wait(10)
        if self.bus_proc is not None:
            self.bus_proc.terminate()
            self.bus_proc.wait(10)
        for name in (self.name, self.name + "-other"):
            remove_server_leftovers(name)


# ----------------------------------------------------------------------------- tests


@pytest.fixture
def server_name():
    return unique_server_name("jw")


@pytest.fixture
def jackdbus(tmp_path, server_name):
    bench = JackDbus(tmp_path, server_name)
    bench.start()
    yield bench
    bench.stop()


@pytest.fixture
def plain_jackd(server_name):
    bench = PlainJackd(server_name)
    yield bench
    bench.stop()


class Recorder:
    """The on_change listener: keeps every JackState reported, in order."""

    def __init__(self):
        self.states: list[JackState] = []

    def __call__(self, state: JackState) -> None:
        self.states.append(state)


def test_follows_jackdbus_start_stop_buffer_size_and_restart(jackdbus, server_name):
    async def scenario():
        seen = Recorder()
        watch = JackWatch(server_name, jackdbus.address, seen)
        await watch.start()
        try:
            assert await wait_until(lambda: watch.jackdbus_present, 10)
            assert not watch.state.running

            await jackdbus.control("start")
            assert await wait_until(lambda: watch.state.running, 20), seen.states
            assert watch.state == JackState(True, 48000, 256)

            # A buffer-size change the qjackctl way: new driver parameter + switch master.
            await jackdbus.control("dps", "period", "512")
            await jackdbus.control("sm")
            assert await wait_until(lambda: watch.state.buffer_size == 512, 20), seen.states
            assert watch.state.running and watch.state.sample_rate == 48000

            await jackdbus.control("stop")
            assert await wait_until(lambda: not watch.state.running, 20), seen.states
            reports_while_stopped = len(seen.states)

            await jackdbus.control("dps", "period", "256")
            await jackdbus.control("start")
            assert await wait_until(lambda: watch.state.running, 20), seen.states
            assert watch.state == JackState(True, 48000, 256)
            # Every report while stopped was the single "down" one; nothing repeated.
            assert [s.running for s in seen.states[:reports_while_stopped]].count(False) == 1
        finally:
            await watch.stop()

    asyncio.run(scenario())


def test_follows_plain_jackd_through_kill_and_new_server(plain_jackd, server_name):
    async def scenario():
        seen = Recorder()
        watch = JackWatch(server_name, "", seen)  # "" = do not look for jackdbus
        await watch.start()
        try:
            # Polling must never start a server.
            await asyncio.sleep(1.0)
            assert not watch.state.running and seen.states == []
            assert jackd_processes_named(server_name) == []

            await asyncio.to_thread(plain_jackd.start)
            assert await wait_until(lambda: watch.state.running, 20)
            assert watch.state == JackState(True, 48000, 256)

            os.kill(plain_jackd.pid, signal.SIGKILL)
            await asyncio.to_thread(plain_jackd.proc.wait, 10)
            assert await wait_until(lambda: not watch.state.running, 20)

            await asyncio.to_thread(plain_jackd.start, 128)   # reclaims the dead one's slot
            assert await wait_until(lambda: watch.state.running, 20)
            assert watch.state == JackState(True, 48000, 128)

            await asyncio.to_thread(plain_jackd.stop)
            assert await wait_until(lambda: not watch.state.running, 20)
            assert [s.running for s in seen.states] == [True, False, True, False]
        finally:
            await watch.stop()

    asyncio.run(scenario())


def test_jackdbus_running_another_server_does_not_hide_plain_jackd(jackdbus, plain_jackd,
                                                                   server_name):
    async def scenario():
        await jackdbus.control("eps", "name", server_name + "-other")
        seen = Recorder()
        watch = JackWatch(server_name, jackdbus.address, seen)
        await watch.start()
        try:
            assert await wait_until(lambda: watch.jackdbus_present, 10)
            await asyncio.to_thread(plain_jackd.start)
            assert await wait_until(lambda: watch.state.running, 20)
            await jackdbus.control("start")       # the other server: no effect on ours
            await jackdbus.control("stop")
            await asyncio.sleep(0.5)
            assert watch.state.running
        finally:
            await watch.stop()

    asyncio.run(scenario())


def test_missing_session_bus_means_plain_following_only(plain_jackd, server_name):
    async def scenario():
        watch = JackWatch(server_name, "unix:path=/nonexistent/cardbridge-test-bus", Recorder())
        await watch.start()                        # one warning, no exception
        try:
            assert not watch.jackdbus_present
            await asyncio.to_thread(plain_jackd.start)
            assert await wait_until(lambda: watch.state.running, 20)
        finally:
            await watch.stop()

    asyncio.run(scenario())
