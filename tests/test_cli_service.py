"""The `cardbridge` CLI against the real service: every command and exit code, --json checked
against the documented schema, and `watch` on a real pseudo-terminal (tmux) read back from screen.

Runs in the test process; the CLI runs as a subprocess, the daemon (cardbridged) on a private
session bus with a private JACK dummy server and virtual cards (fixtures from conftest.py).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from testbench import procs
from cardbridge_cli import schema

pytestmark = pytest.mark.timeout(300)

CLI = [sys.executable, "-m", "cardbridge_cli.main"]


# -- helpers ----------------------------------------------------------------------------------------

def wait_for(predicate, timeout: float, what: str, step: float = 0.1):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}")


class Cli:
    """Runs `cardbridge` as a subprocess with the test's bus environment."""

    def __init__(self, env: dict):
        self.env = dict(env)
        self.env["PYTHONPATH"] = os.pathsep.join(sys.path)
        self.env.setdefault("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/nonexistent/cardbridge-system-bus")
        self.env.pop("NO_COLOR", None)

    def run(self, *args, timeout: float = 60) -> subprocess.CompletedProcess:
        proc = subprocess.run(CLI + list(args), capture_output=True, text=True, env=self.env,
                              timeout=timeout)
        assert "Traceback" not in proc.stderr, proc.stderr
        if proc.returncode == 0:
            assert proc.stderr == "", proc.stderr
        else:
            lines = proc.stderr.splitlines()
            assert len(lines) == 1 and lines[0].startswith("cardbridge: error: "), proc.stderr
        return proc

    def ok(self, *args) -> str:
        proc = self.run(*args)
        assert proc.returncode == 0, (args, proc.stderr)
        return proc.stdout

    def json(self, command: str, *args) -> dict:
        doc = json.loads(self.ok("--json", *args))
        schema.validate(doc, command)
        return doc

    def fails(self, code: int, *args) -> str:
        proc = self.run(*args)
        assert proc.returncode == code, (args, proc.returncode, proc.stdout, proc.stderr)
        assert proc.stdout == ""
        return proc.stderr

    def bridges(self) -> list[dict]:
        return self.json("status", "status")["bridges"]


class TmuxScreen:
    """A command on a real pseudo-terminal in a private tmux server; its screen is read back."""

    def __init__(self, tmp_path: Path, env: dict, command: list[str], width=160, height=40):
        self.socket = f"cbtest-{uuid.uuid4().hex[:8]}"
        self.rc_file = tmp_path / f"{self.socket}.rc"
        shell_env = " ".join(f"{k}={_sh(v)}" for k, v in env.items()
                             if k in ("PYTHONPATH", "DBUS_SESSION_BUS_ADDRESS", "DBUS_SYSTEM_BUS_ADDRESS",
                                      "HOME", "PATH", "NO_COLOR"))
        script = (f"env {shell_env} TERM=xterm-256color LANG=C.UTF-8 "
                  f"{' '.join(_sh(c) for c in command)}; echo $? > {_sh(str(self.rc_file))}; sleep 60")
        subprocess.run(["tmux", "-L", self.socket, "-f", "/dev/null", "new-session", "-d",
                        "-x", str(width), "-y", str(height), script], check=True, timeout=30)

    def text(self) -> str:
        proc = subprocess.run(["tmux", "-L", self.socket, "capture-pane", "-p"], capture_output=True,
                              text=True, timeout=30)
        return proc.stdout

    def keys(self, *keys: str) -> None:
        subprocess.run(["tmux", "-L", self.socket, "send-keys", *keys], check=True, timeout=30)

    def wait_text(self, *needles: str, timeout: float = 60) -> str:
        return wait_for(lambda: (lambda t: t if all(n in t for n in needles) else None)(self.text()),
                        timeout, f"screen showing {needles}")

    def exit_code(self, timeout: float = 30) -> int:
        wait_for(lambda: self.rc_file.exists() and self.rc_file.read_text().strip(), timeout,
                 "the watched command to exit")
        return int(self.rc_file.read_text())

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=30)


def _sh(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


# -- the service --------------------------------------------------------------------------------------

class RunningService:
    """cardbridged on a private session bus, following a private JACK server, with virtual
    cards declared in its config file. `env` is what a CLI process needs to find it."""

    def __init__(self, tmp_path: Path, bus, jack, cards, bus_kind: str = "session"):
        self.log_path = tmp_path / "cardbridged.log"
        self.device_ids = [f"cli-card-{i}" for i in range(len(cards))]
        config = ['auto_attach = "none"', ""]
        for device_id, card in zip(self.device_ids, cards):
            config += [f"[devices.{device_id}]", f'pcm = "{card.name}"',
                       f'name = "CLI card {device_id[-1]}"', ""]
        self.config_path = tmp_path / "cardbridge.toml"
        self.config_path.write_text("\n".join(config))
        home = tmp_path / "home"
        home.mkdir()
        self.env = cards.env(bus.env(jack.env(), HOME=str(home),
                                     XDG_STATE_HOME=str(home / "state"),
                                     XDG_CONFIG_HOME=str(home / "config"),
                                     XDG_RUNTIME_DIR=str(home)))
        if bus_kind == "session":
            self.env["DBUS_SYSTEM_BUS_ADDRESS"] = "unix:path=/nonexistent/cardbridge-system-bus"
        else:
            self.env.pop("DBUS_SESSION_BUS_ADDRESS", None)
        self.bus_kind = bus_kind
        self.env["PYTHONPATH"] = os.pathsep.join(sys.path)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cardbridge.daemon", f"--{bus_kind}", "--config",
             str(self.config_path), "--state-dir", str(home / "state" / "cardbridge"),
             "--jack-server", jack.name],
            env=self.env, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)
        procs.record_started(self.proc, "cardbridged", "cardbridge service for CLI tests")
        try:
            wait_for(self._ready, 60, "cardbridged to own its bus name")
        except AssertionError:
            self.stop()
            raise AssertionError(f"cardbridged did not start; log:\n{self.log()}")

    def _ready(self) -> bool:
        assert self.proc.poll() is None, f"cardbridged exited ({self.proc.returncode}):\n{self.log()}"
        done = subprocess.run(CLI + [f"--{self.bus_kind}", "version", "--json"], capture_output=True,
                              text=True, env=self.env, timeout=30)
        return done.returncode == 0 and json.loads(done.stdout)["service"] is not None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        procs.terminate(self.proc, timeout=10)
        self._log.close()


def _two_cards(virtual_cards):
    pytest.importorskip("cardbridge.daemon", reason="the service (cardbridge.daemon) is not there yet")
    vcard = pytest.importorskip("testbench.vcard")
    return virtual_cards(vcard.VirtualCard(name="clicard0", ppm=30.0),
                         vcard.VirtualCard(name="clicard1", ppm=-20.0))


@pytest.fixture
def cardbridge_service(tmp_path, session_bus, jack_server, virtual_cards):
    service = RunningService(tmp_path, session_bus, jack_server, _two_cards(virtual_cards))
    yield service
    service.stop()


@pytest.fixture
def system_service(tmp_path, system_bus, jack_server, virtual_cards):
    """The service on a system-like bus that enforces the project's policy file."""
    if not any((Path(__file__).resolve().parent.parent / "dbus").glob("*.conf")):
        pytest.skip("no D-Bus policy file in dbus/ yet")
    service = RunningService(tmp_path, system_bus, jack_server, _two_cards(virtual_cards), "system")
    yield service
    service.stop()


@pytest.fixture
def cli(cardbridge_service) -> Cli:
    return Cli(cardbridge_service.env)


@pytest.fixture
def card(cardbridge_service, cli) -> dict:
    """A device the service lists and can attach (a virtual card)."""
    devices = cli.json("devices", "devices")["devices"]
    usable = [d for d in devices if d["id"] in cardbridge_service.device_ids]
    assert usable, devices
    return usable[0]


# -- tests ---------------------------------------------------------------------------------------------

def test_status_and_devices_of_a_fresh_service(cli, cardbridge_service):
    status = cli.json("status", "status")
    assert status["service"]["bus"] == "session" and status["service"]["version"]
    assert cli.json("status") == status or cli.json("status")["service"] == status["service"]
    text = cli.ok("status")
    assert "Service:" in text and "JACK:" in text
    devices = cli.json("devices", "devices")["devices"]
    ids = {d["id"] for d in devices}
    assert set(cardbridge_service.device_ids) <= ids
    listed = cli.ok("devices")
    assert all(device_id in listed for device_id in cardbridge_service.device_ids)
    assert set(cli.ok("devices", "--ids").split()) == ids
    version = cli.json("version", "version")
    assert version["service"] == status["service"]["version"]


def test_attach_status_detach_and_their_exit_codes(cli, card):
    attached = cli.json("attach", "attach", card["id"], "--name", "cli test card",
                        "--quality", "fastest", "--no-persist")["bridge"]
    assert attached["device"] == card["id"] and attached["client_name"] == "cli test card"
    path = attached["path"]

    record = wait_for(lambda: next((b for b in cli.bridges() if b["path"] == path
                                    and b["state"] == "running"), None), 90, "the bridge to run")
    assert record["quality"] == "fastest" and record["latency_frames"] is not None

    text = cli.ok("status")
    assert "cli test card" in text and "\x1b[" not in text
    for name in (card["id"], "cli test card", path):
        # exit 0 while it runs, 7 while it re-syncs (a busy machine): the record either way
        proc = cli.run("--json", "status", name)
        assert proc.returncode in (0, 7), proc.stderr
        one = json.loads(proc.stdout)
        schema.validate(one, "status")
        assert [b["path"] for b in one["bridges"]] == [path]
    assert "Drift:" in cli.run("status", "cli test card").stdout

    assert "already" in cli.fails(6, "attach", card["id"]).lower()
    cli.fails(5, "attach", "no-such-device-anywhere")
    cli.fails(5, "status", "no-such-bridge")
    cli.fails(2, "attach", card["id"], "--periods", "0")

    detached = cli.json("detach", "detach", "cli test card")["detached"]
    assert detached == {"device": card["id"], "path": path}
    wait_for(lambda: not cli.bridges(), 30, "the bridge to go")
    cli.fails(5, "detach", "cli test card")
    cli.fails(5, "detach", card["id"])


def test_enable_and_disable_auto_attach(cli, card):
    assert cli.json("disable", "disable", card["id"]) == {"device": card["id"], "auto_attach": False}
    listed = {d["id"]: d for d in cli.json("devices", "devices")["devices"]}
    assert listed[card["id"]]["auto_attach"] is False
    assert "enabled" in cli.ok("enable", card["id"])
    listed = {d["id"]: d for d in cli.json("devices", "devices")["devices"]}
    assert listed[card["id"]]["auto_attach"] is True
    cli.fails(5, "enable", "no-such-device-anywhere")


def test_asoundrc_against_the_service(cli, card):
    cli.fails(5, "asoundrc", "no-such-device-anywhere")
    cli.fails(2, "asoundrc", card["id"], card["id"])
    proc = cli.run("--json", "asoundrc", card["id"])
    if card["alsa_name"]:                       # a hardware card: a ready-to-paste definition
        assert proc.returncode == 0
        doc = json.loads(proc.stdout)
        schema.validate(doc, "asoundrc")
        assert f'"hw:CARD={card["alsa_name"]},DEV=0"' in doc["text"]
    else:                                       # a config-declared pcm has no hw:CARD= name
        assert proc.returncode == 1 and "not a hardware card" in proc.stderr


def test_watch_draws_live_screen_and_quits_with_q(cli, card, tmp_path):
    screen = TmuxScreen(tmp_path, cli.env, CLI + ["watch"])
    try:
        screen.wait_text("cardbridge watch", "No bridges")
        cli.ok("attach", card["id"], "--name", "watched card", "--no-persist")
        shown = screen.wait_text("watched card", "running", "drift", "delay", timeout=90)
        assert "Traceback" not in shown
        # The history fills from the signals: a sparkline (or its ascii form) appears.
        screen.wait_text("[", timeout=30)
        cli.ok("detach", "watched card")
        wait_for(lambda: "watched card" not in screen.text(), 30, "the bridge to leave the screen")
        screen.keys("q")
        assert screen.exit_code() == 0
        assert "cardbridge watch" not in screen.text()       # the alternate screen was left
    finally:
        screen.close()


def test_watch_quits_on_ctrl_c(cli, tmp_path):
    screen = TmuxScreen(tmp_path, cli.env, CLI + ["watch"])
    try:
        screen.wait_text("cardbridge watch")
        screen.keys("C-c")
        assert screen.exit_code() == 0
    finally:
        screen.close()


def test_watch_json_lines_follow_attach_and_detach(cli, card):
    proc = subprocess.Popen(CLI + ["--json", "watch"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=cli.env)
    events = []
    try:
        events.append(json.loads(proc.stdout.readline()))
        assert events[0]["event"] == "snapshot"
        cli.ok("attach", card["id"], "--name", "json watched", "--no-persist")
        while not any(e["event"] == "bridge-changed" and e["changes"].get("state") == "running"
                      for e in events):
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            events.append(json.loads(line))
        cli.ok("detach", "json watched")
        while events[-1]["event"] != "bridge-removed":
            events.append(json.loads(proc.stdout.readline()))
    finally:
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "Traceback" not in err
    events += [json.loads(line) for line in rest.splitlines() if line]
    for event in events:
        schema.validate(event, "watch")
    kinds = [e["event"] for e in events]
    assert "bridge-added" in kinds and "bridge-removed" in kinds


def test_service_gone_exits_3(cli, cardbridge_service):
    cardbridge_service.stop()
    cli.fails(3, "status")
    cli.fails(3, "--session", "devices")
    assert cli.json("version", "version")["service"] is None


def test_permission_denied_exits_4_on_the_system_bus(system_service):
    """Everyone may read; only root and group audio may change anything (policy in dbus/)."""
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    as_audio = ["setpriv", "--reuid=65534", "--regid=65534", "--groups=29"]
    env = dict(system_service.env, PYTHONPATH=os.pathsep.join(sys.path))
    device = system_service.device_ids[0]

    def run(prefix, *args):
        proc = subprocess.run(prefix + CLI + list(args), capture_output=True, text=True, env=env,
                              timeout=60)
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc

    assert run(as_nobody, "status").returncode == 0              # found on the system bus
    assert run(as_nobody, "--json", "devices").returncode == 0
    for args in (["attach", device], ["disable", device], ["detach", device]):
        denied = run(as_nobody, *args)
        assert denied.returncode == 4, (args, denied.stderr)
        assert denied.stderr.startswith("cardbridge: error: ") and denied.stderr.count("\n") == 1
    allowed = run(as_audio, "disable", device)
    assert allowed.returncode == 0, allowed.stderr
    assert run(as_audio, "enable", device).returncode == 0


def test_attach_wait_set_restart_reload_and_status_exit_codes(cli, card, cardbridge_service):
    doc = cli.json("attach", "attach", card["id"], "--wait", "--timeout", "90", "--no-persist")
    record = doc["bridge"]
    assert record["state"] == "running"
    assert cli.run("status", record["path"]).returncode in (0, 7)      # 7 while re-syncing
    changed = cli.json("set", "set", record["path"], "name=renamed card", "quality=fastest")
    assert changed["bridge"]["client_name"] == "renamed card"
    assert changed["bridge"]["quality"] == "fastest"
    assert "Changed renamed card" in cli.ok("set", "renamed card", "period=128")
    cli.fails(2, "set", "renamed card", "period=7")                  # the service says no
    cli.fails(2, "set", "renamed card", "colour=red")                # the parser says no
    cli.fails(5, "set", "no-such-bridge", "period=128")
    restarted = cli.json("restart", "restart", "renamed card")["restarted"]
    assert restarted["path"] == record["path"]
    cli.fails(5, "restart", "no-such-bridge")
    assert cli.json("reload", "reload") == {"reloaded": True}
    wait_for(lambda: cli.run("status", "renamed card").returncode == 0, 90, "running again")
    cli.ok("detach", "renamed card")
    # a bridge that cannot run: a clear failure with its reason, and exit 7
    other = cardbridge_service.device_ids[1]
    err = cli.fails(7, "attach", other, "--capture", "64", "--wait", "--timeout", "60")
    assert "failed" in err or "waiting" in err
    assert ":" in err.split("error: ", 1)[1]                           # state: reason
    proc = cli.run("status", other)
    assert proc.returncode == 7 and "Reason:" in proc.stdout and "is failed" in proc.stderr


def interrupt(proc: subprocess.Popen) -> str:
    """Ctrl-C to a following command (monitor, watch): it exits 0, quietly; its output."""
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and err == "", err
    return out


def test_monitor_prints_every_event_as_a_line(cli, card):
    for json_mode in (True, False):
        proc = subprocess.Popen(CLI + (["--json"] if json_mode else []) + ["monitor"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=cli.env)
        try:
            time.sleep(1.0)                  # its matches are in place
            cli.ok("attach", card["id"], "--name", "monitored", "--no-persist", "--wait",
                   "--timeout", "90")
            cli.ok("set", "monitored", "quality=linear")
            cli.ok("detach", "monitored")
            time.sleep(1.0)
        finally:
            out = interrupt(proc)
        lines = out.splitlines()
        if json_mode:
            events = [json.loads(line) for line in lines]
            for event in events:
                schema.validate(event, "monitor")
            kinds = [e["event"] for e in events]
            assert kinds[0] == "bridge-added" and kinds[-1] == "bridge-removed", kinds
            assert any(e["event"] == "bridge-changed" and e["changes"].get("state") == "running"
                       for e in events)
            assert any(e["event"] == "bridge-changed" and e["changes"].get("quality") == "linear"
                       for e in events)
        else:
            assert re.match(r"^\d\d:\d\d:\d\d\.\d{3} bridge-added /org/cardbridge/", lines[0]), lines
            assert any(" bridge-changed " in line and "state=running" in line for line in lines)
            assert "bridge-removed" in lines[-1]
            assert "\x1b" not in out


def test_watch_writes_plain_frames_when_not_on_a_terminal(cli, card):
    proc = subprocess.Popen(CLI + ["watch"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True, env=cli.env)
    try:
        cli.ok("attach", card["id"], "--name", "piped", "--no-persist", "--wait", "--timeout", "90")
        time.sleep(2.5)
        cli.ok("detach", "piped")
        time.sleep(1.5)
    finally:
        out = interrupt(proc)
    assert "\x1b" not in out
    frames = [f for f in out.split("\n\n") if f.strip()]
    assert len(frames) >= 2 and all(f.startswith("cardbridge watch") for f in frames), out
    assert any("piped" in f and "running" in f for f in frames)
    assert "No bridges" in frames[-1]
