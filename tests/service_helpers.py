"""Helpers for tests that run the real daemon: start/stop it, read properties with busctl, wait.

Runs in the pytest process.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

BUS = "org.cardbridge.CardBridge1"
MGR = "/org/cardbridge/CardBridge1"
MIFACE = "org.cardbridge.CardBridge1.Manager"
BIFACE = "org.cardbridge.CardBridge1.Bridge"


def wait_for(fn, timeout: float, what: str) -> float:
    """Poll `fn` until it is true; returns the monotonic time it became true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if fn():
            return time.monotonic()
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def get_prop(address: str, path: str, name: str, iface: str = BIFACE):
    out = subprocess.run(["busctl", f"--address={address}", "--json=short", "get-property", BUS,
                          path, iface, name], capture_output=True, text=True, timeout=20)
    return json.loads(out.stdout)["data"] if out.returncode == 0 else None


def jack_connections(server: str, port: str) -> list[str]:
    out = subprocess.run(["jack_lsp", "-s", server, "-c", port], capture_output=True, text=True,
                         timeout=10).stdout.splitlines()
    return [line.strip() for line in out[1:] if line.startswith((" ", "\t"))]


@contextlib.contextmanager
def daemon(tmp_path: Path, env: dict, jack_server: str, *extra: str, popen=subprocess.Popen,
           config: str = 'auto_attach = "none"\n'):
    """cardbridged on the session bus of `env`; stopped with SIGTERM at the end, and its log
    must not contain a traceback."""
    (tmp_path / "config.toml").write_text(config)
    log_path = tmp_path / "daemon.log"
    log = open(log_path, "w")
    proc = popen([sys.executable, "-m", "cardbridge.daemon", "--session", "--config",
                  str(tmp_path / "config.toml"), "--state-dir", str(tmp_path / "state"),
                  "--jack-server", jack_server, *extra],
                 env=dict(env, PYTHONFAULTHANDLER="1"), stdout=log, stderr=subprocess.STDOUT)
    address = env["DBUS_SESSION_BUS_ADDRESS"]
    try:
        wait_for(lambda: get_prop(address, MGR, "Version", MIFACE) is not None, 30, "the service")
        yield address
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    assert "Traceback" not in log_path.read_text(), log_path.read_text()
