"""What systemd would do with the project's units, done by hand where systemd is not PID 1:
read a unit's settings, start its ExecStart= as its User= with its groups and the environment
systemd gives a service (STATE_DIRECTORY, NOTIFY_SOCKET, WATCHDOG_USEC), and be the service
manager's end of the notification socket.

Runs in the pytest process; the service it starts is a child process, stopped by PID.
"""

from __future__ import annotations

import grp
import os
import pwd
import shlex
import socket
import subprocess
import threading
import time
from pathlib import Path

from testbench import procs

# the environment systemd's system manager gives every service (systemd.exec(5))
SERVICE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def settings(text: str) -> dict[str, list[str]]:
    """Every Key=value of a unit or activation file (comments left out), values per key."""
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def seconds(value: str) -> float:
    """A systemd time span as the units here write it: '30', '30s', '2min'."""
    for suffix, factor in (("min", 60.0), ("ms", 0.001), ("s", 1.0)):
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * factor
    return float(value)


class NotifySocket:
    """The service manager's end of $NOTIFY_SOCKET (an abstract socket, which a service running
    as another user can reach): a thread receives every datagram and keeps it with the time it
    arrived."""

    def __init__(self):
        self.address = f"@cardbridge-test-notify-{os.getpid()}-{procs.unique_name('n')}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.address[1:])
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, dict]] = []
        self._open = True
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while self._open:
            try:
                data = self.sock.recv(4096)
            except (socket.timeout, OSError):
                continue
            fields = dict(line.split("=", 1) for line in data.decode().split("\n") if "=" in line)
            self.messages.append((time.monotonic(), fields))

    def drain(self) -> list[tuple[float, dict]]:
        return list(self.messages)

    def statuses(self) -> list[str]:
        return [m["STATUS"] for _, m in self.drain() if "STATUS" in m]

    def wait_for(self, key: str, value: str | None = None, timeout: float = 30.0,
                 alive: subprocess.Popen | None = None) -> dict:
        """The first message that sets `key` (to `value`); fails early if `alive` exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = next((m for _, m in self.drain()
                          if key in m and (value is None or m[key] == value)), None)
            if found is not None:
                return found
            if alive is not None and alive.poll() is not None:
                raise AssertionError(f"the service exited with {alive.returncode} before {key}")
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {key}={value} on the notify socket")

    def close(self) -> None:
        self._open = False
        self._thread.join()
        self.sock.close()


class UnitRun:
    """A service started as a system unit says: ExecStart= as User= (primary group, the user's
    groups and SupplementaryGroups=), in /, with systemd's environment for it. `state_root`
    stands for /var/lib: STATE_DIRECTORY is `state_root/<StateDirectory=>`, made for the user
    with StateDirectoryMode= as systemd makes it."""

    def __init__(self, unit_path: Path, env: dict, notify: NotifySocket, log_path: Path,
                 state_root: Path = Path("/var/lib")):
        self.unit = settings(Path(unit_path).read_text())
        self.argv = shlex.split(self.unit["ExecStart"][0])
        [user] = self.unit.get("User", ["root"])
        self.user = pwd.getpwnam(user)
        groups = set(os.getgrouplist(user, self.user.pw_gid))
        for name in " ".join(self.unit.get("SupplementaryGroups", [])).split():
            groups.add(grp.getgrnam(name).gr_gid)
        self.groups = sorted(groups)
        self.env = {"PATH": SERVICE_PATH, "LANG": "C.UTF-8", "USER": user, "LOGNAME": user,
                    "HOME": self.user.pw_dir, "SHELL": self.user.pw_shell,
                    "NOTIFY_SOCKET": notify.address, **env}
        if "WatchdogSec" in self.unit:
            self.env["WATCHDOG_USEC"] = str(int(seconds(self.unit["WatchdogSec"][0]) * 1e6))
        if "StateDirectory" in self.unit:
            state = Path(state_root) / self.unit["StateDirectory"][0]
            state.mkdir(parents=True, exist_ok=True)
            os.chown(state, self.user.pw_uid, self.user.pw_gid)
            os.chmod(state, int(self.unit.get("StateDirectoryMode", ["0755"])[0], 8))
            self.env["STATE_DIRECTORY"] = str(state)
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self, command: list[str] | None = None) -> "UnitRun":
        """Start it; `command` stands for ExecStart= where the program is not in its installed
        place (a staged installation, whose #! lines name the final place)."""
        prefix = ["setpriv", f"--reuid={self.user.pw_uid}", f"--regid={self.user.pw_gid}",
                  f"--groups={','.join(str(g) for g in self.groups)}", "--inh-caps=-all"]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([*prefix, *(command or self.argv)],
                                         env=self.env, cwd="/", stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT)
        procs.record_started(self.proc, "cardbridged", f"{self.argv[0]} as its unit says")
        return self

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM (what systemctl stop sends), its exit status."""
        if self.proc is None:
            return 0
        procs.terminate(self.proc, timeout)
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
