"""The worker protocol (engine/protocol.py): what each end writes, the other parses; anything
else on a line is ignored, never an exception (pure unit).

Runs in the pytest process.
"""

from __future__ import annotations

import pytest

from cardbridge.bridgestats import STATES
from cardbridge.engine.protocol import (Command, PortsEvent, StateEvent, command_line,
                                        event_line, parse_command, parse_event)


@pytest.mark.parametrize("command", list(Command))
def test_every_command_survives_its_line(command):
    assert parse_command(command_line(command)) is command
    assert parse_command(command_line(command).decode()) is command


@pytest.mark.parametrize("state", STATES)
def test_state_events_carry_state_and_reason(state):
    assert parse_event(event_line(StateEvent(state, "why"))) == StateEvent(state, "why")


def test_ports_event_round_trip():
    event = PortsEvent("Mic", ("Mic:capture_1", "Mic:playback_1"))
    assert parse_event(event_line(event)) == event


@pytest.mark.parametrize("line", ["", "garbage", "{", "[]", '{"event": "state"}',
                                  '{"event": "state", "state": "dancing"}',
                                  '{"event": "ports", "client": 1, "ports": []}',
                                  '{"event": "ports", "client": "c", "ports": [1]}',
                                  '{"event": "nope"}', b"\xff\xfe"])
def test_garbage_is_ignored(line):
    assert parse_event(line) is None
    assert parse_command(line) is None


def test_a_reason_is_one_short_line():
    event = parse_event('{"event": "state", "state": "failed", "reason": "a\\nb' + "x" * 500 + '"}')
    assert event.reason == "a"
    long = parse_event('{"event": "state", "state": "failed", "reason": "' + "y" * 500 + '"}')
    assert len(long.reason) <= 300
