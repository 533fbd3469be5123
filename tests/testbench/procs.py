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
    cleanup: Callable[[], None] | None = None   # frees what it leaves behind once it is dead


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


def record_started(proc: subprocess.Popen, kind: str, description: str,
                   cleanup: Callable[[], None] | None = None) -> None:
    _started[proc.pid] = StartedProcess(proc.pid, kind, description, cleanup)


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


def unstopped_processes() -> list[StartedProcess]:
    """Processes started here whose owner never stopped them (alive, or dead and not cleaned
    up, e.g. a JackServer after kill9() without stop(): its JACK slot is still taken)."""
    return list(_started.values())


def is_my_child(pid: int) -> bool:
    """True if `pid` is alive and a child of this process (so the PID was not reused)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return False
    return fields[0] not in (b"Z", b"X") and int(fields[1]) == os.getpid()


def stop_leftover(process: StartedProcess, timeout: float = 5.0) -> None:
    """Stop a leaked child by its PID (SIGTERM, then SIGKILL) and run its clean-up.

    Signals go only to a live child of this process: a PID that died and was reused by
    somebody else's process is never touched.
    """
    if is_my_child(process.pid):
        os.kill(process.pid, signal.SIGTERM)
    if is_my_child(process.pid) and not wait_for(lambda: not pid_alive(process.pid), timeout):
        try:
            os.kill(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        wait_for(lambda: not pid_alive(process.pid), timeout)
    try:
        os.waitpid(process.pid, os.WNOHANG)
    except ChildProcessError:
        pass
    if process.cleanup is not None:
        try:
            process.cleanup()
        except Exception:   # noqa: BLE001 - best effort at the end of a session
            pass
    forget_started(process.pid)


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
