"""The broker boundary with the real ``redlight run``: config errors exit 78 and never echo a
credential, a refused subscription is named, and a client id conflict is named."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from redlight.broker import Connected
from tests.brokerkit import Events, paho_client
from tests.integration.harness import DAEMON_CLIENT_ID, PRESETS, WAIT_S, Daemon, config_text
from tests.mosquitto import MosquittoBroker, deny_subscriptions, dynsec_plugin

pytestmark = pytest.mark.integration

TOKEN = "s3cr3t-T0ken-4417"  # noqa: S105 - a test value that must never be printed or logged
EXIT_CONFIG = 78


def run(config: Path, *, command: str = "run", **env: str) -> subprocess.CompletedProcess[str]:
    """``redlight <command>`` on ``config`` in a clean environment, to its exit."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("REDLIGHT_")}
    clean.pop("NOTIFY_SOCKET", None)
    args = [sys.executable, "-m", "redlight", command, "--config", str(config)]
    if command == "run":
        args += ["--log-format", "json"]
    return subprocess.run(
        args, capture_output=True, text=True, env=clean | env, timeout=WAIT_S, check=False
    )


def write_config(tmp_path: Path, mqtt: str) -> Path:
    """A config with one panel and these ``[mqtt]`` lines."""
    path = tmp_path / "config.toml"
    path.write_text(
        f'[mqtt]\n{mqtt}\n[storage]\npath = "{tmp_path / "history.db"}"\n'
        '[panels.hip_left]\nplug = { preset = "tasmota", topic = "t" }\n'
    )
    return path


def test_a_token_in_the_url_exits_78_and_is_never_printed(tmp_path: Path) -> None:
    """mqtt://TOKEN@host: `check` and `run` refuse it in one line; `run` exits 78, no restart."""
    config = write_config(tmp_path, f'url = "mqtt://{TOKEN}@127.0.0.1:1"')
    checked = run(config, command="check")
    assert checked.returncode == 1
    done = run(config)
    assert done.returncode == EXIT_CONFIG
    for result in (checked, done):
        assert TOKEN not in result.stdout + result.stderr
        assert result.stderr.splitlines() == [
            "mqtt.url: must not hold credentials (nothing before an '@'): "
            "set mqtt.username and mqtt.password instead"
        ]


def test_a_token_in_the_url_from_the_environment_exits_78(tmp_path: Path) -> None:
    """REDLIGHT_MQTT__URL with user-info: the same refusal, never echoed, exit 78."""
    done = run(write_config(tmp_path, ""), REDLIGHT_MQTT__URL=f"mqtts://u:{TOKEN}@broker")
    assert done.returncode == EXIT_CONFIG
    assert TOKEN not in done.stdout + done.stderr
    assert done.stderr.startswith(
        "mqtt.url (from the environment variable REDLIGHT_MQTT__URL): must not hold credentials"
    )


def test_a_password_without_a_username_exits_78(tmp_path: Path) -> None:
    """A password from the environment with no username is a config error, not a crash loop."""
    done = run(write_config(tmp_path, ""), REDLIGHT_MQTT__PASSWORD=TOKEN)
    assert done.returncode == EXIT_CONFIG
    assert done.stderr.splitlines() == [
        "mqtt.password: needs mqtt.username too (MQTT sends no password without one)"
    ]
    assert TOKEN not in done.stdout + done.stderr


@pytest.mark.parametrize(
    ("files", "complaint"),
    [
        ({"tls_ca_file": "missing.pem"}, "mqtt.tls_ca_file: cannot read "),
        ({"tls_ca_file": "garbage.pem"}, "mqtt.tls_ca_file: "),
        (
            {"tls_cert_file": "garbage.pem", "tls_key_file": "garbage.pem"},
            "mqtt.tls_cert_file: ",
        ),
        ({"tls_cert_file": "missing.pem"}, "mqtt.tls_cert_file: cannot read "),
    ],
)
def test_unusable_tls_files_exit_78_naming_the_setting(
    tmp_path: Path, files: dict[str, str], complaint: str
) -> None:
    """A missing or non-PEM CA, certificate or key: `check` says so and `run` exits 78."""
    (tmp_path / "garbage.pem").write_text("not a certificate\n")
    lines = ['url = "mqtts://127.0.0.1:1"'] + [
        f'{key} = "{tmp_path / name}"' for key, name in files.items()
    ]
    config = write_config(tmp_path, "\n".join(lines))
    checked = run(config, command="check")
    done = run(config)
    assert (checked.returncode, done.returncode) == (1, EXIT_CONFIG)
    for result in (checked, done):
        problems = result.stderr.splitlines()
        assert len(problems) == 1, problems
        assert problems[0].startswith(complaint)


# ---------------------------------------------------------------------- refused subscriptions


@pytest.fixture
async def denying_broker(tmp_path: Path) -> AsyncIterator[MosquittoBroker]:
    """A mosquitto that refuses every subscription under ``stat/`` (SUBACK 0x80)."""
    if dynsec_plugin() is None:
        pytest.skip("mosquitto's dynamic security plugin is not installed")
    (tmp_path / "mosquitto").mkdir()
    dynsec = deny_subscriptions(tmp_path / "mosquitto" / "dynsec.json", ["stat/#"])
    broker = MosquittoBroker(tmp_path / "mosquitto", dynsec_file=dynsec)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


async def test_a_subscription_the_broker_refuses_is_logged_by_name(
    tmp_path: Path, denying_broker: MosquittoBroker
) -> None:
    """An ACL that refuses the plug's stat/ topics: the daemon warns, naming those filters."""
    path = tmp_path / "config.toml"
    path.write_text(config_text(denying_broker.port, tmp_path / "h.db", {"t": PRESETS["tasmota"]}))
    daemon = Daemon(path, tmp_path / "daemon.log")
    daemon.start()
    try:
        refused = await daemon.wait_logged("mqtt_subscribe_refused")
    finally:
        daemon.stop_now()
    assert refused["level"] == "warning"
    assert set(refused["filters"]) == {
        "stat/sim_tasmota/POWER",
        "stat/sim_tasmota/RESULT",
        "stat/sim_tasmota/STATUS10",
    }


# ---------------------------------------------------------------------- client id conflicts


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[MosquittoBroker]:
    """A plain private mosquitto."""
    broker = MosquittoBroker(tmp_path / "mosquitto")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


async def test_another_client_with_the_same_client_id_is_named(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    """A second client with redlight's client id: the daemon logs client_id_conflict, bounded."""
    path = tmp_path / "config.toml"
    path.write_text(config_text(broker.port, tmp_path / "h.db", {}))
    daemon = Daemon(path, tmp_path / "daemon.log")
    daemon.start()
    intruder = paho_client(broker.port, DAEMON_CLIENT_ID)
    events = Events()
    try:
        await daemon.wait_logged("mqtt_connected")
        intruder.start(events)
        await events.next(Connected)
        # Each side is taken over within about a second of connecting (paho's reconnect delay).
        conflict = await daemon.wait_logged("client_id_conflict", within=2 * WAIT_S)
    finally:
        await intruder.stop()
        daemon.stop_now()
    assert conflict["level"] == "warning"
    assert conflict["client_id"] == DAEMON_CLIENT_ID
    assert conflict["drops"] == 3  # redlight.mqtt.CONFLICT_DROPS
    assert "another client may be using the same client id" in conflict["hint"]
