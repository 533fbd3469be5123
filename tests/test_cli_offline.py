"""The `cardbridge` CLI where no service is needed: usage errors, "service not running",
generated man page and completions, asoundrc text, schema and rendering helpers.

Runs in the test process; the CLI runs as a subprocess against real (empty) private buses.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from cardbridge_cli import asoundrc, records, render, schema
from cardbridge_cli.failures import CliError

pytestmark = pytest.mark.timeout(60)

BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={path}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


def cli_env(**extra) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), NO_COLOR="1")
    env.pop("DBUS_SESSION_BUS_ADDRESS", None)
    env["DBUS_SYSTEM_BUS_ADDRESS"] = "unix:path=/nonexistent/cardbridge-test-bus"
    env.update(extra)
    return env


def cli(*args, env=None, timeout=30) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "cardbridge_cli.main", *args], capture_output=True,
                          text=True, env=env or cli_env(), timeout=timeout)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


@pytest.fixture
def empty_bus(tmp_path):
    """A real private dbus-daemon on which no cardbridge service runs."""
    conf = tmp_path / "bus.conf"
    conf.write_text(BUS_CONFIG.format(path=tmp_path / "bus"))
    proc = subprocess.Popen(["dbus-daemon", "--nofork", f"--config-file={conf}", "--print-address"],
                            stdout=subprocess.PIPE, text=True)
    address = proc.stdout.readline().strip()
    assert address
    yield address
    proc.terminate()
    proc.wait(timeout=10)


# -- usage ------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["bogus"],
    ["attach"],
    ["attach", "x", "--capture", "-1"],
    ["attach", "x", "--capture", "two"],
    ["attach", "x", "--rate", "0"],
    ["attach", "x", "--quality", "superb"],
    ["detach"],
    ["enable"],
    ["asoundrc"],
    ["--system", "--session", "status"],
    ["status", "a", "b"],
    ["--frobnicate"],
])
def test_usage_errors_exit_2_with_one_line(argv):
    proc = cli(*argv)
    assert proc.returncode == 2, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cardbridge: error: "), proc.stderr
    assert proc.stdout == ""


def test_help_documents_exit_codes():
    proc = cli("--help")
    assert proc.returncode == 0
    for code in ("0", "1", "2", "3", "4", "5", "6"):
        assert f"\n  {code}  " in proc.stdout
    for command in ("status", "devices", "attach", "detach", "enable", "disable", "watch",
                    "asoundrc", "version"):
        assert command in proc.stdout
        assert cli(command, "--help").returncode == 0


def test_invalid_asoundrc_name_is_a_usage_error():
    proc = cli("asoundrc", "--name", "bad name!", "card")
    assert proc.returncode == 2 and "invalid ALSA device name" in proc.stderr


# -- service not running ------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [[], ["status"], ["devices"], ["attach", "x"], ["detach", "x"],
                                  ["enable", "x"], ["disable", "x"], ["watch"], ["asoundrc", "x"],
                                  ["--json", "status"]])
def test_service_not_running_on_empty_bus_exits_3(empty_bus, argv):
    proc = cli(*argv, env=cli_env(DBUS_SESSION_BUS_ADDRESS=empty_bus))
    assert proc.returncode == 3, proc
    assert proc.stderr.count("\n") == 1 and "service is not running" in proc.stderr
    assert proc.stdout == ""


def test_explicit_bus_that_cannot_be_reached_exits_3(empty_bus):
    proc = cli("--system", "status", env=cli_env(DBUS_SESSION_BUS_ADDRESS=empty_bus))
    assert proc.returncode == 3 and "system bus" in proc.stderr
    proc = cli("--session", "devices", env=cli_env(DBUS_SESSION_BUS_ADDRESS=empty_bus))
    assert proc.returncode == 3 and "session bus" in proc.stderr


def test_version_without_service(empty_bus):
    proc = cli("--json", "version", env=cli_env(DBUS_SESSION_BUS_ADDRESS=empty_bus))
    assert proc.returncode == 0
    doc = json.loads(proc.stdout)
    schema.validate(doc, "version")
    assert doc["service"] is None and doc["client"]
    assert cli("--version").returncode == 0


# -- generated documentation ----------------------------------------------------------------------

def docs(kind: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "cardbridge_cli.docs", kind], capture_output=True,
                          text=True, env=cli_env(), timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_man_page_renders_every_command_and_exit_code(tmp_path):
    page = tmp_path / "cardbridge.1"
    page.write_text(docs("man"))
    shown = subprocess.run(["man", "-l", str(page)], capture_output=True, text=True,
                           env=dict(os.environ, MANWIDTH="200", LC_ALL="C", MANPAGER="cat"),
                           timeout=30)
    text = re.sub(".\x08", "", shown.stdout)         # drop bold/underline overstrikes
    if shown.returncode != 0 or not text:         # no man(1): check the roff source instead
        text = page.read_text().replace("\\-", "-")
    for word in ("attach", "detach", "asoundrc", "watch", "EXIT STATUS", "NO_COLOR", "--no-persist",
                 "best|medium|fastest|linear"):
        assert word in text


def run_bash_completion(script, words: list[str], tmp_path) -> list[str]:
    fake_cli = tmp_path / "bin" / "cardbridge"
    fake_cli.parent.mkdir(exist_ok=True)
    fake_cli.write_text("#!/bin/sh\necho usb-Card_A-00\necho pci-0000_00_1f.3\n")
    fake_cli.chmod(0o755)
    quoted = " ".join(f"'{w}'" for w in words)
    program = (f"source '{script}'; COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; "
               "_cardbridge; printf '%s\\n' \"${COMPREPLY[@]}\"")
    env = dict(os.environ, PATH=f"{fake_cli.parent}:{os.environ['PATH']}")
    proc = subprocess.run(["bash", "-c", program], capture_output=True, text=True, env=env, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return [line for line in proc.stdout.splitlines() if line]


def test_bash_completion_completes_commands_options_and_devices(tmp_path):
    script = tmp_path / "cardbridge.bash"
    script.write_text(docs("bash"))
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    assert set(run_bash_completion(script, ["cardbridge", "de"], tmp_path)) == {"devices", "detach"}
    assert "--no-persist" in run_bash_completion(script, ["cardbridge", "attach", "--no"], tmp_path)
    assert run_bash_completion(script, ["cardbridge", "attach", "--quality", "f"], tmp_path) == ["fastest"]
    assert run_bash_completion(script, ["cardbridge", "attach", "usb"], tmp_path) == ["usb-Card_A-00"]


def test_zsh_completion_mentions_every_command():
    text = docs("zsh")
    assert text.startswith("#compdef cardbridge")
    for command in ("status", "devices", "attach", "detach", "enable", "disable", "watch", "asoundrc"):
        assert f"'{command}:" in text and f"{command}) _arguments" in text


def test_docs_usage_error():
    proc = subprocess.run([sys.executable, "-m", "cardbridge_cli.docs", "pdf"], capture_output=True,
                          text=True, env=cli_env(), timeout=30)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


# -- asoundrc --------------------------------------------------------------------------------------

def device(id_, alsa, card, cap, play, **extra):
    return records.device_record({"id": id_, "name": id_.title(), "client_name": id_, "bus": "usb",
                                  "card": card, "alsa_name": alsa, "capture_channels": cap,
                                  "playback_channels": play, "present": True, **extra})


def test_asoundrc_one_multi_pcm_for_symmetric_cards():
    doc = asoundrc.render([device("a", "Delta", 1, 2, 2), device("b", "Delta_1", 2, 8, 8)], "studio")
    schema.validate(doc, "asoundrc")
    text = doc["text"]
    assert "pcm.studio {" in text and "ctl.studio {" in text and "type multi" in text
    assert 'slaves.a.pcm "hw:CARD=Delta,DEV=0"' in text and "slaves.a.channels 2" in text
    assert 'slaves.b.pcm "hw:CARD=Delta_1,DEV=0"' in text and "slaves.b.channels 8" in text
    assert "bindings.9.slave b" in text and "bindings.9.channel 7" in text and "bindings.10." not in text
    assert "bindings.1.slave a" in text and "bindings.2.slave b" in text and "bindings.2.channel 0" in text
    assert 'card "Delta"' in text
    assert [p["channels"] for p in doc["pcms"]] == [10]
    assert text.count("{") == text.count("}")


def test_asoundrc_splits_directions_when_channel_counts_differ():
    doc = asoundrc.render([device("a", "A", 0, 2, 4), device("b", "B", 1, 0, 2)], "x")
    pcms = {p["pcm"]: p for p in doc["pcms"]}
    assert set(pcms) == {"x_capture", "x_playback"}
    assert [s["device"] for s in pcms["x_capture"]["slaves"]] == ["a"]
    assert pcms["x_playback"]["channels"] == 6
    assert "ctl.x_capture" in doc["text"] and "ctl.x_playback" in doc["text"]


def test_asoundrc_refuses_absent_and_unknown_cards():
    with pytest.raises(CliError) as absent:
        asoundrc.render([records.device_record({"id": "gone", "present": False})], "x")
    assert absent.value.code == 1
    with pytest.raises(CliError) as bad_name:
        asoundrc.render([device("a", "A", 0, 2, 2)], "no spaces")
    assert bad_name.value.code == 2


def test_device_lookup_prefers_stable_ids():
    known = [device("usb-A", "Audio", 1, 2, 2), device("Audio", "Audio_1", 2, 2, 2)]
    assert [d["id"] for d in records.find_device(known, "Audio")] == ["Audio"]
    assert [d["id"] for d in records.find_device(known, "hw:CARD=Audio")] == ["usb-A"]
    assert [d["id"] for d in records.find_device(known, "2")] == ["Audio"]
    assert records.find_device(known, "nothing") == []


# -- schema and rendering ----------------------------------------------------------------------------

FULL_BRIDGE = {"Device": "usb-A", "ClientName": "Mic", "State": "running", "CaptureChannels": 2,
               "PlaybackChannels": 0, "Rate": 44100, "Period": 256, "Periods": 2,
               "Quality": "medium", "Ratio": 1.0001, "DriftPpm": 12.5, "DelayError": -0.25,
               "Latency": 480, "Xruns": 0, "Underruns": 1, "Restarts": 0}


def test_status_document_matches_schema_and_converts_latency():
    manager = {"Version": "0.1.0", "JackRunning": True, "JackSampleRate": 48000,
               "JackBufferSize": 256, "AutoAttach": "usb"}
    doc = records.status_document(manager, "session", {"/org/cardbridge/CardBridge1/bridge/x": FULL_BRIDGE})
    schema.validate(doc, "status")
    assert doc["bridges"][0]["latency_ms"] == 10.0
    partial = records.status_document({}, "system", {"/p": {"State": "starting"}})
    schema.validate(partial, "status")
    with pytest.raises(ValueError):
        schema.validate({"service": doc["service"], "bridges": [{"path": 3}]}, "status")
    json.dumps(schema.full_schema())


def test_table_alignment_survives_colour():
    style = render.Style(True)
    text = render.table(("A", "STATE"), [["x", "running"], ["long name", "failed"]],
                        style=style, state_column=1)
    plain = render.table(("A", "STATE"), [["x", "running"], ["long name", "failed"]])
    assert "\x1b[" in text and "\x1b[" not in plain
    stripped = [line.replace("\x1b[0m", "").replace("\x1b[32m", "").replace("\x1b[1;31m", "")
                .replace("\x1b[1m", "") for line in text.splitlines()]
    assert stripped == plain.splitlines()


def test_sparkline_scales_and_keeps_flat_lines_flat():
    assert render.sparkline([0, 1, 2, 3, 4, 5, 6, 7], 1.0) == "▁▂▃▄▅▆▇█"
    flat = render.sparkline([5.0] * 6, 1.0)
    assert len(set(flat)) == 1 and flat[0] not in "▁█"
    assert render.sparkline([None, 1.0], 1.0, ascii_only=True)[0] == " "


def test_no_colour_when_not_a_tty_or_no_color(monkeypatch):
    class Tty:
        def isatty(self):
            return True
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert render.colour_wanted(Tty())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not render.colour_wanted(Tty())
    assert not render.colour_wanted(open(os.devnull, "w"))
