"""Log lines of the service's main process: `name: LEVEL: message` on a terminal or in a file,
and `<priority>name: message` when stderr is the journal (systemd sets JOURNAL_STREAM to the
device and inode of the stream it gave the service), so that `journalctl -p warning` and the
journal's colours see errors as errors.

Runs in the main asyncio process, once at start-up.
"""

from __future__ import annotations

import logging
import os
import sys

# syslog priorities (sd-daemon(3)): what journald reads from a "<N>" prefix on each line
PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4),
              (logging.INFO, 6), (logging.DEBUG, 7))


def priority(levelno: int) -> int:
    """The syslog priority of a logging level (levels in between take the next one below)."""
    for level, prio in PRIORITIES:
        if levelno >= level:
            return prio
    return 7


def stream_is_journal(stream=None, environ=None) -> bool:
    """True when `stream` (stderr) is the journal stream that systemd connected."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    try:
        device, inode = (int(part) for part in value.split(":"))
        st = os.fstat((stream or sys.stderr).fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (device, inode)


class JournalFormatter(logging.Formatter):
    """Every line of a record (a traceback too) carries the record's priority prefix."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


def setup(level: str, stream=None) -> None:
    """Configure the root logger for the daemon: `level` is a logging level name."""
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    if stream_is_journal(stream):
        handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(name)s: %(levelname)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper()))
