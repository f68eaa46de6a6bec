"""The real Home Assistant core against the real daemon: discovery accepted, the switch works.

Black-box on both sides: redlight runs as ``redlight run`` and Home Assistant as
``python -m homeassistant`` with a config directory written here (MQTT as a config entry pointing
at the test's private mosquitto, plus automations that let the test drive and watch it over
MQTT). Needs a Python with Home Assistant installed, named by ``REDLIGHT_HA_PYTHON``
(``make test-ha`` builds one in ``.ha-venv``); without it the test is skipped, as on CI.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import pytest

from tests.integration.harness import Observer, Seen, System, is_off, is_on, until
from tests.mosquitto import free_port

HA_PYTHON_ENV: Final = "REDLIGHT_HA_PYTHON"
#: Home Assistant's start-up takes 30-90 s on a small shared machine; then up to a minute for
#: the every-minute schedule's offer: the whole test at most ~5 min.
HA_START_S: Final = 150.0
HA_STOP_S: Final = 60.0
TEST_BOUND_S: Final = 300.0
#: The panel's default session: short, so the natural end is part of the test.
SESSION_S: Final = 5

log = logging.getLogger(__name__)


def _ha_python() -> tuple[str | None, str]:
    """The Python that runs Home Assistant and its version, or None and why it cannot run."""
    python = os.environ.get(HA_PYTHON_ENV)
    if not python:
        return None, f"{HA_PYTHON_ENV} is not set (make test-ha sets it to a Home Assistant venv)"
    try:
        probe = subprocess.run(
            [python, "-c", "from homeassistant.const import __version__; print(__version__)"],
            capture_output=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return None, f"{HA_PYTHON_ENV}={python} cannot run: {error}"
    if probe.returncode != 0:
        return None, f"{HA_PYTHON_ENV}={python} cannot import homeassistant"
    return python, probe.stdout.decode().strip()


HA_PYTHON, HA_VERSION = _ha_python()
SKIP_REASON = HA_VERSION


def ha_at_least(year: int, month: int) -> bool:
    """The Home Assistant under test is release ``year.month`` or later."""
    assert HA_PYTHON is not None
    found = tuple(int(part) for part in HA_VERSION.split(".")[:2])
    return found >= (year, month)


pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(HA_PYTHON is None, reason=SKIP_REASON),
]

#: The panel, routine and schedule of the test: every kind of entity redlight announces.
PANEL: Final = "tasmota"
EXTRA_CONFIG: Final = """
[routines.warmup]
name = "Warm-up"
steps = [{ panels = ["tasmota"], duration = "3s" }]

[schedules.mornings]
name = "Mornings"
routine = "warmup"
cron = "0 7 * * *"
timezone = "UTC"
start_date = "2099-01-01"

[schedules.evening]
name = "Evening"
panels = ["tasmota"]
duration = "3s"
cron = "* * * * *"
timezone = "UTC"
mode = "offer"
"""
#: unique_id -> the entity id redlight proposes (``default_entity_id``).
EXPECTED_ENTITIES: Final = {
    "redlight_redlight_stop_all": "button.redlight_stop_all_sessions",
    "redlight_redlight_active": "sensor.redlight_active_sessions",
    "redlight_redlight_routine_warmup": "button.redlight_start_warm_up",
    "redlight_redlight_schedule_mornings": "switch.redlight_mornings_enabled",
    "redlight_redlight_schedule_mornings_next": "sensor.redlight_mornings_next_run",
    "redlight_redlight_schedule_evening": "switch.redlight_evening_enabled",
    "redlight_redlight_schedule_evening_next": "sensor.redlight_evening_next_run",
    "redlight_redlight_events": "event.redlight_events",
    "redlight_redlight_accept_offer": "button.redlight_accept_offer",
    "redlight_redlight__tasmota_session": "switch.redlight_tasmota_session",
    "redlight_redlight__tasmota_length": "number.redlight_tasmota_session_length",
    "redlight_redlight__tasmota_ends": "sensor.redlight_tasmota_session_ends",
    "redlight_redlight__tasmota_remaining": "sensor.redlight_tasmota_remaining",
    "redlight_redlight__tasmota_extend": "button.redlight_tasmota_extend_2_min",
    "redlight_redlight__tasmota_pause": "button.redlight_tasmota_pause",
    "redlight_redlight__tasmota_resume": "button.redlight_tasmota_resume",
    "redlight_redlight__tasmota_state": "sensor.redlight_tasmota_state",
    "redlight_redlight__tasmota_today": "sensor.redlight_tasmota_today",
    "redlight_redlight__tasmota_week": "sensor.redlight_tasmota_this_week",
    "redlight_redlight__tasmota_weekly_goal": "sensor.redlight_tasmota_weekly_goal",
    "redlight_redlight_area_left_hip": "sensor.redlight_left_hip_area_this_week",
    "redlight_redlight__tasmota_plug": "binary_sensor.redlight_tasmota_plug",
    "redlight_redlight__tasmota_events": "event.redlight_tasmota_session_events",
}


def entity_ids() -> dict[str, str]:
    """unique_id -> entity_id as the Home Assistant under test names them.

    ``default_entity_id`` arrived in 2025.10; before, Home Assistant drops it and names an
    entity after its device and its own name: the panel's ``tasmota_session``, and the same
    ``redlight_...`` ids as proposed for the redlight device's entities.
    """
    if ha_at_least(2025, 10):
        return dict(EXPECTED_ENTITIES)
    return {
        uid: entity.replace(".redlight_tasmota_", ".tasmota_")
        for uid, entity in EXPECTED_ENTITIES.items()
    }


#: The panel's area (``left hip``): its week's minutes on the redlight device.
AREA_WEEK: Final = "sensor.redlight_left_hip_area_this_week"
#: The one entity that is unavailable while no offer is open.
ACCEPT: Final = "redlight_redlight_accept_offer"
#: The session controls: each available only while it applies (none while idle).
CONTROLS: Final = tuple(
    f"redlight_redlight__tasmota_{key}" for key in ("extend", "pause", "resume")
)

#: Log lines in which Home Assistant rejects or mis-reads something redlight sent.
REJECTED: Final = re.compile(
    r"invalid config|extra keys not allowed|Unable to parse origin|illegal discovery topic"
    r"|Invalid MQTT device discovery payload|Error '.*' when processing MQTT discovery"
    r"|Invalid value for|Invalid state message|Invalid undecoded state|Ignoring invalid option"
    r"|Invalid event type|event_type` missing|No valid JSON event payload|Erroneous JSON"
    r"|is not valid together with device class|Template variable (warning|error)"
    r"|is not a Number|Unable to parse JSON",
    re.IGNORECASE,
)
#: Loggers whose every warning or error counts as a rejection.
WATCHED: Final = (
    "homeassistant.components.mqtt",
    "homeassistant.helpers.template",
    "homeassistant.helpers.entity",
    "homeassistant.components.sensor",
    "homeassistant.components.number",
    "homeassistant.components.switch",
    "homeassistant.components.binary_sensor",
    "homeassistant.components.button",
    "homeassistant.components.event",
    "homeassistant.components.automation",
)
_RECORD: Final = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)? (?P<level>[A-Z]+) \([^)]*\) \[(?P<logger>[^\]]+)\]"
)

CONFIGURATION_YAML: Final = """\
homeassistant:
  name: redlight test
  time_zone: UTC
  unit_system: metric
  latitude: 52.37
  longitude: 4.89
  elevation: 0
  currency: EUR
  country: NL
  language: en
http:
  server_host: 127.0.0.1
  server_port: {http_port}
logger:
  default: warning
  logs:
    homeassistant.components.mqtt: debug
automation: !include automations.yaml
automation examples: !include {examples}
"""

# Three automations make Home Assistant drivable and observable over MQTT: a switch.turn_on on
# request, every MQTT entity's state on request (a snapshot), and every later state change.
AUTOMATIONS_YAML: Final = """\
- id: redlight_test_turn_on
  alias: Turn on what the test names
  mode: queued
  triggers:
    - trigger: mqtt
      topic: test/turn_on
  actions:
    - action: switch.turn_on
      target:
        entity_id: "{{ trigger.payload }}"
- id: redlight_test_press
  alias: Press the button the test names
  mode: queued
  triggers:
    - trigger: mqtt
      topic: test/press
  actions:
    - action: button.press
      target:
        entity_id: "{{ trigger.payload }}"
- id: redlight_test_snapshot
  alias: Publish every MQTT entity's state
  mode: queued
  triggers:
    - trigger: mqtt
      topic: test/snapshot
  actions:
    - repeat:
        for_each: "{{ integration_entities('mqtt') }}"
        sequence:
          - action: mqtt.publish
            data:
              topic: "test/state/{{ repeat.item }}"
              payload: "{{ states(repeat.item) }}"
    - action: mqtt.publish
      data:
        topic: test/snapshot/done
        payload: "{{ trigger.payload }}"
- id: redlight_test_state_changed
  alias: Publish every MQTT entity's state change
  mode: queued
  max: 10000
  triggers:
    - trigger: event
      event_type: state_changed
  conditions:
    - condition: template
      value_template: >-
        {{ trigger.event.data.new_state is not none
           and trigger.event.data.entity_id in integration_entities('mqtt') }}
  actions:
    - action: mqtt.publish
      data:
        topic: "test/state/{{ trigger.event.data.entity_id }}"
        payload: "{{ trigger.event.data.new_state.state }}"
"""


# Home Assistant's MQTT schemas drop keys they do not know without a word (vol.REMOVE_EXTRA), so
# a misspelled option never reaches the log: validate each component with the installed core's
# own discovery schema and report what it dropped. Reads the device payloads as JSON on stdin.
DROPPED_KEYS_SCRIPT: Final = """\
import asyncio, importlib, json, sys, tempfile
from homeassistant.core import HomeAssistant
from homeassistant.helpers import frame

async def main():
    hass = HomeAssistant(tempfile.mkdtemp())
    frame.async_setup(hass)  # templates in the schemas want a running core's helpers
    dropped = {}
    for device in json.load(sys.stdin):
        for component in device["components"].values():
            config = {k: v for k, v in component.items() if k != "platform"}
            platform = importlib.import_module(
                "homeassistant.components.mqtt." + component["platform"]
            )
            kept = platform.DISCOVERY_SCHEMA(dict(config))
            if set(config) - set(kept):
                dropped[component["unique_id"]] = sorted(set(config) - set(kept))
    await hass.async_stop(force=True)
    print(json.dumps(dropped))

asyncio.run(main())
"""


async def dropped_keys(python: str, payloads: list[dict[str, Any]]) -> dict[str, list[str]]:
    """unique_id -> the keys Home Assistant's discovery schema silently drops."""
    process = await asyncio.create_subprocess_exec(
        python,
        "-c",
        DROPPED_KEYS_SCRIPT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate(json.dumps(payloads).encode())
    assert process.returncode == 0, err.decode()
    dropped: dict[str, list[str]] = json.loads(out)
    return dropped


@dataclass(frozen=True)
class LogRecord:
    """One record of ``home-assistant.log`` (continuation lines included)."""

    level: str
    logger: str
    text: str


class HomeAssistant:
    """A Home Assistant core process with its own config directory."""

    def __init__(self, python: str, config_dir: Path, broker_port: int) -> None:
        """Prepare; nothing runs until :meth:`start`."""
        self.python = python
        self.config_dir = config_dir
        self.broker_port = broker_port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        """Home Assistant's own log file."""
        return self.config_dir / "home-assistant.log"

    def write_config(self) -> None:
        """configuration.yaml, the automations, and MQTT as a config entry on the test broker."""
        storage = self.config_dir / ".storage"
        storage.mkdir(parents=True)
        (self.config_dir / "configuration.yaml").write_text(
            CONFIGURATION_YAML.format(
                http_port=free_port(),
                # The README's example automations must load in Home Assistant too.
                examples=Path(__file__).resolve().parents[2]
                / "config"
                / "homeassistant"
                / "automations.yaml",
            )
        )
        (self.config_dir / "automations.yaml").write_text(AUTOMATIONS_YAML)
        created = "2025-01-01T00:00:00+00:00"
        entry: dict[str, Any] = {
            "created_at": created,
            "modified_at": created,
            "data": {"broker": "127.0.0.1", "port": self.broker_port} | self.protocol(),
            "discovery_keys": {},
            "disabled_by": None,
            "domain": "mqtt",
            "entry_id": "01JREDLIGHTTESTMQTT000000",
            # The MQTT integration's own entry version (config_flow VERSION, MINOR_VERSION).
            "version": 1,
            "minor_version": 2,
            "options": {"discovery": True, "discovery_prefix": "homeassistant"},
            "pref_disable_new_entities": False,
            "pref_disable_polling": False,
            "source": "user",
            "subentries": [],
            "title": "MQTT",
            "unique_id": None,
        }
        # homeassistant/config_entries.py: STORAGE_VERSION 1, STORAGE_VERSION_MINOR 5.
        (storage / "core.config_entries").write_text(
            json.dumps(
                {
                    "version": 1,
                    "minor_version": 5,
                    "key": "core.config_entries",
                    "data": {"entries": [entry]},
                },
                indent=2,
            )
        )

    def protocol(self) -> dict[str, str]:
        """The broker protocol of Home Assistant's own MQTT connection, as its users have it.

        2026.6 made MQTT 5 the default and migrates existing entries to it; before, an entry
        without ``protocol`` meant 3.1.1.
        """
        return {"protocol": "5"} if ha_at_least(2026, 6) else {}

    def start(self) -> None:
        """Start the process; its console output goes next to its log."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("REDLIGHT_")}
        with (self.config_dir / "console.log").open("ab") as console:
            self.process = subprocess.Popen(
                [self.python, "-m", "homeassistant", "-c", str(self.config_dir), "--log-no-color"],
                stdout=console,
                stderr=subprocess.STDOUT,
                env=env,
            )

    async def stop(self, within: float = HA_STOP_S) -> int:
        """SIGTERM, then wait for a clean exit (Home Assistant writes its registries on stop)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        loop = asyncio.get_running_loop()
        return await asyncio.wait_for(loop.run_in_executor(None, self.process.wait), within)

    def kill(self) -> None:
        """Teardown: kill if still running."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(10)

    def records(self) -> list[LogRecord]:
        """The records of ``home-assistant.log``."""
        if not self.log_path.exists():
            return []
        records: list[LogRecord] = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            match = _RECORD.match(line)
            if match:
                records.append(LogRecord(match["level"], match["logger"], line))
            elif records:
                last = records[-1]
                records[-1] = LogRecord(last.level, last.logger, f"{last.text}\n{line}")
        return records

    def problems(self) -> list[LogRecord]:
        """Records that say Home Assistant rejected or mis-read something."""
        return [
            r
            for r in self.records()
            if REJECTED.search(r.text)
            or (r.level in {"WARNING", "ERROR", "CRITICAL"} and r.logger.startswith(WATCHED))
        ]

    def report(self) -> str:
        """The problem lines of the log, for failure messages."""
        lines = [r.text for r in self.problems()]
        return "Home Assistant rejected or mis-read:\n" + ("\n".join(lines) or "(nothing)")

    def warnings(self) -> str:
        """Every warning and error in the log, for failure messages."""
        lines = [r.text for r in self.records() if r.level in {"WARNING", "ERROR", "CRITICAL"}]
        return "\n".join(lines) or "(none)"

    def mqtt_entities(self) -> dict[str, dict[str, Any]]:
        """unique_id -> entry of every MQTT entity in the entity registry."""
        path = self.config_dir / ".storage" / "core.entity_registry"
        registry = json.loads(path.read_text())
        return {e["unique_id"]: e for e in registry["data"]["entities"] if e["platform"] == "mqtt"}


#: Discovery keys Home Assistant keeps in an entity's registry entry, and where.
REGISTERED: Final = {
    "name": "original_name",
    "icon": "original_icon",
    "device_class": "original_device_class",
    "entity_category": "entity_category",
    "unit_of_measurement": "unit_of_measurement",
}
#: Discovery keys Home Assistant keeps as an entity's capabilities.
CAPABILITIES: Final = ("state_class", "options", "min", "max", "step", "mode", "event_types")


def not_as_announced(entry: dict[str, Any], component: dict[str, Any]) -> dict[str, Any]:
    """What Home Assistant registered differently from the discovery payload (or dropped).

    Home Assistant silently removes keys its schema does not know, so a misspelled key never
    shows in the log; it shows here.
    """
    differences = {
        key: (component.get(key), entry[field])
        for key, field in REGISTERED.items()
        if component.get(key) != entry[field]
    }
    wanted = {key: component[key] for key in CAPABILITIES if key in component}
    if wanted != (entry["capabilities"] or {}):
        differences["capabilities"] = (wanted, entry["capabilities"])
    return differences


@pytest.fixture
async def homeassistant(system: System, tmp_path: Path) -> AsyncIterator[HomeAssistant]:
    """Home Assistant (not yet started) on the system's broker; always stopped afterwards."""
    assert HA_PYTHON is not None
    ha = HomeAssistant(HA_PYTHON, tmp_path / "homeassistant", system.broker.port)
    ha.write_config()
    try:
        yield ha
    finally:
        ha.kill()
        # Shown with the test's failure report: what Home Assistant complained about.
        log.warning("Home Assistant warnings and errors:\n%s", ha.warnings())


def states(observer: Observer, since: int = 0) -> dict[str, list[str]]:
    """Every Home Assistant state seen on ``test/state/<entity_id>``, per entity, in order."""
    seen: dict[str, list[str]] = {}
    for message in observer.matching("test/state/+", since):
        entity = message.topic.removeprefix("test/state/")
        seen.setdefault(entity, []).append(message.payload.decode())
    return seen


async def state(
    observer: Observer, entity: str, wanted: str, *, since: int, within: float = 30.0
) -> Seen:
    """Wait until Home Assistant reports ``entity`` in state ``wanted``."""
    return await observer.wait(
        f"test/state/{entity}", lambda m: m.payload.decode() == wanted, since=since, within=within
    )


def moment(text: str) -> datetime:
    """An ISO 8601 timestamp with offset."""
    return datetime.fromisoformat(text)


async def test_home_assistant_accepts_discovery_and_runs_a_session(
    system: System, homeassistant: HomeAssistant
) -> None:
    """HA makes an entity of every component, rejects nothing, its Session switch works, and
    a schedule's offer shows on the redlight device and is accepted with its button."""
    ha = homeassistant
    observer = system.observer
    expected = entity_ids()
    async with asyncio.timeout(TEST_BOUND_S):
        settings = {"default_duration": f"{SESSION_S}s", "area": "left hip", "weekly_goal": "1h"}
        await system.up([PANEL], settings={PANEL: settings}, extra=EXTRA_CONFIG)
        plug = system.plugs[PANEL]
        devices = [
            m.json() for m in observer.matching("homeassistant/device/+/config") if m.payload
        ]
        discovered = {
            component["unique_id"]: component
            for device in devices
            for component in device["components"].values()
        }
        assert set(discovered) == set(expected)
        # Before 2025.10 Home Assistant does not know default_entity_id (and says nothing).
        unknown = {} if ha_at_least(2025, 10) else dict.fromkeys(discovered, ("default_entity_id",))
        dropped = await dropped_keys(ha.python, devices)
        assert {uid: tuple(keys) for uid, keys in dropped.items()} == unknown

        # Home Assistant's birth comes after it started and its discovery cooled down.
        mark = observer.mark()
        ha.start()
        await observer.wait(
            "homeassistant/status", lambda m: m.payload == b"online", since=mark, within=HA_START_S
        )
        snapshot = observer.mark()
        observer.publish("test/snapshot", "1")
        await observer.wait("test/snapshot/done", since=snapshot)

        # (a) An entity for every discovered component, each available (redlight is online),
        # but Accept offer, available only while an offer is open, and the session controls.
        always = {uid: e for uid, e in expected.items() if uid not in (ACCEPT, *CONTROLS)}

        def all_available(_: Seen) -> bool:
            seen = states(observer, snapshot)
            return all(
                entity in seen and seen[entity][-1] != "unavailable" for entity in always.values()
            )

        try:
            await observer.wait("test/state/+", all_available, since=snapshot, within=30.0)
        except TimeoutError:
            seen = states(observer, snapshot)
            missing = {e: seen.get(e) for e in expected.values() if e not in seen}
            pytest.fail(f"no entity or never available: {missing}\n{ha.report()}")
        now = {entity: seen[-1] for entity, seen in states(observer, snapshot).items()}
        panel = {
            uid.removeprefix("redlight_redlight__tasmota_"): entity
            for uid, entity in expected.items()
        }
        assert now[panel["session"]] == "off"
        assert now[panel["length"]] == "0.08"
        assert now[panel["ends"]] == "unknown"
        assert now[panel["remaining"]] == "unknown"
        assert [now[expected[uid]] for uid in CONTROLS] == ["unavailable"] * 3
        assert now[panel["state"]] == "idle"
        assert now[panel["today"]] == "0.0"
        assert now[panel["week"]] == "0.0"
        assert now[panel["weekly_goal"]] == "0.0"
        assert now[AREA_WEEK] == "0.0"
        assert now[panel["plug"]] == "on"
        assert now["sensor.redlight_active_sessions"] == "0"
        assert now["switch.redlight_mornings_enabled"] == "on"
        assert moment(now["sensor.redlight_mornings_next_run"]) == moment(
            "2099-01-01T07:00:00+00:00"
        )

        # (c) The Session switch turned on in Home Assistant: a default session on the plug.
        mark = observer.mark()
        observer.publish("test/turn_on", panel["session"])
        started = await observer.event("session_started", since=mark, panel=PANEL, within=30.0)
        assert (started["source"], started["duration_s"]) == ("homeassistant", SESSION_S)
        await until(plug, is_on)
        await state(observer, panel["session"], "on", since=mark)
        await state(observer, panel["state"], "running", since=mark)
        await state(observer, "sensor.redlight_active_sessions", "1", since=mark)
        ends = await observer.wait(f"test/state/{panel['ends']}", since=mark)
        assert moment(ends.payload.decode()) == moment(started["ends_at"])
        fired = await observer.wait(f"test/state/{panel['events']}", since=mark)
        # An event entity's state is when it last fired.
        assert moment(fired.payload.decode()) >= moment(started["at"])

        # ... and after its few seconds the session ends by itself, in Home Assistant too.
        finished = await observer.event("session_finished", since=mark, panel=PANEL, within=30.0)
        assert finished["reason"] == "completed"
        await until(plug, is_off)
        await state(observer, panel["session"], "off", since=mark)
        await state(observer, panel["ends"], "unknown", since=mark)
        await state(observer, panel["today"], "0.08", since=mark)
        await state(observer, panel["week"], "0.08", since=mark)
        await state(observer, panel["weekly_goal"], "0.1", since=mark)  # 5 s of 1 h, in %
        await state(observer, AREA_WEEK, "0.08", since=mark)
        await state(observer, "sensor.redlight_active_sessions", "0", since=mark)
        assert plug.on_commands == 1

        await control_a_session(system, panel)
        await accept_an_offer(system, expected)
        assert observer.events("command_rejected") == []

        assert await ha.stop() == 0

    # (a) The entity registry, written on stop: the discovered unique ids, named as expected,
    # with every name, icon, class, category, unit and capability as announced.
    registered = ha.mqtt_entities()
    assert {uid: e["entity_id"] for uid, e in registered.items()} == expected
    differences = {
        uid: diff
        for uid, entry in registered.items()
        if (diff := not_as_announced(entry, discovered[uid]))
    }
    assert differences == {}
    # (b) Nothing rejected or mis-read, from discovery to the end of the session.
    assert ha.problems() == [], ha.report()


async def control_a_session(system: System, panel: dict[str, str]) -> None:
    """Issue 14's buttons: on a running session Extend and Pause are available and Resume is
    not; Extend lengthens it, Pause switches the plug off (State paused, Remaining kept),
    Resume switches it on again, each pressed in Home Assistant."""
    observer, plug = system.observer, system.plugs[PANEL]
    mark = observer.mark()
    observer.publish(f"redlight/panel/{PANEL}/set", '{"action": "start", "duration": "5m"}')
    await until(plug, is_on)
    await state(observer, panel["state"], "running", since=mark)
    await state(observer, panel["pause"], "unknown", since=mark)  # never pressed: available
    await state(observer, panel["extend"], "unknown", since=mark)
    assert states(observer, mark).get(panel["resume"], ["unavailable"])[-1] == "unavailable"
    await state(observer, panel["remaining"], "5.0", since=mark)

    mark = observer.mark()
    observer.publish("test/press", panel["extend"])
    extended = await observer.event("session_extended", since=mark, panel=PANEL, within=30.0)
    assert (extended["by_s"], extended["duration_s"]) == (120, 420)
    ends = await observer.wait(f"test/state/{panel['ends']}", since=mark)
    assert moment(ends.payload.decode()) == moment(extended["ends_at"])

    mark = observer.mark()
    observer.publish("test/press", panel["pause"])
    paused = await observer.event("session_paused", since=mark, panel=PANEL, within=30.0)
    await until(plug, is_off)
    await state(observer, panel["state"], "paused", since=mark)
    await state(observer, panel["pause"], "unavailable", since=mark)
    await state(observer, panel["resume"], "unknown", since=mark)
    left_min = paused["remaining_s"] / 60

    def kept(message: Seen) -> bool:
        text = message.payload.decode()
        return text.replace(".", "", 1).isdigit() and abs(float(text) - left_min) <= 0.02

    await observer.wait(f"test/state/{panel['remaining']}", kept, since=mark)

    mark = observer.mark()
    observer.publish("test/press", panel["resume"])
    await observer.event("session_resumed", since=mark, panel=PANEL, within=30.0)
    await until(plug, is_on)
    await state(observer, panel["state"], "running", since=mark)
    observer.publish(f"redlight/panel/{PANEL}/set", "OFF")
    finished = await observer.event("session_finished", since=mark, panel=PANEL, within=30.0)
    assert finished["reason"] == "stopped"
    await until(plug, is_off)
    await state(observer, panel["resume"], "unavailable", since=mark)


async def accept_an_offer(system: System, expected: dict[str, str]) -> None:
    """The every-minute schedule offers a session: the redlight device's Events entity fires,
    Accept offer becomes available, its press starts the session, and it is unavailable again;
    the schedule's next run moves on past the run that offered."""
    observer = system.observer
    accept = expected[ACCEPT]
    # Offers opened while Home Assistant started are withdrawn: the next minute's is the one.
    if observer.matching("redlight/offer")[-1].json() != {"offer": None}:
        mark = observer.mark()
        observer.publish("redlight/set", '{"action": "stop_all"}')
        await observer.wait("redlight/offer", lambda m: m.json() == {"offer": None}, since=mark)
        await state(observer, accept, "unavailable", since=mark)
    assert states(observer)[accept][-1] == "unavailable"
    mark = observer.mark()
    offer = await observer.event("schedule_offer", since=mark, state="open", within=70.0)
    # The redlight device's Events entity fired (its state is when), and Accept is usable.
    await observer.wait("test/state/event.redlight_events", since=mark)
    await observer.wait(
        f"test/state/{accept}", lambda m: m.payload != b"unavailable", since=mark, within=30.0
    )
    next_run = await observer.wait("test/state/sensor.redlight_evening_next_run", since=mark)
    assert moment(next_run.payload.decode()) > moment(offer["at"])

    mark = observer.mark()
    observer.publish("test/press", accept)
    accepted = await observer.event("schedule_offer", since=mark, state="accepted", within=30.0)
    assert accepted["schedule"] == "evening"
    started = await observer.event("session_started", since=mark, panel=PANEL, within=30.0)
    assert started["source"] == "schedule"
    await state(observer, accept, "unavailable", since=mark)
    finished = await observer.event("session_finished", since=mark, panel=PANEL, within=30.0)
    assert finished["reason"] == "completed"
    await until(system.plugs[PANEL], is_off)
