"""The config file, environment overrides, credential files and ``redlight check``."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from redlight.cli import main
from redlight.config import ConfigError, load_config
from redlight.durations import format_duration, parse_duration

REPO = Path(__file__).resolve().parents[2]
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
    ],
)
def test_durations_are_parsed(text: str | int, seconds: float) -> None:
    """Durations are '90s', '10m', '1h30m' or plain seconds."""
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["10 minutes", "m", "-5", "1d", "", True, None, "nan"])
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
            "mqtt.url: must look like mqtt://host:1883 or mqtts://host:8883 (got 'http://x')",
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
    config = load_config(write(tmp_path, '[safety]\ncooldown = "1m"\n' + MINIMAL))
    assert config.safety.cooldown == timedelta(minutes=2)
    assert config.mqtt.password is not None
    assert config.mqtt.password.get_secret_value() == "from-env"


def test_environment_cannot_raise_the_ceiling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ceiling holds for values from the environment too."""
    monkeypatch.setenv("REDLIGHT_SAFETY__MAX_ON", "30m")
    assert problems(tmp_path, MINIMAL) == ["safety.max_on: must be at most 15 minutes (got 30m)"]


def test_password_from_a_credential_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """$CREDENTIALS_DIRECTORY/mqtt__password supplies the password (systemd LoadCredential=)."""
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "mqtt__password").write_text("from-credential\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    config = load_config(write(tmp_path, MINIMAL))
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
