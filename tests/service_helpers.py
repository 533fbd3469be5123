"""Helpers for tests that run the real daemon: start/stop it, read properties with busctl, wait.

Runs in the pytest process. The daemon runner itself is testbench.servicerun (shared
with the benchmarks); here it also insists that the daemon's log holds no traceback.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from pathlib import Path

from testbench import servicerun
from testbench.servicerun import BIFACE, BUS, MGR, MIFACE, attach, get_prop, wait_for

__all__ = ["BIFACE", "BUS", "MGR", "MIFACE", "attach", "daemon", "get_prop", "jack_connections",
           "service_pid", "service_workers", "wait_for"]


def service_pid(address: str) -> int:
    """The process id of the service owning the bus name on `address`."""
    out = subprocess.run(["busctl", f"--address={address}", "--json=short", "call",
                          "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                          "GetConnectionUnixProcessID", "s", BUS], capture_output=True, text=True,
                         timeout=20, check=True)
    return json.loads(out.stdout)["data"][0]


def service_workers(address: str) -> list[str]:
    """Command lines of the bridge workers of the service on `address` (its children)."""
    pid = service_pid(address)
    out = subprocess.run(["pgrep", "-a", "-P", str(pid), "-f", "cardbridge.engine.worker"],
                         capture_output=True, text=True).stdout
    return out.splitlines()


def jack_connections(server: str, port: str) -> list[str]:
    out = subprocess.run(["jack_lsp", "-s", server, "-c", port], capture_output=True, text=True,
                         timeout=10).stdout.splitlines()
    return [line.strip() for line in out[1:] if line.startswith((" ", "\t"))]


@contextlib.contextmanager
def daemon(tmp_path: Path, env: dict, jack_server: str, *extra: str, popen=subprocess.Popen,
           config: str = 'auto_attach = "none"\n', bus: str = "session"):
    """cardbridged on the session (or system) bus of `env`; stopped with SIGTERM at the end,
    and its log must not contain a traceback."""
    with servicerun.daemon(tmp_path, env, jack_server, *extra, popen=popen,
                           config=config, bus=bus) as address:
        yield address
    log = (tmp_path / "daemon.log").read_text()
    assert "Traceback" not in log and "Fatal Python error" not in log, log
