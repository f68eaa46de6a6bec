"""redlight's own MQTT topics and payloads (SPEC §4), built by pure functions."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from redlight.broker import STATE_QOS, Message


@dataclass(frozen=True, slots=True)
class Topics:
    """Every topic under ``mqtt.base_topic``."""

    base: str

    @property
    def status(self) -> str:
        """Retained ``online``/``offline``, also the last will."""
        return f"{self.base}/status"

    @property
    def daemon_set(self) -> str:
        """Daemon-wide commands (``stop_all``, ``accept_offer``)."""
        return f"{self.base}/set"

    @property
    def daemon_state(self) -> str:
        """redlight's own retained JSON state (active sessions); not in SPEC §4's table."""
        return f"{self.base}/state"

    @property
    def offer(self) -> str:
        """The newest open schedule offer, retained (``{"offer": null}`` while none is)."""
        return f"{self.base}/offer"

    @property
    def daemon_event(self) -> str:
        """Every event, daemon-wide and per panel."""
        return f"{self.base}/event"

    def panel_state(self, panel: str) -> str:
        """A panel's retained JSON state."""
        return f"{self.base}/panel/{panel}/state"

    @property
    def panel_states(self) -> str:
        """The filter that matches every panel's state topic."""
        return f"{self.base}/panel/+/state"

    def panel_set(self, panel: str) -> str:
        """Start/stop commands for a panel."""
        return f"{self.base}/panel/{panel}/set"

    def panel_duration_set(self, panel: str) -> str:
        """A panel's default session length, in minutes."""
        return f"{self.base}/panel/{panel}/duration/set"

    def panel_event(self, panel: str) -> str:
        """A panel's events."""
        return f"{self.base}/panel/{panel}/event"

    def area_state(self, slug: str) -> str:
        """An area's retained JSON state: its panels' totals (:mod:`redlight.areas`)."""
        return f"{self.base}/area/{slug}/state"

    def routine_set(self, routine: str) -> str:
        """``START``/``STOP`` for a routine."""
        return f"{self.base}/routine/{routine}/set"

    def schedule_set(self, schedule: str) -> str:
        """``ON``/``OFF`` to enable or disable a schedule."""
        return f"{self.base}/schedule/{schedule}/set"

    def schedule_state(self, schedule: str) -> str:
        """A schedule's retained JSON state."""
        return f"{self.base}/schedule/{schedule}/state"

    def command_filters(self) -> tuple[str, ...]:
        """The subscriptions that bring every command to redlight."""
        return (
            f"{self.base}/panel/+/set",
            f"{self.base}/panel/+/duration/set",
            self.daemon_set,
            f"{self.base}/routine/+/set",
            f"{self.base}/schedule/+/set",
        )


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happened, published on the event topics and logged."""

    event_type: str
    panel: str | None
    at: datetime
    fields: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The event's JSON object."""
        return {"event_type": self.event_type, "panel": self.panel, "at": iso(self.at)} | dict(
            self.fields
        )


def iso(moment: datetime) -> str:
    """ISO 8601 with offset, to the second."""
    return moment.isoformat(timespec="seconds")


def dumps(value: object) -> str:
    """Compact JSON, as published."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def loads_object(payload: bytes) -> dict[str, Any] | None:
    """A payload's JSON object, or None for anything else (not JSON, or not an object)."""
    try:
        value = json.loads(payload)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def status_message(topics: Topics, *, online: bool) -> Message:
    """``<b>/status``: retained availability of redlight itself."""
    return Message(topics.status, "online" if online else "offline", retain=True, qos=STATE_QOS)


def event_messages(topics: Topics, event: Event) -> list[Message]:
    """An event on its panel's topic (if any) and on the daemon-wide topic."""
    payload = dumps(event.as_dict())
    messages = [Message(topics.daemon_event, payload, qos=STATE_QOS)]
    if event.panel is not None:
        messages.insert(0, Message(topics.panel_event(event.panel), payload, qos=STATE_QOS))
    return messages


def panel_state_message(topics: Topics, panel: str, state: Mapping[str, Any]) -> Message:
    """A panel's retained state (the JSON object of SPEC §4)."""
    return Message(topics.panel_state(panel), dumps(state), retain=True, qos=STATE_QOS)


def clear_retained(topic: str) -> Message:
    """An empty retained message, which removes whatever the broker keeps on ``topic``."""
    return Message(topic, b"", retain=True, qos=STATE_QOS)
