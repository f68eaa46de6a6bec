"""The command router: every command topic becomes one typed command, or one clear refusal."""

from __future__ import annotations

from typing import Any

import pytest

from redlight import commands as cmd
from redlight.config import Config
from redlight.router import (
    Refused,
    SetDefaultDuration,
    StartPanel,
    StopPanel,
    SwitchRoutine,
    SwitchSchedule,
    route,
)
from tests.unit.corekit import START_WALL, make_config

CONFIG: Config = make_config(
    routines={"post_run": {"steps": [{"panels": ["hip_left"], "duration": "7m"}]}},
    schedules={"evening": {"panels": ["hip_left"], "duration": "5m", "cron": "0 19 * * *"}},
)


def routed(topic: str, payload: str | bytes, *, retain: bool = False) -> Any:
    """What the router makes of one message."""
    data = payload.encode() if isinstance(payload, str) else payload
    return route(CONFIG, topic, data, retain)


@pytest.mark.parametrize(
    ("topic", "payload", "expected"),
    [
        ("redlight/panel/hip_left/set", "ON", StartPanel("hip_left", cmd.Start())),
        (
            "redlight/panel/sauna/set",
            '{"action":"start","duration":"5m","request_id":"r1","source":"cli"}',
            StartPanel("sauna", cmd.Start(300, request_id="r1", source="cli")),
        ),
        (
            "redlight/panel/hip_left/set",
            '{"action":"start","dose_j_cm2":30}',
            StartPanel("hip_left", cmd.Start(dose_j_cm2=30)),
        ),
        ("redlight/panel/hip_left/set", "off", StopPanel("hip_left")),
        (
            "redlight/panel/hip_left/set",
            '{"action":"stop","request_id":"r2"}',
            StopPanel("hip_left", "r2"),
        ),
        ("redlight/panel/hip_left/duration/set", "12.5", SetDefaultDuration("hip_left", 750)),
        ("redlight/set", '{"action":"stop_all"}', cmd.StopAll()),
        ("redlight/set", '{"action":"stop_all","request_id":"r3"}', cmd.StopAll("r3")),
        (
            "redlight/set",
            '{"action":"accept_offer","offer":"o1","request_id":"r4"}',
            cmd.AcceptOffer("o1", "r4"),
        ),
        ("redlight/set", '{"action":"accept_offer"}', cmd.AcceptOffer(None)),
        ("redlight/routine/post_run/set", "START", SwitchRoutine("post_run", start=True)),
        ("redlight/routine/post_run/set", "stop", SwitchRoutine("post_run", start=False)),
        ("redlight/schedule/evening/set", "ON", SwitchSchedule("evening", enabled=True)),
        ("redlight/schedule/evening/set", "OFF", SwitchSchedule("evening", enabled=False)),
    ],
)
def test_every_command_topic_becomes_its_typed_command(
    topic: str, payload: str, expected: object
) -> None:
    """Each topic form under the base topic, with a valid payload, is one typed command."""
    assert routed(topic, payload) == expected


def test_a_routine_started_by_a_command_comes_from_home_assistant() -> None:
    """START on a routine's topic names Home Assistant as its source (routine_started says so)."""
    assert routed("redlight/routine/post_run/set", "START").source == "homeassistant"


def test_a_routine_started_by_the_command_line_comes_from_the_command_line() -> None:
    """Issue 14 item 10: the command line's JSON start names ``cli`` as the routine's source,
    so its log line and ``routine_started`` say who started it."""
    payload = '{"action": "start", "source": "cli"}'
    assert routed("redlight/routine/post_run/set", payload) == SwitchRoutine(
        "post_run", start=True, source="cli"
    )


@pytest.mark.parametrize(
    ("topic", "payload", "expected"),
    [
        (
            "redlight/panel/hip_left/set",
            "GO",
            Refused(
                cmd.Rejection("invalid_payload", "expected ON, OFF or a JSON object (got 'GO')"),
                panel="hip_left",
            ),
        ),
        (
            "redlight/panel/hip_left/set",
            '{"action":"jump","request_id":"r5"}',
            Refused(
                cmd.Rejection(
                    "unknown_action",
                    "'action' must be 'start', 'stop', 'extend', 'pause' or 'resume' (got 'jump')",
                    "r5",
                ),
                panel="hip_left",
            ),
        ),
        (
            "redlight/panel/hip_left/duration/set",
            "99",
            Refused(
                cmd.Rejection(
                    "invalid_duration",
                    "the session length must be 1 second to 15m (got '99' minutes); "
                    "safety.max_on is 15m",
                ),
                panel="hip_left",
            ),
        ),
        (
            "redlight/set",
            '{"action":"accept_offer","offer":""}',
            Refused(
                cmd.Rejection(
                    "invalid_payload",
                    "'offer' must name the offer to accept (or be left out: the newest open offer)",
                )
            ),
        ),
        (
            "redlight/routine/post_run/set",
            "GO",
            Refused(
                cmd.Rejection("invalid_payload", "expected START or STOP (got 'GO')"),
                routine="post_run",
            ),
        ),
        (
            "redlight/schedule/evening/set",
            "maybe",
            Refused(
                cmd.Rejection("invalid_payload", "expected ON or OFF (got 'maybe')"),
                schedule="evening",
            ),
        ),
        (
            "redlight/panel/hip_left/set",
            b"\xff\xfe",
            Refused(cmd.Rejection("invalid_payload", "the command is not UTF-8 text"), "hip_left"),
        ),
    ],
)
def test_a_bad_payload_is_refused_with_what_it_was_for(
    topic: str, payload: str | bytes, expected: Refused
) -> None:
    """A payload the parser rejects is refused, naming the panel, routine or schedule."""
    assert routed(topic, payload) == expected


@pytest.mark.parametrize(
    ("topic", "payload", "expected"),
    [
        (
            "redlight/panel/nope/set",
            '{"action":"start","request_id":"r6"}',
            Refused(cmd.Rejection("unknown_panel", "there is no panel 'nope'", "r6")),
        ),
        (
            "redlight/panel/nope/set",
            "GO",
            Refused(cmd.Rejection("unknown_panel", "there is no panel 'nope'")),
        ),
        (
            "redlight/panel/nope/duration/set",
            "5",
            Refused(cmd.Rejection("unknown_panel", "there is no panel 'nope'")),
        ),
        (
            "redlight/routine/nope/set",
            "START",
            Refused(cmd.Rejection("unknown_routine", "there is no routine 'nope'"), routine="nope"),
        ),
        (
            "redlight/schedule/nope/set",
            "ON",
            Refused(
                cmd.Rejection("unknown_schedule", "there is no schedule 'nope'"), schedule="nope"
            ),
        ),
    ],
)
def test_an_unknown_id_is_refused(topic: str, payload: str, expected: Refused) -> None:
    """An id the config does not have is refused; an unknown panel is named by no panel (its
    event topic would not exist), a request_id in the payload still comes back."""
    assert routed(topic, payload) == expected


def test_a_bad_payload_on_an_unknown_routine_says_what_is_wrong_with_the_payload() -> None:
    """Routines and schedules parse first, as before: the payload's fault is reported first."""
    refused = routed("redlight/routine/nope/set", "GO")
    assert isinstance(refused, Refused)
    assert (refused.rejection.reason, refused.routine) == ("invalid_payload", "nope")


@pytest.mark.parametrize(
    ("topic", "payload", "retain"),
    [
        ("redlight/panel/hip_left/set", "ON", True),  # safety rule 7: the core clears it
        ("redlight/set", '{"action":"stop_all"}', True),
        ("redlight/panel/hip_left/set", "", False),  # deleting a retained message
        ("redlight/panel/hip_left/state", "ON", False),
        ("redlight/panel/hip_left/extra/set", "ON", False),
        ("redlight/other/set", "ON", False),
        ("redlightx/panel/hip_left/set", "ON", False),
        ("stat/panel_left/POWER", "ON", False),
        ("sauna/panel/set", "ON", False),
    ],
)
def test_what_is_not_a_command_is_left_to_the_core(topic: str, payload: str, retain: bool) -> None:
    """Retained messages, empty payloads and topics of no command form are not commands."""
    assert routed(topic, payload, retain=retain) is None


def test_a_refusal_becomes_the_event_the_core_would_publish() -> None:
    """command_rejected carries reason, message, allowed_at and request_id, then the names."""
    rejection = cmd.Rejection("daily_max", "no time left", "r7", allowed_at="tomorrow")
    event = Refused(rejection, panel="hip_left", routine="post_run").event(START_WALL)
    assert (event.event_type, event.panel, event.at) == ("command_rejected", "hip_left", START_WALL)
    assert list(event.fields.items()) == [
        ("reason", "daily_max"),
        ("message", "no time left"),
        ("allowed_at", "tomorrow"),
        ("request_id", "r7"),
        ("routine", "post_run"),
    ]
