"""Fuzzing the config file (SPEC §2): a file either loads or fails with one ``where: what``
line per problem, never another exception and never the password. 700 generated files: 400
config tables (random, and a good config broken in one to three places so the cross-checks
run) and 300 texts that are mostly not TOML. Inbound payloads are fuzzed in
``test_fuzz_commands.py``.
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

from redlight.config import Config, ConfigError, load_config
from tests.unit.fuzzkit import DURATIONISH

SECRET: Final = "s3cr3t-XYZ"  # noqa: S105 - a fake password the tests look for


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
