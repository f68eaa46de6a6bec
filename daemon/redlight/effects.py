"""What the core asks its adapters to do, and the outbox that orders it.

Every effect is an instruction for an adapter: a message for the broker, an event, a row for
the history, a line for the log, a subscription to make again. Their order is explicit: an
urgent message (a plug command, safety rule 12) goes out before everything else of the same
step, whatever was added first; the rest keeps the order it was added in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

from redlight import commands as cmd
from redlight.broker import Message
from redlight.messages import Event, Topics, clear_retained, event_messages


@dataclass(frozen=True, slots=True)
class Now:
    """One reading of both clocks: ``mono`` times deadlines, ``wall`` (aware) labels them."""

    mono: float
    wall: datetime


@dataclass(frozen=True, slots=True)
class SessionOpened:
    """Journal a session. For redlight's own sessions the ON waits for the acknowledgement
    (:meth:`redlight.core.Core.journaled`), so a crash after the ON leaves a row to close."""

    id: str
    panel: str
    area: str | None
    source: str
    started_at: datetime
    planned_s: float
    irradiance_mw_cm2: float | None


@dataclass(frozen=True, slots=True)
class SessionClosed:
    """A session ended: move it from the journal to the history."""

    id: str
    ended_at: datetime
    actual_s: float
    reason: str
    dose_j_cm2: float | None


@dataclass(frozen=True, slots=True)
class SettingChanged:
    """Persist a small setting (a panel's default length)."""

    key: str
    value: str


@dataclass(frozen=True, slots=True)
class Resubscribe:
    """Subscribe to these filters again: the broker re-sends what is retained on them.

    How a plug that retains its state and takes no query (ESPHome, a generic plug without
    ``state_request_topic``) is polled.
    """

    topics: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class LogLine:
    """Something to log that is not an event (a cleared retained command, ...)."""

    level: Literal["info", "warning", "error"]
    event: str
    fields: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ScheduleChanged:
    """A schedule was switched on or off: the runtime pauses or resumes its job."""

    schedule: str
    enabled: bool


Effect = (
    Message
    | Event
    | SessionOpened
    | SessionClosed
    | SettingChanged
    | LogLine
    | Resubscribe
    | ScheduleChanged
)


def urgent(effect: Effect) -> bool:
    """An effect that goes out ahead of the rest: a plug command (safety rule 12)."""
    return isinstance(effect, Message) and effect.urgent


def urgent_first(effects: Iterable[Effect]) -> list[Effect]:
    """``effects`` with the urgent ones first; a stable sort keeps each group in order."""
    return sorted(effects, key=lambda effect: not urgent(effect))


class Outbox:
    """Effects collected during one step of the core, handed out urgent ones first."""

    def __init__(self) -> None:
        self._effects: list[Effect] = []

    def add(self, effect: Effect) -> None:
        """One effect; where it goes in the output depends only on :func:`urgent`."""
        self._effects.append(effect)

    def extend(self, effects: Iterable[Effect]) -> None:
        """Several effects, in order."""
        self._effects.extend(effects)

    def event(self, event_type: str, panel: str | None, wall: datetime, **fields: Any) -> None:
        """An event for ``<b>/event`` and the log."""
        self._effects.append(Event(event_type, panel, wall, fields))

    def log(self, level: Literal["info", "warning", "error"], event: str, **fields: Any) -> None:
        """A line for the log only."""
        self._effects.append(LogLine(level, event, fields))

    def take(self) -> list[Effect]:
        """Everything collected, urgent first (a stable sort keeps the rest in order)."""
        out, self._effects = urgent_first(self._effects), []
        return out


def rejection_event(
    rejection: cmd.Rejection, panel: str | None, wall: datetime, **extra: Any
) -> Event:
    """``command_rejected``: reason and message, then ``allowed_at`` and ``request_id`` if set."""
    fields: dict[str, Any] = {"reason": rejection.reason, "message": rejection.message}
    if rejection.allowed_at is not None:
        fields["allowed_at"] = rejection.allowed_at
    if rejection.request_id is not None:
        fields["request_id"] = rejection.request_id
    return Event("command_rejected", panel, wall, fields | extra)


def event_effects(topics: Topics, effects: Iterable[Effect]) -> list[Message]:
    """The messages that publish the events among ``effects`` (for adapters and tests)."""
    messages: list[Message] = []
    for effect in effects:
        if isinstance(effect, Event):
            messages.extend(event_messages(topics, effect))
    return messages


def clear_retained_command(topic: str, payload: bytes, *, plug: bool) -> list[Effect]:
    """Safety rule 7: a retained command on ``topic`` is removed, with a warning; ``plug``: a
    plug's command topic, whose removal goes first (a plug obeys a retained ON each time it
    reconnects). Nothing for an empty payload: that is the removal, echoed back."""
    if not payload:
        return []
    text = payload[:64].decode("utf-8", "replace")
    clearing = replace(clear_retained(topic), urgent=True) if plug else clear_retained(topic)
    return [
        clearing,
        LogLine("warning", "retained_command_cleared", {"topic": topic, "payload": text}),
    ]
