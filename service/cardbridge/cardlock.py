"""One card, one bridge, across every cardbridge instance on the machine (system and sessions).

Main asyncio process (non-blocking calls only). While a bridge may use ALSA card N, its instance
holds an exclusive `flock` on `<lock dir>/cardbridge-Audio<N>.lock`; a second instance finds the
lock taken and leaves the card alone. The kernel drops the lock when its holder closes the file
or dies, so nothing needs cleaning up after a crash, whoever the users of the instances are.

The lock directory is `$CARDBRIDGE_LOCK_DIR`, else /run/lock (world-writable and sticky on
Debian). Whoever comes first creates a card's file (mode 0644); the others open it read-only,
which is enough for flock, and never with O_CREAT on a file they do not own (the kernel's
protected_regular refuses that in sticky directories). Files are never followed through
symbolic links. Without a usable directory there is no cross-instance check (one warning).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os

log = logging.getLogger(__name__)

DEFAULT_DIR = "/run/lock"


def lock_dir() -> str:
    return os.environ.get("CARDBRIDGE_LOCK_DIR") or DEFAULT_DIR


class CardLocks:
    """The card locks this instance holds, by card number."""

    def __init__(self, directory: str | None = None):
        self.directory = directory or lock_dir()
        self._held: dict[int, int] = {}          # card number -> open file descriptor
        self._warned = False

    def path(self, card: int) -> str:
        return os.path.join(self.directory, f"cardbridge-Audio{int(card)}.lock")

    def acquire(self, card: int) -> bool:
        """Take card `card`'s lock; False if another instance holds it. A lock that cannot be
        had for another reason (no directory) counts as free, with one warning."""
        if card in self._held:
            return True
        fd = self._open(self.path(card))
        if fd is None:
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return False
            self._warn(f"cannot lock {self.path(card)} ({exc.strerror})")
            return True
        self._held[card] = fd
        return True

    def release(self, card: int) -> None:
        fd = self._held.pop(card, None)
        if fd is not None:
            os.close(fd)                          # closing the only descriptor drops the lock

    def release_all(self) -> None:
        for card in list(self._held):
            self.release(card)

    def held(self, card: int) -> bool:
        return card in self._held

    def _open(self, path: str) -> int | None:
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
        for _ in range(3):
            try:
                return os.open(path, flags)
            except FileNotFoundError:
                pass
            except OSError as exc:
                self._warn(f"cannot open {path} ({exc.strerror})")
                return None
            try:
                fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                continue                           # another instance made it just now
            except OSError as exc:
                self._warn(f"cannot create {path} ({exc.strerror})")
                return None
            try:
                os.fchmod(fd, 0o644)               # whatever our umask: others must open it
            except OSError:
                pass
            return fd
        return None

    def _warn(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning("%s: other cardbridge instances cannot be kept off this instance's "
                        "cards", message)
