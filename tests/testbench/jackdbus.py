"""A real jackdbus on a private session bus with a private HOME, driven by real `jack_control`.

Runs in the process that builds the sandbox (test process, `make demo`, benchmarks); jackdbus
is a child process (it runs the JACK server inside itself, so the server's registry slot
carries jackdbus' PID). The engine gets a unique server name and the dummy driver, so nothing
here can disturb another JACK server; JACK_NO_START_SERVER=1 everywhere.

    bus = PrivateBus("session").start()
    with JackDbus(bus, tmp_path / "home") as jd:     # jackdbus up and configured
        jd.start_server()                             # what qjackctl's Start does
        jd.is_started()  -> True
        jd.set_buffer_size(512)
        jd.stop_server()
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from .busdaemon import PrivateBus
from .jackserver import free_server_leftovers, jack_env, server_answers
from .procs import SandboxError, record_started, run_tool, terminate, unique_name, wait_for

JACKDBUS_NAME = "org.jackaudio.service"
CONTROLLER_PATH = "/org/jackaudio/Controller"
CONTROL_IFACE = "org.jackaudio.JackControl"


class JackDbus:
    """jackdbus + its configuration; `name` is the JACK server name its engine uses."""

    def __init__(self, bus: PrivateBus, home: str | Path, name: str | None = None,
                 rate: int = 48000, period: int = 256, realtime: bool = False):
        if bus.kind != "session":
            raise ValueError("jackdbus lives on a session bus")
        self.bus = bus
        self.home = Path(home)
        self.name = name or unique_name("jdbus")
        self.rate = rate
        self.period = period
        self.realtime = realtime
        self.proc: subprocess.Popen | None = None
        self._pids: list[int] = []

    # -- facts
    @property
    def address(self) -> str:
        return self.bus.address

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def log_path(self) -> Path:
        return self.home / ".log" / "jack" / "jackdbus.log"

    def env(self, **extra: str) -> dict:
        """Environment of jackdbus and jack_control: private bus and HOME, no auto-start."""
        return jack_env(self.name, HOME=str(self.home),
                        DBUS_SESSION_BUS_ADDRESS=self.bus.address, **extra)

    # -- jack_control
    def control(self, *args: str, timeout: float = 30.0) -> str:
        """Run `jack_control ARGS…` against this jackdbus; returns its stdout."""
        return run_tool(["jack_control", *args], env=self.env(), timeout=timeout).stdout

    def _name_has_owner(self) -> bool:
        done = run_tool(["busctl", f"--address={self.bus.address}", "call",
                         "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                         "NameHasOwner", "s", JACKDBUS_NAME], timeout=10, check=False)
        return done.returncode == 0 and done.stdout.strip() == "b true"

    # -- lifecycle
    def start(self, timeout: float = 30.0) -> "JackDbus":
        """Start jackdbus and configure it: dummy driver, rate, period, unique engine name."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        self.home.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(["jackdbus", "auto"], env=self.env(),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        self._pids.append(self.proc.pid)
        record_started(self.proc, "jackdbus", f"jackdbus for JACK server {self.name}",
                       cleanup=lambda: free_server_leftovers(self.name, tuple(self._pids)))
        if not wait_for(lambda: self.proc.poll() is not None or self._name_has_owner(),
                        timeout, 0.05) or self.proc.poll() is not None:
            self.stop()
            raise SandboxError(f"jackdbus did not appear on {self.bus.address} "
                               f"(see {self.log_path})")
        self.control("eps", "name", self.name,
                     "eps", "realtime", "true" if self.realtime else "false",
                     "ds", "dummy",
                     "dps", "rate", str(self.rate),
                     "dps", "period", str(self.period))
        return self

    def is_started(self) -> bool:
        """IsStarted, as `jack_control status` reports it."""
        done = run_tool(["jack_control", "status"], env=self.env(), timeout=30, check=False)
        if "started" not in done.stdout and "stoped" not in done.stdout:
            raise SandboxError(f"jack_control status failed: "
                               f"{(done.stderr.strip().splitlines() or ['no output'])[-1]}")
        return done.returncode == 0

    def start_server(self, timeout: float = 30.0) -> None:
        """`jack_control start`; returns once a client can connect to the server."""
        self.control("start", timeout=timeout)
        if not wait_for(lambda: server_answers(self.name), timeout, 0.1):
            raise SandboxError(f"JACK server {self.name} started by jackdbus does not answer")

    def stop_server(self, timeout: float = 30.0) -> None:
        """`jack_control stop`; returns once the server is gone."""
        self.control("stop", timeout=timeout)
        wait_for(lambda: not server_answers(self.name), timeout, 0.1)

    def set_buffer_size(self, frames: int, timeout: float = 30.0) -> None:
        """New period as a driver parameter; a running server switches to it (`sm`)."""
        args = ["dps", "period", str(int(frames))]
        if self.is_started():
            args.append("sm")
        self.control(*args, timeout=timeout)
        self.period = int(frames)

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the server, make jackdbus exit, then free this name's JACK slot (idempotent)."""
        if self.proc is not None and self.proc.poll() is None:
            run_tool(["jack_control", "stop", "exit"], env=self.env(), timeout=timeout,
                     check=False)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        terminate(self.proc, timeout)
        if self._pids:
            free_server_leftovers(self.name, tuple(self._pids))

    def __enter__(self) -> "JackDbus":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"JackDbus(name={self.name!r}, pid={self.pid}, address={self.address!r})"
