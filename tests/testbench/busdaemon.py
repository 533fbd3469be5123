"""Private D-Bus buses: a real dbus-daemon with a generated config, session-like or system-like.

Runs in the process that builds the sandbox (test process, `make demo`, benchmarks); the
dbus-daemon is a child process, stopped by PID.

* session-like: the owner (and everyone able to reach the socket) may own any name and call
  anything, like a login session bus.
* system-like: deny by default like the distribution's system bus — anyone may connect, own
  nothing, call nothing except the bus driver; signals and replies pass — and the `*.conf`
  files of the given policy directories (e.g. the project's `dbus/` folder) are included
  unchanged to punch the holes, so the policy is really enforced.

Both listen on a socket *file* in a private directory (mode 0755, so an unprivileged uid used
with `setpriv` can reach it; a file, not an abstract socket, so processes in other network
namespaces can reach it too). Service activation works from the given service directories,
without the setuid helper.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterable
from xml.sax.saxutils import escape

from .procs import SandboxError, record_started, terminate

_DOCTYPE = ('<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"\n'
            ' "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">\n')

_SESSION_POLICY = """\
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
  </policy>
"""

# Deny-by-default, written for this bench with the semantics of a distribution's system bus.
_SYSTEM_POLICY = """\
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Properties"/>
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"
          send_member="UpdateActivationEnvironment"/>
  </policy>
  <policy user="root">
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Monitoring"/>
  </policy>
"""


class PrivateBus:
    """A private dbus-daemon. `address`, `socket_path`, `pid`, `env()`, `stop()`.

    kind: "session" or "system". policy_dirs: directories whose `*.conf` files are included
    (system-like: the holes in the deny-all policy; session-like: extra restrictions, if any).
    service_dirs: directories of activation `.service` files. extra_config: raw XML added
    inside <busconfig> (tests use it for a one-off policy).
    """

    def __init__(self, kind: str = "session", policy_dirs: Iterable[str | Path] = (),
                 service_dirs: Iterable[str | Path] = (), extra_config: str = "",
                 runtime_dir: str | Path | None = None):
        if kind not in ("session", "system"):
            raise ValueError(f"bus kind must be 'session' or 'system', not {kind!r}")
        self.kind = kind
        self.policy_dirs = [Path(p).resolve() for p in policy_dirs]
        self.service_dirs = [Path(p).resolve() for p in service_dirs]
        self.extra_config = extra_config
        self._own_dir = runtime_dir is None
        self.dir = Path(runtime_dir) if runtime_dir else None
        self.proc: subprocess.Popen | None = None
        self.address = ""

    @property
    def socket_path(self) -> Path:
        return self.dir / "bus"

    @property
    def config_path(self) -> Path:
        return self.dir / f"{self.kind}.conf"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def env_var(self) -> str:
        return "DBUS_SYSTEM_BUS_ADDRESS" if self.kind == "system" else "DBUS_SESSION_BUS_ADDRESS"

    def env(self, base: dict | None = None, **extra: str) -> dict:
        """An environment whose session (or system) bus is this one."""
        env = dict(os.environ if base is None else base)
        env[self.env_var] = self.address
        env.update(extra)
        return env

    def config_text(self) -> str:
        parts = [_DOCTYPE, "<busconfig>\n", f"  <type>{self.kind}</type>\n",
                 f"  <listen>unix:path={escape(str(self.socket_path))}</listen>\n",
                 "  <auth>EXTERNAL</auth>\n"]
        parts += [f"  <servicedir>{escape(str(d))}</servicedir>\n" for d in self.service_dirs]
        parts.append(_SYSTEM_POLICY if self.kind == "system" else _SESSION_POLICY)
        parts += [f"  <includedir>{escape(str(d))}</includedir>\n" for d in self.policy_dirs]
        if self.extra_config:
            parts.append(self.extra_config.rstrip() + "\n")
        parts.append("</busconfig>\n")
        return "".join(parts)

    def start(self, timeout: float = 20.0) -> "PrivateBus":
        if self.proc is not None and self.proc.poll() is None:
            return self
        if self.dir is None:
            self.dir = Path(tempfile.mkdtemp(prefix=f"cardbridge-{self.kind}-bus-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o755)
        self.config_path.write_text(self.config_text())
        self.proc = subprocess.Popen(
            ["dbus-daemon", "--nofork", f"--config-file={self.config_path}", "--print-address"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True)
        record_started(self.proc, "dbus-daemon", f"private {self.kind} bus in {self.dir}",
                       cleanup=self._remove_dir)
        line = self._read_address(timeout)
        if not line:
            err = b""
            if self.proc.poll() is not None:
                err = self.proc.stderr.read() or b""
            self.stop()
            reason = err.decode(errors="replace").strip().splitlines()
            raise SandboxError(f"dbus-daemon ({self.kind}) did not start: "
                               f"{reason[-1] if reason else 'no address printed'}")
        self.address = line
        return self

    def _read_address(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        buf = b""
        while b"\n" not in buf and time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            buf += chunk
        return buf.decode().strip().splitlines()[0] if buf.strip() else ""

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the daemon by PID and remove its private directory (idempotent)."""
        if self.proc is not None:
            terminate(self.proc, timeout)
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    stream.close()
        self._remove_dir()

    def _remove_dir(self) -> None:
        if self._own_dir and self.dir is not None and self.dir.exists():
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "PrivateBus":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"PrivateBus(kind={self.kind!r}, address={self.address!r}, pid={self.pid})"
