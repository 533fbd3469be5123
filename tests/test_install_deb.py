"""The Debian package for real: `make deb` builds it (lintian finds no error or warning), apt
installs it, the installed service runs exactly as the installed system unit says (its
ExecStart as its user and groups, the state directory systemd would give it, the notify
socket and watchdog) on a system-like bus whose configuration includes the installed policy
file unchanged, owns its name and answers /usr/bin/cardbridge; a reinstall keeps the changed
configuration and the state; purge leaves nothing (the system user stays, see README).

Runs in the pytest process as root on Debian (CI); make, dpkg-buildpackage, lintian, apt-get,
dbus-daemon and the service are child processes. It installs and purges the package on this
machine (a `cardbridge` package found installed at the start is purged first); runs of it are
serialised by a lock file. The built package (gzip-compressed for speed) is kept in
build/deb-cache/<hash of the sources that go into it> and reused while those do not change.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import platform
import pwd
import grp
import shutil
import subprocess
from pathlib import Path

import pytest

from testbench.busdaemon import PrivateBus

from install_helpers import (DEVELOPMENT_ONLY, REPO, check_runtime_imports, clean_env,
                             commands_named, environment_packages, run_make)
from service_helpers import BUS, wait_for
from systemd_helpers import NotifySocket, UnitRun, settings

pytestmark = [pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("dpkg-buildpackage") is None
    or shutil.which("apt-get") is None or shutil.which("lintian") is None,
    reason="needs root on Debian with dpkg-dev, debhelper and lintian (make setup)"),
    # the first test builds the package (pip downloads and compiles; lintian): minutes
    pytest.mark.timeout(1800)]

LOCK = "/tmp/cardbridge-deb-install.lock"
SYSTEM_UNIT = Path("/lib/systemd/system/cardbridged.service")
USER_UNIT = Path("/usr/lib/systemd/user/cardbridge.service")
POLICY = Path("/usr/share/dbus-1/system.d/org.cardbridge.CardBridge1.conf")
EXPECTED = [
    "/usr/bin/cardbridged", "/usr/bin/cardbridge", str(SYSTEM_UNIT), str(USER_UNIT), str(POLICY),
    "/usr/share/dbus-1/services/org.cardbridge.CardBridge1.service",
    "/usr/share/dbus-1/system-services/org.cardbridge.CardBridge1.service",
    "/usr/lib/sysusers.d/cardbridge.conf", "/usr/lib/tmpfiles.d/cardbridge.conf",
    "/usr/share/man/man1/cardbridge.1.gz", "/usr/share/man/man8/cardbridged.8.gz",
    "/usr/share/man/man5/cardbridge.toml.5.gz",
    "/usr/share/bash-completion/completions/cardbridge",
    "/usr/share/zsh/vendor-completions/_cardbridge",
    "/usr/share/doc/cardbridge/copyright", "/etc/cardbridge/config.toml",
    "/usr/lib/cardbridge/bin/python",
]
# where a trace of the package could stay behind
SEARCHED = ("/etc", "/usr", "/var", "/lib", "/run", "/opt")


def sources_digest() -> str | None:
    """A hash of every file `make deb` packages (all the checkout's files but the tests and
    benchmarks), of the interpreter and of the architecture; None outside a git checkout."""
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "-co", "--exclude-standard"],
                            capture_output=True, timeout=60)
    if listed.returncode != 0:
        return None
    digest = hashlib.sha256()
    digest.update(f"{platform.machine()} {os.path.realpath('/usr/bin/python3')}".encode())
    for name in sorted(n for n in listed.stdout.decode().split("\0") if n):
        if name.startswith(("tests/", "benchmarks/")) or not (REPO / name).is_file():
            continue
        digest.update(name.encode() + b"\0" + (REPO / name).read_bytes() + b"\0")
    return digest.hexdigest()[:16]


@pytest.fixture(scope="module")
def deb() -> Path:
    """build/deb-cache/<digest>/ holding cardbridge_*.deb and lintian.txt."""
    digest = sources_digest()
    cache = REPO / "build" / "deb-cache"
    where = cache / (digest or "uncached")
    if digest is None or not list(where.glob("cardbridge_*.deb")) or not (where / "lintian.txt").exists():
        shutil.rmtree(cache, ignore_errors=True)      # one package kept: the current one
        # the same package with a fast compression: xz takes a minute here, gzip -1 two seconds
        run_make("deb", f"DEBDIR={where}", timeout=1800,
                 env=clean_env(DPKG_DEB_COMPRESSOR_TYPE="gzip", DPKG_DEB_COMPRESSOR_LEVEL="1"))
    [package] = where.glob("cardbridge_*.deb")
    return package


@pytest.fixture(scope="module")
def machine_lock():
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
        fcntl.flock(lock, fcntl.LOCK_UN)


def apt(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run(["apt-get", "-y", "-q", *args], capture_output=True, text=True,
                          timeout=900, env=clean_env(DEBIAN_FRONTEND="noninteractive"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def installed() -> bool:
    out = subprocess.run(["dpkg-query", "-W", "-f=${Status}", "cardbridge"], capture_output=True,
                         text=True)
    return out.returncode == 0 and "installed" in out.stdout.split()[-1:]


def traces() -> list[str]:
    """Paths named after the package. man-db's cache of formatted pages (/var/cache/man, written
    when anyone reads a page, here systemd-analyze verify) is man-db's, which expires it."""
    out = subprocess.run(["find", *SEARCHED, "-xdev", "-path", "/var/cache/man", "-prune", "-o",
                          "-name", "*cardbridge*", "-print"], capture_output=True, text=True,
                         timeout=300)
    return sorted(out.stdout.split())


def cli(address: str, *args: str, groups: str | None = None, as_nobody: bool = False):
    prefix = []
    if as_nobody:
        prefix = ["setpriv", "--reuid=65534", "--regid=65534",
                  f"--groups={groups}" if groups else "--clear-groups"]
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "NO_COLOR": "1",
           "DBUS_SYSTEM_BUS_ADDRESS": address}
    return subprocess.run([*prefix, "/usr/bin/cardbridge", "--system", *args], env=env,
                          capture_output=True, text=True, timeout=60, cwd="/")


def test_lintian_reports_no_error_and_no_warning(deb):
    report = (deb.parent / "lintian.txt").read_text()
    bad = [line for line in report.splitlines() if line.startswith(("E: ", "W: "))]
    assert bad == [], "\n".join(bad)


def test_package_installs_runs_as_its_unit_says_keeps_state_and_purges_clean(deb, machine_lock,
                                                                              tmp_path):
    if installed():
        apt("purge", "cardbridge")
    apt("install", str(deb))
    try:
        files = subprocess.run(["dpkg", "-L", "cardbridge"], capture_output=True, text=True,
                               check=True).stdout.split()
        for path in EXPECTED:
            assert path in files, path
        conffiles = subprocess.run(["dpkg-query", "-W", "-f=${Conffiles}", "cardbridge"],
                                   capture_output=True, text=True).stdout
        assert "/etc/cardbridge/config.toml" in conffiles
        check_installed_files()
        run_installed_service(tmp_path)
        # a reinstall (an upgrade to the same version) keeps a changed configuration and the state
        config = Path("/etc/cardbridge/config.toml")
        config.write_text(config.read_text() + 'auto_attach = "none"\n')
        apt("install", "--reinstall", str(deb))
        assert config.read_text().endswith('auto_attach = "none"\n')
        assert Path("/var/lib/cardbridge/state.json").exists()
    finally:
        apt("purge", "cardbridge")
    assert not installed()
    for path in files:
        if not Path(path).is_dir() or path.startswith(("/usr/lib/cardbridge", "/etc/cardbridge")):
            assert not os.path.lexists(path), f"{path} is still there after purge"
    assert traces() == [], "left after purge"
    # the system user stays (Debian's practice for system users); it cannot log in
    user = pwd.getpwnam("cardbridge")
    assert user.pw_shell in ("/usr/sbin/nologin", "/sbin/nologin")


def check_installed_files() -> None:
    # the user the package created, in group audio, and its state directory
    user = pwd.getpwnam("cardbridge")
    assert "cardbridge" in grp.getgrnam("audio").gr_mem
    st = os.stat("/var/lib/cardbridge")
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (user.pw_uid, user.pw_gid, 0o750)
    # every program the units and activation files start is there
    for path in (SYSTEM_UNIT, USER_UNIT, Path("/usr/share/dbus-1/services/org.cardbridge.CardBridge1.service"),
                 Path("/usr/share/dbus-1/system-services/org.cardbridge.CardBridge1.service")):
        for command in commands_named(path):
            assert os.access(command, os.X_OK), (path, command)
    # the units verify, man pages included
    for unit, user_flag in ((SYSTEM_UNIT, []), (USER_UNIT, ["--user"])):
        runtime = Path(f"/tmp/cardbridge-deb-runtime-{os.getpid()}")
        runtime.mkdir(mode=0o700, exist_ok=True)
        out = subprocess.run(["systemd-analyze", *user_flag, "verify", str(unit)],
                             capture_output=True, text=True, timeout=60,
                             env=clean_env(XDG_RUNTIME_DIR=str(runtime)))
        shutil.rmtree(runtime)
        assert out.returncode == 0, out.stderr
    # the user unit is enabled for every user (it starts for members of group audio); the
    # system unit is installed, not enabled
    assert Path("/etc/systemd/user/default.target.wants/cardbridge.service").is_symlink()
    assert not Path("/etc/systemd/system/multi-user.target.wants/cardbridged.service").exists()
    # the environment: what the service needs, byte-compiled, without the development extras
    python = Path("/usr/lib/cardbridge/bin/python")
    assert not set(DEVELOPMENT_ONLY) & environment_packages(python)
    check_runtime_imports(python, "setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}",
                          "--init-groups")
    assert list(Path("/usr/lib/cardbridge/lib").rglob("__pycache__/daemon.*.pyc"))


def run_installed_service(tmp_path: Path) -> None:
    """The installed system unit's ExecStart, as its User= with its groups, on a private
    system-like bus that includes the installed policy file unchanged."""
    assert settings(SYSTEM_UNIT.read_text())["ExecStart"] == ["/usr/bin/cardbridged --system"]
    bus = PrivateBus("system", extra_config=f"<include>{POLICY}</include>").start()
    notify = NotifySocket()
    run = UnitRun(SYSTEM_UNIT, {"DBUS_SYSTEM_BUS_ADDRESS": bus.address}, notify,
                  tmp_path / "daemon.log")
    try:
        run.start()
        ready = notify.wait_for("READY", "1", alive=run.proc)
        assert ready["STATUS"].startswith("no bridges"), ready
        out = subprocess.run(["busctl", f"--address={bus.address}", "status", BUS],
                             capture_output=True, text=True, timeout=30)
        assert f"UID={run.user.pw_uid}\n" in out.stdout and run.user.pw_uid != 0, out.stdout
        # anyone may look; only root and group audio may change things
        done = cli(bus.address, "status")
        assert done.returncode == 0 and "on the system bus" in done.stdout, done.stderr
        done = cli(bus.address, "status", as_nobody=True)
        assert done.returncode == 0, done.stderr
        done = cli(bus.address, "attach", "no-such-card", as_nobody=True)
        assert done.returncode == 4, done.stderr                # permission denied
        done = cli(bus.address, "attach", "no-such-card", as_nobody=True, groups="29")
        assert done.returncode == 5, done.stderr                # allowed; no such device
        # the watchdog the unit asks for is fed
        wait_for(lambda: any(m.get("WATCHDOG") == "1" for _, m in notify.drain()), 10, "a ping")
        assert run.stop() == 0, run.log()
    finally:
        run.stop()
        notify.close()
        bus.stop()
    assert notify.wait_for("STOPPING", "1")
    assert "Traceback" not in run.log(), run.log()
    state = Path("/var/lib/cardbridge/state.json")
    assert state.stat().st_uid == run.user.pw_uid
