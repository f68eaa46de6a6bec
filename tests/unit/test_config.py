"""The config file, environment overrides, credential files and ``redlight check``."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from redlight.cli import main
from redlight.config import ConfigError, load_config
from redlight.durations import format_duration, parse_duration

REPO = Path(__file__).resolve().parents[2]
#: The id cap and MQTT's topic limit, written out: the tests state the rule, not the code's value.
MAX_ID_LENGTH = 64
MAX_TOPIC_BYTES = 65_535
MINIMAL = """
[panels.hip_left]
plug = { preset = "tasmota", topic = "panel_left" }
"""


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No REDLIGHT_* or credentials from the machine leak into a test."""
    import os

    for key in list(os.environ):
        if key.startswith("REDLIGHT_") or key == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(key)


def write(tmp_path: Path, text: str) -> Path:
    """A config file with this text."""
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def problems(tmp_path: Path, text: str) -> list[str]:
    """What loading this config complains about."""
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    return caught.value.problems


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("10m", 600),
        ("1h30m", 5400),
        ("7m30s", 450),
        ("45", 45),
        (12, 12),
        ("0.5s", 0.5),
        ("10min", 600),
        ("10 minutes", 600),
        ("1hr 5 secs", 3605),
        ("2 hours 1 minute", 7260),
    ],
)
def test_durations_are_parsed(text: str | int, seconds: float) -> None:
    """Durations are '90s', '10m', '1h30m' or plain seconds; the units may be written out
    (issue 14: '10min' was refused)."""
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    "text", ["10 minutesx", "min", "m", "-5", "1d", "", True, None, "nan", "5mn"]
)
def test_bad_durations_are_errors(text: object) -> None:
    """Anything else is a ValueError with a message for people."""
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_durations_format_compactly() -> None:
    """Formatting is the inverse for whole seconds."""
    assert [format_duration(s) for s in (600, 450, 5400, 0, 1.5)] == [
        "10m",
        "7m30s",
        "1h30m",
        "0s",
        "1.5s",
    ]


def test_every_example_config_passes(tmp_path: Path) -> None:
    """config/example.toml (every option) loads without a problem."""
    config = load_config(REPO / "config" / "example.toml")
    assert config.safety.max_on == timedelta(minutes=15)
    assert set(config.panels) >= {"hip_left", "hip_right", "sauna"}
    assert config.step_duration(config.routines["post_run"].steps[0], "hip_left") == timedelta(
        minutes=7
    )


@pytest.mark.parametrize("path", sorted((REPO / "config").glob("**/*.toml")), ids=lambda p: p.name)
def test_every_example_passes_redlight_check(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every example in config/ passes ``redlight check``."""
    assert main(["check", "--config", str(path)]) == 0
    assert capsys.readouterr().out.startswith(f"{path}: OK (")


def test_an_over_ceiling_routine_fails_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two 8-minute steps on one panel: ``redlight check`` names the routine and exits 1."""
    path = tmp_path / "config.toml"
    path.write_text(
        '[panels.hip_left]\nplug = { preset = "tasmota", topic = "t" }\n'
        "[routines.twice]\nsteps = [\n"
        '  { panels = ["hip_left"], duration = "8m" },\n'
        '  { pause = "1m", prompt = "rest" },\n'
        '  { panels = ["hip_left"], duration = "8m" },\n]\n'
    )
    assert main(["check", "--config", str(path)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "routines.twice: keeps panel 'hip_left' on for 16m in total, more than safety.max_on (15m)"
    ]


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    """A missing config file is an error, not an empty config."""
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "nope.toml")
    assert caught.value.problems == [f"{tmp_path / 'nope.toml'}: config file not found"]


def test_invalid_toml_names_the_line(tmp_path: Path) -> None:
    """Broken TOML is one line with the line number."""
    [line] = problems(tmp_path, "[safety]\nmax_on = \n")
    assert "not valid TOML" in line
    assert "line 2" in line


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[mqtt]\nport = 1883\n" + MINIMAL, "mqtt.port: unknown key"),
        ("colour = 'red'\n" + MINIMAL, "colour: unknown key"),
        (
            '[panels.a]\nplug = { preset = "tasmota", topic = "t", colour = 1 }\n',
            "panels.a.plug.colour: unknown key",
        ),
        ('[safety]\nmax_on = "16m"\n', "safety.max_on: must be at most 15 minutes (got 16m)"),
        ('[safety]\nmax_on = "0s"\n', "safety.max_on: must be at least 1 second (got 0s)"),
        (
            '[safety]\ncooldown = "soon"\n',
            "safety.cooldown: expected a duration like '90s', '10m' or '1h30m' (got 'soon')",
        ),
        (
            '[panels.Hip-Left]\nplug = { preset = "tasmota", topic = "t" }\n',
            "panels['Hip-Left']: a panel id must use only a-z, 0-9 and '_'",
        ),
        (
            '[panels.a]\ndefault_duration = "20m"\nplug = { preset = "tasmota", topic = "t" }\n',
            "panels.a.default_duration: 20m is more than safety.max_on (15m)",
        ),
        (
            '[mqtt]\nurl = "http://x"\n',
            "mqtt.url: must start with mqtt:// or mqtts://, like mqtt://host:1883",
        ),
        (
            '[mqtt]\nbase_topic = "red/#"\n',
            "mqtt.base_topic: base_topic must not contain the MQTT wildcards '+' or '#' "
            "(got 'red/#')",
        ),
        (
            '[panels.a]\nplug = { preset = "hue" }\n',
            "panels.a.plug.preset: Input should be 'tasmota', 'shelly_gen1', 'shelly_gen2', "
            "'zigbee2mqtt', 'esphome' or 'generic'",
        ),
    ],
)
def test_problems_are_one_line_each_with_where(tmp_path: Path, text: str, expected: str) -> None:
    """Every problem is one line that starts with where it is."""
    assert problems(tmp_path, text) == [expected]


def test_several_problems_are_all_reported(tmp_path: Path) -> None:
    """Independent mistakes are reported together, one line each."""
    found = problems(tmp_path, '[safety]\nmax_on = "20m"\ncooldown = "x"\n[mqtt]\nhost = 1\n')
    assert len(found) == 3


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """REDLIGHT_<SECTION>__<KEY> beats the file."""
    monkeypatch.setenv("REDLIGHT_SAFETY__COOLDOWN", "2m")
    monkeypatch.setenv("REDLIGHT_MQTT__PASSWORD", "from-env")
    config = load_config(
        write(tmp_path, '[mqtt]\nusername = "u"\n[safety]\ncooldown = "1m"\n' + MINIMAL)
    )
    assert config.safety.cooldown == timedelta(minutes=2)
    assert config.mqtt.password is not None
    assert config.mqtt.password.get_secret_value() == "from-env"


def test_environment_cannot_raise_the_ceiling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ceiling holds for values from the environment too."""
    monkeypatch.setenv("REDLIGHT_SAFETY__MAX_ON", "30m")
    assert problems(tmp_path, MINIMAL) == [
        "safety.max_on (from the environment variable REDLIGHT_SAFETY__MAX_ON): "
        "must be at most 15 minutes (got 30m)"
    ]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "REDLIGHT_MQTT__HOTS",
            "mqtt.hots (from the environment variable REDLIGHT_MQTT__HOTS): unknown key",
        ),
        (
            "REDLIGHT_PANELS__HIP_LEFT__NAMEE",
            "panels.hip_left.namee (from the environment variable "
            "REDLIGHT_PANELS__HIP_LEFT__NAMEE): unknown key",
        ),
        (
            "REDLIGHT_MQQT__URL",
            "environment variable REDLIGHT_MQQT__URL: there is no section 'mqqt' (sections: "
            "mqtt, homeassistant, safety, storage, panels, routines, schedules)",
        ),
    ],
)
def test_an_environment_variable_typo_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, expected: str
) -> None:
    """Issue 14 item 10: a typo in an override names the variable (the key is in no file), and
    one in its section, which pydantic-settings would ignore without a word, is an error too."""
    monkeypatch.setenv(name, "x")
    assert problems(tmp_path, MINIMAL) == [expected]


def test_other_redlight_variables_are_not_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only ``REDLIGHT_<SECTION>__<KEY>`` is an override: ``REDLIGHT_CONFIG`` and a tool's own
    ``REDLIGHT_SOMETHING`` (no double underscore) are left alone."""
    monkeypatch.setenv("REDLIGHT_TEST_PROTOCOL", "5")
    assert set(load_config(write(tmp_path, MINIMAL)).panels) == {"hip_left"}


def test_password_from_a_credential_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """$CREDENTIALS_DIRECTORY/mqtt__password supplies the password (systemd LoadCredential=)."""
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "mqtt__password").write_text("from-credential\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    config = load_config(write(tmp_path, '[mqtt]\nusername = "u"\n' + MINIMAL))
    assert config.mqtt.password is not None
    assert config.mqtt.password.get_secret_value().strip() == "from-credential"


def test_config_path_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """$REDLIGHT_CONFIG names the file when --config is not given."""
    monkeypatch.setenv("REDLIGHT_CONFIG", str(write(tmp_path, MINIMAL)))
    assert set(load_config().panels) == {"hip_left"}


def test_check_prints_one_line_per_problem_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`redlight check` prints the problems, no traceback, and exits 1."""
    path = write(tmp_path, '[mqtt]\npassword = "hunter2"\nport = 1\n[safety]\nmax_on = "16m"\n')
    assert main(["check", "--config", str(path)]) == 1
    out = capsys.readouterr()
    assert out.err.splitlines() == [
        "mqtt.port: unknown key",
        "safety.max_on: must be at most 15 minutes (got 16m)",
    ]
    assert "Traceback" not in out.err
    assert "hunter2" not in out.err + out.out


def test_check_accepts_a_good_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`redlight check` on a good file says OK and exits 0."""
    path = write(tmp_path, MINIMAL)
    assert main(["check", "--config", str(path)]) == 0
    assert "OK (1 panel," in capsys.readouterr().out


def test_secret_is_never_echoed_in_a_validation_error(tmp_path: Path) -> None:
    """A wrong-typed password produces a problem line without the value."""
    found = problems(tmp_path, "[mqtt]\npassword = 123456789\n")
    assert found == ["mqtt.password: Input should be a valid string"]


# ---------------------------------------------------------------------- credentials at the boundary

TOKEN = "tok3n-Zq81x"  # noqa: S105 - a test value that must never be echoed


@pytest.mark.parametrize(
    "url",
    [
        f"mqtt://{TOKEN}@broker",
        f"mqtt://{TOKEN}@broker:1883",
        f"mqtts://redlight:{TOKEN}@broker",
        f"mqtt://:{TOKEN}@broker",
        "mqtt://@broker",
        f"mqtt://{TOKEN}%40broker",
        f"mqtt://us%65r:{TOKEN}@broker",
        f"mqtt://[::1]@{TOKEN}",
        f"MQTT://{TOKEN}@[::1]:1884",
    ],
)
def test_user_info_of_any_form_in_the_url_is_one_line_without_the_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str
) -> None:
    """user@, user:pass@, :pass@, @host, percent-encoded: `check` refuses it, never echoing it."""
    path = write(tmp_path, f'[mqtt]\nurl = "{url}"\n' + MINIMAL)
    assert main(["check", "--config", str(path)]) == 1
    out = capsys.readouterr()
    assert out.err.splitlines() == [
        "mqtt.url: must not hold credentials (nothing before an '@'): "
        "set mqtt.username and mqtt.password instead"
    ]
    assert TOKEN not in out.err + out.out
    assert "broker" not in out.err


def test_user_info_from_the_environment_is_refused_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """REDLIGHT_MQTT__URL goes through the same model: a token there is refused the same way."""
    monkeypatch.setenv("REDLIGHT_MQTT__URL", f"mqtt://{TOKEN}@broker")
    found = problems(tmp_path, MINIMAL)
    assert len(found) == 1
    assert found[0].startswith(
        "mqtt.url (from the environment variable REDLIGHT_MQTT__URL): must not hold credentials"
    )
    assert TOKEN not in found[0]


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("mqtt://broker:0", "mqtt.url: has a port that is not a number from 1 to 65535"),
        ("mqtt://broker:99999", "mqtt.url: has a port that is not a number from 1 to 65535"),
        ("mqtt://broker/path", "mqtt.url: must be only mqtt[s]://host[:port], without a path"),
        ("mqtt://::1", "mqtt.url: has an IPv6 address that needs brackets"),
        ("mqtt://bro ker", "mqtt.url: must not contain spaces or control characters"),
        ("mqtt://" + "b" * 300, "mqtt.url: has a host name that is not valid"),
        ("mqtt://bro%6Ber", "mqtt.url: must not be percent-encoded"),
    ],
)
def test_other_bad_urls_say_what_is_wrong_without_echoing(
    tmp_path: Path, url: str, complaint: str
) -> None:
    """Each URL problem is one line naming what is wrong; the URL itself is never shown."""
    found = problems(tmp_path, f'[mqtt]\nurl = "{url}"\n' + MINIMAL)
    assert len(found) == 1
    assert found[0].startswith(complaint)
    assert url not in found[0]


@pytest.mark.parametrize(
    ("url", "host", "port", "tls"),
    [
        ("mqtt://broker.lan", "broker.lan", 1883, False),
        ("mqtts://broker.lan:8884/", "broker.lan", 8884, True),
        ("mqtt://192.168.1.10:1884", "192.168.1.10", 1884, False),
        ("mqtt://[::1]:1885", "::1", 1885, False),
        ("mqtt://my_broker", "my_broker", 1883, False),
    ],
)
def test_good_urls_give_host_port_and_tls(
    tmp_path: Path, url: str, host: str, port: int, tls: bool
) -> None:
    """Host names, IPv4 and bracketed IPv6 literals, with or without a port, are accepted."""
    address = load_config(write(tmp_path, f'[mqtt]\nurl = "{url}"\n' + MINIMAL)).mqtt.address
    assert (address.host, address.port, address.tls) == (host, port, tls)


def test_a_password_without_a_username_is_a_config_error(tmp_path: Path) -> None:
    """MQTT sends no password without a username: refused by the model, the value not shown."""
    found = problems(tmp_path, '[mqtt]\npassword = "hunter2"\n' + MINIMAL)
    assert found == ["mqtt.password: needs mqtt.username too (MQTT sends no password without one)"]


@pytest.mark.parametrize(("written", "protocol"), [('"5"', "5"), ("5", "5"), ('"3.1.1"', "3.1.1")])
def test_the_mqtt_protocol_is_5_or_3_1_1(tmp_path: Path, written: str, protocol: str) -> None:
    """``mqtt.protocol`` takes MQTT 5 (as text or a number) or 3.1.1."""
    config = load_config(write(tmp_path, f"[mqtt]\nprotocol = {written}\n" + MINIMAL))
    assert config.mqtt.protocol == protocol


def test_the_mqtt_protocol_defaults_to_5(tmp_path: Path) -> None:
    """Without ``mqtt.protocol`` redlight speaks MQTT 5 (issue 12: Home Assistant's own broker
    connection has been 5 since 2026.6); ``"3.1.1"`` is the setting for older brokers."""
    assert load_config(write(tmp_path, MINIMAL)).mqtt.protocol == "5"
    older = load_config(write(tmp_path, '[mqtt]\nprotocol = "3.1.1"\n' + MINIMAL))
    assert older.mqtt.protocol == "3.1.1"


@pytest.mark.parametrize("written", ['"3.1"', "4", '"v5"', "true"])
def test_another_mqtt_protocol_is_one_line_naming_both(tmp_path: Path, written: str) -> None:
    """Any other protocol is one line that names the two accepted values."""
    found = problems(tmp_path, f"[mqtt]\nprotocol = {written}\n" + MINIMAL)
    assert found == ["mqtt.protocol: Input should be '5' or '3.1.1'"]


# ---------------------------------------------------------------------- limits at the boundary


def plug(topic: str) -> str:
    """A panel table whose Tasmota plug uses ``topic``."""
    return f'[panels.hip_left]\nplug = {{ preset = "tasmota", topic = "{topic}" }}\n'


def test_a_huge_panel_id_is_one_short_line(tmp_path: Path) -> None:
    """A 70,000-character panel id is refused; the line names it cut short, not in full."""
    key = "p" * 70_000
    found = problems(tmp_path, f'[panels.{key}]\nplug = {{ preset = "tasmota", topic = "t" }}\n')
    assert len(found) == 1
    assert found[0].startswith("panels['pppp")
    assert "a panel id must be at most 64 characters (it is 70,000;" in found[0]
    assert len(found[0]) < 300


@pytest.mark.parametrize("kind", ["panel", "routine", "schedule"])
def test_ids_longer_than_the_cap_are_refused(tmp_path: Path, kind: str) -> None:
    """Panel, routine and schedule ids: at most MAX_ID_LENGTH characters; exactly that is fine."""
    ok, too_long = "a" * MAX_ID_LENGTH, "a" * (MAX_ID_LENGTH + 1)
    tables = {
        "panel": lambda key: f'[panels.{key}]\nplug = {{ preset = "tasmota", topic = "t" }}\n',
        "routine": lambda key: (
            MINIMAL + f'[routines.{key}]\nsteps = [{{ panels = ["hip_left"], duration = "1m" }}]\n'
        ),
        "schedule": lambda key: (
            MINIMAL
            + f'[schedules.{key}]\ncron = "0 7 * * *"\npanels = ["hip_left"]\nduration = "1m"\n'
        ),
    }
    load_config(write(tmp_path, tables[kind](ok)))
    found = problems(tmp_path, tables[kind](too_long))
    assert found == [
        f"{kind}s.{too_long}: a {kind} id must be at most {MAX_ID_LENGTH} characters (it is 65; "
        "Home Assistant builds its entity ids from it)"
    ]


def test_a_base_topic_that_makes_topics_too_long_is_refused(tmp_path: Path) -> None:
    """mqtt.base_topic is checked with the longest topic it starts, and named as the culprit."""
    base = "b" * (MAX_TOPIC_BYTES - len("/panel/") - MAX_ID_LENGTH - len("/duration/set") + 1)
    found = problems(tmp_path, f'[mqtt]\nbase_topic = "{base}"\n' + MINIMAL)
    assert len(found) == 1
    assert found[0].startswith(
        "mqtt.base_topic: makes a topic of 65,536 bytes, more than the 65,535"
    )
    assert len(found[0]) < 300
    shorter = base[: -MAX_ID_LENGTH - 20]
    load_config(write(tmp_path, f'[mqtt]\nbase_topic = "{shorter}"\n' + MINIMAL))


def test_a_plug_topic_too_long_for_mqtt_is_refused(tmp_path: Path) -> None:
    """A plug's topics are checked as built: a 70,000-byte Tasmota topic names the panel's plug."""
    found = problems(tmp_path, plug("t" * 70_000))
    assert len(found) == 1
    assert found[0].startswith("panels.hip_left.plug: makes a topic of 70,")
    assert len(found[0]) < 300


def test_multibyte_characters_count_as_utf8_bytes(tmp_path: Path) -> None:
    """The limit is in bytes of UTF-8: 30,000 'é' (60,000 bytes) plus the rest is too much."""
    found = problems(tmp_path, plug("é" * 33_000))
    assert len(found) == 1
    assert "bytes, more than the 65,535 MQTT allows" in found[0]
    load_config(write(tmp_path, plug("é" * 30_000)))


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('[mqtt]\nbase_topic = "red\\u0000light"\n' + MINIMAL, "mqtt.base_topic"),
        ('[mqtt]\nbase_topic = "red\\tlight"\n' + MINIMAL, "mqtt.base_topic"),
        ('[homeassistant]\ndiscovery_prefix = "ha\\u0000"\n' + MINIMAL, "homeassistant"),
        ('[homeassistant]\nstatus_topic = "ha/\\u0007"\n' + MINIMAL, "homeassistant"),
        (
            '[panels.hip_left]\nplug = { preset = "generic", command_topic = "c\\u001b", '
            'state_topic = "s" }\n',
            "panels.hip_left.plug",
        ),
        (
            '[panels.hip_left]\nplug = { preset = "generic", command_topic = "c", '
            'state_topic = "s\\ufffe" }\n',
            "panels.hip_left.plug",
        ),
    ],
)
def test_characters_mqtt_forbids_in_topics_are_refused(
    tmp_path: Path, text: str, where: str
) -> None:
    """NUL, control characters and non-characters in any topic: one line with where."""
    found = problems(tmp_path, text)
    assert len(found) == 1
    assert found[0].startswith(where)
    assert "must not contain the character U+" in found[0]


def test_a_wildcard_in_the_discovery_prefix_is_refused(tmp_path: Path) -> None:
    """'+' and '#' cannot be published to: a discovery prefix with one is refused."""
    found = problems(tmp_path, '[homeassistant]\ndiscovery_prefix = "ha/+"\n' + MINIMAL)
    assert len(found) == 1
    assert "must not contain the MQTT wildcards" in found[0]


# ---------------------------------------------------------------------- the default client id


def client_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, host: str, base: str) -> str:
    """The default client id on host ``host`` with base topic ``base``."""
    monkeypatch.setattr("socket.gethostname", lambda: host)
    text = f'[mqtt]\nbase_topic = "{base}"\n' + MINIMAL
    return load_config(write(tmp_path, text)).mqtt.client_id


def test_the_default_client_id_is_unique_per_host_and_base_topic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redlight-<host>-<hash>: within 23 characters, different per host and per base topic."""
    default = client_id(tmp_path, monkeypatch, "raspberrypi.lan", "redlight")
    assert default.startswith("redlight-raspber-")
    # The same instance (same host, same base topic) gets the same id every time.
    assert client_id(tmp_path, monkeypatch, "raspberrypi.lan", "redlight") == default
    ids = {
        client_id(tmp_path, monkeypatch, host, base)
        for base in ("redlight", "redlight2", "home/redlight")
        for host in ("raspberrypi", "raspberrypi2", "raspberrypi.lan", "nas", "NAS-2")
    }
    assert len(ids) == 15
    assert all(len(i) <= 23 and i.isascii() for i in ids), ids


def test_a_client_id_set_in_the_file_or_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """mqtt.client_id, when given, is used as it is."""
    config = load_config(write(tmp_path, '[mqtt]\nclient_id = "mine"\n' + MINIMAL))
    assert config.mqtt.client_id == "mine"
    monkeypatch.setenv("REDLIGHT_MQTT__CLIENT_ID", "from-env")
    assert load_config(write(tmp_path, MINIMAL)).mqtt.client_id == "from-env"


def test_the_environment_base_topic_shapes_the_default_client_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """REDLIGHT_MQTT__BASE_TOPIC is merged before the default id is derived from it."""
    from_file = client_id(tmp_path, monkeypatch, "pi", "second")
    assert client_id(tmp_path, monkeypatch, "pi", "redlight") != from_file
    monkeypatch.setenv("REDLIGHT_MQTT__BASE_TOPIC", "second")
    assert load_config(write(tmp_path, MINIMAL)).mqtt.client_id == from_file
