"""Fuzzing every inbound payload (safety rule 13, SPEC §2).

Whatever arrives on a command topic, the core answers a bad command with exactly one
``command_rejected`` event (a reason and a one-line human message) and changes nothing;
whatever arrives on a plug's topics never makes redlight switch anything ON; and every effect
can be published (no event carries text that UTF-8 cannot encode). At least 10,400 generated
payloads: 700 x 6 on command topics, 500 x 4 near-valid start/stop objects and 700 x 6 on plug
topics (lists hold 6 to 10 payloads, so a typical run sends about 14,000). The config file is
fuzzed in ``test_fuzz_config.py``.
"""

from __future__ import annotations

import json
from typing import Any, Final

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from redlight import commands as cmd
from redlight.broker import Message
from redlight.core import Core, Effect, SessionOpened, event_effects
from redlight.messages import Event
from tests.unit.corekit import Kit, events, make_config
from tests.unit.fuzzkit import DURATIONISH, HUGE

BASE: Final = "redlight"

#: One panel per preset, so every firmware's report parser is fuzzed.
PANELS: Final[dict[str, Any]] = {
    "hip_left": {
        "irradiance_mw_cm2": 50,
        "plug": {"preset": "tasmota", "topic": "panel_left", "index": 1},
    },
    "hip_right": {
        "irradiance_mw_cm2": 0.001,
        "plug": {"preset": "zigbee2mqtt", "device": "Panel plug right", "failsafe": True},
    },
    "sauna": {
        "plug": {
            "preset": "generic",
            "command_topic": "sauna/panel/set",
            "state_topic": "sauna/panel/state",
            "state_json_path": "relay.state",
            "availability_topic": "sauna/panel/status",
        },
    },
    "shelly1": {"plug": {"preset": "shelly_gen1", "id": "shelly1-ABC"}},
    "shelly2": {"plug": {"preset": "shelly_gen2", "prefix": "shellyplus-XYZ", "switch": 0}},
    "desk": {"plug": {"preset": "esphome", "node": "desk", "switch": "panel"}},
}
FUZZ_CONFIG: Final = make_config(
    panels=PANELS,
    routines={"post_run": {"steps": [{"panels": ["hip_left"], "duration": "7m"}]}},
    schedules={"rest_days": {"routine": "post_run", "cron": "0 19 * * tue"}},
)
#: The core the topic lists are read from (each example builds a fresh one).
_PROTOTYPE: Final = Core(FUZZ_CONFIG)
PLUG_TOPICS: Final = sorted(
    {t for p in _PROTOTYPE.panels.values() for t in p.plug.subscriptions}
    | {p.plug.command_topic for p in _PROTOTYPE.panels.values()}
)
#: What redlight may send a plug in answer to a report: OFF, or asking for its state.
ALLOWED_PLUG_ANSWERS: Final = {
    (m.topic, m.payload_bytes())
    for p in _PROTOTYPE.panels.values()
    for m in p.plug.turn_off() + p.plug.ask_state()
}
PLUG_COMMAND_TOPICS: Final = {
    t for p in _PROTOTYPE.panels.values() for t in (p.plug.command_topic, p.plug.failsafe_topic)
}

# ---------------------------------------------------------------- payload strategies

IDS: Final = st.one_of(
    st.sampled_from([*PANELS, "post_run", "rest_days", "nope", "HIP_LEFT", ""]),
    # Topics arrive as UTF-8 (paho decodes them), so no lone surrogates here.
    st.text(alphabet=st.characters(codec="utf-8", exclude_characters="/+#\x00"), max_size=8),
)
JSON_SCALARS: Final = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=16), HUGE
)
JSON_VALUES: Final = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
KEYS: Final = st.one_of(
    st.sampled_from(["action", "duration", "dose_j_cm2", "request_id", "source", "offer"]),
    st.sampled_from(["state", "POWER", "output", "on", "params", "colour"]),
    st.text(max_size=8),
)
NEAR_VALID: Final = st.builds(
    lambda action, extra: json.dumps({"action": action} | extra),
    st.sampled_from(["start", "stop", "stop_all", "accept_offer", "START", "", None, 1]),
    st.dictionaries(
        KEYS,
        st.one_of(
            DURATIONISH,
            JSON_VALUES,
            st.sampled_from(["cli", "homeassistant", "schedule", "x" * 65, "\ud800", "é"]),
        ),
        max_size=3,
    ),
)
PAYLOADS: Final = st.one_of(
    st.binary(max_size=64),
    st.text(max_size=64).map(str.encode),
    JSON_VALUES.map(lambda value: json.dumps(value).encode()),
    NEAR_VALID.map(str.encode),
    NEAR_VALID.map(str.encode),
    st.sampled_from(
        [
            *(b"ON", b"off", b" On \n", b"START", b"stop", b"", b" ", b"\xff\xfe", b"x" * 5000),
            *(b"10", b"15.01", b"1e400", b"-0", b"nan", b"[" * 5000, b'{"a":' * 3000),
            *(b'{"state": "ON"}', b'{"POWER": "ON"}', b'{"output": true}', b"true", b"online"),
        ]
    ),
)
COMMAND_TOPICS: Final = st.one_of(
    IDS.map(lambda i: f"{BASE}/panel/{i}/set"),
    IDS.map(lambda i: f"{BASE}/panel/{i}/duration/set"),
    st.just(f"{BASE}/set"),
    IDS.map(lambda i: f"{BASE}/routine/{i}/set"),
    IDS.map(lambda i: f"{BASE}/schedule/{i}/set"),
)

#: Each plug's OFF report in its firmware's format, to confirm the start-up OFF.
OFF_REPORTS: Final = [
    ("stat/panel_left/POWER1", "OFF"),
    ("zigbee2mqtt/Panel plug right", '{"state": "OFF", "linkquality": 120}'),
    ("sauna/panel/state", '{"relay": {"state": "OFF"}}'),
    ("shellies/shelly1-ABC/relay/0", "off"),
    ("shellyplus-XYZ/status/switch:0", '{"id": 0, "output": false}'),
    ("desk/switch/panel/state", "OFF"),
]
PANEL_SET: Final = f"{BASE}/panel/hip_left/set"
#: Found by these tests (each crashed the core or broke a reply before it was fixed).
OVERFLOWING_DURATION: Final = b'{"action": "start", "duration": ' + b"1" * 400 + b"}"
OVERFLOWING_DOSE_INT: Final = b'{"action": "start", "dose_j_cm2": ' + b"1" * 400 + b"}"
OVERFLOWING_DOSE: Final = b'{"action": "start", "dose_j_cm2": 1e300}'
LONE_SURROGATE_ID: Final = b'{"action": "start", "request_id": "\\ud800"}'


def ready_kit() -> Kit:
    """A connected core whose plugs have all confirmed OFF (so an ON report means an ON)."""
    kit = Kit.create(FUZZ_CONFIG)
    kit.connect()
    for topic, payload in OFF_REPORTS:
        kit.send(topic, payload)
    assert kit.core.all_off_confirmed()
    kit.effects.clear()
    return kit


def expected_rejection(core: Core, topic: str, payload: bytes) -> bool:
    """Whether redlight must refuse this command whatever state it is in."""
    parts = topic[len(BASE) + 1 :].split("/")
    if not payload:
        return False  # clearing a retained message: not a command (redlight.router.route)
    if parts == ["set"]:
        return isinstance(cmd.parse_daemon_command(payload), cmd.Rejection)
    kind, ident = parts[0], parts[1]
    if kind == "panel" and len(parts) == 3:
        parsed: object = cmd.parse_panel_command(payload)
        known = ident in core.panels
    elif kind == "panel":
        parsed = cmd.parse_duration_minutes(payload, core.limits.max_on_s)
        known = ident in core.panels
    elif kind == "routine":
        parsed = cmd.parse_routine_command(payload)
        known = ident in core.config.routines
    else:
        parsed = cmd.parse_schedule_command(payload)
        known = ident in core.config.schedules
    return not known or isinstance(parsed, cmd.Rejection)


def check_publishable(core: Core, effects: list[Effect]) -> None:
    """Every message and every event's messages encode as UTF-8 (the adapter must send them)."""
    for message in [e for e in effects if isinstance(e, Message)]:
        message.payload_bytes()
    for message in event_effects(core.topics, effects):
        message.payload_bytes()


def switched_on(effects: list[Effect]) -> list[Effect]:
    """ON commands, and sessions opened by redlight (not watched external ONs)."""
    found: list[Effect] = [
        e for e in effects if isinstance(e, SessionOpened) and e.source != "external"
    ]
    for effect in effects:
        if isinstance(effect, Message) and effect.topic in PLUG_COMMAND_TOPICS:
            if effect.retain and not effect.payload_bytes():
                continue  # clearing a retained command
            if (effect.topic, effect.payload_bytes()) not in ALLOWED_PLUG_ANSWERS:
                found.append(effect)
    return found


def check_rejection(rejected: Event) -> None:
    """A rejection has a machine reason and a one-line human message."""
    reason, message = rejected.fields.get("reason"), rejected.fields.get("message")
    assert isinstance(reason, str)
    assert reason
    assert isinstance(message, str)
    assert message.strip()
    assert "\n" not in message


# ---------------------------------------------------------------- command topics


@settings(max_examples=700, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sends=st.lists(
        st.tuples(COMMAND_TOPICS, PAYLOADS, st.sampled_from([False] * 7 + [True])),
        min_size=6,
        max_size=10,
    )
)
@example(sends=[(PANEL_SET, OVERFLOWING_DURATION, False)])
@example(sends=[(PANEL_SET, OVERFLOWING_DOSE_INT, False)])
@example(sends=[(PANEL_SET, OVERFLOWING_DOSE, False)])
@example(sends=[(PANEL_SET, LONE_SURROGATE_ID, False)])
def test_bad_commands_get_one_clear_rejection_and_change_nothing(
    sends: list[tuple[str, bytes, bool]],
) -> None:
    """Any payload on any command topic: a bad one is one command_rejected and nothing else."""
    kit = ready_kit()
    for topic, payload, retain in sends:
        got = kit.send(topic, payload, retain=retain)
        check_publishable(kit.core, got)
        rejected = events(got, "command_rejected")
        for event in rejected:
            check_rejection(event)
        if retain:
            # Safety rule 7: a retained command is not obeyed, only cleared.
            assert rejected == []
            assert switched_on(got) == []
        elif expected_rejection(kit.core, topic, payload):
            assert got == rejected  # exactly the one event, no state, no plug message
            assert len(rejected) == 1
        else:
            assert len(rejected) <= 1


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    panel=st.sampled_from([*PANELS, "nope"]),
    bodies=st.lists(NEAR_VALID, min_size=4, max_size=8),
)
def test_near_valid_panel_commands_never_crash_or_overreach(panel: str, bodies: list[str]) -> None:
    """Almost-right start/stop objects either run within max_on or get one clear rejection."""
    kit = ready_kit()
    for body in bodies:
        got = kit.command(panel, body)
        check_publishable(kit.core, got)
        rejected = events(got, "command_rejected")
        assert len(rejected) <= 1
        for event in rejected:
            check_rejection(event)
        for started in events(got, "session_started"):
            assert 1 <= started.fields["duration_s"] <= kit.core.limits.max_on_s


# ---------------------------------------------------------------- plug topics


@settings(max_examples=700, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sends=st.lists(
        st.tuples(st.sampled_from(PLUG_TOPICS), PAYLOADS, st.booleans()),
        min_size=6,
        max_size=10,
    )
)
@example(sends=[("zigbee2mqtt/Panel plug right", b"[" * 100_000, False)] * 6)
@example(sends=[("zigbee2mqtt/bridge/state", b"{" * 100_000, True)] * 6)
def test_garbage_on_plug_topics_never_switches_anything_on(
    sends: list[tuple[str, bytes, bool]],
) -> None:
    """Whatever a plug (or anyone) publishes on plug topics, redlight never sends an ON."""
    kit = ready_kit()
    for topic, payload, retain in sends:
        got = kit.send(topic, payload, retain=retain)
        check_publishable(kit.core, got)
        assert switched_on(got) == []
        assert events(got, "command_rejected") == []
