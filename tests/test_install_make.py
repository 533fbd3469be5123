"""`make install` / `make uninstall` for real: system-wide into a DESTDIR (the layout a packager
or root gets), and into a user's PREFIX; the installed service run as its files say (the
system unit's ExecStart as its user on a system-like bus that includes the installed policy;
the session activation file started by dbus-daemon) answering the installed `cardbridge`;
then uninstall leaves nothing. Also `pipx install .` with `make install-files`.

Runs in the pytest process as root (CI); make, pip, pipx, dbus-daemon and the service are
child processes. The system-wide run creates the system user `cardbridge` as `make install`
does (systemd-sysusers); it is the same user the package creates.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from testbench import procs
from testbench.busdaemon import PrivateBus

from install_helpers import (DEVELOPMENT_ONLY, OpenDir, check_runtime_imports, clean_env,
                             commands_named, environment_packages, files_naming, run_make,
                             staged, tree)
from service_helpers import BUS, wait_for
from systemd_helpers import NotifySocket, UnitRun, settings

pytestmark = [pytest.mark.skipif(os.geteuid() != 0 or not Path("/usr/bin/python3").exists()
                                 or shutil.which("systemd-sysusers") is None,
                                 reason="needs root, Debian's python3 and systemd-sysusers"),
              pytest.mark.timeout(900)]   # pip builds a whole environment

SYSTEM_WIDE = {  # what `make install PREFIX=/usr/local` installs besides the environment
    "usr/local/bin/cardbridged", "usr/local/bin/cardbridge",
    "usr/local/lib/systemd/system/cardbridged.service",
    "usr/local/lib/systemd/user/cardbridge.service",
    "usr/local/share/dbus-1/services/org.cardbridge.CardBridge1.service",
    "usr/local/share/dbus-1/system-services/org.cardbridge.CardBridge1.service",
    "etc/dbus-1/system.d/org.cardbridge.CardBridge1.conf",
    "usr/local/lib/sysusers.d/cardbridge.conf", "usr/local/lib/tmpfiles.d/cardbridge.conf",
    "usr/local/share/man/man1/cardbridge.1", "usr/local/share/man/man5/cardbridge.toml.5",
    "usr/local/share/man/man8/cardbridged.8",
    "usr/local/share/bash-completion/completions/cardbridge",
    "usr/local/share/zsh/site-functions/_cardbridge",
    "usr/local/share/doc/cardbridge/README.md", "etc/cardbridge/config.toml",
}
SESSION_ONLY = {  # what a user's `make install PREFIX=~/.local` installs besides the environment
    "bin/cardbridged", "bin/cardbridge", "share/systemd/user/cardbridge.service",
    "share/dbus-1/services/org.cardbridge.CardBridge1.service",
    "share/man/man1/cardbridge.1", "share/man/man5/cardbridge.toml.5",
    "share/man/man8/cardbridged.8", "share/bash-completion/completions/cardbridge",
    "share/zsh/site-functions/_cardbridge", "share/doc/cardbridge/README.md",
}


@pytest.fixture
def open_dir():
    made: list[OpenDir] = []

    def make(tag: str) -> Path:
        made.append(OpenDir(tag))
        return made[-1].path

    yield make
    for d in made:
        d.remove()


def installed_files(root: Path, app_dir: str, *make_args: str) -> tuple[set[str], set[str]]:
    """`make install` with these variables: the files it put below `root`, apart from the
    private environment in `app_dir`, and those of the environment."""
    run_make("install", *make_args)
    installed = tree(root)
    app = {p for p in installed if p.startswith(app_dir)}
    return installed - app, app


def status_as(address: str, cli: list[str], kind: str, *setpriv: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "NO_COLOR": "1",
           f"DBUS_{kind.upper()}_BUS_ADDRESS": address}
    return subprocess.run([*setpriv, *cli, f"--{kind}", "status"], env=env, capture_output=True,
                          text=True, timeout=60, cwd="/")


def test_install_dirs_follow_who_installs(open_dir):
    """Root gets a system-wide installation in /usr/local (and the system-bus parts); anyone
    else one in ~/.local with the directories their session's systemd and D-Bus read."""
    as_root = dict(line.split("=", 1) for line in run_make("-s", "install-dirs").splitlines())
    assert as_root["PREFIX"] == "/usr/local" and as_root["SYSTEM"] == "yes"
    assert as_root["DBUSPOLICYDIR"] == "/etc/dbus-1/system.d"
    home = open_dir("home") / "home"
    home.mkdir()
    # the Makefile where that user can read it (the checkout may be in root's private directory)
    shutil.copy(Path(__file__).parent.parent / "Makefile", home / "Makefile")
    os.chown(home, 65534, 65534)
    out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "make",
                          "--no-print-directory", "-s", "-f", str(home / "Makefile"),
                          "install-dirs"], env=clean_env(HOME=str(home)), capture_output=True,
                         text=True, timeout=60, cwd=str(home))
    assert out.returncode == 0, out.stderr
    as_user = dict(line.split("=", 1) for line in out.stdout.splitlines())
    assert as_user["PREFIX"] == f"{home}/.local" and as_user["SYSTEM"] == "no"
    assert as_user["SYSTEMDUSERUNITDIR"] == f"{home}/.local/share/systemd/user"
    assert as_user["DBUSSESSIONSERVICEDIR"] == f"{home}/.local/share/dbus-1/services"


def test_system_wide_install_into_destdir_runs_as_its_unit_says_and_uninstalls(open_dir):
    dest = open_dir("destdir")
    assert installed_files(dest, "usr/local/lib/cardbridge/", f"DESTDIR={dest}",
                           "PREFIX=/usr/local")[0] == SYSTEM_WIDE
    # staged for /usr/local: nothing names the staging directory, nothing is left to replace
    assert files_naming(dest, str(dest)) == []
    assert files_naming(dest, "@BINDIR@") == []
    # every program the units and activation files start is installed, where they say
    units = [dest / "usr/local/lib/systemd/system/cardbridged.service",
             dest / "usr/local/lib/systemd/user/cardbridge.service",
             dest / "usr/local/share/dbus-1/services/org.cardbridge.CardBridge1.service",
             dest / "usr/local/share/dbus-1/system-services/org.cardbridge.CardBridge1.service"]
    for path in units:
        for command in commands_named(path):
            target = staged(dest, command) if command.startswith("/usr/local") else Path(command)
            assert target.is_file() and os.access(target, os.X_OK), (path, command)
            if command.startswith("/usr/local"):
                assert command == "/usr/local/bin/cardbridged", (path, command)
    # the units verify (with their man pages), the staged program standing in for /usr/local's
    runtime = open_dir("runtime")
    for unit in units[:2]:
        text = unit.read_text().replace("/usr/local/bin/cardbridged",
                                        str(staged(dest, "/usr/local/bin/cardbridged")))
        (dest / unit.name).write_text(text)
        user = ["--user"] if "/user/" in str(unit) else []
        out = subprocess.run(["systemd-analyze", *user, "verify", str(dest / unit.name)],
                             capture_output=True, text=True, timeout=60,
                             env=clean_env(MANPATH=str(dest / "usr/local/share/man"),
                                           XDG_RUNTIME_DIR=str(runtime)))
        (dest / unit.name).unlink()
        assert out.returncode == 0, out.stderr
    # the environment holds what the service needs and none of the development extras
    python = dest / "usr/local/lib/cardbridge/bin/python"
    assert not set(DEVELOPMENT_ONLY) & environment_packages(python)
    check_runtime_imports(python)

    # run it as the installed system unit says: its user (created from the installed
    # sysusers.d file, as `make install` does), on a system-like bus with the installed policy
    subprocess.run(["systemd-sysusers", str(dest / "usr/local/lib/sysusers.d/cardbridge.conf")],
                   check=True, timeout=60)
    bus = PrivateBus("system", extra_config=f"<include>{dest}/etc/dbus-1/system.d/"
                                            "org.cardbridge.CardBridge1.conf</include>").start()
    notify = NotifySocket()
    run = UnitRun(units[0], {"DBUS_SYSTEM_BUS_ADDRESS": bus.address}, notify,
                  dest / "daemon.log", state_root=open_dir("state"))
    script = staged(dest, run.argv[0])
    interpreter = dest / script.read_text().splitlines()[0][2:].strip().lstrip("/")
    try:
        run.start(command=[str(interpreter), str(script), *run.argv[1:]])
        notify.wait_for("READY", "1", alive=run.proc)
        out = subprocess.run(["busctl", f"--address={bus.address}", "status", BUS],
                             capture_output=True, text=True, timeout=30)
        assert f"UID={run.user.pw_uid}\n" in out.stdout and run.user.pw_uid != 0, out.stdout
        cli = [str(interpreter), str(staged(dest, "/usr/local/bin/cardbridge"))]
        done = status_as(bus.address, cli, "system")
        assert done.returncode == 0 and "on the system bus" in done.stdout, done.stderr
        assert run.stop() == 0, run.log()
    finally:
        run.stop()
        notify.close()
        bus.stop()
    assert "Traceback" not in run.log(), run.log()
    (dest / "daemon.log").unlink()

    run_make("uninstall", f"DESTDIR={dest}", "PREFIX=/usr/local")
    assert list(dest.iterdir()) == []


def test_user_install_is_activated_on_the_session_bus_and_uninstalls(open_dir):
    prefix = open_dir("prefix")
    files, app = installed_files(prefix, "lib/cardbridge/", f"PREFIX={prefix}", "SYSTEM=no")
    assert files == SESSION_ONLY
    assert any("__pycache__" in p for p in app)        # compiled where it runs
    for path in (prefix / "share/systemd/user/cardbridge.service",
                 prefix / "share/dbus-1/services/org.cardbridge.CardBridge1.service"):
        assert commands_named(path)[0] == f"{prefix}/bin/cardbridged"
    python = prefix / "lib/cardbridge/bin/python"
    assert not set(DEVELOPMENT_ONLY) & environment_packages(python)
    check_session_activation(prefix / "share/dbus-1/services", prefix / "bin", open_dir("home"))
    run_make("uninstall", f"PREFIX={prefix}", "SYSTEM=no")
    assert tree(prefix) == set()


def check_session_activation(service_dir: Path, bindir: Path, home: Path) -> None:
    """A session bus that reads the installed activation file starts the installed daemon
    for the installed CLI's first call; the daemon goes when the bus goes."""
    bus = PrivateBus("session", service_dirs=[service_dir]).start()
    pid = None
    try:
        env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8", "NO_COLOR": "1",
               "DBUS_SESSION_BUS_ADDRESS": bus.address, "JACK_NO_START_SERVER": "1",
               "JACK_DEFAULT_SERVER": procs.unique_name("none")}
        done = subprocess.run([str(bindir / "cardbridge"), "status"], env=env,
                              capture_output=True, text=True, timeout=60, cwd="/")
        assert done.returncode == 0 and "on the session bus" in done.stdout, done.stderr
        out = subprocess.run(["busctl", f"--address={bus.address}", "status", BUS],
                             capture_output=True, text=True, timeout=30)
        command_line = re.search(r"^CommandLine=(.*)$", out.stdout, re.M).group(1).split()
        assert f"{bindir}/cardbridged" in command_line and "--session" in command_line, out.stdout
        pid = int(re.search(r"^PID=(\d+)$", out.stdout, re.M).group(1))
    finally:
        bus.stop()
    if pid is not None:   # it loses its bus and exits by itself
        assert procs.wait_for(lambda: not procs.pid_alive(pid), 15), "activated daemon still running"


@pytest.mark.skipif(shutil.which("pipx") is None, reason="pipx not installed")
def test_pipx_install_with_the_session_files(open_dir):
    """`pipx install .` gives the commands; `make install-files` the units, the activation
    file, man pages and completions for them; both undo cleanly."""
    root = open_dir("pipx")
    env = clean_env(PIPX_HOME=str(root / "pipx"), PIPX_BIN_DIR=str(root / "bin"),
                    PIPX_MAN_DIR=str(root / "man"), PIP_DISABLE_PIP_VERSION_CHECK="1")
    done = subprocess.run(["pipx", "install", "--python", "/usr/bin/python3", str(Path(__file__)
                           .parent.parent)], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert (root / "bin/cardbridged").exists() and (root / "bin/cardbridge").exists()
    prefix = root / "prefix"
    run_make("install-files", f"PREFIX={prefix}", f"BINDIR={root}/bin", "SYSTEM=no", env=env)
    assert tree(prefix) == {p for p in SESSION_ONLY if not p.startswith("bin/")}
    unit = settings((prefix / "share/systemd/user/cardbridge.service").read_text())
    assert unit["ExecStart"] == [f"{root}/bin/cardbridged --session"]
    check_session_activation(prefix / "share/dbus-1/services", root / "bin", open_dir("home"))
    run_make("uninstall-files", f"PREFIX={prefix}", f"BINDIR={root}/bin", "SYSTEM=no", env=env)
    assert tree(prefix) == set()
    done = subprocess.run(["pipx", "uninstall", "cardbridge"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert not (root / "bin/cardbridged").exists()
