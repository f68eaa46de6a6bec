"""Parsing commands: every shape SPEC §4 allows, and a clear rejection for anything else."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from redlight import commands as cmd


def test_plain_on_and_off() -> None:
    """ON and OFF (any case) are a default start and a stop."""
    assert cmd.parse_panel_command(b"ON") == cmd.Start()
    assert cmd.parse_panel_command(b" off ") == cmd.Stop()


def test_json_start_with_duration_dose_or_default() -> None:
    """JSON starts carry a duration (text or seconds), a dose, or nothing."""
    assert cmd.parse_panel_command(b'{"action":"start","duration":"10m"}') == cmd.Start(600)
    assert cmd.parse_panel_command(b'{"action":"start","duration":90}') == cmd.Start(90)
    assert cmd.parse_panel_command(b'{"action":"start","dose_j_cm2":30}') == cmd.Start(
        dose_j_cm2=30
    )
    assert cmd.parse_panel_command(b'{"action":"start"}') == cmd.Start()
    assert cmd.parse_panel_command(b'{"action":"stop"}') == cmd.Stop()


def test_request_id_and_source_are_carried() -> None:
    """request_id and source (cli) travel with the command."""
    parsed = cmd.parse_panel_command(
        b'{"action":"start","duration":5,"request_id":"cli-1","source":"cli"}'
    )
    assert parsed == cmd.Start(5, request_id="cli-1", source="cli")


def test_duration_minutes_are_bounded_by_max_on() -> None:
    """The number entity's minutes go from 1 second to max_on; rounding never exceeds it."""
    assert cmd.parse_duration_minutes(b"10", 900) == cmd.SetDefault(600)
    assert cmd.parse_duration_minutes(b"12.5", 900) == cmd.SetDefault(750)
    short = cmd.parse_duration_minutes(b"0.08", 900)
    assert isinstance(short, cmd.SetDefault)
    assert short.duration_s == pytest.approx(4.8)
    # 7m20s is 7.33 minutes in Home Assistant: 7.34 is rounding, and means max_on.
    assert cmd.parse_duration_minutes(b"7.34", 440) == cmd.SetDefault(440)
    rejected = cmd.parse_duration_minutes(b"16", 900)
    assert isinstance(rejected, cmd.Rejection)
    assert rejected.message == (
        "the session length must be 1 second to 15m (got '16' minutes); safety.max_on is 15m"
    )
    assert isinstance(cmd.parse_duration_minutes(b"15.01", 900), cmd.Rejection)
    assert isinstance(cmd.parse_duration_minutes(b"nan", 900), cmd.Rejection)
    assert isinstance(cmd.parse_duration_minutes(b"0", 900), cmd.Rejection)


def test_daemon_commands() -> None:
    """<b>/set takes stop_all and accept_offer."""
    assert cmd.parse_daemon_command(b'{"action":"stop_all"}') == cmd.StopAll()
    assert cmd.parse_daemon_command(b'{"action":"accept_offer","offer":"o1"}') == cmd.AcceptOffer(
        "o1"
    )
    rejected = cmd.parse_daemon_command(b'{"action":"reboot"}')
    assert isinstance(rejected, cmd.Rejection)
    assert rejected.reason == "unknown_action"


def test_routine_and_schedule_commands() -> None:
    """Routines take START/STOP; schedules ON/OFF."""
    assert cmd.parse_routine_command(b"START") == cmd.RoutineCommand(start=True)
    assert cmd.parse_schedule_command(b"off") == cmd.ScheduleCommand(enabled=False)
    assert isinstance(cmd.parse_routine_command(b"GO"), cmd.Rejection)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b'{"action": "start", "source": "schedule"}', "invalid_payload"),
        (b'{"action": "go"}', "unknown_action"),
        (b'{"action": "start", "panel": "hip_left"}', "invalid_payload"),
        (b"{not json", "invalid_payload"),
    ],
)
def test_a_json_routine_command_that_is_not_a_start_or_stop_is_refused(
    payload: bytes, reason: str
) -> None:
    """The routine topic's JSON form takes only ``action``, ``source`` (homeassistant or cli)
    and ``request_id``; anything else is a rejection with its reason."""
    rejected = cmd.parse_routine_command(payload)
    assert isinstance(rejected, cmd.Rejection)
    assert rejected.reason == reason


PARSERS = (
    cmd.parse_panel_command,
    cmd.parse_daemon_command,
    cmd.parse_routine_command,
    cmd.parse_schedule_command,
    lambda payload: cmd.parse_duration_minutes(payload, 900),
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
command_like = st.fixed_dictionaries(
    {"action": st.sampled_from(["start", "stop", "stop_all", "accept_offer", "x"])},
    optional={
        "duration": json_values,
        "dose_j_cm2": json_values,
        "request_id": json_values,
        "offer": json_values,
        "source": json_values,
    },
)


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=300) | command_like.map(lambda d: json.dumps(d).encode()))
def test_no_payload_makes_a_parser_raise(payload: bytes) -> None:
    """Whatever bytes arrive, every parser returns a command or a Rejection with a message."""
    for parse in PARSERS:
        result = parse(payload)
        if isinstance(result, cmd.Rejection):
            assert result.reason
            assert result.message
