"""The one table of bridge statistics and everything derived from it (pure units, no service).

The D-Bus contract file, the service's Bridge properties, the CLI's JSON records and their
schema all come from cardbridge/bridgestats.py; these tests check that they agree with it and
with each other, and that a value the worker left in its slot (NaN, infinite, negative, huge)
never reaches a caller as anything but a value of the property's type.

Runs in the pytest process.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from cardbridge import bridgestats
from cardbridge.api import BridgeInterface, bridge_value
from cardbridge.bridgestats import BY_PROP, PUBLISHED, STATS
from cardbridge.engine import stats as slot_layout
from cardbridge.engine.spec import BridgeSpec
from cardbridge.engine.stats import StatsSlot
from cardbridge.engine.supervisor import Bridge
from cardbridge_cli import records, schema

REPO = Path(__file__).resolve().parent.parent
BRIDGE_XML = REPO / "dbus" / "org.cardbridge.CardBridge1.Bridge.xml"


def test_keys_and_property_names_are_unique():
    assert len({s.key for s in STATS}) == len(STATS)
    assert len({s.prop for s in PUBLISHED}) == len(PUBLISHED)
    assert len({s.json_key for s in PUBLISHED}) == len(PUBLISHED)


def test_contract_xml_lists_exactly_the_published_statistics():
    root = ET.fromstring(BRIDGE_XML.read_text())
    props = {p.get("name"): (p.get("type"), p.get("access")) for p in root.iter("property")}
    assert props == {s.prop: (s.signature, "read") for s in PUBLISHED}


def test_service_exports_one_property_per_published_statistic():
    found = {name: getattr(BridgeInterface, name) for name in BY_PROP}
    for prop, member in found.items():
        assert member.name == prop
        assert member.signature == BY_PROP[prop].signature


def test_slot_records_hold_exactly_the_values_their_writers_publish():
    for writer in slot_layout.WRITERS:
        assert slot_layout.LAYOUT[writer] == tuple(s.key for s in STATS if s.source == writer)


def test_cli_records_and_schema_cover_every_published_statistic():
    assert set(records.BRIDGE_KEYS) == set(BY_PROP)
    record = records.bridge_record("/p", {s.prop: None for s in PUBLISHED})
    assert set(record) == {"path", "latency_ms"} | {s.json_key for s in PUBLISHED}
    assert set(schema.BRIDGE["properties"]) == set(record)


@pytest.mark.parametrize("raw", [math.nan, math.inf, -math.inf, -5.0, 1e30, None, "x"])
def test_published_values_are_always_of_the_property_type(raw):
    for stat in PUBLISHED:
        value = bridgestats.published_value(stat, raw)
        if stat.kind == "count":
            assert isinstance(value, int) and 0 <= value <= 0xFFFFFFFF
        elif stat.kind == "number":
            assert isinstance(value, float) and math.isfinite(value)
        else:
            assert isinstance(value, str)


def test_nonsense_in_the_slot_reaches_the_properties_as_plain_values(tmp_path):
    """A worker that left NaN, infinities and out-of-range numbers in its record: the
    supervisor's statistics and every D-Bus property getter still answer (before, Xruns and
    friends raised from int(nan) inside the property getter)."""
    bridge = Bridge(BridgeSpec(device_id="d", pcm="p", client_name="c"))
    bridge._slot = StatsSlot(str(tmp_path / "slot"), create=True)
    try:
        junk = [math.nan, math.inf, -math.inf, -1.0, 1e300]
        for record in (bridge._slot.stream, bridge._slot.worker):
            record.set(**{key: junk[i % len(junk)] for i, key in enumerate(record.keys)})
        stats = bridge.stats()
        for stat in PUBLISHED:
            value = bridge_value(stat, stats)
            assert value == bridgestats.published_value(stat, value)
            if isinstance(value, float):
                assert math.isfinite(value)
        assert stats["device_format"] in bridgestats.FORMATS
    finally:
        bridge._slot.close()
