"""A real JACK dummy server with a unique name, and the clean-up of a dead server's leftovers.

Runs in the process that builds the sandbox (test process, `make demo`, benchmarks); jackd itself
is a child process. Every JACK tool is run with JACK_NO_START_SERVER=1, so nothing here can
ever start a server by accident.

jack2 keeps one registry for all servers of the machine in POSIX shared memory
(`/dev/shm/jack-shm-registry`, guarded by the System V semaphore 0x282929): a header with 8
server slots (pid + "jack-<uid>:<server name>:"), then 256 segment entries (allocator pid, size,
POSIX name "/jack-<uid>-<index>"). A server that dies without its clean shutdown keeps its slot
and its segments; a new server of the *same* name reclaims the slot, any other name cannot, so
every leaked slot blocks one later server. `free_server_leftovers()` releases, by name, the slot
of a dead server of that name, the segments its PID allocated, and its socket and semaphore
files in /dev/shm — never anything that belongs to a live server or another name.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import re
import signal
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .procs import (SandboxError, pid_alive, record_started, run_tool, terminate, unique_name,
                    wait_for)

SHM_DIR = Path("/dev/shm")
REGISTRY_PATH = SHM_DIR / "jack-shm-registry"
REGISTRY_MAGIC = 0x4A41434B          # "JACK"
REGISTRY_SEM_KEY = 0x282929
MAX_SERVERS = 8
_SERVER_TABLE_OFFSET = 24            # magic, protocol, type, size, hdr_len, entry_len


def jack_env(server: str | None = None, **extra: str) -> dict:
    """Environment for JACK tools and clients: never auto-start a server; default server name."""
    env = dict(os.environ, JACK_NO_START_SERVER="1")
    if server:
        env["JACK_DEFAULT_SERVER"] = server
    env.update(extra)
    return env


# ---------------------------------------------------------------------------------------------
# The shared-memory registry


@dataclass(frozen=True)
class ServerSlot:
    index: int
    pid: int
    name: str        # the server name (without the "jack-<uid>:" prefix and trailing ':')
    uid: int
    alive: bool


class _RegistryLock:
    """jack2's registry lock: semop(-1) on the semaphore 0x282929 with SEM_UNDO."""

    _SEM_UNDO = 0x1000
    _IPC_CREAT = 0o1000
    _IPC_EXCL = 0o2000

    class _SemBuf(ctypes.Structure):
        _fields_ = [("sem_num", ctypes.c_ushort), ("sem_op", ctypes.c_short),
                    ("sem_flg", ctypes.c_short)]

    def __init__(self):
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._semid = self._libc.semget(REGISTRY_SEM_KEY, 0, 0)
        if self._semid < 0:
            # Same as jack2: create it with one token when no JACK program ever ran.
            self._semid = self._libc.semget(REGISTRY_SEM_KEY, 1,
                                            self._IPC_CREAT | self._IPC_EXCL | 0o666)
            if self._semid >= 0:
                self._op(1, 0)
            else:
                self._semid = self._libc.semget(REGISTRY_SEM_KEY, 0, 0)
        if self._semid < 0:
            raise SandboxError(f"cannot open JACK's registry semaphore: "
                               f"{os.strerror(ctypes.get_errno())}")

    def _op(self, value: int, flags: int) -> None:
        buf = self._SemBuf(0, value, flags)
        if self._libc.semop(self._semid, ctypes.byref(buf), 1) < 0:
            raise SandboxError(f"semop on JACK's registry semaphore failed: "
                               f"{os.strerror(ctypes.get_errno())}")

    def __enter__(self):
        self._op(-1, self._SEM_UNDO)
        return self

    def __exit__(self, *exc):
        self._op(1, self._SEM_UNDO)


class _Registry:
    """A mapped view of /dev/shm/jack-shm-registry (layout from jack2's common/shm.h)."""

    def __init__(self, writable: bool):
        flags = os.O_RDWR if writable else os.O_RDONLY
        fd = os.open(REGISTRY_PATH, flags)
        try:
            size = os.fstat(fd).st_size
            prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
            self.map = mmap.mmap(fd, size, mmap.MAP_SHARED, prot)
        finally:
            os.close(fd)
        magic, = struct.unpack_from("<I", self.map, 0)
        self.hdr_len, self.entry_len = struct.unpack_from("<II", self.map, 16)
        if magic != REGISTRY_MAGIC or self.hdr_len <= _SERVER_TABLE_OFFSET:
            self.map.close()
            raise SandboxError("JACK's shm registry has an unknown layout")
        self.server_len = (self.hdr_len - _SERVER_TABLE_OFFSET) // MAX_SERVERS
        self.entries = (len(self.map) - self.hdr_len) // self.entry_len

    def close(self) -> None:
        self.map.close()

    # server slots: pid (int32) then the prefix string
    def server(self, i: int) -> tuple[int, str]:
        off = _SERVER_TABLE_OFFSET + i * self.server_len
        pid, = struct.unpack_from("<i", self.map, off)
        raw = bytes(self.map[off + 4:off + self.server_len]).split(b"\0", 1)[0]
        return pid, raw.decode("utf-8", "replace")

    def clear_server(self, i: int) -> None:
        off = _SERVER_TABLE_OFFSET + i * self.server_len
        self.map[off:off + self.server_len] = bytes(self.server_len)

    # segment entries: index (int16), allocator (int32 at +4), size (uint32 at +8), id at +12
    def segment(self, i: int) -> tuple[int, int, str]:
        off = self.hdr_len + i * self.entry_len
        allocator, size = struct.unpack_from("<iI", self.map, off + 4)
        raw = bytes(self.map[off + 12:off + self.entry_len]).split(b"\0", 1)[0]
        return allocator, size, raw.decode("utf-8", "replace")

    def clear_segment(self, i: int) -> None:
        off = self.hdr_len + i * self.entry_len
        self.map[off + 4:off + self.entry_len] = bytes(self.entry_len - 4)


_PREFIX = re.compile(r"^jack-(\d+):(.*):$")


def server_slots() -> list[ServerSlot]:
    """The occupied server slots of JACK's registry (alive or leaked), for diagnostics."""
    if not REGISTRY_PATH.exists():
        return []
    reg = _Registry(writable=False)
    try:
        slots = []
        for i in range(MAX_SERVERS):
            pid, prefix = reg.server(i)
            if pid == 0:
                continue
            match = _PREFIX.match(prefix)
            uid, name = (int(match.group(1)), match.group(2)) if match else (-1, prefix)
            slots.append(ServerSlot(i, pid, name, uid, pid_alive(pid)))
        return slots
    finally:
        reg.close()


def slots_in_use() -> int:
    """How many of the 8 JACK server slots are taken (including leaked ones)."""
    return len(server_slots())


def slot_report() -> str:
    """One line for error messages: which slots are taken, by whom, alive or leaked."""
    slots = server_slots()
    if not slots:
        return "JACK server slots: 0 of 8 in use"
    parts = [f"{s.name}(pid {s.pid}{'' if s.alive else ', dead'})" for s in slots]
    return f"JACK server slots: {len(slots)} of {MAX_SERVERS} in use: " + ", ".join(parts)


def _server_files(name: str, uid: int) -> list[Path]:
    """Socket and semaphore files jack2 creates in /dev/shm for server `name`."""
    sockets = re.compile(rf"^jack_{re.escape(name)}_{uid}_\d+$")
    sems = f"jack_sem.{uid}_{name}_"
    live_longer = [s.name for s in server_slots()
                   if s.alive and s.name != name and s.name.startswith(name + "_")]
    found = []
    for path in SHM_DIR.iterdir():
        base = path.name
        if sockets.match(base):
            found.append(path)
        elif base.startswith(sems) and not any(
                base.startswith(f"jack_sem.{uid}_{other}_") for other in live_longer):
            found.append(path)
    return found


def free_server_leftovers(name: str, pids: tuple[int, ...] = ()) -> list[str]:
    """Release what a dead JACK server named `name` left behind; returns what was freed.

    Frees the registry slot(s) holding `name` for this uid whose PID is dead, the segments
    allocated by those PIDs or by any of `pids` (the server processes we know we started; must
    be dead), and the /dev/shm socket/semaphore files of that name. Does nothing at all while a
    server of that name is alive.
    """
    uid = os.getuid()
    prefix = f"jack-{uid}:{name}:"
    freed: list[str] = []
    if any(pid_alive(p) for p in pids):
        raise SandboxError(f"JACK server {name} is still running; refusing to free its slot")
    if REGISTRY_PATH.exists():
        with _RegistryLock():
            reg = _Registry(writable=True)
            try:
                dead = set(pids)
                for i in range(MAX_SERVERS):
                    pid, slot_prefix = reg.server(i)
                    if pid == 0 or slot_prefix != prefix:
                        continue
                    if pid_alive(pid):
                        return freed         # a live server of this name: not ours to touch
                    reg.clear_server(i)
                    dead.add(pid)
                    freed.append(f"slot {i} (pid {pid})")
                for i in range(reg.entries):
                    allocator, size, shm_name = reg.segment(i)
                    if allocator == 0 or allocator not in dead:
                        continue
                    if shm_name.startswith("/jack-"):
                        try:
                            os.unlink(SHM_DIR / shm_name.lstrip("/"))
                            freed.append(shm_name.lstrip("/"))
                        except FileNotFoundError:
                            pass
                    reg.clear_segment(i)
            finally:
                reg.close()
    for path in _server_files(name, uid):
        try:
            path.unlink()
            freed.append(path.name)
        except FileNotFoundError:
            pass
    return freed


# ---------------------------------------------------------------------------------------------
# The server


def server_answers(name: str, timeout: float = 10.0) -> bool:
    """True when a real client can connect to server `name` right now (jack_wait -c)."""
    try:
        done = run_tool(["jack_wait", "-s", name, "-c"], env=jack_env(name), timeout=timeout,
                        check=False)
    except SandboxError:
        return False
    return done.returncode == 0 and "not running" not in done.stdout


class JackServer:
    """`jackd -n <unique name> -d dummy -r <rate> -p <period>` as a child process.

    `start()` returns only once a client can connect. `stop()` is SIGTERM, wait, SIGKILL as a
    last resort, then `free_server_leftovers()` for this name and PID. `kill9()` simulates a
    crash (the leftovers stay until `stop()`). Usable as a context manager.
    """

    def __init__(self, name: str | None = None, rate: int = 48000, period: int = 256,
                 nperiods: int = 2, realtime: bool = False, log_path: str | Path | None = None,
                 extra_driver_args: tuple[str, ...] = ()):
        self.name = name or unique_name("jack")
        self.rate = rate
        self.period = period
        # The dummy driver has no periods parameter; kept so callers can describe the setup.
        self.nperiods = nperiods
        self.realtime = realtime
        self.log_path = Path(log_path) if log_path else None
        self.extra_driver_args = tuple(extra_driver_args)
        self.proc: subprocess.Popen | None = None
        self._pids: list[int] = []            # every jackd PID started under this name
        self._log = None

    # -- facts
    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def env(self, **extra: str) -> dict:
        """Environment for clients of this server (JACK_DEFAULT_SERVER, JACK_NO_START_SERVER)."""
        return jack_env(self.name, **extra)

    def command(self) -> list[str]:
        return ["jackd", "-n", self.name, "--realtime" if self.realtime else "--no-realtime",
                "-d", "dummy", "-r", str(self.rate), "-p", str(self.period),
                *self.extra_driver_args]

    # -- lifecycle
    def start(self, timeout: float = 30.0) -> "JackServer":
        if self.is_running():
            return self
        if self.proc is not None:                        # restarted after a stop or a crash
            self._cleanup()
        if self.log_path:
            self._log = open(self.log_path, "ab")
        out = self._log or subprocess.DEVNULL
        self.proc = subprocess.Popen(self.command(), env=jack_env(), stdin=subprocess.DEVNULL,
                                     stdout=out, stderr=subprocess.STDOUT if self._log else out,
                                     start_new_session=True)
        self._pids.append(self.proc.pid)
        record_started(self.proc, "jackd", f"JACK server {self.name}",
                       cleanup=lambda: free_server_leftovers(self.name, tuple(self._pids)))
        ready = wait_for(lambda: self.proc.poll() is not None or self._socket_exists(),
                         timeout, 0.02)
        ready = ready and self.proc.poll() is None and wait_for(
            lambda: self.proc.poll() is not None or server_answers(self.name), timeout, 0.1)
        if not ready or self.proc.poll() is not None:
            status = self.proc.poll()
            self.stop()
            why = f"exited with status {status}" if status is not None else \
                f"did not answer within {timeout:g} s"
            raise SandboxError(f"jackd -n {self.name} {why}; {slot_report()}")
        return self

    def _socket_exists(self) -> bool:
        return (SHM_DIR / f"jack_{self.name}_{os.getuid()}_0").exists()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server cleanly and free whatever it left behind (idempotent)."""
        if self.proc is not None:
            terminate(self.proc, timeout)
        self._cleanup()

    def kill9(self) -> None:
        """Simulate a crash: SIGKILL, reaped; slot and segments stay until stop()/start()."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def _cleanup(self) -> None:
        free_server_leftovers(self.name, tuple(self._pids))
        if self._log is not None:
            self._log.close()
            self._log = None

    # -- runtime changes
    def set_buffer_size(self, frames: int, timeout: float = 20.0) -> None:
        """Change the running server's buffer size the way qjackctl does (jack_set_buffer_size)."""
        run_tool(["jack_bufsize", str(int(frames))], env=self.env(), timeout=timeout)
        self.period = int(frames)

    def __enter__(self) -> "JackServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"JackServer(name={self.name!r}, pid={self.pid}, rate={self.rate}, " \
               f"period={self.period})"
