"""What the service tells systemd while it runs: the status line (STATUS=, shown by
`systemctl status`) from the manager's bridge counts, and the watchdog pings (WATCHDOG=1).

Runs as a task on the main asyncio loop, so the pings stop when the loop is stuck and systemd
restarts the service (WatchdogSec= in the units). The line is sent again only when it changes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

from . import names
from .sdnotify import Notifier

CHECK_INTERVAL = 1.0            # how often the status line is rebuilt (s)

WAITING = (names.WAITING_FOR_DEVICE, names.WAITING_FOR_JACK)
STARTING = (names.STARTING, names.SYNCING)


def status_line(states: Mapping[str, int], jack_running: bool) -> str:
    """'2 bridges: 1 running, 1 waiting' (+ starting, failed when there are any; + JACK's
    absence)."""
    total = sum(states.values())
    if total == 0:
        text = "no bridges"
    else:
        parts = [f"{states.get(names.RUNNING, 0)} running",
                 f"{sum(states.get(s, 0) for s in WAITING)} waiting"]
        starting = sum(states.get(s, 0) for s in STARTING)
        if starting:
            parts.append(f"{starting} starting")
        if states.get(names.FAILED, 0):
            parts.append(f"{states[names.FAILED]} failed")
        text = f"{total} bridge{'s' if total != 1 else ''}: " + ", ".join(parts)
    if not jack_running:
        text += "; JACK not running"
    return text


def interval(notifier: Notifier) -> float:
    """Seconds between two rounds: the check interval, or half the watchdog timeout if that is
    shorter (systemd's advice: ping at half the timeout)."""
    if notifier.watchdog_interval:
        return min(CHECK_INTERVAL, notifier.watchdog_interval / 2)
    return CHECK_INTERVAL


async def beat(notifier: Notifier, current_status: Callable[[], str],
               last: str | None = None) -> None:
    """Forever: a new status line when it changed from the last one sent (`last`: the line
    already sent, e.g. with READY=1), a watchdog ping every round if wanted."""
    while True:
        text = current_status()
        message = []
        if text != last:
            message.append(f"STATUS={text}")
            last = text
        if notifier.watchdog_interval:
            message.append("WATCHDOG=1")
        notifier.send(*message)
        await asyncio.sleep(interval(notifier))
