"""Shared pytest fixtures: real components from testbench, each torn down by PID.

Runs in the test process. Every fixture gives its component a unique name (JACK server names,
bus directories, namespaces), so tests may run next to other test sessions on the machine.

    jack_server       a started real-time JackServer (jackd -R -d dummy, 48 kHz / 256), function scope
    session_bus       a started session-like PrivateBus
    system_bus        a started system-like PrivateBus including the project's dbus/*.conf
    make_bus          factory: make_bus("system", policy_dirs=[…], service_dirs=[…])
    jackdbus          a started, configured JackDbus on `session_bus` (JACK server not started)
    netns             a NetNamespace with a UdevInjector sending inside it (`netns.injector`)
    tmp_alsa_config   a private directory for ALSA configuration files
    virtual_cards     factory for virtual sound cards (testbench.vcard), sets
                      ALSA_CONFIG_PATH for the test process; skipped until that module exists

At the end of the session, every process the sandbox started that nobody stopped (still
running, or dead with its JACK slot never freed), and any jackd / jackdbus / dbus-daemon still
a child of this process, is reported, stopped by PID and cleaned up, and fails the run.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
# The test bench (tests/testbench) is not part of the installed service: child processes that
# run its modules (`python -m testbench.probe`, the demo's pieces) find it through PYTHONPATH.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
# Every daemon a test starts keeps its card locks (cardbridge.cardlock) in this run's own
# directory, never in the machine's /run/lock: test runs side by side must not see each other.
if not os.environ.get("CARDBRIDGE_LOCK_DIR"):
    import tempfile
    os.environ["CARDBRIDGE_LOCK_DIR"] = tempfile.mkdtemp(prefix="cardbridge-test-locks-")

from testbench import procs  # noqa: E402
from testbench.busdaemon import PrivateBus  # noqa: E402
from testbench.jackdbus import JackDbus  # noqa: E402
from testbench.jackserver import JackServer  # noqa: E402
from testbench.udevinject import NetNamespace, UdevInjector  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PROJECT_DBUS_DIR = REPO / "dbus"
WATCHED_NAMES = ("jackd", "jackdbus", "dbus-daemon")


# ---------------------------------------------------------------------------------------------
# JACK


@pytest.fixture
def jack_server(tmp_path):
    """A real JACK dummy server (48 kHz, 256 frames) under a unique name, stopped by PID.

    Real-time, as JACK runs for the people who use bridges: a non-real-time dummy server on a
    shared virtual machine loses cycles whenever the host takes the CPU away, and the bridges
    would be measured against a clock that stutters."""
    server = JackServer(rate=48000, period=256, log_path=tmp_path / "jackd.log", realtime=True)
    server.start()
    yield server
    server.stop()


# ---------------------------------------------------------------------------------------------
# D-Bus


@pytest.fixture
def make_bus():
    """Factory for private buses; every bus it made is stopped at teardown."""
    made: list[PrivateBus] = []

    def make(kind: str = "session", policy_dirs=(), service_dirs=(), extra_config: str = ""):
        bus = PrivateBus(kind, policy_dirs=policy_dirs, service_dirs=service_dirs,
                         extra_config=extra_config)
        made.append(bus)
        return bus.start()

    yield make
    for bus in reversed(made):
        bus.stop()


@pytest.fixture
def session_bus(make_bus):
    """A session-like private bus: `.address`, `.env()`."""
    return make_bus("session")


@pytest.fixture
def system_bus(make_bus):
    """A system-like private bus (deny by default) with the project's dbus/*.conf included."""
    dirs = [PROJECT_DBUS_DIR] if any(PROJECT_DBUS_DIR.glob("*.conf")) else []
    return make_bus("system", policy_dirs=dirs)


@pytest.fixture
def jackdbus(session_bus, tmp_path):
    """jackdbus on `session_bus` with a private HOME, configured (dummy, 48 kHz, 256, unique
    engine name `jackdbus.name`); its JACK server is not started."""
    bench = JackDbus(session_bus, tmp_path / "jackdbus-home")
    bench.start()
    yield bench
    bench.stop()


# ---------------------------------------------------------------------------------------------
# udev


class UdevNamespace:
    """A private network namespace plus an injector sending udev events inside it."""

    def __init__(self, namespace: NetNamespace, injector: UdevInjector):
        self.namespace = namespace
        self.injector = injector

    def popen(self, args, **kwargs):
        """Start a process inside the namespace (the service under test, a monitor, …)."""
        return self.namespace.popen(args, **kwargs)

    def run(self, args, **kwargs):
        return self.namespace.run(args, **kwargs)

    def wrap(self, args):
        return self.namespace.wrap(args)


@pytest.fixture
def netns():
    ns = NetNamespace().start()
    injector = UdevInjector(ns)
    yield UdevNamespace(ns, injector)
    injector.close()
    ns.stop()


# ---------------------------------------------------------------------------------------------
# ALSA


@pytest.fixture
def tmp_alsa_config(tmp_path):
    """A private directory for ALSA configuration (virtual cards, test PCMs)."""
    path = tmp_path / "alsa"
    path.mkdir()
    return path


class VirtualCardSet:
    """What `virtual_cards(...)` returns: the cards, the ALSA_CONFIG_PATH value, controls."""

    def __init__(self, module, cards, alsa_config_path: str):
        self._module = module
        self.cards = list(cards)
        self.alsa_config_path = alsa_config_path

    def env(self, base: dict | None = None) -> dict:
        """Environment for a child process that should see the cards."""
        env = dict(os.environ if base is None else base)
        env["ALSA_CONFIG_PATH"] = self.alsa_config_path
        return env

    def control(self, card):
        """The card's CardControl (unplug/replug/stall), from its shared-memory name."""
        shm = getattr(card, "shm", None) or getattr(card, "shm_name", None)
        return self._module.CardControl(shm)

    def __iter__(self):
        return iter(self.cards)

    def __getitem__(self, i):
        return self.cards[i]

    def __len__(self):
        return len(self.cards)


@pytest.fixture
def virtual_cards(tmp_alsa_config, monkeypatch):
    """Factory: virtual_cards(VirtualCard(...) or dict of VirtualCard kwargs, ...).

    Writes the ALSA config for all cards made so far and sets ALSA_CONFIG_PATH for the test
    process; returns a VirtualCardSet. Skips the test while testbench.vcard is absent.
    """
    try:
        vcard = importlib.import_module("testbench.vcard")
    except ImportError as exc:
        pytest.skip(f"virtual sound card not available: {exc}")
    made: list = []

    def make(*cards):
        for card in cards:
            made.append(card if isinstance(card, vcard.VirtualCard) else vcard.VirtualCard(**card))
        value = vcard.write_alsa_config(made, tmp_alsa_config / "asound.conf")
        monkeypatch.setenv("ALSA_CONFIG_PATH", str(value))
        return VirtualCardSet(vcard, made[len(made) - len(cards):], str(value))

    yield make
    for card in made:
        close = getattr(card, "close", None)
        if callable(close):
            close()


# ---------------------------------------------------------------------------------------------
# Session-wide leak check


def _children_named(names) -> list[tuple[int, str]]:
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        comm = stat[stat.index(b"(") + 1:stat.rindex(b")")].decode(errors="replace")
        fields = stat[stat.rindex(b")") + 2:].split()
        if fields[0] in (b"Z", b"X"):
            continue
        if int(fields[1]) == me and comm in names:
            found.append((int(entry), comm))
    return found


def pytest_sessionfinish(session, exitstatus):
    leaked = {p.pid: p for p in procs.unstopped_processes()}
    for pid, comm in _children_named(WATCHED_NAMES):
        leaked.setdefault(pid, procs.StartedProcess(pid, comm, "started by a test"))
    if not leaked:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    for pid, process in sorted(leaked.items()):
        if reporter is not None:
            state = "still running" if procs.pid_alive(pid) else "dead, never cleaned up"
            reporter.write_line(f"LEAKED PROCESS: pid {pid}: {process.kind} "
                                f"({process.description}), {state}; stopping it and "
                                f"freeing what it left", red=True)
        procs.stop_leftover(process)
    session.exitstatus = 1
