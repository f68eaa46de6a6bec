"""Fuzzing every inbound payload and the config file (safety rule 13, SPEC §2).

Whatever arrives on a command topic, the core answers a bad command with exactly one
``command_rejected`` event (a reason and a one-line human message) and changes nothing;
whatever arrives on a plug's topics never makes redlight switch anything ON; and every effect
can be published (no event carries text that UTF-8 cannot encode). A config file either loads
or fails with one ``where: what`` line per problem, never another exception and never the
password. At least 11,100 generated payloads: 700 x 6 on command topics, 500 x 4 near-valid
start/stop objects, 700 x 6 on plug topics, 400 config tables and 300 config texts (lists hold
6 to 10 payloads, so a typical run sends about 14,000).
"""

from __future__ import annotations

import json
import math
import string
from datetime import date, time
from pathlib import Path
from typing import Any, Final

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from redlight import commands as cmd
from redlight.broker import Message
from redlight.config import Config, ConfigError, load_config
from redlight.core import Core, Effect, SessionOpened, event_effects
from redlight.messages import Event
from tests.unit.corekit import Kit, events, make_config

BASE: Final = "redlight"
SECRET: Final = "s3cr3t-XYZ"  # noqa: S105 - a fake password the tests look for

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
HUGE: Final = st.sampled_from([10**400, -(10**400), 2**63, 1e308, -0.0, 5e-324])
JSON_SCALARS: Final = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=16), HUGE
)
JSON_VALUES: Final = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
DURATIONISH: Final = st.one_of(
    st.sampled_from(["10m", "15m", "15m1s", "900", "901", "1h30m", "0", "0s", "-1", " 10 m "]),
    st.sampled_from(["1e9", "nan", "inf", "10M", "1.5m", "9" * 400, "1" + "0" * 30, True]),
    st.text(alphabet="0123456789.hms -+e", max_size=10),
    st.floats(),
    st.integers(),
    HUGE,
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
        parsed = cmd.parse_duration_minutes(payload, core.max_on_s)
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
            assert 1 <= started.fields["duration_s"] <= kit.core.max_on_s


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


# ---------------------------------------------------------------- the config file


def toml_key(key: str) -> str:
    """A TOML key, quoted (a basic string), so any text is a valid key."""
    return toml_string(key)


def toml_string(text: str) -> str:
    """A TOML basic string: JSON's escapes are TOML's, except DEL, which TOML wants escaped."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def toml_value(value: object) -> str:
    """An inline TOML value (tables inline, so the whole file is ``key = value`` lines)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    assert isinstance(value, dict)
    return "{" + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


def toml_document(raw: dict[str, Any]) -> str:
    """A TOML file with one line per top-level key."""
    return "".join(f"{toml_key(k)} = {toml_value(v)}\n" for k, v in raw.items())


TOML_SCALARS: Final = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.integers(),
    st.floats(),
    st.text(max_size=12),
    st.dates(),
    st.times().map(lambda t: t.replace(microsecond=0)),
    DURATIONISH.filter(lambda v: not isinstance(v, bool)),
)
TOML_VALUES: Final = st.recursive(
    TOML_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=8,
)
FIELD_VALUES: Final = st.one_of(
    TOML_VALUES,
    st.sampled_from(["mqtt://broker:1883", "mqtt://u:pw@h", "15m", "16m", "5s", "0s"]),
    st.sampled_from(["22:30-06:00", "25:00-1:00", "0 19 * * tue", "* * *", "Europe/Amsterdam"]),
    st.sampled_from(["Mars/Olympus", "tasmota", "zigbee2mqtt", "generic", "hue", "a/b", "#"]),
)


def section(fields: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """A table whose keys are mostly the section's real fields, with a stray key now and then."""
    return st.dictionaries(
        st.one_of(st.sampled_from(fields), st.sampled_from(fields), st.text(max_size=6)),
        FIELD_VALUES,
        max_size=4,
    )


PLUG_FIELDS: Final = [
    "preset", "topic", "index", "id", "relay", "prefix", "switch", "device", "base", "node",
    "failsafe", "command_topic", "payload_on", "state_topic", "state_json_path",
    "availability_topic", "payload_available", "state_request_payload",
]  # fmt: skip
PLUGS: Final = st.one_of(
    section(PLUG_FIELDS),
    st.sampled_from(
        [
            {"preset": "tasmota", "topic": "t"},
            {"preset": "zigbee2mqtt", "device": "d", "failsafe": True},
            {"preset": "generic", "command_topic": "a/set", "state_topic": "a/state"},
            {"preset": "esphome", "node": "n", "switch": "s"},
        ]
    ),
)
PANEL_TABLES: Final = st.builds(
    lambda base, plug: base | {"plug": plug},
    section(["name", "area", "default_duration", "irradiance_mw_cm2"]),
    PLUGS,
)
STEPS: Final = st.lists(
    st.one_of(
        section(["panels", "duration", "dose_j_cm2", "pause", "prompt"]),
        st.builds(
            lambda panel, dose: {"panels": [panel], "dose_j_cm2": dose},
            st.sampled_from(["a", "b"]),
            st.one_of(st.floats(), st.sampled_from([1e300, 10**400, 25])),
        ),
    ),
    max_size=3,
)
ROOT_KEYS: Final = st.one_of(
    st.sampled_from(["mqtt", "safety", "panels", "routines", "schedules", "storage"]),
    st.sampled_from(["homeassistant", "_env_file", "_secrets_dir", "_cli_parse_args", "a\nb"]),
    st.text(max_size=8),
)
RANDOM_CONFIGS: Final = st.fixed_dictionaries(
    {
        "mqtt": section(["url", "username", "client_id", "base_topic", "tls_insecure"]),
    },
    optional={
        "safety": section(
            ["max_on", "cooldown", "daily_max", "confirm_timeout", "failsafe_margin", "quiet_hours"]
        ),
        "panels": st.dictionaries(
            st.one_of(st.sampled_from(["a", "b", "Hip-Left", "hip left"]), st.text(max_size=5)),
            st.one_of(PANEL_TABLES, FIELD_VALUES),
            max_size=3,
        ),
        "routines": st.dictionaries(
            st.sampled_from(["r", "R!"]),
            st.builds(lambda steps: {"steps": steps}, STEPS),
            max_size=2,
        ),
        "schedules": st.dictionaries(
            st.sampled_from(["s", "s 2"]),
            section(["routine", "panels", "duration", "cron", "timezone", "mode", "end_date"]),
            max_size=2,
        ),
        "storage": section(["path"]),
    },
).flatmap(
    lambda known: st.dictionaries(ROOT_KEYS, FIELD_VALUES, max_size=2).map(
        lambda extra: extra | known
    )
)

#: A config that loads; the mutations below break it in one or two places, so the cross-checks
#: (routine totals, doses, ids, references) run, which they only do once every field is valid.
GOOD_CONFIG: Final[dict[str, Any]] = {
    "mqtt": {"url": "mqtt://broker:1883", "username": "redlight", "base_topic": "redlight"},
    "safety": {"max_on": "15m", "cooldown": "1m", "daily_max": "45m"},
    "panels": {
        "a": {
            "default_duration": "10m",
            "irradiance_mw_cm2": 50,
            "plug": {"preset": "tasmota", "topic": "t"},
        },
        "b": {
            "irradiance_mw_cm2": 40,
            "plug": {"preset": "zigbee2mqtt", "device": "d", "failsafe": True},
        },
    },
    "routines": {
        "r": {
            "steps": [
                {"panels": ["a"], "duration": "7m"},
                {"pause": "45s", "prompt": "Turn to your right side"},
                {"panels": ["b"], "dose_j_cm2": 25},
            ]
        }
    },
    "schedules": {
        "s": {"routine": "r", "cron": "0 19 * * tue", "timezone": "Europe/Amsterdam"},
    },
}
MUTATION_PATHS: Final = [
    ("safety", "max_on"), ("safety", "cooldown"), ("safety", "daily_max"),
    ("safety", "failsafe_margin"), ("safety", "quiet_hours"), ("mqtt", "base_topic"),
    ("mqtt", "url"), ("panels", "a", "default_duration"), ("panels", "a", "irradiance_mw_cm2"),
    ("panels", "a", "plug", "topic"), ("panels", "a", "plug", "index"),
    ("panels", "b", "plug", "preset"), ("panels", "b", "plug", "state_on"),
    ("panels", "b", "irradiance_mw_cm2"), ("panels", "C-3"), ("panels", "c"),
    ("routines", "r", "steps"), ("routines", "r", "steps", 0, "duration"),
    ("routines", "r", "steps", 2, "dose_j_cm2"), ("routines", "r", "steps", 0, "panels"),
    ("schedules", "s", "routine"), ("schedules", "s", "cron"), ("schedules", "s", "panels"),
    ("schedules", "s", "duration"), ("schedules", "s", "end_date"), ("schedules", "s", "mode"),
]  # fmt: skip
SPECIAL_VALUES: Final = st.sampled_from(
    [
        *("16m", "14m", "8m", "1h", "0.5s", "0s", 1e300, 10**400, 0.0001, "r", "zz", "offer"),
        *(["a", "b"], ["a", "a"], ["zz"], date(2020, 1, 1), {"preset": "esphome", "node": "n"}),
        {"plug": {"preset": "tasmota", "topic": "t2"}},
        [{"panels": ["a"], "duration": "8m"}, {"panels": ["a", "b"], "duration": "8m"}],
    ]
)
MUTATION_VALUES: Final = st.one_of(
    SPECIAL_VALUES, SPECIAL_VALUES, SPECIAL_VALUES, FIELD_VALUES, STEPS, PANEL_TABLES
)


def mutated(mutations: list[tuple[tuple[str | int, ...], object]]) -> dict[str, Any]:
    """GOOD_CONFIG with a value set (or replaced) at each path, where the path still exists."""
    raw: dict[str, Any] = json.loads(json.dumps(GOOD_CONFIG))
    for path, value in mutations:
        parent: Any = raw
        for key in path[:-1]:
            parent = parent[key] if _holds(parent, key) else None
        if isinstance(parent, dict) or _holds(parent, path[-1]):
            parent[path[-1]] = value
    return raw


def _holds(node: object, key: str | int) -> bool:
    """``node[key]`` exists."""
    if isinstance(node, dict):
        return key in node
    return isinstance(node, list) and isinstance(key, int) and key < len(node)


#: Mutations that pass field validation and fail the cross-checks (or build_plug).
CROSS_CHECK_MUTATIONS: Final[list[tuple[tuple[str | int, ...], object]]] = [
    (("safety", "max_on"), "5m"),
    (("panels", "a", "default_duration"), "16m"),
    (("routines", "r", "steps"), [{"panels": ["a"], "duration": "8m"}] * 2),
    (("routines", "r", "steps", 0, "panels"), ["zz"]),
    (("routines", "r", "steps", 2, "dose_j_cm2"), 1e300),
    (("panels", "b", "irradiance_mw_cm2"), 0.0001),
    (("schedules", "s", "routine"), "zz"),
    (("schedules", "s"), {"panels": ["zz"], "duration": "1m", "cron": "0 1 * * *"}),
    (("schedules", "s"), {"panels": ["a"], "duration": "16m", "cron": "0 1 * * *"}),
    (("panels", "Hip-Left"), {"plug": {"preset": "tasmota", "topic": "t3"}}),
    (("routines", "R!"), {"steps": [{"pause": "1s"}]}),
    (("panels", "a", "plug"), {"preset": "esphome", "node": "n"}),
    (("panels", "a", "plug"), {"preset": "tasmota", "topic": "t", "id": "x"}),
    (("panels", "a", "plug"), {"preset": "generic", "command_topic": "a/b"}),
    (("panels", "a", "plug"), {"preset": "generic", "command_topic": "a/+", "state_topic": "s"}),
    (("panels", "a", "plug"), {"preset": "shelly_gen1", "id": "x", "failsafe": True}),
    (("panels", "a", "plug"), {"preset": "zigbee2mqtt", "device": "d", "state_off": "on"}),
    (("panels", "a", "plug"), {"preset": "tasmota", "topic": "a/b"}),
]
MUTATED_CONFIGS: Final = st.lists(
    st.one_of(
        st.sampled_from(CROSS_CHECK_MUTATIONS),
        st.tuples(st.sampled_from(MUTATION_PATHS), MUTATION_VALUES),
    ),
    max_size=3,
).map(mutated)
CONFIGS: Final = st.one_of(RANDOM_CONFIGS, MUTATED_CONFIGS, MUTATED_CONFIGS)


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One file, rewritten by each example (a module-scoped path suits hypothesis)."""
    return tmp_path_factory.mktemp("fuzz") / "config.toml"


def load_or_problems(path: Path) -> Config | ConfigError:
    """The loaded config, or the ConfigError (any other exception fails the test)."""
    try:
        return load_config(path)
    except ConfigError as error:
        return error


def check_problems(error: ConfigError) -> None:
    """Each problem is one ``where: what`` line, without the secret or a traceback."""
    assert error.problems
    for line in error.problems:
        where, separator, what = line.partition(": ")
        assert separator, line
        assert where.strip(), line
        assert what.strip(), line
        assert "\n" not in line
        assert "\r" not in line
        assert SECRET not in line
        assert "Traceback" not in line


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(raw=CONFIGS)
@example(raw={"mqtt": {}, "safety": {"max_on": 10**400}})
@example(raw={"mqtt": {}, "_cli_parse_args": True})
@example(raw={"mqtt": {}, "_env_file": "/etc/passwd"})
@example(raw={"mqtt": {"url": f"mqtt://redlight:{SECRET}@broker"}})
@example(raw={"mqtt": {}, "a\nb": 1})
@example(
    raw={
        "mqtt": {},
        "panels": {"a": {"irradiance_mw_cm2": 1, "plug": {"preset": "esphome", "node": "n"}}},
        "routines": {"r": {"steps": [{"panels": ["a"], "dose_j_cm2": 1e300}]}},
    }
)
@example(raw={"mqtt": {}, "panels": {"Hip-Left": {"plug": {"preset": "tasmota", "topic": "t"}}}})
def test_config_files_load_or_fail_with_one_line_per_problem(
    config_file: Path, raw: dict[str, Any]
) -> None:
    """A TOML-ish config loads, or fails with `where: what` lines that never show the secret."""
    if isinstance(raw.get("mqtt"), dict):
        raw["mqtt"] = raw["mqtt"] | {"password": SECRET}
    config_file.write_text(toml_document(raw), encoding="utf-8")
    outcome = load_or_problems(config_file)
    if isinstance(outcome, ConfigError):
        check_problems(outcome)
        assert SECRET not in str(outcome)
    else:
        assert SECRET not in repr(outcome)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    text=st.one_of(
        st.text(max_size=200),
        st.text(alphabet=string.printable, max_size=200),
        st.lists(
            st.sampled_from(
                [
                    *("[mqtt]", "[panels.a]", 'plug = { preset = "tasmota",', 'topic = "t" }'),
                    *('max_on = "16m"', "[safety]", "a = {b = {c = 1}}", '"k" = 1', "= 1"),
                    *("[[a]]", "port = 1883", "x = [[[", "a = " + "[" * 2000),
                ]
            ),
            max_size=8,
        ).map("\n".join),
    )
)
@example(text="a = " + "[" * 5000)
def test_broken_toml_is_one_clear_line(config_file: Path, text: str) -> None:
    """Any text as a config file loads or fails with clear lines, never another exception."""
    config_file.write_text(text, encoding="utf-8")
    outcome = load_or_problems(config_file)
    if isinstance(outcome, ConfigError):
        check_problems(outcome)
