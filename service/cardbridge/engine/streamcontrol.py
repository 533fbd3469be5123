"""The two one-way channels between a worker's control thread and its ALSA thread.

`StreamControl` is the control thread's command slot for the ALSA thread: the control thread is
its only writer (stop, wake up and look at the device now, JACK's format changed); the ALSA
thread reads it once per period (plain attribute reads, no lock).

`StreamOutbox` is how the ALSA thread speaks to the control thread: it puts messages in the
control thread's inbox (a queue.SimpleQueue, whose put() neither blocks nor takes a lock the
reader could hold). The ALSA thread uses it only on transitions and errors, never per period:
its state (syncing, running, waiting for the device, failed, each with a reason), lines for the
log, and "the port latencies changed" (the control thread then tells JACK). Each message carries
the outbox it came from: the control thread ignores those of an ALSA thread it has stopped.
"""

from __future__ import annotations

import queue
import threading
from typing import NamedTuple

# What the ALSA thread posts to the control thread's inbox (kind, payload).
STREAM_STATE = "stream-state"        # (state, reason)
STREAM_NOTE = "stream-note"          # a line for the log
STREAM_LATENCY = "stream-latency"    # the queues hold new port latencies


class Message(NamedTuple):
    """One message in a worker's inbox (worker.py): from the command reader, JACK's notification
    thread or the ALSA thread (`source`: the StreamOutbox it came through, else None)."""
    kind: str
    payload: object = None
    source: object = None


class StreamControl:
    def __init__(self, jack_rate: int, jack_period: int):
        self.stop = threading.Event()
        self.wake = threading.Event()        # the device may have come or gone: look now
        self.jack_rate = jack_rate
        self.jack_period = jack_period
        self.jack_generation = 0             # moves on when JACK's format changed

    def jack_format(self, rate: int, period: int) -> None:
        """JACK's sample rate or buffer size changed: the stream starts again on them."""
        self.jack_rate = rate
        self.jack_period = period
        self.jack_generation += 1
        self.wake.set()

    def pause(self, seconds: float) -> None:
        """Wait up to `seconds` for a wake-up (ALSA thread, between attempts)."""
        self.wake.wait(seconds)
        self.wake.clear()


class StreamOutbox:
    NOTES_MAX = 1000          # per ALSA thread: one that keeps failing does not flood the log

    def __init__(self, inbox: "queue.SimpleQueue"):
        self.inbox = inbox
        self._last_state: tuple[str, str] | None = None
        self._notes = 0

    def state(self, state: str, reason: str = "") -> None:
        if (state, reason) != self._last_state:
            self._last_state = (state, reason)
            self.inbox.put(Message(STREAM_STATE, (state, reason), self))

    def note(self, text: str) -> None:
        if self._notes < self.NOTES_MAX:
            self._notes += 1
            self.inbox.put(Message(STREAM_NOTE, text, self))

    def latencies_changed(self) -> None:
        self.inbox.put(Message(STREAM_LATENCY, None, self))
