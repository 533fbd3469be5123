"""The one table of what a bridge tells about itself, and who writes each value.

Pure data, imported by every party that handles bridge statistics, each of which derives its
part from `STATS` instead of listing the names again:

* the worker's shared statistics slot (engine/stats.py): one record per writer, laid out from
  the entries whose `source` is that writer;
* the supervisor in the main process (engine/supervisor.py), which assembles a bridge's dict
  from the slot, its events and its spec;
* the D-Bus Bridge properties (api.py) and the check that dbus/*.Bridge.xml matches them;
* the CLI's JSON records and their schema (clients/cardbridge_cli/records.py, schema.py).

Sources (who writes the value; each shared value has exactly one writer):
  "stream"  the worker's ALSA thread, in its record of the slot (numbers, per period or less)
  "worker"  the worker's control thread, in its record of the slot
  "event"   the worker's control thread, in its events to the main process (state, reason)
  "spec"    the main process: what the bridge was asked to be
  "derived" computed by the supervisor from the others (`derive` says from what)
"""

from __future__ import annotations

from dataclasses import dataclass

# States a bridge reports (Bridge.State); the worker's control thread is their only writer.
STARTING = "starting"
SYNCING = "syncing"
RUNNING = "running"
WAITING_FOR_DEVICE = "waiting-for-device"
WAITING_FOR_JACK = "waiting-for-jack"
FAILED = "failed"
STATES = (STARTING, SYNCING, RUNNING, WAITING_FOR_DEVICE, WAITING_FOR_JACK, FAILED)


@dataclass(frozen=True)
class Stat:
    key: str              # name in the supervisor's dict and in the slot
    source: str           # "stream" | "worker" | "event" | "spec" | "derived"
    kind: str             # "count" (unsigned integer), "number" (float), "text", "flag"
    doc: str
    prop: str | None = None        # D-Bus Bridge property, None: not published
    json: str | None = None        # key in the CLI's --json bridge record (default: key)

    @property
    def signature(self) -> str:
        """D-Bus type of the property."""
        return {"count": "u", "number": "d", "text": "s", "flag": "b"}[self.kind]

    @property
    def json_key(self) -> str:
        return self.json or self.key


STATS: tuple[Stat, ...] = (
    Stat("device", "spec", "text", "stable device id", "Device"),
    Stat("client_name", "spec", "text", "JACK client name", "ClientName"),
    Stat("state", "event", "text", "one of " + ", ".join(STATES), "State"),
    Stat("state_reason", "event", "text",
         "why the bridge is in its state, one line; empty while running", "StateReason"),
    Stat("capture_channels", "worker", "count", "channels from the card (JACK output ports)",
         "CaptureChannels"),
    Stat("playback_channels", "worker", "count", "channels to the card (JACK input ports)",
         "PlaybackChannels"),
    Stat("rate", "stream", "count", "card sample rate, Hz", "Rate"),
    Stat("period", "stream", "count", "card period, frames", "Period"),
    Stat("periods", "stream", "count", "card periods per buffer (may grow after dropouts)",
         "Periods"),
    Stat("quality", "spec", "text", "best, medium, fastest or linear", "Quality"),
    Stat("ratio", "stream", "number", "current resampling ratio", "Ratio"),
    Stat("drift_ppm", "stream", "number", "clock offset of the card against JACK, ppm",
         "DriftPpm"),
    Stat("delay_error", "stream", "number", "drift loop error, frames", "DelayError"),
    Stat("latency", "derived", "count", "latency reported to JACK, JACK frames (the larger "
         "of the two directions)", "Latency", json="latency_frames"),
    Stat("xruns", "stream", "count", "card-side xruns", "Xruns"),
    Stat("underruns", "stream", "count", "ring underruns", "Underruns"),
    Stat("restarts", "derived", "count", "times the bridge was restarted", "Restarts"),
    # not published on D-Bus; the engine's tests and the supervisor read them
    Stat("capture_latency", "stream", "count", "latency of the capture ports, JACK frames"),
    Stat("playback_latency", "stream", "count", "latency of the playback ports, JACK frames"),
    Stat("jack_rate", "stream", "count", "JACK's sample rate the stream runs against"),
    Stat("jack_period", "stream", "count", "JACK's period the stream runs against"),
    Stat("locked", "stream", "flag", "the drift loop holds the delay"),
    Stat("device_format", "stream", "count", "the card's sample format (FORMATS index)"),
    Stat("jack_lost", "stream", "count", "times the JACK server lost time, skipped in the rings"),
    Stat("resyncs", "stream", "count", "times the stream was started again by the ALSA thread"),
    Stat("thread_restarts", "worker", "count", "times the control thread restarted the stream"),
)

BY_KEY = {stat.key: stat for stat in STATS}
PUBLISHED = tuple(stat for stat in STATS if stat.prop is not None)
BY_PROP = {stat.prop: stat for stat in PUBLISHED}

# The device's sample formats, numbered for `device_format` (0: not known yet), in the order of
# the C codec's table (csrc/periodpath.c); ALSA's names.
FORMATS = ("", "FLOAT_LE", "S32_LE", "S24_3LE", "S16_LE", "S24_LE", "FLOAT64_LE", "S32_BE",
           "S24_3BE", "S16_BE", "S24_BE", "FLOAT_BE", "U32_LE", "U24_3LE", "U16_LE", "S8", "U8")


def of_source(source: str) -> tuple[str, ...]:
    """The keys one writer publishes, in table order (a slot record's layout)."""
    return tuple(stat.key for stat in STATS if stat.source == source)


def published_value(stat: Stat, value):
    """A value as its D-Bus property carries it: never None, NaN or out of the type's range."""
    if stat.kind == "count":
        try:
            number = float(value)
        except (TypeError, ValueError):
            return 0
        if number != number:          # NaN
            return 0
        return int(max(0.0, min(number, 0xFFFFFFFF)))
    if stat.kind == "number":
        try:
            number = float(value)
        except (TypeError, ValueError):
            return 0.0
        return number if number == number and abs(number) != float("inf") else 0.0
    if stat.kind == "flag":
        return bool(value)
    return "" if value is None else str(value)
