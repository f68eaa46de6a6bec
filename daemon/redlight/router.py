"""The command router: a message on one of redlight's command topics becomes a typed command.

Pure, and knows nothing of state: it reads the topic (which panel, routine or schedule), parses
the payload with :mod:`redlight.commands`, checks the id against the config, and returns one
command value for :class:`redlight.controller.Controller` to dispatch, or a :class:`Refused`
that becomes the ``command_rejected`` event (safety rule 13). The topics, under ``<b>``:

=================================  ======================================================
``<b>/set``                        :class:`~redlight.commands.StopAll`, ``AcceptOffer``
``<b>/panel/<id>/set``             :class:`StartPanel`, :class:`StopPanel`, :class:`ChangeSession`
``<b>/panel/<id>/duration/set``    :class:`SetDefaultDuration`
``<b>/routine/<id>/set``           :class:`SwitchRoutine`
``<b>/schedule/<id>/set``          :class:`SwitchSchedule`
=================================  ======================================================

A retained message is never a command (safety rule 7): the core clears it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeAlias

from redlight import commands as cmd
from redlight.config import Config
from redlight.effects import rejection_event
from redlight.messages import Event


@dataclass(frozen=True, slots=True)
class StartPanel:
    """Start a session on ``panel`` as ``request`` asks (length, dose or the default)."""

    panel: str
    request: cmd.Start


@dataclass(frozen=True, slots=True)
class StopPanel:
    """Stop ``panel``'s session, or switch it off if it is on for any reason."""

    panel: str
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class ChangeSession:
    """Extend, pause or resume ``panel``'s session."""

    panel: str
    change: cmd.SessionChange


@dataclass(frozen=True, slots=True)
class SetDefaultDuration:
    """Set ``panel``'s default session length (1 s to ``safety.max_on``, already checked)."""

    panel: str
    seconds: float


@dataclass(frozen=True, slots=True)
class SwitchRoutine:
    """Start (``start``) or stop a configured routine."""

    routine: str
    start: bool
    source: str = "homeassistant"


@dataclass(frozen=True, slots=True)
class SwitchSchedule:
    """Enable or disable a configured schedule."""

    schedule: str
    enabled: bool


@dataclass(frozen=True, slots=True)
class Refused:
    """A command that cannot be carried out, with what its ``command_rejected`` event names.

    ``panel`` is set only for a panel that exists (the event then goes to its event topic).
    """

    rejection: cmd.Rejection
    panel: str | None = None
    routine: str | None = None
    schedule: str | None = None

    def event(self, wall: datetime) -> Event:
        """The ``command_rejected`` event, with the fields the core's own refusals carry."""
        extra: dict[str, Any] = {}
        if self.routine is not None:
            extra["routine"] = self.routine
        if self.schedule is not None:
            extra["schedule"] = self.schedule
        return rejection_event(self.rejection, self.panel, wall, **extra)


#: ``stop_all`` and ``accept_offer`` name nothing in their topic: the parsed payload is the
#: command as it stands.
Command: TypeAlias = (
    StartPanel
    | StopPanel
    | ChangeSession
    | SetDefaultDuration
    | cmd.StopAll
    | cmd.AcceptOffer
    | SwitchRoutine
    | SwitchSchedule
)


def route(  # noqa: PLR0911 - one return per topic form, read top to bottom like SPEC §4
    config: Config, topic: str, payload: bytes, retain: bool
) -> Command | Refused | None:
    """The command a message on ``topic`` carries, why it is refused, or ``None``: not a command
    (another topic, a retained message for the core to clear, an empty payload)."""
    prefix = config.mqtt.base_topic + "/"
    if retain or not payload or not topic.startswith(prefix):
        # An empty payload is MQTT's "delete the retained message" (ours, echoed back, or a
        # user's): not a command, so nothing to reject either.
        return None
    parts = topic[len(prefix) :].split("/")
    match parts:
        case ["set"]:
            return _daemon(payload)
        case ["panel", panel, "set"]:
            return _panel(config, panel, payload)
        case ["panel", panel, "duration", "set"]:
            return _duration(config, panel, payload)
        case ["routine", routine, "set"]:
            return _routine(config, routine, payload)
        case ["schedule", schedule, "set"]:
            return _schedule(config, schedule, payload)
    return None


def _daemon(payload: bytes) -> Command | Refused:
    parsed = cmd.parse_daemon_command(payload)
    return Refused(parsed) if isinstance(parsed, cmd.Rejection) else parsed


def _panel(config: Config, panel: str, payload: bytes) -> Command | Refused:
    parsed = cmd.parse_panel_command(payload)
    if panel not in config.panels:
        # The payload's request_id still comes back, so the sender can match the refusal.
        rid = None if isinstance(parsed, cmd.Rejection) else parsed.request_id
        return Refused(cmd.Rejection("unknown_panel", f"there is no panel {panel!r}", rid))
    if isinstance(parsed, cmd.Rejection):
        return Refused(parsed, panel=panel)
    if isinstance(parsed, cmd.Start):
        return StartPanel(panel, parsed)
    if isinstance(parsed, cmd.Stop):
        return StopPanel(panel, parsed.request_id)
    return ChangeSession(panel, parsed)


def _duration(config: Config, panel: str, payload: bytes) -> Command | Refused:
    if panel not in config.panels:
        return Refused(cmd.Rejection("unknown_panel", f"there is no panel {panel!r}"))
    parsed = cmd.parse_duration_minutes(payload, config.safety.max_on.total_seconds())
    if isinstance(parsed, cmd.Rejection):
        return Refused(parsed, panel=panel)
    return SetDefaultDuration(panel, parsed.duration_s)


def _routine(config: Config, routine: str, payload: bytes) -> Command | Refused:
    parsed = cmd.parse_routine_command(payload)
    if isinstance(parsed, cmd.Rejection):
        return Refused(parsed, routine=routine)
    if routine not in config.routines:
        unknown = cmd.Rejection("unknown_routine", f"there is no routine {routine!r}")
        return Refused(unknown, routine=routine)
    return SwitchRoutine(routine, parsed.start, parsed.source)


def _schedule(config: Config, schedule: str, payload: bytes) -> Command | Refused:
    parsed = cmd.parse_schedule_command(payload)
    if isinstance(parsed, cmd.Rejection):
        return Refused(parsed, schedule=schedule)
    if schedule not in config.schedules:
        unknown = cmd.Rejection("unknown_schedule", f"there is no schedule {schedule!r}")
        return Refused(unknown, schedule=schedule)
    return SwitchSchedule(schedule, parsed.enabled)
