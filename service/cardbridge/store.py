"""The service's state file: what is attached and persisted, remembered names and connections.

Main asyncio process. Written atomically (temporary file, fsync, rename, fsync of the directory);
a corrupt or unreadable file is moved aside (`state.json.corrupt-<time>`), reported once, and
never overwritten with nothing: when it cannot even be moved aside, the service runs without
saving (`read_only`) rather than destroy it.
`request_save()` takes a copy of the state on the event loop and writes it in a worker thread
(the fsyncs may take long on a busy disk); saves asked for while one is being written are
coalesced into one, the newest. `flush()` waits for the last; `save()` writes at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
import time
from pathlib import Path

log = logging.getLogger("cardbridge.store")

# bridges: the explicit attachments (device id -> options); connections: connections.py's memory;
# auto_attach: enable/disable/detach choices; names: client names given; seen: when each device
# was last present (unix time; what pruning goes by); jack_cards: cards seen as JACK's own
SECTIONS = ("bridges", "connections", "auto_attach", "names", "seen", "jack_cards")


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
        self.read_only = False                    # the old file could not be kept aside
        self._pending: str | None = None          # the newest text not yet being written
        self._writer: asyncio.Task | None = None

    def load(self) -> dict:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return self.data
        except OSError as exc:
            return self._set_aside(f"cannot be read ({exc.strerror})")
        try:
            data = json.loads(raw.decode("utf-8"))
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            for name in SECTIONS:
                if not isinstance(data.get(name, {}), dict):
                    raise ValueError(f"section '{name}' is not an object")
        except ValueError as exc:          # also UnicodeDecodeError
            return self._set_aside(f"is corrupt ({' '.join(str(exc).split())[:200]})")
        for name in SECTIONS:
            self.data[name] = dict(data.get(name, {}))
        return self.data

    def _set_aside(self, what: str) -> dict:
        """Keep a state file we cannot use; start empty. If it cannot be moved, never save."""
        aside = self.path.with_name(f"state.json.corrupt-{int(time.time())}")
        try:
            os.replace(self.path, aside)
            self.problem = f"{self.path} {what}; kept as {aside.name}"
        except OSError as exc:
            self.read_only = True
            self.problem = (f"{self.path} {what} and cannot be kept aside ({exc.strerror}); "
                            "nothing will be saved until it is repaired or removed")
        log.error("%s; starting with an empty state", self.problem)
        return self.data

    def _text(self) -> str:
        return json.dumps({"version": 1, **self.data}, indent=2, sort_keys=True)

    def save(self) -> None:
        """Write the state now (blocking; raises OSError)."""
        if not self.read_only:
            self._write(self._text())

    def request_save(self) -> None:
        """Save soon, off the event loop (loop thread only); errors are logged."""
        if self.read_only:
            return
        self._pending = self._text()
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_pending(),
                                                                  name="state-save")

    async def flush(self) -> None:
        """Wait until every requested save is on disk (or has failed and been logged)."""
        while self._writer is not None and not self._writer.done():
            await asyncio.shield(self._writer)

    async def _write_pending(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending is not None:
            text, self._pending = self._pending, None
            try:
                await loop.run_in_executor(None, self._write, text)
            except OSError as exc:
                log.error("cannot save the state to %s: %s", self.path, exc.strerror)

    def _write(self, text: str) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
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
