"""Process helpers shared by the sandbox components (JACK servers, buses, jackdbus, namespaces).

Runs in whichever process builds a sandbox: the test process, `make demo`, the benchmarks.
Every process a sandbox component starts is recorded here by PID, so that a test session can
check at its end that none of them is still alive (`leftover_processes()`), and every one is
stopped by PID, never by name.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Callable

_serial = itertools.count(1)


@dataclass(frozen=True)
class StartedProcess:
    pid: int
    kind: str          # "jackd", "dbus-daemon", "jackdbus", "netns-holder", ...
    description: str   # one line: what it was started for


_started: dict[int, StartedProcess] = {}


class SandboxError(RuntimeError):
    """A sandbox component could not be started or stopped; the message is one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def unique_name(tag: str) -> str:
    """A name unique on this machine for this process: `cb<tag>-<pid>-<n>`.

    Used for JACK server names (which must be unique per machine), netns names and directory
    prefixes. Letters, digits and '-' only: safe for jackd, ALSA configs and file names.
    """
    return f"cb{tag}-{os.getpid()}-{next(_serial)}"


def record_started(proc: subprocess.Popen, kind: str, description: str) -> None:
    _started[proc.pid] = StartedProcess(proc.pid, kind, description)


def forget_started(pid: int) -> None:
    _started.pop(pid, None)


def started_processes() -> list[StartedProcess]:
    return list(_started.values())


def pid_alive(pid: int) -> bool:
    """True while a process with this PID exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


def leftover_processes() -> list[StartedProcess]:
    """Processes started through this module that are still running (should be none)."""
    return [p for p in _started.values() if pid_alive(p.pid)]


def wait_for(predicate: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    """Poll `predicate` until it is true or `timeout` seconds passed; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return bool(predicate())
        time.sleep(step)


def terminate(proc: subprocess.Popen | None, timeout: float = 10.0,
              sig: int = signal.SIGTERM) -> int | None:
    """Stop one process we started: `sig` (SIGTERM), wait, SIGKILL as a last resort; reaped.

    Returns the exit status (negative for a signal), None when there was no process.
    """
    if proc is None:
        return None
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    forget_started(proc.pid)
    return proc.returncode


def run_tool(args: list[str], env: dict | None = None, timeout: float = 30.0,
             check: bool = True) -> subprocess.CompletedProcess:
    """Run a command-line tool to completion with captured text output.

    With `check`, a failure raises SandboxError with the tool's own one-line reason.
    """
    try:
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise SandboxError(f"{args[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise SandboxError(f"{' '.join(args)} did not finish within {timeout:g} s") from None
    if check and done.returncode != 0:
        reason = (done.stderr.strip() or done.stdout.strip()).splitlines()
        raise SandboxError(f"{' '.join(args)} failed ({done.returncode}): "
                           f"{reason[-1] if reason else 'no output'}")
    return done
