"""Run cardbridged as a child process and talk to it with busctl, for tests, benchmarks and
the demo. Runs in the calling process; the daemon (and busctl) are its children.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

from cardbridge import names

BUS = names.BUS_NAME
MGR = names.MANAGER_PATH
MIFACE = names.MANAGER_IFACE
BIFACE = names.BRIDGE_IFACE


def wait_for(fn, timeout: float, what: str, interval: float = 0.05) -> float:
    """Poll `fn` until it is true; returns the monotonic time it became true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if fn():
            return time.monotonic()
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def get_prop(address: str, path: str, name: str, iface: str = BIFACE):
    """One property through busctl; None when the call fails."""
    out = subprocess.run(["busctl", f"--address={address}", "--json=short", "get-property", BUS,
                          path, iface, name], capture_output=True, text=True, timeout=20)
    return json.loads(out.stdout)["data"] if out.returncode == 0 else None


def attach(address: str, device: str) -> None:
    """Manager.Attach(device, {}) through busctl; raises on a D-Bus error."""
    subprocess.run(["busctl", f"--address={address}", "call", BUS, MGR, MIFACE, "Attach",
                    "sa{sv}", device, "0"], check=True, capture_output=True, timeout=20)


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `timeout`."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def daemon(work: Path, env: dict, jack_server: str, *extra: str, popen=subprocess.Popen,
           config: str = 'auto_attach = "none"\n', bus: str = "session", started=None):
    """cardbridged on the session (or system) bus of `env` (`popen` may start it in a
    namespace), with its config, state and log (daemon.log) in `work`; yields the bus address,
    stops it with SIGTERM. Fatal signals print a Python traceback of every thread
    (faulthandler). `started`, a list, receives the daemon's Popen (for its PID)."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.toml").write_text(config)
    if not env.get("CARDBRIDGE_LOCK_DIR"):      # never the machine's /run/lock (cardlock.py)
        (work / "locks").mkdir(exist_ok=True)
        env = dict(env, CARDBRIDGE_LOCK_DIR=str(work / "locks"))
    with open(work / "daemon.log", "w") as log:
        proc = popen([sys.executable, "-m", "cardbridge.daemon", f"--{bus}", "--config",
                      str(work / "config.toml"), "--state-dir", str(work / "state"),
                      "--jack-server", jack_server, *extra],
                     env=dict(env, PYTHONFAULTHANDLER="1"), stdout=log, stderr=subprocess.STDOUT)
        if started is not None:
            started.append(proc)
        address = env[f"DBUS_{bus.upper()}_BUS_ADDRESS"]
        try:
            wait_for(lambda: proc.poll() is None and get_prop(address, MGR, "Version", MIFACE)
                     is not None, 30, "the service")
            yield address
        finally:
            stop_process(proc)
