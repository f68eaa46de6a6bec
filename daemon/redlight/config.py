"""redlight's configuration: one TOML file, environment overrides and credential files.

Every model is frozen and forbids unknown keys, so a typo is an error rather than a setting
silently ignored. The 15-minute ceiling is :data:`HARD_MAX_ON`, a constant the file can only
lower (safety rule 1).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from datetime import date, time, timedelta
from pathlib import Path
from typing import Annotated, Any, Final, Literal
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

from redlight.durations import format_duration, parse_duration
from redlight.presets import PlugConfig, build_plug

#: Safety rule 1: no session, step, schedule or command may keep a panel on longer than this.
HARD_MAX_ON: Final = timedelta(minutes=15)
#: Where ``redlight`` looks for its config when neither ``--config`` nor $REDLIGHT_CONFIG says.
DEFAULT_CONFIG_PATH: Final = Path("/etc/redlight/config.toml")
#: Ids of panels, routines and schedules: they become MQTT topic levels and entity ids.
ID_PATTERN: Final = re.compile(r"[a-z0-9_]+")
#: A dose needing longer than this is refused outright (and never overflows a timedelta).
LONGEST_DOSE_S: Final = 24 * 3600.0

Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


def _plain_topic(value: str, what: str) -> str:
    if not value or value.startswith("/") or value.endswith("/"):
        raise ValueError(
            f"{what} must be a topic without a leading or trailing '/' (got {value!r})"
        )
    if "+" in value or "#" in value:
        raise ValueError(f"{what} must not contain the MQTT wildcards '+' or '#' (got {value!r})")
    return value


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class MqttConfig(_Model):
    """How to reach the broker, and where redlight's own topics live."""

    url: str = "mqtt://127.0.0.1:1883"
    username: str | None = None
    password: SecretStr | None = None
    client_id: str = Field(default="redlight", min_length=1, max_length=64)
    base_topic: str = "redlight"
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_insecure: bool = False

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if not re.fullmatch(r"mqtts?://[^/:\s]+(:\d{1,5})?/?", value):
            # A password written into the URL (user:password@host) is never echoed back.
            shown = "***@" + value.rsplit("@", 1)[1] if "@" in value else value
            raise ValueError(
                f"must look like mqtt://host:1883 or mqtts://host:8883 (got {shown!r})"
            )
        return value

    @field_validator("base_topic")
    @classmethod
    def _topic(cls, value: str) -> str:
        return _plain_topic(value, "base_topic")

    @property
    def tls(self) -> bool:
        """Whether the connection uses TLS."""
        return self.url.startswith("mqtts://")


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
    plug: PlugConfig


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
    if not ID_PATTERN.fullmatch(key):
        raise ValueError(f"{_where((kind + 's', key))}: a {kind} id must use only a-z, 0-9 and '_'")


class Config(BaseSettings):
    """The whole configuration, validated as one frozen value."""

    model_config = SettingsConfigDict(
        frozen=True,
        extra="forbid",
        env_prefix="REDLIGHT_",
        env_nested_delimiter="__",
        case_sensitive=False,
    )

    mqtt: MqttConfig = MqttConfig()
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
        max_on = self.safety.max_on
        for key in self.panels:
            _check_id("panel", key)
        for key in self.routines:
            _check_id("routine", key)
        for key in self.schedules:
            _check_id("schedule", key)
        for key, panel in self.panels.items():
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
            if panel.min_power_w is not None and not plug.has_power:
                raise ValueError(
                    f"panels.{key}.min_power_w: the {panel.plug.preset} preset does not report "
                    "power (tasmota, shelly_gen2 and zigbee2mqtt plugs that measure it do)"
                )
        for key, routine in self.routines.items():
            self._check_routine(key, routine)
        for key, schedule in self.schedules.items():
            where = f"schedules.{key}"
            if schedule.routine is not None and schedule.routine not in self.routines:
                raise ValueError(f"{where}.routine: no routine named {schedule.routine!r}")
            for name in schedule.panels or ():
                if name not in self.panels:
                    raise ValueError(f"{where}.panels: no panel named {name!r}")
            if schedule.duration is not None and schedule.duration > max_on:
                raise ValueError(
                    f"{where}.duration: {format_duration(schedule.duration)} is more than "
                    f"safety.max_on ({format_duration(max_on)})"
                )
        return self

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
    try:
        return Config(**raw)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error)) from None


def _reason(error: BaseException) -> str:
    return getattr(error, "strerror", None) or str(error)


_MESSAGES: Final[Mapping[str, str]] = {
    "extra_forbidden": "unknown key",
    "missing": "missing (this key is required)",
}


def format_validation_error(error: ValidationError) -> list[str]:
    """One line per problem, ``where: what``; secrets never appear (inputs are not echoed)."""
    lines: list[str] = []
    for item in error.errors(include_url=False, include_input=False):
        where = _where(item["loc"])
        message = _MESSAGES.get(item["type"], item["msg"])
        message = message.removeprefix("Value error, ")
        if message.startswith(where.rsplit(".", 1)[0] + ".") or not where:
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
