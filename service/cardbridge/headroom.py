"""When a card keeps running dry, give it one more period of buffer.

A pure policy with no I/O, used by the ALSA thread of a bridge worker at the edge of its loop
(after a card xrun, while the stream is being restarted; never in the per-period path).

On a machine that is taken away from us for a few milliseconds now and then (a virtual machine
whose host steals the CPU, a laptop's power management, a badly behaved driver), a buffer of two
short periods cannot be held: the card xruns about as often as that happens and the bridge never
stays locked. The user's choice of periods is where a bridge starts; when the card xruns
`XRUNS` times within `WINDOW_S` seconds, each time by a gap that one more period would have
covered, the bridge adds a period (one more period of latency, reported to JACK), up to its
ceiling. Gaps far longer than that (a stopped process, a suspended machine) are not the buffer's
fault and do not count. Periods never shrink during a bridge's life: latency that moves back and
forth is worse than latency that is a little higher.
"""

from __future__ import annotations

XRUNS = 3
WINDOW_S = 30.0


class Headroom:
    """The number of periods a card runs with, raised after repeated short dropouts."""

    def __init__(self, periods: int, max_periods: int):
        self.periods = periods
        self.max_periods = max(periods, max_periods)
        self.recent: list[float] = []

    def on_xrun(self, now: float, gap_s: float | None, period_s: float) -> bool:
        """Record a card xrun found `gap_s` seconds after the last period that arrived in time
        (None when the stream had not delivered one yet). True when periods was raised."""
        if gap_s is None or self.periods >= self.max_periods:
            return False
        # a normal wait is one period; the buffer holds `periods`; one more would have covered
        # a gap of up to periods + 1 periods
        if gap_s > (self.periods + 1) * period_s:
            return False
        self.recent = [t for t in self.recent if now - t < WINDOW_S]
        self.recent.append(now)
        if len(self.recent) < XRUNS:
            return False
        self.recent.clear()
        self.periods += 1
        return True
