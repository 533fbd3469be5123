"""The service's state file: what is attached and persisted, remembered names and connections.

Main asyncio process. Written atomically (temporary file, fsync, rename, fsync of the directory);
a corrupt or unreadable file is moved aside, reported once, and never overwritten with nothing.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path

log = logging.getLogger("cardbridge.store")

SECTIONS = ("bridges", "connections", "auto_attach", "names")


def default_state_dir(system: bool) -> Path:
    if os.environ.get("STATE_DIRECTORY"):              # systemd StateDirectory=
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    if system:
        return Path("/var/lib/cardbridge")
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "cardbridge"


class StateStore:
    def __init__(self, directory: str | os.PathLike):
        self.dir = Path(directory)
        self.path = self.dir / "state.json"
        self.data: dict = {name: {} for name in SECTIONS}
        self.problem: str | None = None

    def load(self) -> dict:
        try:
            raw = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return self.data
        except OSError as exc:
            self.problem = f"cannot read {self.path}: {exc.strerror}"
            log.error("%s; starting with an empty state", self.problem)
            return self.data
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            for name in SECTIONS:
                if not isinstance(data.get(name, {}), dict):
                    raise ValueError(f"section '{name}' is not an object")
        except ValueError as exc:
            aside = self.path.with_name(f"state.json.corrupt-{int(time.time())}")
            try:
                os.replace(self.path, aside)
            except OSError:
                aside = self.path
            self.problem = f"{self.path} is corrupt ({exc}); kept as {aside.name}"
            log.error("%s; starting with an empty state", self.problem)
            return self.data
        for name in SECTIONS:
            self.data[name] = dict(data.get(name, {}))
        return self.data

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"version": 1, **self.data}, indent=2, sort_keys=True)
        fd, tmp = tempfile.mkstemp(prefix=".state.", dir=self.dir)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        try:
            dfd = os.open(self.dir, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:
            pass
