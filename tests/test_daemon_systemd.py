"""cardbridged as systemd runs it: Type=notify (READY=1, STATUS= from the bridges' states,
STOPPING=1), watchdog pings from the event loop, journald priorities when stderr is the
journal, a non-zero exit without a traceback when the bus goes away or the policy refuses the
name.

Runs in the pytest process; the daemon, its workers, jackd and dbus-daemon are real processes.
The service manager's side is played by a datagram socket of the test (systemd_helpers).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testbench.vcard import VirtualCard

from cardbridge import heartbeat, names
from cardbridge.logsetup import JournalFormatter, priority, stream_is_journal
from cardbridge.sdnotify import Notifier
from service_helpers import BUS, attach, wait_for
from systemd_helpers import NotifySocket


def start_daemon(tmp_path: Path, env: dict, *extra: str, bus: str = "session",
                 stderr=None, prefix=()) -> subprocess.Popen:
    (tmp_path / "config.toml").write_text('auto_attach = "none"\n[devices.vcs]\npcm = "vcs"\n')
    log = stderr if stderr is not None else open(tmp_path / "daemon.log", "w")
    return subprocess.Popen([*prefix, sys.executable, "-m", "cardbridge.daemon", f"--{bus}",
                             "--config", str(tmp_path / "config.toml"), "--state-dir",
                             str(tmp_path / "state"), "--no-hotplug", *extra],
                            env=env, stdout=log, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError("cardbridged ignored SIGTERM")


def environ_of(pid: int) -> dict:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def test_notify_ready_status_watchdog_and_stopping(session_bus, jack_server, virtual_cards,
                                                   tmp_path):
    """READY=1 once the name is owned, a status line that follows the bridges (attached,
    running, JACK gone), WATCHDOG=1 at half the timeout, STOPPING=1 and exit 0 on SIGTERM; the
    workers do not inherit the notify socket."""
    cards = virtual_cards(VirtualCard("vcs", ppm=20.0))
    manager_end = NotifySocket()
    env = cards.env(session_bus.env(NOTIFY_SOCKET=manager_end.address, WATCHDOG_USEC="3000000",
                                    WATCHDOG_PID=""))
    env.pop("WATCHDOG_PID")            # as systemd sets it when the main process is the one
    proc = start_daemon(tmp_path, env, "--jack-server", jack_server.name)
    try:
        ready = manager_end.wait_for("READY", "1")
        # ready means served: the name is owned by then
        out = subprocess.run(["busctl", f"--address={session_bus.address}", "status", BUS],
                             capture_output=True, text=True, timeout=20)
        assert out.returncode == 0, out.stderr
        assert ready["STATUS"].startswith("no bridges"), ready
        attach(session_bus.address, "vcs")
        manager_end.wait_for("STATUS", "1 bridge: 1 running, 0 waiting")
        workers = children_of(proc.pid)
        assert workers
        for pid in workers:
            assert "NOTIFY_SOCKET" not in environ_of(pid)
            assert "WATCHDOG_USEC" not in environ_of(pid)
        jack_server.stop()
        manager_end.wait_for("STATUS", "1 bridge: 0 running, 1 waiting; JACK not running")
        # pings keep coming (every second: the check interval, under half the timeout), never
        # as far apart as the 3 s timeout, through attaching and JACK's going
        def pings():
            return [t for t, m in manager_end.drain() if m.get("WATCHDOG") == "1"]
        wait_for(lambda: len(pings()) >= 4, 10, "watchdog pings")
        gaps = [b - a for a, b in zip(pings(), pings()[1:])]
        assert max(gaps) < 3.0, gaps
        # the status line is sent when it changes, not with every ping
        statuses = manager_end.statuses()
        assert len(statuses) == len(set(statuses)), statuses
        assert stop(proc) == 0
        stopping = manager_end.wait_for("STOPPING", "1")
        assert stopping.get("STATUS") == "stopping"
    finally:
        stop(proc)
        manager_end.close()
    log = (tmp_path / "daemon.log").read_text()
    assert "Traceback" not in log, log


def test_no_watchdog_pings_when_the_watchdog_is_meant_for_another_process(session_bus, tmp_path):
    manager_end = NotifySocket()
    env = session_bus.env(NOTIFY_SOCKET=manager_end.address, WATCHDOG_USEC="200000",
                          WATCHDOG_PID="1")
    proc = start_daemon(tmp_path, env, "--jack-server", "cbnone-nothing")
    try:
        manager_end.wait_for("READY", "1")
        time.sleep(1.0)
        assert not [m for _, m in manager_end.drain() if "WATCHDOG" in m]
    finally:
        assert stop(proc) == 0
        manager_end.close()


def test_losing_the_bus_exits_non_zero_without_a_traceback(make_bus, tmp_path):
    """systemd's Restart=on-failure restarts only a failed service: losing the bus is one."""
    bus = make_bus("session")
    proc = start_daemon(tmp_path, bus.env(), "--jack-server", "cbnone-nothing")
    try:
        wait_for(lambda: subprocess.run(["busctl", f"--address={bus.address}", "status", BUS],
                                        capture_output=True).returncode == 0, 30, "the service")
        bus.stop()
        code = proc.wait(15)
    finally:
        stop(proc)
    log = (tmp_path / "daemon.log").read_text()
    assert code == 1, log
    assert "lost the connection to the session bus" in log
    assert "Traceback" not in log and "never retrieved" not in log, log


def test_a_name_the_policy_refuses_exits_non_zero_with_one_line(system_bus, tmp_path):
    """On the system bus only root and group cardbridge may own the name: anyone else gets one
    error line and exit status 1."""
    state = tmp_path / "state"
    state.mkdir(mode=0o777)
    os.chmod(tmp_path, 0o755)
    proc = start_daemon(tmp_path, system_bus.env(HOME=str(tmp_path)), "--jack-server",
                        "cbnone-nothing", bus="system",
                        prefix=["setpriv", "--reuid=65534", "--regid=65534", "--groups=29"])
    try:
        code = proc.wait(30)
    finally:
        stop(proc)
    log = (tmp_path / "daemon.log").read_text()
    assert code == 1, log
    assert f"cannot own {BUS} on the system bus" in log, log
    assert "Traceback" not in log, log


def test_log_lines_carry_journald_priorities_when_stderr_is_the_journal(session_bus, tmp_path):
    """systemd passes JOURNAL_STREAM=<device>:<inode> of the stream it connected: the daemon
    then prefixes each line with its syslog priority (<6> info, <3> error, ...)."""
    log_path = tmp_path / "journal.log"
    with open(log_path, "w") as stream:
        st = os.fstat(stream.fileno())
        env = session_bus.env(JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
        proc = start_daemon(tmp_path, env, "--jack-server", "cbnone-nothing", stderr=stream)
        try:
            wait_for(lambda: "ready on the session bus" in log_path.read_text(), 30, "ready")
        finally:
            assert stop(proc) == 0
    lines = log_path.read_text().splitlines()
    assert lines and all(line[:3] in ("<6>", "<4>", "<3>", "<7>", "<2>") for line in lines), lines
    assert "<6>cardbridge: cardbridged" in log_path.read_text()
    # without the journal (a terminal, a file): plain lines with the level's name
    (tmp_path / "plain").mkdir()
    proc = start_daemon(tmp_path / "plain", session_bus.env(JOURNAL_STREAM="1:1"),
                        "--jack-server", "cbnone-nothing")
    try:
        wait_for(lambda: "ready on" in (tmp_path / "plain" / "daemon.log").read_text(), 30, "ready")
    finally:
        assert stop(proc) == 0
    assert "cardbridge: INFO: cardbridged" in (tmp_path / "plain" / "daemon.log").read_text()


def test_worker_log_lines_carry_priorities_too(tmp_path):
    """A worker inherits the daemon's stderr and environment: when that is the journal, its
    lines carry their priority as the daemon's do (an xrun note is a warning), else the level."""
    code = ("import logging; from cardbridge.engine import worker; worker.setup_logging(); "
            "worker.log('capture overrun on hw:9', logging.WARNING); worker.log('ALSA thread ended', "
            "logging.ERROR); worker.log('started')")
    journal, plain = tmp_path / "journal.log", tmp_path / "plain.log"
    with open(journal, "w") as stream:
        st = os.fstat(stream.fileno())
        env = dict(os.environ, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
        subprocess.run([sys.executable, "-c", code], env=env, stderr=stream, check=True)
    with open(plain, "w") as stream:
        env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
        subprocess.run([sys.executable, "-c", code], env=env, stderr=stream, check=True)
    pid = r"cardbridge-worker\[\d+\]"
    assert [re.sub(pid, "W", line) for line in journal.read_text().splitlines()] == [
        "<4>W: capture overrun on hw:9", "<3>W: ALSA thread ended", "<6>W: started"]
    assert [re.sub(pid, "W", line) for line in plain.read_text().splitlines()] == [
        "W: WARNING: capture overrun on hw:9", "W: ERROR: ALSA thread ended", "W: INFO: started"]


# -- pure parts ---------------------------------------------------------------------------------

def test_status_line():
    assert heartbeat.status_line({}, True) == "no bridges"
    assert heartbeat.status_line({}, False) == "no bridges; JACK not running"
    states = {names.RUNNING: 2, names.WAITING_FOR_DEVICE: 1, names.WAITING_FOR_JACK: 1,
              names.SYNCING: 1, names.FAILED: 1}
    assert heartbeat.status_line(states, True) == \
        "6 bridges: 2 running, 2 waiting, 1 starting, 1 failed"
    assert heartbeat.status_line({names.RUNNING: 1}, True) == "1 bridge: 1 running, 0 waiting"


def test_notifier_takes_its_variables_out_of_the_environment():
    env = {"NOTIFY_SOCKET": "@abstract", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid()),
           "OTHER": "x"}
    notifier = Notifier.from_environment(env)
    assert env == {"OTHER": "x"}
    assert notifier.address == "@abstract" and notifier.watchdog_interval == 30.0
    assert Notifier.from_environment({"WATCHDOG_USEC": "junk"}).watchdog_interval is None
    assert not Notifier.from_environment({}).send("READY=1")


def test_watchdog_pings_stop_while_the_event_loop_is_stuck(tmp_path):
    """The ping is a task on the loop: a callback that blocks the loop blocks the pings."""
    manager_end = NotifySocket()
    notifier = Notifier(manager_end.address, watchdog_interval=0.2)

    async def scenario():
        task = asyncio.ensure_future(heartbeat.beat(notifier, lambda: "fine"))
        await asyncio.sleep(0.5)
        time.sleep(1.0)                       # the loop is stuck for a second
        await asyncio.sleep(0.5)
        task.cancel()

    asyncio.run(scenario())
    pings = [t for t, m in manager_end.drain() if m.get("WATCHDOG") == "1"]
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    # every 0.1 s while the loop runs (a loaded machine may stretch that, never to a second)
    assert max(gaps) >= 0.9 and sorted(gaps)[len(gaps) // 2] < 0.5, gaps
    manager_end.close()


def test_journal_detection_and_priorities(tmp_path):
    with open(tmp_path / "f", "w") as stream:
        st = os.fstat(stream.fileno())
        assert stream_is_journal(stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        assert not stream_is_journal(stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"})
        assert not stream_is_journal(stream, {})
    import logging
    assert [priority(level) for level in (logging.DEBUG, logging.INFO, logging.WARNING,
                                          logging.ERROR, logging.CRITICAL)] == [7, 6, 4, 3, 2]
    record = logging.LogRecord("cardbridge", logging.ERROR, __file__, 1, "one\ntwo", (), None)
    assert JournalFormatter("%(message)s").format(record) == "<3>one\n<3>two"
