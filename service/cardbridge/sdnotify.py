"""The service manager's notification socket (sd_notify, written by hand): READY, STATUS,
STOPPING and watchdog pings as datagrams to $NOTIFY_SOCKET.

Runs in the main asyncio process only. `Notifier.from_environment()` takes NOTIFY_SOCKET,
WATCHDOG_USEC and WATCHDOG_PID out of the environment (as sd_notify's unset_environment does),
so that the bridge workers, which inherit the environment, never talk to the service manager
as if they were the service.
"""

from __future__ import annotations

import os
import socket


class Notifier:
    """Sends notifications to one socket address; a Notifier without an address sends nothing.

    `watchdog_interval` is the watchdog timeout in seconds that the service manager asked for
    (WatchdogSec=), or None when no watchdog is wanted from this process.
    """

    def __init__(self, address: str | None = None, watchdog_interval: float | None = None):
        self.address = address or None
        self.watchdog_interval = watchdog_interval

    @classmethod
    def from_environment(cls, environ=None) -> "Notifier":
        env = os.environ if environ is None else environ
        address = env.pop("NOTIFY_SOCKET", None)
        usec = env.pop("WATCHDOG_USEC", None)
        pid = env.pop("WATCHDOG_PID", None)
        interval = None
        try:
            if usec is not None and (pid is None or int(pid) == os.getpid()) and int(usec) > 0:
                interval = int(usec) / 1e6
        except ValueError:
            interval = None
        return cls(address, interval)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *assignments: str) -> bool:
        """One datagram of newline-separated VARIABLE=value assignments; False if not sent."""
        if not self.address or not assignments:
            return False
        path = self.address
        if path.startswith("@"):
            path = "\0" + path[1:]
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(path)
                sock.sendall("\n".join(assignments).encode())
            return True
        except OSError:
            return False
