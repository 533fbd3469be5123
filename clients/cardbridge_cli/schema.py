"""The documented, stable --json output of every command, as JSON Schema, and a small validator.

Runs in the CLI process (and in tests). `python -m cardbridge_cli.schema` prints the whole schema
(the README's reference). Compatibility promise: keys are only ever added, never renamed or
removed, and a key's type never changes; a value the service does not know is `null`.
The validator covers the subset used here (type, properties, required, additionalProperties,
items, enum, minimum, oneOf), so tests need no extra package.
"""

from __future__ import annotations

import json
import sys

from cardbridge.bridgestats import PUBLISHED

SCHEMA_ID = "https://cardbridge.invalid/cli-json/1"

_INT = {"type": "integer", "minimum": 0}
_OPT_INT = {"type": ["integer", "null"], "minimum": 0}
_OPT_NUM = {"type": ["number", "null"]}
_OPT_STR = {"type": ["string", "null"]}

_BY_KIND = {"count": _OPT_INT, "number": _OPT_NUM, "text": _OPT_STR,
            "flag": {"type": ["boolean", "null"]}}


def _object(properties: dict, required: list | None = None) -> dict:
    return {"type": "object", "properties": properties,
            "required": list(properties) if required is None else required,
            "additionalProperties": True}


def _bridge_key(stat) -> dict:
    schema = {**_BY_KIND[stat.kind], "description": stat.doc}
    if stat.key == "state":
        schema["description"] += " (show unknown values as they are)"
    return schema


# The bridge record: its path, every published entry of the service's table of bridge
# statistics (cardbridge/bridgestats.py), and the latency in milliseconds.
BRIDGE = _object({
    "path": {"type": "string", "description": "D-Bus object path of the bridge"},
    **{stat.json_key: _bridge_key(stat) for stat in PUBLISHED},
    "latency_ms": {**_OPT_NUM, "description": "the latency in milliseconds"},
})

SERVICE = _object({
    "version": _OPT_STR,
    "bus": {"enum": ["session", "system"]},
    "jack": _object({"running": {"type": "boolean"}, "sample_rate": _OPT_INT,
                     "buffer_size": _OPT_INT}),
    "auto_attach": {**_OPT_STR, "description": "none, usb or all"},
})

DEVICE = _object({
    "id": {"type": "string", "description": "stable device id (what attach accepts)"},
    "name": _OPT_STR,
    "client_name": _OPT_STR,
    "bus": _OPT_STR,
    "card": {**_OPT_INT, "description": "ALSA card number while present"},
    "alsa_name": {**_OPT_STR, "description": "ALSA card id while present (hw:CARD=<alsa_name>)"},
    "capture_channels": _OPT_INT,
    "playback_channels": _OPT_INT,
    "present": {"type": "boolean"},
    "declared": {"type": "boolean", "description": "declared in the config file"},
    "attached": {"type": "boolean"},
    "auto_attach": {"type": "boolean"},
})

SLAVE = _object({"device": {"type": "string"}, "alsa_pcm": {"type": "string"},
                 "channels": _INT})

COMMANDS = {
    "status": _object({"service": SERVICE, "bridges": {"type": "array", "items": BRIDGE}}),
    "devices": _object({"devices": {"type": "array", "items": DEVICE}}),
    "attach": _object({"bridge": BRIDGE}),
    "detach": _object({"detached": _object({"device": {"type": "string"}, "path": _OPT_STR})}),
    "enable": _object({"device": {"type": "string"}, "auto_attach": {"type": "boolean"}}),
    "disable": _object({"device": {"type": "string"}, "auto_attach": {"type": "boolean"}}),
    "asoundrc": _object({
        "name": {"type": "string"},
        "text": {"type": "string", "description": "the ALSA configuration, ready to paste"},
        "pcms": {"type": "array", "items": _object({
            "pcm": {"type": "string"},
            "direction": {"enum": ["both", "capture", "playback"]},
            "channels": _INT,
            "slaves": {"type": "array", "items": SLAVE}})},
    }),
    "version": _object({"client": {"type": "string"}, "service": _OPT_STR}),
    "set": _object({"bridge": BRIDGE}),
    "restart": _object({"restarted": _object({"device": _OPT_STR, "path": {"type": "string"}})}),
    "reload": _object({"reloaded": {"type": "boolean"}}),
}

# `watch --json`: one object per line, told apart by "event".
WATCH_EVENTS = {
    "snapshot": _object({"event": {"enum": ["snapshot"]}, "time": {"type": "number"},
                         "status": COMMANDS["status"]}),
    "bridge-changed": _object({"event": {"enum": ["bridge-changed"]}, "time": {"type": "number"},
                               "path": {"type": "string"},
                               "changes": {"type": "object", "description": "bridge keys that changed"}}),
    "bridge-added": _object({"event": {"enum": ["bridge-added"]}, "time": {"type": "number"},
                             "bridge": BRIDGE}),
    "bridge-removed": _object({"event": {"enum": ["bridge-removed"]}, "time": {"type": "number"},
                               "path": {"type": "string"}}),
    "service-changed": _object({"event": {"enum": ["service-changed"]}, "time": {"type": "number"},
                                "service": SERVICE}),
    "service-stopped": _object({"event": {"enum": ["service-stopped"]}, "time": {"type": "number"}}),
}
COMMANDS["watch"] = {"oneOf": list(WATCH_EVENTS.values()),
                     "description": "one JSON object per line (JSON lines)"}


def _event(name: str, **fields) -> dict:
    return _object({"event": {"enum": [name]}, "time": {"type": "number"}, **fields})


# `monitor --json`: one object per line, every event of the service as it happens.
MONITOR_EVENTS = {
    "service-started": _event("service-started"),
    "service-stopped": _event("service-stopped"),
    "service-changed": _event("service-changed", changes={
        "type": "object", "description": "version, jack_running, jack_sample_rate, "
                                        "jack_buffer_size, auto_attach: those that changed"}),
    "bridge-added": _event("bridge-added", path={"type": "string"}, bridge=BRIDGE),
    "bridge-changed": _event("bridge-changed", path={"type": "string"}, changes={
        "type": "object", "description": "bridge keys that changed, with their new values"}),
    "bridge-removed": _event("bridge-removed", path={"type": "string"}),
    "device-added": _event("device-added", id={"type": "string"}, device=DEVICE),
    "device-removed": _event("device-removed", id={"type": "string"}),
}
COMMANDS["monitor"] = {"oneOf": list(MONITOR_EVENTS.values()),
                       "description": "one JSON object per line (JSON lines)"}


def full_schema() -> dict:
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID,
            "title": "cardbridge --json output, per command", "commands": COMMANDS}


# -- validation ------------------------------------------------------------------------------

_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def _is_type(value, name: str) -> bool:
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, _TYPES[name])


def errors(value, schema: dict, where: str = "$") -> list[str]:
    """Every way `value` breaks `schema` (empty list: valid)."""
    if "oneOf" in schema:
        passing = [s for s in schema["oneOf"] if not errors(value, s, where)]
        return [] if len(passing) == 1 else [f"{where}: matches {len(passing)} of oneOf"]
    found = []
    types = schema.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else types
        if not any(_is_type(value, t) for t in types):
            return [f"{where}: {type(value).__name__} is not {'/'.join(types)}"]
    if "enum" in schema and value not in schema["enum"]:
        found.append(f"{where}: {value!r} not in {schema['enum']}")
    if "minimum" in schema and _is_type(value, "number") and value < schema["minimum"]:
        found.append(f"{where}: {value} < {schema['minimum']}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in value:
                found.append(f"{where}: missing key {key!r}")
        for key, item in value.items():
            if key in props:
                found.extend(errors(item, props[key], f"{where}.{key}"))
            elif schema.get("additionalProperties") is False:
                found.append(f"{where}: unexpected key {key!r}")
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            found.extend(errors(item, schema["items"], f"{where}[{index}]"))
    return found


def validate(document, command: str) -> None:
    """Raise ValueError listing every problem if `document` breaks the schema of `command`."""
    problems = errors(document, COMMANDS[command])
    if problems:
        raise ValueError(f"{command} output breaks its schema: " + "; ".join(problems[:10]))


if __name__ == "__main__":
    try:
        sys.stdout.write(json.dumps(full_schema(), indent=2) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        sys.stdout = None
