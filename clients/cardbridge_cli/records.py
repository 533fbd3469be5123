"""D-Bus properties and ListDevices entries → the CLI's stable JSON records.

Runs in the CLI process; pure functions. The keys made here are the documented --json schema
(schema.py); the human renderers read the same records, so both views always agree.
"""

from __future__ import annotations

from cardbridge.bridgestats import PUBLISHED

# Bridge D-Bus property → JSON key, from the service's table of bridge statistics.
BRIDGE_KEYS = {stat.prop: stat.json_key for stat in PUBLISHED}

DEVICE_KEYS = ("id", "name", "client_name", "bus", "card", "alsa_name", "capture_channels",
               "playback_channels", "present", "declared", "attached", "auto_attach")


def latency_ms(frames, sample_rate) -> float | None:
    if frames is None or not sample_rate:
        return None
    return round(frames * 1000.0 / sample_rate, 3)


def bridge_record(path: str, props: dict, jack_rate: int | None = None) -> dict:
    """One bridge: every documented key present (null when the service did not say)."""
    record = {"path": path}
    for prop, key in BRIDGE_KEYS.items():
        record[key] = props.get(prop)
    # Latency is in JACK frames: convert with JACK's rate, else the card's.
    record["latency_ms"] = latency_ms(record["latency_frames"], jack_rate or record["rate"])
    return record


def update_bridge_record(record: dict, changed: dict, jack_rate: int | None = None) -> dict:
    """Apply a PropertiesChanged dict; returns the JSON keys that changed, with new values."""
    delta = {}
    for prop, value in changed.items():
        key = BRIDGE_KEYS.get(prop)
        if key is not None and record.get(key) != value:
            record[key] = delta[key] = value
    new_ms = latency_ms(record["latency_frames"], jack_rate or record["rate"])
    if new_ms != record.get("latency_ms"):
        record["latency_ms"] = delta["latency_ms"] = new_ms
    return delta


def service_record(manager: dict, bus_kind: str) -> dict:
    return {
        "version": manager.get("Version"),
        "bus": bus_kind,
        "jack": {
            "running": bool(manager.get("JackRunning", False)),
            "sample_rate": manager.get("JackSampleRate"),
            "buffer_size": manager.get("JackBufferSize"),
        },
        "auto_attach": manager.get("AutoAttach"),
    }


def status_document(manager: dict, bus_kind: str, bridges: dict[str, dict]) -> dict:
    service = service_record(manager, bus_kind)
    jack_rate = service["jack"]["sample_rate"] if service["jack"]["running"] else None
    return {"service": service,
            "bridges": [bridge_record(path, props, jack_rate) for path, props in bridges.items()]}


def device_record(info: dict) -> dict:
    """One ListDevices entry with every documented key (null when absent)."""
    record = {key: info.get(key) for key in DEVICE_KEYS}
    for flag in ("present", "declared", "attached", "auto_attach"):
        record[flag] = bool(record[flag]) if record[flag] is not None else False
    return record


def find_bridge(records: list[dict], wanted: str) -> dict | None:
    """A bridge by object path, device id or JACK client name (in that order)."""
    for key in ("path", "device", "client_name"):
        for record in records:
            if record.get(key) == wanted:
                return record
    return None


def find_device(records: list[dict], wanted: str) -> list[dict]:
    """Devices matching a stable id, ALSA card id/number/hw: name, or client name.

    The first kind of key that matches anything wins, so an exact stable id is never ambiguous.
    """
    def aliases(rec):
        card, alsa = rec.get("card"), rec.get("alsa_name")
        yield "id", rec["id"]
        if alsa:
            yield "alsa", alsa
            yield "alsa", f"hw:CARD={alsa}"
            yield "alsa", f"hw:{alsa}"
        if card is not None:
            yield "alsa", str(card)
            yield "alsa", f"hw:{card}"
        yield "client", rec.get("client_name")
        yield "name", rec.get("name")

    for kind in ("id", "alsa", "client", "name"):
        hits = [rec for rec in records if any(k == kind and v == wanted for k, v in aliases(rec))]
        if hits:
            return hits
    return []
