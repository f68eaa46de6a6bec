"""The controller: the one pure object above the core, the routines and the schedules.

The runtime hands it what happened (a message, time passing, a schedule firing, the broker
connecting) and carries out the effects it returns; nothing else decides anything. A message on
one of redlight's command topics becomes a typed command (:mod:`redlight.router`) dispatched
straight to the part it is for; everything else (plug reports, retained commands to clear) goes
to the core. The parts answer with values, never through the effects: the core answers a start
with :class:`~redlight.core.Started` or a :class:`~redlight.commands.Rejection`, and the
sessions that ended are handed as :class:`~redlight.core.SessionEnded` notices to the routines
(whose next step may end another, so until none is left). Effects are only instructions for
the adapters; what several parts return is put in the core's order, plug commands first.
"""

from __future__ import annotations

from collections.abc import Iterable

from redlight import commands as cmd
from redlight.config import Config
from redlight.core import Core, Effect, Now, Source
from redlight.effects import urgent_first
from redlight.router import (
    ChangeSession,
    Command,
    Refused,
    SetDefaultDuration,
    StartPanel,
    StopPanel,
    SwitchRoutine,
    SwitchSchedule,
    route,
)
from redlight.routines import Routines
from redlight.schedules import Schedules


class Controller:
    """Routes commands to the core, the routines and the schedules, and follows up what ends."""

    def __init__(
        self, config: Config, core: Core, routines: Routines, schedules: Schedules
    ) -> None:
        """The parts it drives; they share ``core``, which owns every panel."""
        self.config = config
        self.core = core
        self.routines = routines
        self.schedules = schedules

    # ------------------------------------------------------------------ inputs

    def receive(self, topic: str, payload: bytes, retain: bool, now: Now) -> list[Effect]:
        """A message arrived: a command is dispatched, anything else is the core's."""
        command = route(self.config, topic, payload, retain)
        if command is None:
            return self._from_core(self.core.receive(topic, payload, retain, now), now)
        return self.dispatch(command, now)

    def dispatch(  # noqa: PLR0911 - one case, one return, per kind of command
        self, command: Command | Refused, now: Now
    ) -> list[Effect]:
        """Carry out one routed command (or publish why it was refused)."""
        match command:
            case Refused():
                return [command.event(now.wall)]
            case StartPanel(panel, request):
                return self.start(panel, request, request.source, now)
            case StopPanel(panel, request_id):
                return self.stop(panel, now, request_id)
            case ChangeSession(panel, change):
                _, effects = self.core.change(panel, change, now)
                return self._from_core(effects, now)
            case SetDefaultDuration(panel, seconds):
                return self._from_core(self.core.set_default_duration(panel, seconds, now), now)
            case cmd.StopAll():
                return self.stop_all(now)
            case cmd.AcceptOffer(offer, request_id):
                return self._with_reactions([self.schedules.accept(offer, now, request_id)], now)
            case SwitchRoutine(routine, start, source):
                switched = (
                    self.routines.start(routine, now, source=source)
                    if start
                    else self.routines.stop(routine, now)
                )
                return self._with_reactions([switched], now)
            case SwitchSchedule(schedule, enabled):
                return self.schedules.toggle(schedule, enabled, now)

    def start(self, panel: str, request: cmd.Start, source: Source, now: Now) -> list[Effect]:
        """Start a session (a command, or in-process: the same path)."""
        _, effects = self.core.start(panel, request, source, now)
        return self._from_core(effects, now)

    def stop(self, panel: str, now: Now, request_id: str | None = None) -> list[Effect]:
        """Stop a panel's session, or switch it off if it is on."""
        return self._from_core(self.core.stop(panel, now, request_id), now)

    def journaled(self, session_id: str, now: Now) -> list[Effect]:
        """The history acknowledged a session's journal row: its ON goes out."""
        return self._from_core(self.core.journaled(session_id, now), now)

    def stop_all(self, now: Now) -> list[Effect]:
        """``stop_all``: routines end first, as "stopped" (a session stopped under a running
        routine would abort it); then every panel is stopped, their sessions with them, and
        the open offers are withdrawn. Published as before: the sessions, then the routines."""
        routines = self.routines.stop_all(now, sessions=False)
        stops = [self.core.stop(panel, now) for panel in self.core.panels]
        return self._with_reactions([*stops, routines, self.schedules.withdraw_offers(now)], now)

    def fire(self, schedule: str, now: Now) -> list[Effect]:
        """APScheduler says a schedule's time has come."""
        return self._with_reactions([self.schedules.fire(schedule, now)], now)

    def tick(self, now: Now) -> list[Effect]:
        """Time passed: the core's deadlines, then routines' pauses and offers that expire."""
        parts = [self.core.tick(now), *self._reactions(now), self.routines.tick(now)]
        return self._with_reactions([*parts, self.schedules.tick(now)], now)

    def next_wakeup(self) -> float | None:
        """The earliest monotonic time at which :meth:`tick` has something to do."""
        wakes = (
            self.core.next_wakeup(),
            self.routines.next_wakeup(),
            self.schedules.next_wakeup(),
        )
        return min((wake for wake in wakes if wake is not None), default=None)

    def connect(self, now: Now) -> list[Effect]:
        """The broker connected (a deadline that passed meanwhile ends its session now)."""
        return self._from_core(self.core.connect(now), now)

    def disconnect(self, now: Now) -> list[Effect]:
        """The broker connection is lost."""
        return self._from_core(self.core.disconnect(now), now)

    def shutdown(self, now: Now) -> list[Effect]:
        """Safety rule 9: routines end as "stopped", then every panel is switched off."""
        return self._with_reactions([self.routines.stop_all(now), self.core.shutdown(now)], now)

    # ------------------------------------------------------------------ sessions that ended

    def _reactions(self, now: Now) -> list[list[Effect]]:
        """What the routines do about each session that ended, until no more end."""
        reactions: list[list[Effect]] = []
        while ended := self.core.take_ended():
            reactions.extend(self.routines.session_ended(notice, now) for notice in ended)
        return reactions

    def _from_core(self, effects: list[Effect], now: Now) -> list[Effect]:
        """The core's effects (in its order already), and the routines' reactions, if any."""
        reactions = self._reactions(now)
        return _plug_first([effects, *reactions]) if reactions else effects

    def _with_reactions(self, parts: list[list[Effect]], now: Now) -> list[Effect]:
        return _plug_first([*parts, *self._reactions(now)])


def _plug_first(parts: Iterable[list[Effect]]) -> list[Effect]:
    """Several parts' effects as one list in the core's order: urgent ones (plug commands)
    first, so nothing can delay an OFF; the rest in order."""
    return urgent_first(effect for effects in parts for effect in effects)
