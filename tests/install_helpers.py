"""Running the project's install targets (make install/uninstall/deb, pipx) and looking at what
they installed: every file, the paths the units and activation files name, the private Python
environment's packages.

Runs in the pytest process; make, pip, dpkg and apt are child processes.
"""

from __future__ import annotations

import configparser
import os
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

from systemd_helpers import settings

REPO = Path(__file__).resolve().parent.parent
# what the development environment has and an installation must not
DEVELOPMENT_ONLY = ("pytest", "pytest_timeout", "pexpect", "matplotlib", "pip", "setuptools")
# what the service needs at run time (pyproject.toml's dependencies, by import name)
RUNTIME_IMPORTS = ("cardbridge.daemon", "cardbridge.engine.worker", "cardbridge_cli.main",
                   "dbus_next", "jack", "alsaaudio", "samplerate", "numpy", "pyudev", "cffi")


def clean_env(**extra: str) -> dict:
    """The environment for a nested make: without the outer make's variables (MAKEFLAGS would
    hand it a `make test` command line's settings)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "VIRTUAL_ENV")}
    env.update(extra)
    return env


def run_make(*args: str, timeout: float = 900, env: dict | None = None) -> str:
    out = subprocess.run(["make", "--no-print-directory", "-C", str(REPO), *args],
                         env=env or clean_env(), capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"make {' '.join(args)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


class OpenDir:
    """A temporary directory that other users may enter (pytest's are 0700): a service run as
    its own user must reach what is installed there."""

    def __init__(self, tag: str):
        self.path = Path(tempfile.mkdtemp(prefix=f"cardbridge-{tag}-"))
        os.chmod(self.path, 0o755)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def tree(root: Path) -> set[str]:
    """Every file and symlink below `root`, as paths relative to it (directories left out)."""
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_symlink() or not p.is_dir()}


def staged(root: Path, path: str) -> Path:
    """Where `path` (an absolute path of the installed system) is in a staging tree `root`,
    following symlinks whose absolute targets name the installed system."""
    current = Path(path)
    for _ in range(20):
        here = root / current.relative_to("/")
        if not here.is_symlink():
            return here
        target = Path(os.readlink(here))
        current = target if target.is_absolute() else (current.parent / target)
        current = Path(os.path.normpath(current))
    raise AssertionError(f"symlink loop at {path}")


def files_naming(root: Path, text: str) -> list[str]:
    """The text files below `root` that contain `text`."""
    out = subprocess.run(["grep", "-rlIF", text, str(root)], capture_output=True, text=True)
    return out.stdout.split()


def commands_named(unit_or_activation: Path) -> list[str]:
    """The programs a unit (ExecStart=, ExecReload=) or an activation file (Exec=) starts."""
    text = unit_or_activation.read_text()
    if "[D-BUS Service]" in text:
        cp = configparser.ConfigParser()
        cp.read_string(text)
        return [shlex.split(cp["D-BUS Service"]["Exec"])[0]]
    keys = settings(text)
    return [shlex.split(value)[0] for key in ("ExecStart", "ExecReload") for value in keys.get(key, [])]


def environment_packages(python: Path) -> set[str]:
    """The distributions installed in a Python environment, lower-case, '-' for '_'."""
    out = subprocess.run([str(python), "-I", "-c",
                          "import importlib.metadata as m; "
                          "print('\\n'.join(d.metadata['Name'] for d in m.distributions()))"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return {line.strip().lower().replace("_", "-") for line in out.stdout.splitlines() if line.strip()}


def check_runtime_imports(python: Path, *prefix: str) -> None:
    """Every module the service needs imports in the environment, isolated (-I), and the
    samplerate package exports libsamplerate's C API (stripping must not have lost it)."""
    code = ("import importlib, ctypes; "
            f"[importlib.import_module(m) for m in {RUNTIME_IMPORTS!r}]; "
            "import samplerate; ctypes.CDLL(samplerate.__file__).src_new; print('ok')")
    out = subprocess.run([*prefix, str(python), "-I", "-c", code], capture_output=True, text=True,
                         timeout=120, cwd="/")
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]
