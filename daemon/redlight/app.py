"""The Home Assistant App's entry point: ``python -m redlight.app``.

It reads the user's options (``/data/options.json``), asks the Supervisor for the broker
(``GET http://supervisor/services/mqtt``), and replaces itself with ``redlight run``: an
``exec``, so the Supervisor's SIGTERM reaches the daemon, which switches every panel off before
it exits (safety rule 9). The broker's password travels in a credential file
(``$CREDENTIALS_DIRECTORY/mqtt__password``, as systemd's ``LoadCredential=`` would hand it
over), never on a command line or in a log. Every failure is one line on stderr and a non-zero
exit: the App log is all a Home Assistant user sees.

Only the standard library: it runs before anything else, and a missing dependency must not be
the reason an App cannot say what is wrong.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, NoReturn

#: Where the Supervisor puts the user's options, and the App's persistent directory.
DATA_DIR: Final = Path("/data")
#: ``map: [addon_config:rw]`` mounts the App's own folder (``/addon_configs/<slug>``) here.
CONFIG_DIR: Final = Path("/config")
SUPERVISOR_URL: Final = "http://supervisor"
#: The Supervisor answers from the same host; a slow answer is a broken Supervisor.
SUPERVISOR_TIMEOUT_S: Final = 10.0

EXIT_FAILED: Final = 1
EXIT_CONFIG: Final = 78  # as ``redlight run``: a configuration error, restarting will not fix it

LOG_LEVELS: Final = ("debug", "info", "warning", "error")
#: What the App's ``topic`` option is, per preset: the one name that finds the plug.
TOPIC_KEYS: Final[Mapping[str, str]] = {
    "tasmota": "topic",
    "shelly_gen1": "id",
    "shelly_gen2": "prefix",
    "zigbee2mqtt": "device",
    "esphome": "node",
}
#: Presets whose plug also takes the ``switch`` option (ESPHome needs it).
SWITCH_PRESETS: Final = frozenset({"shelly_gen2", "esphome"})
_PANEL_KEYS: Final = frozenset({"id", "name", "area", "preset", "topic", "switch", "minutes"})
_ID: Final = re.compile(r"[a-z0-9_]{1,64}")
_TOKENS: Final = frozenset({"SUPERVISOR_TOKEN", "HASSIO_TOKEN"})


class AppError(Exception):
    """A failure the App reports as one line; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Broker:
    """The broker the Supervisor provides (the Mosquitto App, or another MQTT service)."""

    host: str
    port: int
    ssl: bool = False
    protocol: str = "3.1.1"
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """``mqtt[s]://host:port``, an IPv6 address in brackets (never any credential)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.ssl else 'mqtt'}://{host}:{self.port}"


@dataclass(frozen=True)
class Panel:
    """One panel from the App's options."""

    id: str
    preset: str
    topic: str
    name: str | None = None
    area: str | None = None
    switch: str | None = None
    minutes: int | None = None


@dataclass(frozen=True)
class Options:
    """The App's options, as the Supervisor stored them from the UI."""

    log_level: str = "info"
    panels: tuple[Panel, ...] = ()


# ------------------------------------------------------------------ options


def read_options(path: Path) -> Options:
    """The options in ``path``; :class:`AppError` naming the option that is wrong."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AppError(
            f"{path}: no options file (is this running as a Home Assistant App?)"
        ) from None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise AppError(f"{path}: cannot read the options ({_reason(error)})") from None
    if not isinstance(raw, dict):
        raise AppError(f"{path}: the options are not a JSON object", EXIT_CONFIG)
    level = raw.get("log_level", "info")
    if level not in LOG_LEVELS:
        raise AppError(f"options.log_level: must be one of {', '.join(LOG_LEVELS)}", EXIT_CONFIG)
    panels = raw.get("panels", [])
    if not isinstance(panels, list):
        raise AppError("options.panels: must be a list of panels", EXIT_CONFIG)
    parsed = tuple(_panel(index, item) for index, item in enumerate(panels, start=1))
    ids = [panel.id for panel in parsed]
    for panel_id in ids:
        if ids.count(panel_id) > 1:
            raise AppError(f"options.panels: the id {panel_id!r} is used twice", EXIT_CONFIG)
    return Options(log_level=level, panels=parsed)


def _panel(index: int, item: object) -> Panel:
    """One entry of ``options.panels``, checked as far as the App can without the daemon."""
    where = f"options.panels[{index}]"
    if not isinstance(item, dict):
        raise AppError(f"{where}: must be a panel (id, preset, topic)", EXIT_CONFIG)
    unknown = sorted(set(item) - _PANEL_KEYS)
    if unknown:
        raise AppError(f"{where}.{unknown[0]}: unknown option", EXIT_CONFIG)
    values = {key: _text(where, key, item.get(key)) for key in ("id", "preset", "topic")}
    if not _ID.fullmatch(values["id"]):
        raise AppError(f"{where}.id: 1 to 64 characters of a-z, 0-9 and '_'", EXIT_CONFIG)
    if values["preset"] not in TOPIC_KEYS:
        raise AppError(f"{where}.preset: one of {', '.join(TOPIC_KEYS)}", EXIT_CONFIG)
    return Panel(
        id=values["id"],
        preset=values["preset"],
        topic=values["topic"],
        name=_optional_text(where, "name", item.get("name")),
        area=_optional_text(where, "area", item.get("area")),
        switch=_switch(where, values["preset"], item.get("switch")),
        minutes=_minutes(where, item.get("minutes")),
    )


def _switch(where: str, preset: str, switch: object) -> str | None:
    if switch is not None and preset not in SWITCH_PRESETS:
        only = " and ".join(sorted(SWITCH_PRESETS))
        raise AppError(f"{where}.switch: only for the {only} presets", EXIT_CONFIG)
    if switch is None and preset == "esphome":
        raise AppError(f"{where}.switch: the esphome preset needs the switch's id", EXIT_CONFIG)
    return None if switch is None else str(switch)


def _minutes(where: str, minutes: object) -> int | None:
    # The hard ceiling (safety rule 1) is 15 minutes; the daemon checks it again.
    valid = isinstance(minutes, int) and not isinstance(minutes, bool) and 1 <= minutes <= 15
    if minutes is not None and not valid:
        raise AppError(f"{where}.minutes: a whole number of minutes, 1 to 15", EXIT_CONFIG)
    return minutes if isinstance(minutes, int) else None


def _text(where: str, key: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise AppError(f"{where}.{key}: missing (this option is required)", EXIT_CONFIG)
    return value.strip()


def _optional_text(where: str, key: str, value: object) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise AppError(f"{where}.{key}: must be text", EXIT_CONFIG)
    return value


def panels_toml(panels: Sequence[Panel]) -> str:
    """The ``[panels.*]`` tables of a config for ``panels`` (strings as JSON, valid TOML)."""
    lines = [
        "# Written by redlight's Home Assistant App from its options at every start.",
        "# Edit the App's options, or put your own config.toml in the App's config folder.",
    ]
    for panel in panels:
        plug: dict[str, Any] = {"preset": panel.preset, TOPIC_KEYS[panel.preset]: panel.topic}
        if panel.switch is not None:
            plug["switch"] = (
                int(panel.switch) if panel.preset == "shelly_gen2" and panel.switch.isdigit()
                else panel.switch
            )  # fmt: skip
        lines += ["", f"[panels.{panel.id}]"]
        for key, value in (("name", panel.name), ("area", panel.area)):
            if value is not None:
                lines.append(f"{key} = {json.dumps(value)}")
        if panel.minutes is not None:
            lines.append(f'default_duration = "{panel.minutes}m"')
        inline = ", ".join(f"{key} = {json.dumps(value)}" for key, value in plug.items())
        lines.append(f"plug = {{ {inline} }}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ the Supervisor


def fetch_broker(
    supervisor: str, token: str | None, timeout: float = SUPERVISOR_TIMEOUT_S
) -> Broker:
    """The broker the Supervisor provides: ``GET <supervisor>/services/mqtt``."""
    if not token:
        raise AppError(
            "SUPERVISOR_TOKEN is not set: this entry point runs as a Home Assistant App "
            "(elsewhere, run 'redlight run')"
        )
    request = urllib.request.Request(  # noqa: S310 - the URL is the Supervisor's, http by design
        f"{supervisor.rstrip('/')}/services/mqtt",
        headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
    )
    # No proxy, whatever the environment says: the token is for the Supervisor's eyes only.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as error:
        raise AppError(_http_problem(error)) from None
    except (urllib.error.URLError, OSError) as error:
        reason = error.reason if isinstance(error, urllib.error.URLError) else error
        raise AppError(f"cannot reach the Supervisor at {supervisor}: {_reason(reason)}") from None
    return _broker(body)


def _http_problem(error: urllib.error.HTTPError) -> str:
    """What an HTTP error from ``/services/mqtt`` means for the user."""
    message = ""
    # The Supervisor's error body is {"result": "error", "message": ...}; anything else is noise.
    with contextlib.suppress(ValueError, AttributeError, OSError):
        message = str(json.loads(error.read()).get("message") or "")
    said = f" ({message})" if message else ""
    if error.code in (401, 403):
        return f"the Supervisor refused this App's token (HTTP {error.code}){said}"
    return (
        f"the Supervisor provides no MQTT broker (HTTP {error.code}){said}: install and start "
        "the Mosquitto broker App, or add another MQTT service"
    )


def _broker(body: bytes) -> Broker:
    """The ``data`` of the Supervisor's answer as a :class:`Broker`."""
    try:
        document = json.loads(body)
    except ValueError:
        raise AppError("the Supervisor's answer about MQTT is not JSON") from None
    data = document.get("data") if isinstance(document, dict) else None
    if not isinstance(data, dict) or not isinstance(data.get("host"), str) or not data["host"]:
        raise AppError("the Supervisor provides no MQTT broker (its answer has no host)")
    try:
        port = int(data.get("port", 1883))
    except (TypeError, ValueError):
        raise AppError("the Supervisor's MQTT port is not a number") from None
    protocol = str(data.get("protocol") or "3.1.1")
    # redlight speaks "5" or "3.1.1"; the Supervisor says "5" or "5.0" for the former.
    protocol = "5" if protocol.startswith("5") else protocol
    if protocol not in ("5", "3.1.1"):
        raise AppError(f"the Supervisor's broker speaks MQTT {protocol}: redlight needs 3.1.1 or 5")
    return Broker(
        host=data["host"],
        port=port,
        ssl=bool(data.get("ssl")),
        protocol=protocol,
        username=data.get("username") or None,
        password=data.get("password") or None,
    )


# ------------------------------------------------------------------ the launch


@dataclass(frozen=True)
class Launch:
    """What to exec: the daemon's argument list and its whole environment."""

    argv: tuple[str, ...]
    env: Mapping[str, str]


@dataclass(frozen=True)
class AppPaths:
    """Where the App reads and writes; the Supervisor's layout unless a test says otherwise."""

    options: Path = DATA_DIR / "options.json"
    data_dir: Path = DATA_DIR
    config_dir: Path = CONFIG_DIR
    #: The parent of the private credential directory; ``None``: the system's temp dir.
    credentials_dir: Path | None = None


def prepare(
    options: Options,
    broker: Broker,
    *,
    paths: AppPaths,
    environ: Mapping[str, str],
) -> Launch:
    """Write the config (when the options hold it) and the credential; return the launch."""
    user_config = paths.config_dir / "config.toml"
    if user_config.exists():
        if options.panels:
            raise AppError(
                f"options.panels: {user_config} exists and sets the panels; "
                "leave the App's panel list empty, or remove that file",
                EXIT_CONFIG,
            )
        config = user_config
    elif options.panels:
        config = paths.data_dir / "config.toml"
        config.write_text(panels_toml(options.panels), encoding="utf-8")
    else:
        raise AppError(
            "no panels: add one in the App's Configuration tab, "
            f"or write {user_config} (see the App's documentation)",
            EXIT_CONFIG,
        )
    # The daemon never talks to the Supervisor: its token (and the old name) stays here.
    env = {key: value for key, value in environ.items() if key not in _TOKENS}
    env.update(_broker_env(broker))
    env["REDLIGHT_STORAGE__PATH"] = str(paths.data_dir / "redlight.db")
    if broker.password is not None:
        env["CREDENTIALS_DIRECTORY"] = str(
            _write_credential(paths.credentials_dir, broker.password)
        )
    argv = (sys.executable, "-m", "redlight", "run", "--config", str(config))
    return Launch(argv=(*argv, "--log-level", options.log_level), env=env)


def _broker_env(broker: Broker) -> dict[str, str]:
    """The broker as ``REDLIGHT_MQTT__*`` variables: they win over the config file's."""
    env = {"REDLIGHT_MQTT__URL": broker.url, "REDLIGHT_MQTT__PROTOCOL": broker.protocol}
    if broker.username is not None:
        env["REDLIGHT_MQTT__USERNAME"] = broker.username
    return env


def _write_credential(parent: Path | None, password: str) -> Path:
    """A fresh 0700 directory holding ``mqtt__password`` (0600): the daemon reads it at start."""
    directory = Path(tempfile.mkdtemp(prefix="redlight-credentials-", dir=parent))
    secret = directory / "mqtt__password"
    descriptor = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(password)
    return directory


def _reason(error: object) -> str:
    return getattr(error, "strerror", None) or str(error)


def main(argv: Sequence[str] | None = None) -> int:
    """Read the options, ask the Supervisor, exec ``redlight run``; a failure is one line."""
    args = _parser().parse_args(argv)
    paths = AppPaths(
        options=args.options, data_dir=args.data, config_dir=args.config_dir,
        credentials_dir=args.credentials_dir,
    )  # fmt: skip
    try:
        options = read_options(paths.options)
        broker = fetch_broker(args.supervisor, os.environ.get("SUPERVISOR_TOKEN"))
        launch = prepare(options, broker, paths=paths, environ=os.environ)
    except AppError as error:
        sys.stderr.write(f"redlight app: {error}\n")
        return error.code
    user = f"user {broker.username}" if broker.username else "no user"
    sys.stderr.write(
        f"redlight app: broker {broker.url} (MQTT {broker.protocol}, {user}), "
        f"config {launch.argv[5]}, log level {options.log_level}\n"
    )
    sys.stderr.flush()
    return _exec(launch)


def _exec(launch: Launch) -> NoReturn:
    """Become the daemon. exec, not a child: the Supervisor's SIGTERM reaches it (rule 9)."""
    os.execve(launch.argv[0], list(launch.argv), dict(launch.env))  # noqa: S606 - fixed argv


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m redlight.app",
        description="Home Assistant App entry point: options and broker in, 'redlight run' out.",
    )
    parser.add_argument("--options", type=Path, default=DATA_DIR / "options.json")
    parser.add_argument("--data", type=Path, default=DATA_DIR, help="persistent directory")
    parser.add_argument("--config-dir", type=Path, default=CONFIG_DIR, help="addon_config mount")
    parser.add_argument("--credentials-dir", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--supervisor", default=SUPERVISOR_URL, help="the Supervisor's URL")
    return parser


if __name__ == "__main__":
    sys.exit(main())
