"""The session core: every safety rule of SPEC §3 that decides when a panel is on or off.

Pure logic with an injected clock. It takes what happened (a command, a plug report, the
broker connecting, time passing) and returns effects to carry out, plug commands first, so a
full 15-minute session is tested in microseconds. Deadlines are on the monotonic clock
(safety rule 3); the wall clock only labels events and finds the local day.

Where things are: each panel's relay machine in :mod:`redlight.panel`, the plug side of it
(OFF until confirmed, polls, gaps) in :mod:`redlight.relay`, whether a session may start in
:mod:`redlight.limits`, the published state in :mod:`redlight.view`, the timers in
:mod:`redlight.timers`. This module holds the sessions and routes every input to them.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Final

from paho.mqtt.client import topic_matches_sub

from redlight import commands as cmd
from redlight.config import Config
from redlight.controls import SessionControls
from redlight.days import DayBook, DayRows, WeekRows
from redlight.effects import (
    Effect,
    LogLine,
    Now,
    Outbox,
    Resubscribe,
    ScheduleChanged,
    SessionClosed,
    SessionOpened,
    SettingChanged,
    clear_retained_command,
    event_effects,
    rejection_event,
)
from redlight.limits import Limits
from redlight.messages import Topics
from redlight.panel import Exposure, Panel, Power, Relay, Session, Source
from redlight.presets import PlugAvailability, PlugState, build_plug
from redlight.relay import MAX_OFF_RETRY_S, RelayControl
from redlight.reports import PlugReports
from redlight.sessions import JOURNAL_WAIT_S, SessionEnded, Sessions, Started
from redlight.timers import TimerKind, Timers
from redlight.view import Board, panel_state

__all__ = [
    "JOURNAL_WAIT_S",
    "MAX_OFF_RETRY_S",
    "Core",
    "Effect",
    "LogLine",
    "Now",
    "Restored",
    "Resubscribe",
    "ScheduleChanged",
    "SessionClosed",
    "SessionEnded",
    "SessionOpened",
    "SettingChanged",
    "Source",
    "Started",
    "event_effects",
]

#: ``<b>/state`` (the running panels) is published at most this often: when a thousand
#: sessions end within a second, one update with the outcome instead of a thousand lists.
DAEMON_STATE_EVERY_S: Final = 1.0


@dataclass(frozen=True, slots=True)
class Restored:
    """What survives a restart, read from storage before the core starts."""

    finished_today_s: Mapping[str, float] = field(default_factory=dict)
    last_end: Mapping[str, datetime] = field(default_factory=dict)
    default_duration_s: Mapping[str, float] = field(default_factory=dict)
    schedule_enabled: Mapping[str, bool] = field(default_factory=dict)
    #: Per panel, the end of its last exposure and that exposure's on-time in seconds.
    exposure: Mapping[str, tuple[datetime, float]] = field(default_factory=dict)
    #: The local date (ISO) that ``day_sessions`` was read for. Set, it also says that history
    #: will answer for every later day (:meth:`Core.day_totals`), so a day not yet answered is
    #: judged conservatively; ``finished_today_s`` alone counts for the first day seen.
    day: str | None = None
    #: Each panel's sessions started on ``day``: session id -> seconds on.
    day_sessions: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    #: The sessions of ``day``'s week before it, by local date (ISO), for ``week_s``.
    week_sessions: WeekRows = field(default_factory=dict)


class Core:
    """Owns every panel's state; each public method returns the effects to carry out."""

    def __init__(
        self,
        config: Config,
        *,
        restored: Restored | None = None,
        new_id: Callable[[], str] | None = None,
        journal_wait_s: float = JOURNAL_WAIT_S,
    ) -> None:
        """The panels of ``config``, with ``restored`` from storage; an ON waits for
        :meth:`journaled` at most ``journal_wait_s``."""
        self.config = config
        self.topics = Topics(config.mqtt.base_topic)
        safety = config.safety
        self.limits = Limits.from_safety(safety)
        self.poll_s = safety.poll_interval.total_seconds()
        self.out, self.timers = Outbox(), Timers()
        confirm_s = safety.confirm_timeout.total_seconds()
        self.relays = RelayControl(self.out, self.timers, confirm_s, self.poll_s)
        restored = restored or Restored()
        self._days = DayBook(expect_history=restored.day is not None)
        self.panels = build_panels(config, restored, self.limits, self._days)
        self._order = list(self.panels.values())
        self.board = Board(self.topics, self._order, DAEMON_STATE_EVERY_S)
        self.sessions = Sessions(
            self.limits,
            margin_s=safety.failsafe_margin.total_seconds(),
            journal_wait_s=journal_wait_s,
            relays=self.relays,
            board=self.board,
            days=self._days,
            new_id=new_id or (lambda: uuid.uuid4().hex[:12]),
            restored_last_end=restored.last_end,
            restored_exposure=restored.exposure,
        )
        self.controls = SessionControls(self.sessions)
        self.reports = PlugReports(self.sessions, self.relays, self.board)
        self._exact_routes, self._wild_routes = plug_routes(self._order)
        self._plug_command_topics = {p.plug.command_topic: p for p in self._order}
        self.ready = False
        self._handlers = self._timer_handlers()

    def _timer_handlers(self) -> dict[TimerKind, Callable[[Panel, Now], None]]:
        """The one table from a due timer to what it means."""
        sessions, relays = self.sessions, self.relays
        return {
            TimerKind.DEADLINE: sessions.deadline,
            TimerKind.CONFIRM_ON: sessions.on_unconfirmed,
            TimerKind.OFF_RETRY: relays.retry_off,
            TimerKind.JOURNAL: sessions.journal_slow,
            TimerKind.ENDING_SOON: sessions.ending_soon,
            TimerKind.POWER_ASK: self.reports.ask_power,
            TimerKind.POWER_CHECK: self.reports.check_power,
            TimerKind.POLL_ANSWER: relays.poll_unanswered,
            TimerKind.POLL: relays.poll,
            TimerKind.COOLDOWN_END: sessions.cooldown_over,
            TimerKind.TODAY: sessions.today_moved,
            TimerKind.PAUSE_END: self.controls.pause_over,
        }

    @property
    def connected(self) -> bool:
        """The broker connection is up (nothing is sent to a plug while it is down)."""
        return self.relays.connected

    # ------------------------------------------------------------------ inputs

    def subscriptions(self) -> list[str]:
        """Every topic filter to subscribe to after each connect."""
        topics = list(self.topics.command_filters())
        for panel in self._order:
            topics.extend(panel.plug.subscriptions)
        # Safety rule 7: watch plug command topics for retained commands to clear.
        topics.extend(self._plug_command_topics)
        return list(dict.fromkeys(topics))

    def connect(self, now: Now) -> list[Effect]:
        """The broker connection is (re)established: rules 8 and 10."""
        self.relays.connected = True
        # Whatever was published while disconnected was dropped: send every state again.
        self.board.forget()
        count = len(self._order)
        for panel in self._order:
            self.relays.send(panel.plug.ask_state())
            # Polls spread over the interval, so a thousand plugs never answer at once.
            poll_at = now.mono + self.poll_s * (panel.index + 1) / count
            self.timers.arm(panel.index, TimerKind.POLL, poll_at)
            if not self.ready:
                self.sessions.start_safe(panel, now)
            elif panel.session is not None and now.mono >= panel.session.deadline:
                # Safety rule 10: a deadline that passed while disconnected is enforced now.
                self.sessions.end(panel, now, self.sessions.deadline_reason(panel.session))
            elif panel.off_pending:
                self.relays.send_off(panel, now)
            self.board.touch(panel)
        self.ready = True
        return self._flush(now)

    def disconnect(self, now: Now) -> list[Effect]:
        """The broker connection is lost; deadlines keep running on the monotonic clock."""
        self.relays.connected = False
        for panel in self._order:
            # Whatever a plug reports from now on is lost until redlight is back.
            self.relays.lose_sight(panel)
            self.timers.disarm(panel.index, TimerKind.POLL_ANSWER)
            if panel.relay is Relay.JOURNALING:
                # Its ON can no longer go out in time (rule 6): the session is over unlit.
                self.sessions.end(panel, now, "disconnected")
        return self._flush(now)

    def receive(self, topic: str, payload: bytes, retain: bool, now: Now) -> list[Effect]:
        """A message arrived on a subscribed topic."""
        if retain and (topic in self._plug_command_topics or self._own_command(topic)):
            # Safety rule 7: a retained command is never obeyed, and is removed. Commands that
            # are not retained are routed above the core (redlight.router, redlight.controller).
            plug = topic in self._plug_command_topics
            self.out.extend(clear_retained_command(topic, payload, plug=plug))
        routed = self._exact_routes.get(topic, [])
        if self._wild_routes:
            routed = routed + [p for f, p in self._wild_routes if topic_matches_sub(f, topic)]
        for panel in routed:
            self._plug_message(panel, topic, payload, retain, now)
        return self._flush(now)

    def _plug_message(
        self, panel: Panel, topic: str, payload: bytes, retain: bool, now: Now
    ) -> None:
        """What ``panel``'s plug said, read by its preset: its relay, its being there, power."""
        report = panel.plug.read(topic, payload)
        if isinstance(report, PlugState):
            # A retained state is the plug's last word, perhaps from before a gap; it is
            # news of now only for a plug that cannot be asked.
            fresh = not retain or not panel.plug.state_request
            self.reports.state(panel, report.on, now, fresh=fresh)
        elif isinstance(report, PlugAvailability):
            self.reports.availability(panel, report, now)
        if panel.power.min_w is not None:
            watts = panel.plug.power(topic, payload)
            if watts is not None:
                self.reports.power(panel, watts, now)

    def start(
        self,
        panel_id: str,
        request: cmd.Start,
        source: Source,
        now: Now,
    ) -> tuple[Started | cmd.Rejection, list[Effect]]:
        """Start a session (for commands, schedules and routines): whether it began, and the
        effects (a refusal is among them as ``command_rejected`` too)."""
        panel = self.panels.get(panel_id)
        if panel is None:
            message = f"there is no panel {panel_id!r}"
            answer: Session | cmd.Rejection
            answer = cmd.Rejection("unknown_panel", message, request.request_id)
        else:
            answer = self.sessions.start(panel, request, source, now)
        if isinstance(answer, cmd.Rejection):
            self._reject(panel, answer, now)
            return answer, self._flush(now)
        assert panel is not None
        return Started(answer.id, panel.id, answer.duration_s), self._flush(now)

    def stop(self, panel_id: str, now: Now, request_id: str | None = None) -> list[Effect]:
        """Stop a panel's session, or switch it off if it is on."""
        panel = self.panels.get(panel_id)
        if panel is None:
            self._reject(None, cmd.Rejection("unknown_panel", f"no panel {panel_id!r}"), now)
        else:
            self._stop(panel, now, "stopped", request_id)
        return self._flush(now)

    def _stop(self, panel: Panel, now: Now, reason: str, request_id: str | None = None) -> None:
        """The panel's session ends, paused or not, and the panel is switched off."""
        if panel.paused is not None:
            self.controls.end_paused(panel, now, reason, request_id)
        self.sessions.stop(panel, now, reason, request_id)

    def change(
        self, panel_id: str, change: cmd.SessionChange, now: Now
    ) -> tuple[cmd.Rejection | None, list[Effect]]:
        """Extend, pause or resume a panel's session (the router knows the panel): ``None`` if
        done, else why not (a refusal is among the effects as ``command_rejected`` too)."""
        panel = self.panels[panel_id]
        refusal = self.controls.change(panel, change, now)
        if refusal is not None:
            self._reject(panel, refusal, now)
        return refusal, self._flush(now)

    def set_default_duration(self, panel_id: str, seconds: float, now: Now) -> list[Effect]:
        """A panel's default session length (1 s to max_on, checked by the command parser)."""
        panel = self.panels[panel_id]
        panel.default_s = seconds
        self.out.add(SettingChanged(f"panel.{panel.id}.default_duration_s", str(seconds)))
        self.board.republish(panel)  # the answer Home Assistant's number waits for
        return self._flush(now)

    def take_ended(self) -> list[SessionEnded]:
        """The sessions that ended since the last call, oldest first (for routines)."""
        ended, self.sessions.ended = self.sessions.ended, []
        return ended

    def journaled(self, session_id: str, now: Now) -> list[Effect]:
        """The history has the session's journal row (or gave up on it): its ON goes out."""
        panel = self.sessions.journaling.get(session_id)
        if panel is not None:
            self.sessions.switch_on(panel, now)
        return self._flush(now)

    def tick(self, now: Now) -> list[Effect]:
        """Time passed: whatever timer is due is handled, earliest first."""
        for index, kind in self.timers.pop_due(now.mono):
            panel = self._order[index]
            self._handlers[kind](panel, now)
            self.board.touch(panel)
        return self._flush(now)

    def shutdown(self, now: Now) -> list[Effect]:
        """Safety rule 9: end every session and switch every panel off."""
        self.sessions.stopping = True
        for panel in self._order:
            self._stop(panel, now, "shutdown")
        return self._flush(now)

    def states(self, now: Now) -> list[Effect]:
        """Every retained state again (after Home Assistant restarts and rediscovers)."""
        self.board.forget()
        self.out.extend(self.board.daemon_state(now.mono, force=True))
        return self._flush(now)

    def day_totals(
        self, day: date, seconds_by_session: DayRows, now: Now, earlier: WeekRows | None = None
    ) -> list[Effect]:
        """History's sessions of local ``day`` (panel -> session id -> seconds), read off the loop,
        and of the days of its week before it (``earlier``, by ISO date: ``week_s``).

        Merged by session id with the sessions the core saw itself, so rows written before a
        restart count and nothing counts twice; panels whose ``today_s`` changed are published.
        """
        self._days.answer(day.isoformat(), seconds_by_session, earlier or {}, self._order, now.wall)
        for panel in self._order:
            self.board.touch(panel)
        return self._flush(now)

    # ------------------------------------------------------------------ queries

    def confirmation_due(self, now: Now) -> bool:
        """A plug's confirmation is overdue: the next tick would call the plug silent."""
        return self.timers.any_due(now.mono, TimerKind.CONFIRM_ON)

    def next_wakeup(self) -> float | None:
        """The earliest monotonic time at which :meth:`tick` has something to do."""
        times = [self.timers.earliest(), self.board.daemon_state_due]
        return min((t for t in times if t is not None), default=None)

    def armed(self, panel_id: str) -> dict[TimerKind, float]:
        """The timers armed for a panel, by kind."""
        return self.timers.armed(self.panels[panel_id].index)

    def all_off_confirmed(self) -> bool:
        """Every OFF sent has been confirmed by its plug."""
        return not any(panel.off_pending for panel in self._order)

    def running(self) -> list[str]:
        """Panels with a session, in config order."""
        return self.board.running_ids()

    def panel_state(self, panel_id: str, now: Now) -> dict[str, Any]:
        """A panel's state object (SPEC §4)."""
        panel = self.panels[panel_id]
        totals = self._days.totals(panel, now.mono, now.wall)
        return panel_state(panel, now.mono, totals, self.config.panels[panel_id].weekly_goal)

    # ------------------------------------------------------------------ commands

    def _own_command(self, topic: str) -> bool:
        """``<b>/.../set``: one of redlight's own command topics."""
        return topic.startswith(self.topics.base + "/") and topic.endswith("/set")

    def _reject(self, panel: Panel | None, rejection: cmd.Rejection, now: Now) -> None:
        self.out.add(rejection_event(rejection, panel.id if panel else None, now.wall))

    # ------------------------------------------------------------------ output

    def _event(self, event_type: str, panel: Panel | None, now: Now, **fields: Any) -> None:
        self.out.event(event_type, panel.id if panel else None, now.wall, **fields)

    def _flush(self, now: Now) -> list[Effect]:
        """What this step decided: plug commands first (the outbox sorts them), then the rest."""
        state_of = lambda panel: self.panel_state(panel.id, now)  # noqa: E731 - one use
        self.out.extend(self.board.publish(now.mono, state_of, stopping=self.sessions.stopping))
        return list(self.out.take())


def build_panels(
    config: Config, restored: Restored, limits: Limits, days: DayBook
) -> dict[str, Panel]:
    """Every configured panel, with what ``restored`` brings from storage."""
    panels: dict[str, Panel] = {}
    if restored.day is not None:
        days.add_days(restored.week_sessions)
        days.add_read(restored.day, restored.day_sessions)
    for index, (key, settings) in enumerate(config.panels.items()):
        plug = build_plug(key, settings.plug, base_topic=config.mqtt.base_topic)
        default_s = config.default_duration(key).total_seconds()
        panel = Panel(
            id=key,
            index=index,
            name=config.panel_name(key),
            area=settings.area,
            plug=plug,
            irradiance=settings.irradiance_mw_cm2,
            default_s=restored.default_duration_s.get(key, default_s),
            exposure=Exposure(limits.min_off_s),
            power=Power(settings.min_power_w),
            finished_today_s=restored.finished_today_s.get(key, 0.0),
            availability=dict.fromkeys(plug.availability_topics, True),
        )
        if restored.day is not None:
            panel.day = restored.day
            panel.finished_today_s = days.total(restored.day, key)
        panels[key] = panel
    return panels


def plug_routes(
    panels: Iterable[Panel],
) -> tuple[dict[str, list[Panel]], list[tuple[str, Panel]]]:
    """Which panels a plug topic concerns: exact topics by lookup, wildcard filters by match."""
    exact: dict[str, list[Panel]] = {}
    wild: list[tuple[str, Panel]] = []
    for panel in panels:
        for topic in panel.plug.subscriptions:
            if "+" in topic or "#" in topic:
                wild.append((topic, panel))
            else:
                exact.setdefault(topic, []).append(panel)
    return exact, wild
