"""The Home Assistant App's entry point: options, the Supervisor's broker, the daemon's launch."""

from __future__ import annotations

import json
import os
import stat
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from redlight import app
from redlight.app import AppError, AppPaths, Broker, Launch, Options, Panel
from redlight.config import load_config
from tests.supervisor import TOKEN, StubSupervisor, stub_supervisor

APP_DIR = Path(__file__).resolve().parents[2] / "redlight-app"
MOSQUITTO_APP: dict[str, Any] = {
    "host": "core-mosquitto",
    "port": 1883,
    "ssl": False,
    "protocol": "3.1.1",
    "username": "addons",
    "password": "s3cret-from-supervisor",
}


def default_options() -> dict[str, Any]:
    """The options config.yaml gives a fresh install (what the Supervisor writes first)."""
    manifest = yaml.safe_load((APP_DIR / "config.yaml").read_text())
    options: dict[str, Any] = manifest["options"]
    return options


@pytest.fixture
def paths(tmp_path: Path) -> AppPaths:
    """The App's directories under ``tmp_path``, with the default options in place."""
    (tmp_path / "data").mkdir()
    (tmp_path / "config").mkdir()
    (tmp_path / "credentials").mkdir()
    (tmp_path / "data" / "options.json").write_text(json.dumps(default_options()))
    return AppPaths(
        options=tmp_path / "data" / "options.json",
        data_dir=tmp_path / "data",
        config_dir=tmp_path / "config",
        credentials_dir=tmp_path / "credentials",
    )


@pytest.fixture
def supervisor() -> Iterator[StubSupervisor]:
    """A stub Supervisor providing the Mosquitto App's broker."""
    with stub_supervisor(MOSQUITTO_APP) as stub:
        yield stub


@pytest.fixture
def launched(monkeypatch: pytest.MonkeyPatch) -> list[Launch]:
    """Launches that ``main`` would have exec'd (recorded instead)."""
    seen: list[Launch] = []

    def record(launch: Launch) -> int:
        seen.append(launch)
        return 0

    monkeypatch.setattr(app, "_exec", record)
    return seen


@dataclass
class Attempt:
    """One run of the entry point with the test's directories, Supervisor and token."""

    paths: AppPaths
    supervisor: StubSupervisor
    launched: list[Launch]
    capsys: pytest.CaptureFixture[str]

    def __call__(self, supervisor_url: str | None = None) -> tuple[int, str]:
        """The exit code and what went to stderr."""
        code = run_main(self.paths, supervisor_url or self.supervisor.url)
        return code, self.capsys.readouterr().err

    def failed_in_one_line(self, err: str, expected: str) -> None:
        """The failure is one line saying ``expected``, no traceback, and nothing launched."""
        assert err.count("\n") == 1
        assert err.startswith("redlight app: ")
        assert expected in err
        assert "Traceback" not in err
        assert not self.launched


@pytest.fixture
def attempt(
    paths: AppPaths,
    supervisor: StubSupervisor,
    launched: list[Launch],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> Attempt:
    """Runs of the entry point as the Supervisor starts it (with its token)."""
    monkeypatch.setenv("SUPERVISOR_TOKEN", TOKEN)
    return Attempt(paths, supervisor, launched, capsys)


def run_main(paths: AppPaths, supervisor_url: str) -> int:
    """``python -m redlight.app`` with the test's directories and Supervisor."""
    argv = [
        "--options", str(paths.options), "--data", str(paths.data_dir),
        "--config-dir", str(paths.config_dir), "--credentials-dir", str(paths.credentials_dir),
        "--supervisor", supervisor_url,
    ]  # fmt: skip
    return app.main(argv)


def test_default_options_launch_the_daemon_with_the_supervisors_broker(
    paths: AppPaths,
    supervisor: StubSupervisor,
    launched: list[Launch],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With config.yaml's options, the App asks the Supervisor with its token and execs run."""
    monkeypatch.setenv("SUPERVISOR_TOKEN", TOKEN)
    assert run_main(paths, supervisor.url) == 0
    assert supervisor.paths == ["/services/mqtt"]
    assert supervisor.authorizations == [f"Bearer {TOKEN}"]
    (launch,) = launched
    assert launch.argv[:4] == (sys.executable, "-m", "redlight", "run")
    assert launch.argv[-2:] == ("--log-level", "info")
    assert launch.env["REDLIGHT_MQTT__URL"] == "mqtt://core-mosquitto:1883"
    assert launch.env["REDLIGHT_MQTT__USERNAME"] == "addons"
    assert launch.env["REDLIGHT_MQTT__PROTOCOL"] == "3.1.1"
    assert launch.env["REDLIGHT_STORAGE__PATH"] == str(paths.data_dir / "redlight.db")
    assert "SUPERVISOR_TOKEN" not in launch.env  # the daemon has no use for it
    # The password is only in the credential file: not in argv, the environment or the log.
    password = MOSQUITTO_APP["password"]
    assert not any(password in part for part in launch.argv)
    assert not any(password in value for value in launch.env.values())
    assert password not in capsys.readouterr().err
    secret = Path(launch.env["CREDENTIALS_DIRECTORY"]) / "mqtt__password"
    assert secret.read_text() == password
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600


def test_the_generated_config_is_valid_and_gets_the_password(
    paths: AppPaths,
    supervisor: StubSupervisor,
    launched: list[Launch],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The daemon's own loader accepts the launch: panels from options, broker and password."""
    monkeypatch.setenv("SUPERVISOR_TOKEN", TOKEN)
    assert run_main(paths, supervisor.url) == 0
    (launch,) = launched
    config_file = Path(launch.argv[launch.argv.index("--config") + 1])
    assert config_file == paths.data_dir / "config.toml"
    for key in [k for k in os.environ if k.startswith("REDLIGHT_")]:
        monkeypatch.delenv(key)
    for key, value in launch.env.items():
        monkeypatch.setenv(key, value)
    config = load_config(config_file)
    assert config.mqtt.url == "mqtt://core-mosquitto:1883"
    assert config.mqtt.password is not None
    assert config.mqtt.password.get_secret_value() == MOSQUITTO_APP["password"]
    assert str(config.storage.path) == str(paths.data_dir / "redlight.db")
    assert list(config.panels) == ["hip_left"]
    assert config.panels["hip_left"].plug.topic == "panel_left"


def test_every_preset_maps_its_topic_option(tmp_path: Path) -> None:
    """``topic`` is each preset's own name for the plug, and the result passes the loader."""
    panels = [
        Panel(id="a", preset="tasmota", topic="t", name='Say "hi"', minutes=8),
        Panel(id="b", preset="shelly_gen1", topic="shellyplug-s-1"),
        Panel(id="c", preset="shelly_gen2", topic="shellyplugsg3-1", switch="1"),
        Panel(id="d", preset="zigbee2mqtt", topic="Panel plug", area="left hip"),
        Panel(id="e", preset="esphome", topic="node", switch="relay"),
    ]
    text = app.panels_toml(panels)
    plugs = {key: value["plug"] for key, value in tomllib.loads(text)["panels"].items()}
    assert plugs == {
        "a": {"preset": "tasmota", "topic": "t"},
        "b": {"preset": "shelly_gen1", "id": "shellyplug-s-1"},
        "c": {"preset": "shelly_gen2", "prefix": "shellyplugsg3-1", "switch": 1},
        "d": {"preset": "zigbee2mqtt", "device": "Panel plug"},
        "e": {"preset": "esphome", "node": "node", "switch": "relay"},
    }
    path = tmp_path / "config.toml"
    path.write_text(text)
    config = load_config(path)
    assert config.panels["a"].name == 'Say "hi"'
    assert config.panels["a"].default_duration is not None
    assert config.panels["a"].default_duration.total_seconds() == 480


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"log_level": "loud", "panels": []}, "options.log_level: must be one of"),
        ({"panels": {"id": "x"}}, "options.panels: must be a list"),
        ({"panels": [{"id": "Hip Left", "preset": "tasmota", "topic": "t"}]}, "panels[1].id:"),
        ({"panels": [{"id": "a", "preset": "sonoff", "topic": "t"}]}, "panels[1].preset: one of"),
        ({"panels": [{"id": "a", "preset": "tasmota"}]}, "panels[1].topic: missing"),
        ({"panels": [{"id": "a", "preset": "esphome", "topic": "n"}]}, "panels[1].switch:"),
        ({"panels": [{"id": "a", "preset": "tasmota", "topic": "t", "minutes": 16}]}, "minutes:"),
        ({"panels": [{"id": "a", "preset": "tasmota", "topic": "t", "colour": 1}]}, ".colour:"),
        (
            {"panels": [{"id": "a", "preset": "tasmota", "topic": "t"}] * 2},
            "the id 'a' is used twice",
        ),
    ],
)
def test_invalid_options_are_one_line_and_exit_78(
    attempt: Attempt, options: dict[str, Any], expected: str
) -> None:
    """An invalid option is named in one line, exit 78 (a config error), nothing launched."""
    attempt.paths.options.write_text(json.dumps(options))
    code, err = attempt()
    assert code == app.EXIT_CONFIG
    attempt.failed_in_one_line(err, expected)


@pytest.mark.parametrize(
    ("status", "message", "expected"),
    [
        (400, "Service not enabled", "provides no MQTT broker (HTTP 400) (Service not enabled)"),
        (403, "Forbidden", "refused this App's token (HTTP 403)"),
        (500, "", "provides no MQTT broker (HTTP 500): install and start the Mosquitto"),
    ],
)
def test_a_supervisor_without_a_broker_is_one_line(
    attempt: Attempt, status: int, message: str, expected: str
) -> None:
    """An error from ``/services/mqtt`` says what it means, exit 1, nothing launched."""
    attempt.supervisor.status, attempt.supervisor.message = status, message
    code, err = attempt()
    assert code == 1
    attempt.failed_in_one_line(err, expected)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({}, "provides no MQTT broker (its answer has no host)"),
        ({"host": "h", "port": "many"}, "MQTT port is not a number"),
        ({"host": "h", "port": 1883, "protocol": "3.1"}, "speaks MQTT 3.1: redlight needs"),
    ],
)
def test_an_unusable_answer_is_one_line(
    attempt: Attempt, data: dict[str, Any], expected: str
) -> None:
    """An answer without a usable broker is named, exit 1."""
    attempt.supervisor.broker = data
    code, err = attempt()
    assert code == 1
    attempt.failed_in_one_line(err, expected)


def test_no_token_is_one_line(attempt: Attempt, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without $SUPERVISOR_TOKEN (not run by a Supervisor) the App says so and asks nothing."""
    monkeypatch.delenv("SUPERVISOR_TOKEN")
    code, err = attempt()
    assert code == 1
    attempt.failed_in_one_line(err, "SUPERVISOR_TOKEN is not set")
    assert attempt.supervisor.paths == []


def test_an_unreachable_supervisor_is_one_line(attempt: Attempt) -> None:
    """A Supervisor nobody answers for is named with the reason, exit 1, no traceback."""
    with stub_supervisor() as gone:
        url = gone.url  # a port that was just closed: connection refused
    code, err = attempt(url)
    assert code == 1
    attempt.failed_in_one_line(err, f"cannot reach the Supervisor at {url}: ")


def test_a_missing_options_file_is_one_line(attempt: Attempt) -> None:
    """No /data/options.json: one line naming it, exit 1."""
    attempt.paths.options.unlink()
    code, err = attempt()
    assert code == 1
    attempt.failed_in_one_line(err, f"{attempt.paths.options}: no options file")


def test_a_config_file_in_the_app_folder_is_used(paths: AppPaths) -> None:
    """config.toml in the App's config folder is the config (options' panels must be empty)."""
    user = paths.config_dir / "config.toml"
    user.write_text('[panels.p]\nplug = { preset = "tasmota", topic = "x" }\n')
    broker = Broker(host="::1", port=8883, ssl=True, protocol="5")
    launch = app.prepare(Options(), broker, paths=paths, environ={"PATH": "/bin"})
    assert launch.argv[launch.argv.index("--config") + 1] == str(user)
    assert launch.env["REDLIGHT_MQTT__URL"] == "mqtts://[::1]:8883"
    assert launch.env["PATH"] == "/bin"
    assert "CREDENTIALS_DIRECTORY" not in launch.env  # no password, no credential
    panels = app.read_options(paths.options).panels
    with pytest.raises(AppError, match="exists and sets the panels"):
        app.prepare(Options(panels=panels), broker, paths=paths, environ={})


def test_no_panels_anywhere_is_a_config_error(paths: AppPaths) -> None:
    """Neither options' panels nor a config.toml: one line saying where to add one."""
    with pytest.raises(AppError, match="no panels: add one") as raised:
        app.prepare(Options(), Broker(host="h", port=1), paths=paths, environ={})
    assert raised.value.code == app.EXIT_CONFIG


def test_the_broker_repr_hides_the_password() -> None:
    """A Broker printed by accident (a debugger, a log) does not show the password."""
    assert "pw" not in repr(Broker(host="h", port=1, username="u", password="pw"))  # noqa: S106 - a test value


def test_the_token_never_goes_through_a_proxy(
    attempt: Attempt, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A proxy in the environment is not used: the Supervisor's token goes to it alone."""
    for name in ("http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # nothing listens: a proxy would fail
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    code, err = attempt()
    assert (code, err.count("\n")) == (0, 1)  # the one line saying which broker it uses
    assert attempt.supervisor.authorizations == [f"Bearer {TOKEN}"]
