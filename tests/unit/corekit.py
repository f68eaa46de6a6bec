"""A harness for the pure core: a fake clock and helpers to read what the core decided."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Self
from zoneinfo import ZoneInfo

from pydantic import ValidationError

from redlight import commands as cmd
from redlight.broker import Message
from redlight.config import Config, format_validation_error
from redlight.controller import Controller
from redlight.core import Core, Effect, Now, Restored, SessionOpened
from redlight.messages import Event
from redlight.routines import Routines
from redlight.schedules import Schedules

ZONE = ZoneInfo("Europe/Amsterdam")
START_WALL = datetime(2026, 11, 24, 7, 30, tzinfo=ZONE)


def make_config(**overrides: Any) -> Config:
    """Two panels (Tasmota and generic); other sections merge, ``panels`` replaces them."""
    raw: dict[str, Any] = {
        "mqtt": {"base_topic": "redlight"},
        "safety": {},
        "panels": {
            "hip_left": {
                "name": "Left hip panel",
                "area": "left hip",
                "default_duration": "10m",
                "irradiance_mw_cm2": 50,
                "plug": {"preset": "tasmota", "topic": "panel_left"},
            },
            "sauna": {
                "plug": {
                    "preset": "generic",
                    "command_topic": "sauna/panel/set",
                    "state_topic": "sauna/panel/state",
                },
            },
        },
    }
    for key, value in overrides.items():
        if key != "panels" and isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = raw[key] | value
        else:
            raw[key] = value
    return Config(**raw)


def config_problems(**overrides: Any) -> list[str]:
    """The one-line problems ``redlight check`` would print for this config."""
    try:
        make_config(**overrides)
    except ValidationError as error:
        return format_validation_error(error)
    return []


@dataclass
class Kit:
    """A core with the controller above it, a clock, and everything they have returned so far."""

    core: Core
    controller: Controller
    mono: float = 1000.0
    wall: datetime = START_WALL
    effects: list[Effect] = field(default_factory=list)
    #: The Tasmota plug answers the core's polls (a question with no switching command beside
    #: it) with the relay as the last ON or OFF it was sent left it, as a plug does; ``False``
    #: makes it a plug that stays silent.
    answers_polls: bool = True
    relay_on: bool = False
    #: The history acknowledges every journal row at once; ``False``: it never answers.
    journal_acks: bool = True

    @classmethod
    def create(cls, config: Config | None = None, restored: Restored | None = None) -> Self:
        """A core that is connected and has switched everything off at start-up."""
        counter = iter(range(1, 10_000))
        config = config or make_config()
        core = Core(config, restored=restored, new_id=lambda: f"s{next(counter)}")
        runs = iter(range(1, 10_000))
        routines = Routines(config, core, new_id=lambda: f"r{next(runs)}")
        enabled = restored.schedule_enabled if restored else None
        schedules = Schedules(config, core, routines, enabled=enabled)
        return cls(core, Controller(config, core, routines, schedules))

    @property
    def now(self) -> Now:
        """The clock reading."""
        return Now(self.mono, self.wall)

    def take(self, effects: Iterable[Effect]) -> list[Effect]:
        """Record and return effects; a journal row is acknowledged at once, as a healthy
        history does, so the ON that waits for it follows in the same list."""
        got = list(effects)
        for effect in list(got):
            if isinstance(effect, SessionOpened) and self.journal_acks:
                got += self.controller.journaled(effect.id, self.now)
        self.effects.extend(got)
        return got

    def connect(self) -> list[Effect]:
        """The broker connects."""
        return self.take(self.controller.connect(self.now))

    def ready(self) -> Self:
        """Connected, and every plug has confirmed the start-up OFF."""
        self.connect()
        self.report("hip_left", on=False)
        self.report("sauna", on=False)
        self.effects.clear()
        return self

    def advance(self, seconds: float, *, wall_jump: float = 0.0) -> list[Effect]:
        """Let time pass, ticking at every wake-up the core asks for on the way."""
        target = self.mono + seconds
        got: list[Effect] = []
        while True:
            wake = self.controller.next_wakeup()
            if wake is None or wake > target:
                break
            step = max(wake, self.mono) - self.mono
            self.mono += step
            self.wall += timedelta(seconds=step)
            got += self._answer_poll(self.take(self.controller.tick(self.now)))
        self.wall += timedelta(seconds=target - self.mono + wall_jump)
        self.mono = target
        got += self._answer_poll(self.take(self.controller.tick(self.now)))
        return got

    def _answer_poll(self, effects: list[Effect]) -> list[Effect]:
        sent = payloads(effects, LEFT_POWER)
        if "ON" in sent or "OFF" in sent:
            self.relay_on = sent[-1 if sent[-1] else -2] == "ON"
        elif sent == [""] and self.answers_polls:
            return effects + self.report("hip_left", on=self.relay_on)
        return effects

    def send(self, topic: str, payload: str | bytes, *, retain: bool = False) -> list[Effect]:
        """A message arrives."""
        data = payload.encode() if isinstance(payload, str) else payload
        return self.take(self.controller.receive(topic, data, retain, self.now))

    def command(self, panel: str, payload: str | dict[str, Any]) -> list[Effect]:
        """A command on ``<b>/panel/<id>/set``."""
        text = payload if isinstance(payload, str) else json.dumps(payload)
        return self.send(f"redlight/panel/{panel}/set", text)

    def start(self, panel: str, seconds: float | None = None) -> list[Effect]:
        """Start a session through the API (not a command)."""
        request = cmd.Start(duration_s=seconds)
        return self.take(self.controller.start(panel, request, "cli", self.now))

    def report(self, panel: str, *, on: bool) -> list[Effect]:
        """The panel's plug reports its state the way its firmware does."""
        if panel == "hip_left":
            self.relay_on = on
            return self.send("stat/panel_left/POWER", "ON" if on else "OFF")
        return self.send("sauna/panel/state", "ON" if on else "OFF")


def messages(effects: Iterable[Effect], topic: str | None = None) -> list[Message]:
    """The messages among effects, optionally only those on one topic."""
    return [e for e in effects if isinstance(e, Message) and (topic is None or e.topic == topic)]


def payloads(effects: Iterable[Effect], topic: str) -> list[str]:
    """The text payloads published on a topic."""
    return [m.payload_bytes().decode() for m in messages(effects, topic)]


def switched(effects: Iterable[Effect], topic: str) -> list[str]:
    """The switching commands published on a topic: its payloads less the empty state query.

    A poll (``safety.poll_interval``) asks Tasmota its state with an empty ``POWER``.
    """
    return [payload for payload in payloads(effects, topic) if payload]


def events(effects: Iterable[Effect], event_type: str | None = None) -> list[Event]:
    """The events among effects, optionally of one type."""
    return [
        e
        for e in effects
        if isinstance(e, Event) and (event_type is None or e.event_type == event_type)
    ]


def state(kit: Kit, panel: str) -> dict[str, Any]:
    """The panel's state as the core would publish it now."""
    return kit.core.panel_state(panel, kit.now)


LEFT_POWER = "cmnd/panel_left/POWER"
LEFT_PULSE = "cmnd/panel_left/PulseTime1"
SAUNA_SET = "sauna/panel/set"
