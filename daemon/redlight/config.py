"""redlight's configuration: one TOML file, environment overrides and credential files.

Every model is frozen and forbids unknown keys, so a typo is an error rather than a setting
silently ignored. The 15-minute ceiling is :data:`HARD_MAX_ON`, a constant the file can only
lower (safety rule 1).
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import socket
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date, time, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal, TypeAlias
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NestedSecretsSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from redlight.areas import Area, group_areas
from redlight.durations import format_duration, parse_duration
from redlight.presets import PlugConfig, build_plug

if TYPE_CHECKING:
    from redlight.messages import Topics

#: Safety rule 1: no session, step, schedule or command may keep a panel on longer than this.
HARD_MAX_ON: Final = timedelta(minutes=15)
#: Where ``redlight`` looks for its config when neither ``--config`` nor $REDLIGHT_CONFIG says.
DEFAULT_CONFIG_PATH: Final = Path("/etc/redlight/config.toml")
#: Ids of panels, routines and schedules: they become MQTT topic levels and entity ids.
ID_PATTERN: Final = re.compile(r"[a-z0-9_]+")
#: The longest id: Home Assistant keeps entity ids within 255 characters (cutting longer ones
#: short, so two long ids could collide), and an id appears in its entities' ids with the
#: domain and the entity's own words around it.
MAX_ID_LENGTH: Final = 64
#: MQTT's limit on a topic name: its length is a two-byte prefix (MQTT 3.1.1 section 1.5.3).
MAX_TOPIC_BYTES: Final = 65_535
#: The longest host name DNS allows (RFC 1035); one label is at most 63 characters.
MAX_HOST_LENGTH: Final = 253
#: Characters MQTT forbids (U+0000) or says not to use in a topic, which mosquitto refuses by
#: closing the connection: control characters, UTF-16 surrogates and non-characters.
_UNUSABLE_IN_TOPIC: Final = re.compile(
    "[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufdd0-\ufdef"
    + "".join(chr(plane << 16 | 0xFFFE) + chr(plane << 16 | 0xFFFF) for plane in range(17))
    + "]"
)
_HOST_LABEL: Final = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_SCHEMES: Final = {"mqtt": (1883, False), "mqtts": (8883, True)}
#: A key longer than this is cut short in a problem's "where".
_LONGEST_SHOWN_KEY: Final = 100
#: A dose needing longer than this is refused outright (and never overflows a timedelta).
LONGEST_DOSE_S: Final = 24 * 3600.0

Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


def topic_problem(topic: str) -> str | None:
    """Why a broker would refuse ``topic`` as a topic name (to publish on), or ``None``."""
    found = _UNUSABLE_IN_TOPIC.search(topic)
    if found is not None:
        return (
            f"must not contain the character U+{ord(found.group()):04X} "
            "(MQTT forbids NUL, control characters and non-characters in topics)"
        )
    if "+" in topic or "#" in topic:
        return "must not contain the MQTT wildcards '+' or '#'"
    size = len(topic.encode("utf-8"))
    if size > MAX_TOPIC_BYTES:
        return f"makes a topic of {size:,} bytes, more than the {MAX_TOPIC_BYTES:,} MQTT allows"
    return None


def _shown(value: str, limit: int = 40) -> str:
    """``value`` quoted, cut short when long, so an error stays one readable line."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value):,} characters)"


def _plain_topic(value: str, what: str) -> str:
    if not value or value.startswith("/") or value.endswith("/"):
        raise ValueError(
            f"{what} must be a topic without a leading or trailing '/' (got {_shown(value)})"
        )
    problem = topic_problem(value)
    if problem is not None:
        raise ValueError(f"{what} {problem} (got {_shown(value)})")
    return value


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    """Where the broker is, from ``mqtt.url``."""

    host: str
    port: int
    tls: bool


def parse_broker_url(url: str) -> BrokerAddress:
    """Split ``mqtt[s]://host[:port]``; the ``ValueError`` says what is wrong, never the URL.

    The URL is never echoed, and user-info in any form (``user@``, ``user:password@``,
    ``:password@``, a token, percent-encoded) is refused: a credential written there would end
    up in logs and in ``redlight status``. Credentials go in ``mqtt.username``/``password``.
    """
    scheme, separator, rest = url.partition("://")
    if not separator or scheme.lower() not in _SCHEMES:
        raise ValueError("must start with mqtt:// or mqtts://, like mqtt://host:1883")
    if "@" in rest or "%40" in rest.lower():
        raise ValueError(
            "must not hold credentials (nothing before an '@'): "
            "set mqtt.username and mqtt.password instead"
        )
    if any(c.isspace() for c in url) or _UNUSABLE_IN_TOPIC.search(url):
        raise ValueError("must not contain spaces or control characters")
    if "%" in rest:
        raise ValueError("must not be percent-encoded: write the host name as it is")
    end = min((i for i in map(rest.find, "/?#") if i >= 0), default=len(rest))
    netloc, tail = rest[:end], rest[end:]
    if tail not in ("", "/"):
        raise ValueError("must be only mqtt[s]://host[:port], without a path, query or fragment")
    host, port_text = _split_host_port(netloc)
    default_port, tls = _SCHEMES[scheme.lower()]
    if port_text is None:
        return BrokerAddress(host, default_port, tls)
    if not port_text.isascii() or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError("has a port that is not a number from 1 to 65535")
    return BrokerAddress(host, int(port_text), tls)


def _split_host_port(netloc: str) -> tuple[str, str | None]:
    """Host and port text of ``host[:port]`` or ``[ipv6][:port]``; ``ValueError`` if unusable."""
    if netloc.startswith("["):
        literal, bracket, after = netloc[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            raise ValueError("has an IPv6 address without its closing ']'")
        try:
            ipaddress.IPv6Address(literal)
        except ValueError:
            raise ValueError("has an IPv6 address in [...] that is not valid") from None
        return literal, after[1:] if after else None
    if netloc.count(":") > 1:
        raise ValueError("has an IPv6 address that needs brackets, like mqtt://[::1]:1883")
    host, colon, port = netloc.partition(":")
    if not host:
        raise ValueError("has no host name, like mqtt://broker.lan:1883")
    labels = host.removesuffix(".").split(".")
    if len(host) > MAX_HOST_LENGTH or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        raise ValueError(
            "has a host name that is not valid (letters, digits, '-' and '.', "
            f"at most {MAX_HOST_LENGTH} characters)"
        )
    return host, port if colon else None


def default_client_id(base_topic: str, hostname: str | None = None) -> str:
    """``redlight-<host>-<hash>``: unique per host and base topic, within MQTT's 23 characters.

    Two instances on one host with different base topics, or on two hosts, never share an id
    (the hash covers the whole host name and base topic, so cutting the host name short for
    the 23-character guidance cannot make two ids equal); a second ``redlight run`` of the same
    instance does, and the broker's take-over is what ``client_id_conflict`` reports.
    """
    host = hostname if hostname is not None else socket.gethostname()
    digest = hashlib.sha256(f"{host}\0{base_topic}".encode("utf-8", "replace")).hexdigest()
    short_host = re.sub(r"[^a-z0-9]", "", host.split(".")[0].lower())[:7] or "host"
    return f"redlight-{short_host}-{digest[:6]}"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


#: The MQTT protocol versions redlight speaks to the broker (plugs speak whatever they speak).
MqttProtocol: TypeAlias = Literal["5", "3.1.1"]


class MqttConfig(_Model):
    """How to reach the broker, and where redlight's own topics live."""

    url: str = "mqtt://127.0.0.1:1883"
    #: MQTT 5 by default; ``"3.1.1"`` for a broker that lacks it (the README's MQTT section).
    protocol: MqttProtocol = "5"
    username: str | None = None
    password: SecretStr | None = None
    base_topic: str = "redlight"
    #: Default: :func:`default_client_id` of this host and ``base_topic``.
    client_id: str = Field(min_length=1, max_length=64)
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_insecure: bool = False

    @model_validator(mode="before")
    @classmethod
    def _default_client_id(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and data.get("client_id") is None:
            base_topic = data.get("base_topic", "redlight")
            return {**data, "client_id": default_client_id(str(base_topic))}
        return data

    @field_validator("url")
    @classmethod
    def _broker_url(cls, value: str) -> str:
        parse_broker_url(value)
        return value

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol(cls, value: Any) -> Any:
        # ``protocol = 5`` in TOML is a number; it means the same as ``"5"``.
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return value

    @field_validator("base_topic")
    @classmethod
    def _topic(cls, value: str) -> str:
        return _plain_topic(value, "base_topic")

    @field_validator("client_id")
    @classmethod
    def _client_id(cls, value: str) -> str:
        # mosquitto refuses such an id at every CONNECT: the daemon would never get online.
        if _UNUSABLE_IN_TOPIC.search(value) or "+" in value or "#" in value:
            raise ValueError("must not contain control characters, '+' or '#'")
        return value

    @model_validator(mode="after")
    def _credentials(self) -> MqttConfig:
        if self.password is not None and self.username is None:
            raise ValueError(
                "mqtt.password: needs mqtt.username too (MQTT sends no password without one)"
            )
        if self.tls_key_file is not None and self.tls_cert_file is None:
            raise ValueError("mqtt.tls_key_file: needs mqtt.tls_cert_file (the certificate)")
        return self

    @property
    def address(self) -> BrokerAddress:
        """Host, port and TLS flag from :attr:`url`."""
        return parse_broker_url(self.url)

    @property
    def tls(self) -> bool:
        """Whether the connection uses TLS."""
        return self.address.tls


class HomeAssistantConfig(_Model):
    """Home Assistant MQTT discovery."""

    enabled: bool = True
    discovery_prefix: str = "homeassistant"
    status_topic: str = "homeassistant/status"

    @field_validator("discovery_prefix", "status_topic")
    @classmethod
    def _topic(cls, value: str) -> str:
        return _plain_topic(value, "a topic")


def _parse_quiet_hours(value: object) -> tuple[time, time] | None:
    if value is None or isinstance(value, tuple):
        return value
    match = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*", str(value))
    if not match:
        raise ValueError(f"must look like '22:30-06:00' (got {value!r})")
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    if h1 > 23 or h2 > 23 or m1 > 59 or m2 > 59:
        raise ValueError(f"hours must be 0-23 and minutes 0-59 (got {value!r})")
    return time(h1, m1), time(h2, m2)


class SafetyConfig(_Model):
    """Limits that keep every panel's on-time bounded (SPEC §3)."""

    max_on: Duration = HARD_MAX_ON
    cooldown: Duration = timedelta(0)
    daily_max: Duration | None = None
    confirm_timeout: Duration = timedelta(seconds=5)
    failsafe_margin: Duration = timedelta(seconds=30)
    #: The ceiling is on light, not on sessions: ON time that follows less than ``min_off`` of
    #: OFF counts as the same exposure, which may not exceed ``max_on`` in total.
    min_off: Duration = timedelta(minutes=10)
    #: Every plug is asked for its state this often (spread over the interval), so an ON whose
    #: report was lost is found within it.
    poll_interval: Duration = timedelta(minutes=1)
    #: A paused session (its panel off) that is not resumed within this ends as
    #: ``pause_timeout``: nobody is left with a session that switches a panel on hours later.
    max_pause: Duration = timedelta(minutes=10)
    quiet_hours: Annotated[tuple[time, time] | None, BeforeValidator(_parse_quiet_hours)] = None

    @field_validator("max_on")
    @classmethod
    def _within_ceiling(cls, value: timedelta) -> timedelta:
        if value > HARD_MAX_ON:
            raise ValueError(f"must be at most 15 minutes (got {format_duration(value)})")
        if value < timedelta(seconds=1):
            raise ValueError(f"must be at least 1 second (got {format_duration(value)})")
        return value

    @field_validator("confirm_timeout")
    @classmethod
    def _confirm_bounds(cls, value: timedelta) -> timedelta:
        if not timedelta(milliseconds=100) <= value <= timedelta(seconds=60):
            raise ValueError(f"must be between 0.1s and 60s (got {format_duration(value)})")
        return value

    @field_validator("failsafe_margin")
    @classmethod
    def _margin_bounds(cls, value: timedelta) -> timedelta:
        if value > timedelta(minutes=5):
            raise ValueError(f"must be at most 5 minutes (got {format_duration(value)})")
        return value

    @field_validator("min_off")
    @classmethod
    def _min_off_bounds(cls, value: timedelta) -> timedelta:
        if not timedelta(minutes=1) <= value <= timedelta(hours=24):
            raise ValueError(f"must be between 1m and 24h (got {format_duration(value)})")
        return value

    @field_validator("poll_interval")
    @classmethod
    def _poll_bounds(cls, value: timedelta) -> timedelta:
        if not timedelta(seconds=5) <= value <= timedelta(minutes=5):
            raise ValueError(f"must be between 5s and 5m (got {format_duration(value)})")
        return value

    @field_validator("max_pause")
    @classmethod
    def _pause_bounds(cls, value: timedelta) -> timedelta:
        if not timedelta(seconds=10) <= value <= timedelta(hours=1):
            raise ValueError(f"must be between 10s and 1h (got {format_duration(value)})")
        return value

    @field_validator("daily_max")
    @classmethod
    def _daily_positive(cls, value: timedelta | None) -> timedelta | None:
        if value is not None and value <= timedelta(0):
            raise ValueError("must be more than zero; leave it out for no daily limit")
        return value


class StorageConfig(_Model):
    """Where the session history lives."""

    path: Path = Path("/var/lib/redlight/redlight.db")


class PanelConfig(_Model):
    """One LED panel and the smart plug that powers it."""

    name: str | None = None
    area: str | None = None
    default_duration: Duration | None = None
    irradiance_mw_cm2: float | None = Field(default=None, gt=0, le=1000)
    #: Optional: a session whose plug passes less than this a few seconds after ON ends as
    #: ``no_power`` (the panel's own switch is off); more than this after a confirmed OFF
    #: raises ``relay_stuck``. Needs a plug that measures power.
    min_power_w: float | None = Field(default=None, gt=0, le=10000)
    #: Optional: the on-time to reach each week (Monday to Sunday, by the local date a session
    #: started). A goal, shown in Home Assistant and ``redlight history``; never a limit.
    weekly_goal: Duration | None = None
    plug: PlugConfig

    @field_validator("weekly_goal")
    @classmethod
    def _goal_bounds(cls, value: timedelta | None) -> timedelta | None:
        if value is not None and not timedelta(0) < value <= timedelta(days=7):
            raise ValueError(
                f"must be more than zero and at most a week (got {format_duration(value)}); "
                "leave it out for no weekly goal"
            )
        return value


class RoutineStep(_Model):
    """A routine step: switch panels for a duration or a dose, or pause with a prompt."""

    panels: tuple[str, ...] | None = None
    duration: Duration | None = None
    dose_j_cm2: float | None = Field(default=None, gt=0)
    pause: Duration | None = None
    prompt: str | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> RoutineStep:
        if self.pause is not None:
            if self.panels is not None or self.duration is not None or self.dose_j_cm2 is not None:
                raise ValueError("a pause step takes only 'pause' and 'prompt'")
            return self
        if not self.panels:
            raise ValueError("a step needs 'panels' (with 'duration' or 'dose_j_cm2') or 'pause'")
        if (self.duration is None) == (self.dose_j_cm2 is None):
            raise ValueError("a panel step needs exactly one of 'duration' or 'dose_j_cm2'")
        return self


class RoutineConfig(_Model):
    """A named sequence of steps."""

    name: str | None = None
    steps: tuple[RoutineStep, ...] = Field(min_length=1)


class ScheduleConfig(_Model):
    """When a routine or a plain session starts by itself."""

    name: str | None = None
    routine: str | None = None
    panels: tuple[str, ...] | None = None
    duration: Duration | None = None
    cron: str
    timezone: str | None = None
    start_date: date | None = None
    end_date: date | None = None
    mode: Literal["start", "offer"] = "start"

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        from apscheduler.triggers.cron import CronTrigger

        if len(value.split()) != 5:
            raise ValueError(f"must be a 5-field cron expression (got {value!r})")
        try:
            CronTrigger.from_crontab(value, timezone="UTC")
        except ValueError as error:
            raise ValueError(f"is not a valid cron expression ({error})") from None
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @model_validator(mode="after")
    def _what(self) -> ScheduleConfig:
        if (self.routine is None) == (self.panels is None):
            raise ValueError("a schedule needs either 'routine' or 'panels' (with 'duration')")
        if self.routine is not None and self.duration is not None:
            raise ValueError("'duration' goes with 'panels', not with 'routine'")
        if self.start_date and self.end_date and self.end_date < self.start_date:
            raise ValueError("'end_date' is before 'start_date'")
        return self


def _check_id(kind: str, key: str) -> None:
    where = _where((kind + "s", key))
    if not ID_PATTERN.fullmatch(key):
        raise ValueError(f"{where}: a {kind} id must use only a-z, 0-9 and '_'")
    if len(key) > MAX_ID_LENGTH:
        raise ValueError(
            f"{where}: a {kind} id must be at most {MAX_ID_LENGTH} characters (it is {len(key):,}; "
            "Home Assistant builds its entity ids from it)"
        )


class Config(BaseSettings):
    """The whole configuration, validated as one frozen value."""

    model_config = SettingsConfigDict(
        frozen=True,
        extra="forbid",
        env_prefix="REDLIGHT_",
        env_nested_delimiter="__",
        case_sensitive=False,
    )

    mqtt: MqttConfig = Field(default_factory=lambda: MqttConfig.model_validate({}))
    homeassistant: HomeAssistantConfig = HomeAssistantConfig()
    safety: SafetyConfig = SafetyConfig()
    storage: StorageConfig = StorageConfig()
    panels: dict[str, PanelConfig] = Field(default_factory=dict)
    routines: dict[str, RoutineConfig] = Field(default_factory=dict)
    schedules: dict[str, ScheduleConfig] = Field(default_factory=dict)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Environment first, then credential files, then the TOML file (passed as init)."""
        sources: list[PydanticBaseSettingsSource] = [env_settings]
        credentials = os.environ.get("CREDENTIALS_DIRECTORY")
        if credentials:
            sources.append(
                NestedSecretsSettingsSource(
                    file_secret_settings,
                    secrets_dir=credentials,
                    secrets_dir_missing="ok",
                    secrets_nested_delimiter="__",
                    secrets_prefix="",
                    env_prefix="",
                )
            )
        sources.append(init_settings)
        return tuple(sources)

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        """The checks that need more than one section; the first failure is the one reported."""
        for kind, keys in (
            ("panel", self.panels),
            ("routine", self.routines),
            ("schedule", self.schedules),
        ):
            for key in keys:
                _check_id(kind, key)
        for key, panel in self.panels.items():
            self._check_panel(key, panel)
        for key, routine in self.routines.items():
            self._check_routine(key, routine)
        for key, schedule in self.schedules.items():
            self._check_schedule(key, schedule)
        for where, topic in self._topics():
            problem = topic_problem(topic)
            if problem is not None:
                raise ValueError(f"{where}: {problem} ({_shown(topic)})")
        return self

    def _check_panel(self, key: str, panel: PanelConfig) -> None:
        """Safety rule 1 for a panel's default, and a plug its preset can build."""
        max_on = self.safety.max_on
        if panel.default_duration is not None and panel.default_duration > max_on:
            raise ValueError(
                f"panels.{key}.default_duration: {format_duration(panel.default_duration)} "
                f"is more than safety.max_on ({format_duration(max_on)})"
            )
        if panel.default_duration is not None and panel.default_duration < timedelta(seconds=1):
            raise ValueError(f"panels.{key}.default_duration: must be at least 1 second")
        try:
            plug = build_plug(key, panel.plug, base_topic=self.mqtt.base_topic)
        except ValueError as error:
            raise ValueError(f"panels.{key}.{error}") from None
        daily_max = self.safety.daily_max
        if panel.weekly_goal is not None and daily_max and panel.weekly_goal > 7 * daily_max:
            raise ValueError(
                f"panels.{key}.weekly_goal: {format_duration(panel.weekly_goal)} cannot be "
                f"reached with safety.daily_max {format_duration(daily_max)} "
                f"(at most {format_duration(7 * daily_max)} a week)"
            )
        if panel.min_power_w is not None and not plug.has_power:
            raise ValueError(
                f"panels.{key}.min_power_w: the {panel.plug.preset} preset does not report "
                "power (tasmota, shelly_gen2 and zigbee2mqtt plugs that measure it do)"
            )

    def _check_schedule(self, key: str, schedule: ScheduleConfig) -> None:
        """A schedule names what exists, and safety rule 1 holds for its duration."""
        where = f"schedules.{key}"
        if schedule.routine is not None and schedule.routine not in self.routines:
            raise ValueError(f"{where}.routine: no routine named {schedule.routine!r}")
        for name in schedule.panels or ():
            if name not in self.panels:
                raise ValueError(f"{where}.panels: no panel named {name!r}")
        max_on = self.safety.max_on
        if schedule.duration is not None and schedule.duration > max_on:
            raise ValueError(
                f"{where}.duration: {format_duration(schedule.duration)} is more than "
                f"safety.max_on ({format_duration(max_on)})"
            )

    def _topics(self) -> Iterator[tuple[str, str]]:
        """Every topic redlight publishes or subscribes to, with the setting that shapes it.

        The base topic's own topics come first: when it is what makes a topic too long, the
        error names ``mqtt.base_topic`` rather than the first panel. A wildcard filter is
        checked with its '+' as the longest id it stands for.
        """
        from redlight.hass import device_id, discovery_topic
        from redlight.messages import Topics

        base = self.mqtt.base_topic
        topics = Topics(base)
        longest = "x" * MAX_ID_LENGTH
        for topic in (topics.status, topics.daemon_set, topics.daemon_state, topics.daemon_event):
            yield "mqtt.base_topic", topic
        for topic in topics.command_filters():
            yield "mqtt.base_topic", topic.replace("+", longest)
        if self.homeassistant.enabled:
            yield "homeassistant.discovery_prefix", discovery_topic(self, device_id(base))
            yield "homeassistant.status_topic", self.homeassistant.status_topic
        for key, panel in self.panels.items():
            yield from self._panel_topics(topics, key, panel)
        for area in self.areas.values():
            yield f"panels.{area.panels[0]}.area", topics.area_state(area.slug)
        for key in self.routines:
            yield f"routines.{key}", topics.routine_set(key)
        for key in self.schedules:
            yield f"schedules.{key}", topics.schedule_set(key)
            yield f"schedules.{key}", topics.schedule_state(key)

    def _panel_topics(
        self, topics: Topics, key: str, panel: PanelConfig
    ) -> Iterator[tuple[str, str]]:
        """A panel's own topics, its discovery topic and every topic its plug is reached on."""
        from redlight.hass import discovery_topic, panel_device_id

        for topic in (
            topics.panel_state(key),
            topics.panel_set(key),
            topics.panel_duration_set(key),
            topics.panel_event(key),
        ):
            yield f"panels.{key}", topic
        base = self.mqtt.base_topic
        if self.homeassistant.enabled:
            yield f"panels.{key}", discovery_topic(self, panel_device_id(base, key))
        plug = build_plug(key, panel.plug, base_topic=base)
        sent = [plug.command_topic, plug.failsafe_topic or ""]
        sent += [m.topic for m in (*plug.state_request, *plug.power_request)]
        for topic in [*sent, *plug.subscriptions]:
            if topic:
                yield f"panels.{key}.plug", topic

    def _check_routine(self, key: str, routine: RoutineConfig) -> None:
        """Safety rule 1: a routine may not keep a panel on longer than max_on in total."""
        totals: dict[str, timedelta] = {}
        for number, step in enumerate(routine.steps, start=1):
            where = f"routines.{key}.steps[{number}]"
            for panel_id in step.panels or ():
                panel = self.panels.get(panel_id)
                if panel is None:
                    raise ValueError(f"{where}.panels: no panel named {panel_id!r}")
                try:
                    length = self.step_duration(step, panel_id)
                except ValueError as error:
                    raise ValueError(f"{where}.dose_j_cm2: {error}") from None
                if length is None:
                    raise ValueError(
                        f"{where}.dose_j_cm2: panel {panel_id!r} has no irradiance_mw_cm2, "
                        "so a dose cannot become a duration"
                    )
                totals[panel_id] = totals.get(panel_id, timedelta(0)) + length
        for panel_id, total in totals.items():
            if total > self.safety.max_on:
                raise ValueError(
                    f"routines.{key}: keeps panel {panel_id!r} on for {format_duration(total)} "
                    f"in total, more than safety.max_on ({format_duration(self.safety.max_on)})"
                )

    def step_duration(self, step: RoutineStep, panel_id: str) -> timedelta | None:
        """How long a routine step keeps a panel on; ``None`` if a dose has no irradiance."""
        if step.duration is not None:
            return step.duration
        irradiance = self.panels[panel_id].irradiance_mw_cm2
        if step.dose_j_cm2 is None or irradiance is None:
            return None
        return dose_to_duration(step.dose_j_cm2, irradiance)

    def panel_name(self, panel_id: str) -> str:
        """A panel's display name: its ``name``, else its id made readable ("Hip left")."""
        return self.panels[panel_id].name or panel_id.replace("_", " ").capitalize()

    @property
    def areas(self) -> dict[str, Area]:
        """The areas panels are aimed at, by slug, in config order (:mod:`redlight.areas`)."""
        return group_areas((key, panel.area) for key, panel in self.panels.items())

    @property
    def offers(self) -> bool:
        """Some schedule asks first (``mode = "offer"``): ``<b>/offer`` and Accept exist."""
        return any(s.mode == "offer" for s in self.schedules.values())

    def default_duration(self, panel_id: str) -> timedelta:
        """A panel's configured default session length (10 minutes, or max_on if lower)."""
        configured = self.panels[panel_id].default_duration
        return configured or min(timedelta(minutes=10), self.safety.max_on)


def dose_to_duration(dose_j_cm2: float, irradiance_mw_cm2: float) -> timedelta:
    """Seconds needed for a dose: J/cm² x 1000 / (mW/cm²); ``ValueError`` beyond a day."""
    seconds = dose_j_cm2 * 1000.0 / irradiance_mw_cm2
    if not seconds <= LONGEST_DOSE_S:  # also refuses inf, before timedelta overflows
        raise ValueError(
            f"{dose_j_cm2:g} J/cm² at {irradiance_mw_cm2:g} mW/cm² needs more than a day"
        )
    return timedelta(seconds=seconds)


class ConfigError(Exception):
    """The configuration is unusable; ``problems`` holds one line per problem, with where."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The config file to use: ``--config``, else $REDLIGHT_CONFIG, else the default."""
    if explicit:
        return Path(explicit)
    from_env = os.environ.get("REDLIGHT_CONFIG")
    return Path(from_env) if from_env else DEFAULT_CONFIG_PATH


def _toml_hint(file: Path, error: tomllib.TOMLDecodeError) -> str:
    """TOML 1.0 (Python's tomllib) wants an inline table on one line: say so when that is it."""
    found = re.search(r"at line (\d+)", str(error))
    if found is None:
        return ""
    try:
        text = file.read_text(encoding="utf-8").splitlines()[int(found.group(1)) - 1]
    except (OSError, IndexError, UnicodeDecodeError):
        return ""
    if text.count("{") > text.count("}"):
        return " (an inline table { ... } must fit on one line; or use a [panels.<id>.plug] table)"
    return ""


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read, merge and validate the configuration; raise :class:`ConfigError` if unusable."""
    file = config_path(path)
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"{file}: config file not found"]) from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError([f"{file}: cannot read the config file ({_reason(error)})"]) from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError([f"{file}: not valid TOML: {error}{_toml_hint(file, error)}"]) from None
    except RecursionError:  # tomllib recurses into nested arrays and inline tables
        raise ConfigError([f"{file}: not valid TOML: nested too deeply"]) from None
    # pydantic-settings reads keys starting with "_" as its own options (_env_file,
    # _secrets_dir, _cli_parse_args, ...): from the file they are unknown keys like any other.
    private = [key for key in raw if key.startswith("_")]
    if private:
        raise ConfigError([f"{_where((key,))}: unknown key" for key in private])
    unknown_sections = _unknown_env_sections(os.environ)
    if unknown_sections:
        raise ConfigError(unknown_sections)
    try:
        return Config(**raw)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, env=_env_names(os.environ))) from None


#: The prefix of every environment override (``REDLIGHT_<SECTION>__<KEY>``).
ENV_PREFIX: Final = "REDLIGHT_"


def _env_names(environ: Mapping[str, str]) -> dict[str, str]:
    """Each ``REDLIGHT_<SECTION>__<KEY>`` variable by the config key it sets
    (``mqtt.hots`` -> ``REDLIGHT_MQTT__HOTS``), so a problem can name the variable."""
    names: dict[str, str] = {}
    for name in environ:
        if name.upper().startswith(ENV_PREFIX) and "__" in name:
            names[".".join(name[len(ENV_PREFIX) :].lower().split("__"))] = name
    return names


def _unknown_env_sections(environ: Mapping[str, str]) -> list[str]:
    """``REDLIGHT_MQQT__URL``: a section that does not exist, which pydantic-settings would
    ignore without a word (it reads only the sections it knows)."""
    sections = list(Config.model_fields)
    problems = []
    for name in sorted(environ):
        if not name.upper().startswith(ENV_PREFIX) or "__" not in name:
            continue  # REDLIGHT_CONFIG, or a variable of some other tool
        section = name[len(ENV_PREFIX) :].split("__", 1)[0].lower()
        if section not in sections:
            problems.append(
                f"environment variable {name}: there is no section {section!r} "
                f"(sections: {', '.join(sections)})"
            )
    return problems


def _reason(error: BaseException) -> str:
    return getattr(error, "strerror", None) or str(error)


_MESSAGES: Final[Mapping[str, str]] = {
    "extra_forbidden": "unknown key",
    "missing": "missing (this key is required)",
}


def format_validation_error(
    error: ValidationError, *, env: Mapping[str, str] | None = None
) -> list[str]:
    """One line per problem, ``where: what``; secrets never appear (inputs are not echoed).

    ``env`` maps config keys to the environment variables that set them (see
    :func:`_env_names`): a problem with a key a variable set names the variable, since the
    key is nowhere in the file the user will look in.
    """
    lines: list[str] = []
    for item in error.errors(include_url=False, include_input=False):
        where = _where(item["loc"])
        message = _MESSAGES.get(item["type"], item["msg"])
        message = message.removeprefix("Value error, ")
        variable = (env or {}).get(".".join(str(part).lower() for part in item["loc"]))
        if variable is not None:
            lines.append(f"{where} (from the environment variable {variable}): {message}")
        elif message.startswith(where.rsplit(".", 1)[0] + ".") or not where:
            # A cross-check names its own location (e.g. "panels.x.default_duration: ...").
            lines.append(message)
        else:
            lines.append(f"{where}: {message}")
    return lines


def _where(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for part in loc:
        if isinstance(part, int):
            parts.append(f"[{part + 1}]")
        elif len(str(part)) > _LONGEST_SHOWN_KEY:
            # Cut short, so a 70,000-character key still makes one readable line.
            parts.append(f"[{_shown(str(part))}]")
        elif not str(part).isidentifier() and not ID_PATTERN.fullmatch(str(part)):
            # Quoted, so a key with spaces, dots or a newline stays on one readable line.
            parts.append(f"[{part!r}]")
        else:
            parts.append(("." if parts else "") + str(part))
    return "".join(parts).replace(".[", "[")


def describe(config: Config) -> dict[str, Any]:
    """A summary of the config without secrets, for logs."""
    return {
        "broker": config.mqtt.url,
        "base_topic": config.mqtt.base_topic,
        "panels": sorted(config.panels),
        "routines": sorted(config.routines),
        "schedules": sorted(config.schedules),
        "max_on": format_duration(config.safety.max_on),
    }
