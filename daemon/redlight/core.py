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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import Any, Final

from paho.mqtt.client import topic_matches_sub

from redlight import commands as cmd
from redlight.broker import STATE_QOS, Message
from redlight.config import Config
from redlight.days import DayBook
from redlight.effects import Effect as AdapterEffect
from redlight.effects import (
    LogLine,
    Now,
    Outbox,
    Resubscribe,
    SessionClosed,
    SessionOpened,
    SettingChanged,
    event_effects,
    urgent,
)
from redlight.limits import Limits, Moment, admit
from redlight.messages import Topics, clear_retained, dumps, iso, panel_state_message
from redlight.panel import Exposure, Panel, Power, Relay, Session, Source
from redlight.presets import PlugAvailability, PlugState, build_plug
from redlight.relay import MAX_OFF_RETRY_S, RelayControl
from redlight.timers import TimerKind, Timers
from redlight.view import ends_wall, num, panel_state

__all__ = [
    "MAX_OFF_RETRY_S",
    "Core",
    "Effect",
    "LogLine",
    "Now",
    "Restored",
    "Resubscribe",
    "SessionClosed",
    "SessionOpened",
    "SettingChanged",
    "Source",
    "event_effects",
]

#: ``ending_soon`` is announced this long before a session ends.
ENDING_SOON_S: Final = 30.0
#: Power verification: ask the plug for its power this long after it confirmed ON, and judge
#: it this long after (a panel needs a moment to draw its full power; plugs average).
POWER_ASK_S: Final = 3.0
POWER_CHECK_S: Final = 6.0
#: A plug still passing power this long after it confirmed OFF has a stuck (welded) relay.
STUCK_AFTER_S: Final = 5.0
#: ``<b>/state`` (the running panels) is published at most this often: when a thousand
#: sessions end within a second, one update with the outcome instead of a thousand lists.
DAEMON_STATE_EVERY_S: Final = 1.0
#: Safety rule 8 vs. rule 12: how long a session's ON waits for its journal row to be
#: acknowledged. Long enough for a healthy disk (a crash after the ON then leaves a row to
#: close as interrupted); short enough that a sick one delays only that ON, and nothing else:
#: the core goes on meanwhile, and the ON goes out when the wait is over (``storage_slow``).
JOURNAL_WAIT_S: Final = 0.1


@dataclass(frozen=True, slots=True)
class RoutineRequest:
    """``START`` or ``STOP`` arrived for a routine: for :class:`redlight.routines.Routines`."""

    routine: str
    start: bool
    source: str = "homeassistant"


@dataclass(frozen=True, slots=True)
class StopAllRequested:
    """``stop_all`` arrived: routines and offers end too, not only the sessions."""


@dataclass(frozen=True, slots=True)
class ScheduleToggle:
    """``ON``/``OFF`` arrived for a schedule: for :class:`redlight.schedules.Schedules`."""

    schedule: str
    enabled: bool


@dataclass(frozen=True, slots=True)
class OfferAccepted:
    """``accept_offer`` arrived for a schedule's offer."""

    offer: str
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class ScheduleChanged:
    """A schedule was switched on or off: the runtime pauses or resumes its job."""

    schedule: str
    enabled: bool


Request = RoutineRequest | StopAllRequested | ScheduleToggle | OfferAccepted | ScheduleChanged
Effect = AdapterEffect | Request


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
        """Build the panels from config; ``restored`` brings totals and settings from storage.

        A session's ON waits for :meth:`journaled`, at most ``journal_wait_s``.
        """
        self.config = config
        self.topics = Topics(config.mqtt.base_topic)
        safety = config.safety
        self.max_on_s = safety.max_on.total_seconds()
        self.limits = Limits(
            max_on_s=self.max_on_s,
            cooldown_s=safety.cooldown.total_seconds(),
            min_off_s=safety.min_off.total_seconds(),
            daily_max_s=safety.daily_max.total_seconds() if safety.daily_max else None,
        )
        self.confirm_s = safety.confirm_timeout.total_seconds()
        self.margin_s = safety.failsafe_margin.total_seconds()
        self.poll_s = safety.poll_interval.total_seconds()
        self.journal_wait_s = journal_wait_s
        self._new_id = new_id or (lambda: uuid.uuid4().hex[:12])
        self.out = Outbox()
        self.timers = Timers()
        self.relays = RelayControl(self.out, self.timers, self.confirm_s, self.poll_s)
        restored = restored or Restored()
        self.panels = self._build_panels(restored)
        self._order = list(self.panels.values())
        self._restored_last_end = dict(restored.last_end)
        self._restored_exposure = dict(restored.exposure)
        self._days = DayBook(expect_history=restored.day is not None)
        if restored.day is not None:
            self._days.add_read(restored.day, restored.day_sessions)
            for panel in self._order:
                panel.day = restored.day
                panel.finished_today_s = self._days.total(restored.day, panel.id)
        self._routes()
        self.ready = False
        self.stopping = False
        #: Sessions whose ON waits for the journal: session id -> panel.
        self._journaling: dict[str, Panel] = {}
        self._running: set[int] = set()
        self._running_changed = True
        self._published_running: list[str] | None = None
        self._daemon_state_at = float("-inf")
        self._daemon_state_due: float | None = None
        #: Panels whose state may have changed in this step, and what each published last.
        self._dirty: set[int] = set()
        self._published: dict[int, dict[str, Any]] = {}
        self._requests: list[Request] = []
        #: The one table from a due timer to what it means.
        self._handlers: dict[TimerKind, Callable[[Panel, Now], None]] = {
            TimerKind.DEADLINE: self._deadline,
            TimerKind.CONFIRM_ON: self._on_unconfirmed,
            TimerKind.OFF_RETRY: self.relays.retry_off,
            TimerKind.JOURNAL: self._journal_slow,
            TimerKind.ENDING_SOON: self._ending_soon,
            TimerKind.POWER_ASK: self._ask_power,
            TimerKind.POWER_CHECK: self._check_power,
            TimerKind.POLL_ANSWER: self.relays.poll_unanswered,
            TimerKind.POLL: self.relays.poll,
            TimerKind.COOLDOWN_END: self._cooldown_over,
        }

    def _build_panels(self, restored: Restored) -> dict[str, Panel]:
        panels: dict[str, Panel] = {}
        base = self.config.mqtt.base_topic
        for index, (key, settings) in enumerate(self.config.panels.items()):
            plug = build_plug(key, settings.plug, base_topic=base)
            default_s = self.config.default_duration(key).total_seconds()
            panels[key] = Panel(
                id=key,
                index=index,
                name=self.config.panel_name(key),
                area=settings.area,
                plug=plug,
                irradiance=settings.irradiance_mw_cm2,
                default_s=restored.default_duration_s.get(key, default_s),
                exposure=Exposure(self.limits.min_off_s),
                power=Power(settings.min_power_w),
                finished_today_s=restored.finished_today_s.get(key, 0.0),
                availability=dict.fromkeys(plug.availability_topics, True),
            )
        return panels

    def _routes(self) -> None:
        """Which panels a plug topic concerns: exact topics by lookup, wildcards by match."""
        self._exact_routes: dict[str, list[Panel]] = {}
        self._wild_routes: list[tuple[str, Panel]] = []
        self._plug_command_topics: dict[str, Panel] = {}
        for panel in self._order:
            for topic in panel.plug.subscriptions:
                if "+" in topic or "#" in topic:
                    self._wild_routes.append((topic, panel))
                else:
                    self._exact_routes.setdefault(topic, []).append(panel)
            self._plug_command_topics[panel.plug.command_topic] = panel

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
        self._published.clear()
        self._published_running = None
        self._running_changed = True
        self._daemon_state_at = float("-inf")
        count = len(self._order)
        for panel in self._order:
            self.relays.send(panel.plug.ask_state())
            # Polls spread over the interval, so a thousand plugs never answer at once.
            poll_at = now.mono + self.poll_s * (panel.index + 1) / count
            self.timers.arm(panel.index, TimerKind.POLL, poll_at)
            if not self.ready:
                self._start_safe(panel, now)
            elif panel.session is not None and now.mono >= panel.session.deadline:
                # Safety rule 10: a deadline that passed while disconnected is enforced now.
                self._end_session(panel, now, self._deadline_reason(panel.session))
            elif panel.off_pending:
                self.relays.send_off(panel, now)
            self._dirty.add(panel.index)
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
                self._end_session(panel, now, "disconnected")
        return self._flush(now)

    def receive(self, topic: str, payload: bytes, retain: bool, now: Now) -> list[Effect]:
        """A message arrived on a subscribed topic."""
        if topic in self._plug_command_topics and retain:
            self._clear_retained_command(topic, payload)
        elif topic.startswith(self.topics.base + "/"):
            self._own_topic(topic, payload, retain, now)
        routed = self._exact_routes.get(topic, [])
        if self._wild_routes:
            routed = routed + [p for f, p in self._wild_routes if topic_matches_sub(f, topic)]
        for panel in routed:
            report = panel.plug.read(topic, payload)
            if isinstance(report, PlugState):
                # A retained state is the plug's last word, perhaps from before a gap; it is
                # news of now only for a plug that cannot be asked.
                fresh = not retain or not panel.plug.state_request
                self._plug_report(panel, report.on, now, fresh=fresh)
            elif isinstance(report, PlugAvailability):
                self._availability(panel, report, now)
            if panel.power.min_w is not None:
                watts = panel.plug.power(topic, payload)
                if watts is not None:
                    self._power_report(panel, watts, now)
        return self._flush(now)

    def start(
        self,
        panel_id: str,
        request: cmd.Start,
        source: Source,
        now: Now,
    ) -> list[Effect]:
        """Start a session (used by commands, and by schedules and routines)."""
        self._start(panel_id, request, source, now)
        return self._flush(now)

    def stop(self, panel_id: str, now: Now, request_id: str | None = None) -> list[Effect]:
        """Stop a panel's session, or switch it off if it is on."""
        panel = self.panels.get(panel_id)
        if panel is None:
            self._reject(None, cmd.Rejection("unknown_panel", f"no panel {panel_id!r}"), now)
        else:
            self._stop(panel, now, "stopped")
        return self._flush(now)

    def journaled(self, session_id: str, now: Now) -> list[Effect]:
        """The history has the session's journal row (or gave up on it): its ON goes out."""
        panel = self._journaling.get(session_id)
        if panel is not None:
            self._switch_on(panel, now)
        return self._flush(now)

    def tick(self, now: Now) -> list[Effect]:
        """Time passed: whatever timer is due is handled, earliest first."""
        for index, kind in self.timers.pop_due(now.mono):
            panel = self._order[index]
            self._handlers[kind](panel, now)
            self._dirty.add(index)
        return self._flush(now)

    def shutdown(self, now: Now) -> list[Effect]:
        """Safety rule 9: end every session and switch every panel off."""
        self.stopping = True
        for panel in self._order:
            self._stop(panel, now, "shutdown")
        return self._flush(now)

    def states(self, now: Now) -> list[Effect]:
        """Every retained state again (after Home Assistant restarts and rediscovers)."""
        self._published.clear()
        self._dirty.update(range(len(self._order)))
        self._publish_daemon_state(now, force=True)
        return self._flush(now)

    def day_totals(
        self, day: date, seconds_by_session: Mapping[str, Mapping[str, float]], now: Now
    ) -> list[Effect]:
        """History's sessions of local ``day`` (panel -> session id -> seconds), read off the loop.

        Merged by session id with the sessions the core saw itself, so rows written before a
        restart count and nothing counts twice; panels whose ``today_s`` changed are published.
        """
        key = day.isoformat()
        # Every panel is brought to today first, so one that has not noticed the new day yet
        # (nothing asked since the clock stepped) is compared, and published, too.
        for panel in self._order:
            self._days.roll(panel, now.wall)
            self._dirty.add(panel.index)
        self._days.add_read(key, seconds_by_session)
        for panel in self._order:
            if panel.day == key:
                panel.finished_today_s = self._days.total(key, panel.id)
        return self._flush(now)

    # ------------------------------------------------------------------ queries

    def confirmation_due(self, now: Now) -> bool:
        """A plug's confirmation is overdue: the next tick would call the plug silent."""
        return self.timers.any_due(now.mono, TimerKind.CONFIRM_ON)

    def next_wakeup(self) -> float | None:
        """The earliest monotonic time at which :meth:`tick` has something to do."""
        times = [self.timers.earliest(), self._daemon_state_due]
        return min((t for t in times if t is not None), default=None)

    def armed(self, panel_id: str) -> dict[TimerKind, float]:
        """The timers armed for a panel, by kind."""
        return self.timers.armed(self.panels[panel_id].index)

    def all_off_confirmed(self) -> bool:
        """Every OFF sent has been confirmed by its plug."""
        return not any(panel.off_pending for panel in self._order)

    def running(self) -> list[str]:
        """Panels with a session, in config order."""
        return [self._order[i].id for i in sorted(self._running)]

    def panel_state(self, panel_id: str, now: Now) -> dict[str, Any]:
        """A panel's state object (SPEC §4)."""
        panel = self.panels[panel_id]
        return panel_state(panel, now.mono, self._days.today_s(panel, now.mono, now.wall))

    # ------------------------------------------------------------------ sessions

    def _start_safe(self, panel: Panel, now: Now) -> None:
        """Safety rule 8: every panel is switched off before commands are accepted."""
        self.relays.send_off(panel, now)
        last_end = self._restored_last_end.get(panel.id)
        cooldown_s = self.limits.cooldown_s
        if last_end is not None and cooldown_s > 0:
            # A clock behind the last end (no real-time clock after a power cut) means the
            # session may have ended just now: the whole cooldown, never none.
            remaining = cooldown_s - max(0.0, (now.wall - last_end).total_seconds())
            if remaining > 0:
                self._cool(panel, now.mono + remaining, now.wall + timedelta(seconds=remaining))
        exposure = self._restored_exposure.get(panel.id)
        if exposure is not None:
            ended, on_s = exposure
            panel.exposure.end = now.mono - max(0.0, (now.wall - ended).total_seconds())
            panel.exposure.on_s = on_s

    def _start(self, panel_id: str, request: cmd.Start, source: Source, now: Now) -> None:
        """A session is asked for: admitted by the limits, journaled, then switched on."""
        panel = self.panels.get(panel_id)
        if panel is None:
            message = f"there is no panel {panel_id!r}"
            self._reject(None, cmd.Rejection("unknown_panel", message, request.request_id), now)
            return
        answer = admit(self.limits, panel, request, self._moment(panel, now))
        if isinstance(answer, cmd.Rejection):
            if answer.reason == "plug_state_unknown":
                self.relays.learn_state(panel, now)
            self._reject(panel, answer, now)
            return
        session = Session(self._new_id(), source, now.mono, now.wall, answer, request.request_id)
        panel.exposure.close_stray(now.mono)
        self.timers.disarm(panel.index, TimerKind.OFF_RETRY)  # a pending OFF is overtaken
        panel.go(Relay.JOURNALING)
        self._open(panel, session, now)
        # Safety rule 12 with rule 8: the journal row first; the ON on its acknowledgement.
        self._journaling[session.id] = panel
        self.timers.arm(panel.index, TimerKind.JOURNAL, now.mono + self.journal_wait_s)
        fields: dict[str, Any] = {
            "session": session.id,
            "source": source,
            "duration_s": num(answer),
            "ends_at": iso(ends_wall(session)),
        }
        if request.dose_j_cm2 is not None:
            fields["dose_j_cm2"] = request.dose_j_cm2
        if panel.plug.has_failsafe:
            fields["failsafe_s"] = num(min(answer, self.max_on_s) + self.margin_s)
        if request.request_id is not None:
            fields["request_id"] = request.request_id
        self._event("session_started", panel, now, **fields)

    def _moment(self, panel: Panel, now: Now) -> Moment:
        today_s = 0.0
        if self.limits.daily_max_s is not None:
            today_s = self._days.today_s(panel, now.mono, now.wall)
        return Moment(now.mono, now.wall, self.connected, self.stopping, today_s)

    def _open(self, panel: Panel, session: Session, now: Now) -> None:
        """``session`` begins on ``panel``: journaled, timed, listed as running."""
        panel.session = session
        self._running.add(panel.index)
        self._running_changed = True
        self.out.add(
            SessionOpened(
                id=session.id,
                panel=panel.id,
                area=panel.area,
                source=session.source,
                started_at=session.started_wall,
                planned_s=session.duration_s,
                irradiance_mw_cm2=panel.irradiance,
            )
        )
        self._dirty.add(panel.index)
        self.timers.arm(panel.index, TimerKind.DEADLINE, session.deadline)
        if session.duration_s > ENDING_SOON_S:
            self.timers.arm(panel.index, TimerKind.ENDING_SOON, session.deadline - ENDING_SOON_S)

    def _switch_on(self, panel: Panel, now: Now) -> None:
        """Safety rules 5 and 6: the one ON, with the plug's own timer armed for what is left."""
        session = panel.session
        assert session is not None
        del self._journaling[session.id]
        self.timers.disarm(panel.index, TimerKind.JOURNAL)
        panel.go(Relay.ON_REQUESTED)
        left_s = min(session.deadline - now.mono, self.max_on_s)
        failsafe = left_s + self.margin_s if panel.plug.has_failsafe else None
        self.relays.send(panel.plug.turn_on(failsafe))
        self.timers.arm(panel.index, TimerKind.CONFIRM_ON, now.mono + self.confirm_s)

    def _journal_slow(self, panel: Panel, now: Now) -> None:
        """The journal row was not acknowledged in time: the ON does not wait any longer."""
        assert panel.session is not None
        self.out.log(
            "warning",
            "storage_slow",
            operation="session_opened",
            waited_s=self.journal_wait_s,
            session=panel.session.id,
        )
        self._switch_on(panel, now)

    def _stop(self, panel: Panel, now: Now, reason: str, request_id: str | None = None) -> None:
        if panel.session is not None:
            self._end_session(panel, now, reason, request_id=request_id)
        else:
            # Nothing redlight knows of is running, but "off" must always mean off; the state
            # is published even unchanged, as the answer a stop waits for.
            self.relays.send_off(panel, now)
            self._republish(panel)

    def _deadline_reason(self, session: Session) -> str:
        return "cutoff" if session.source == "external" else "completed"

    def _end_session(
        self, panel: Panel, now: Now, reason: str, *, request_id: str | None = None
    ) -> None:
        """The session is over: OFF first, then its record, the cooldown and the exposure."""
        session = panel.session
        assert session is not None
        self.relays.send_off(panel, now)
        for kind in (TimerKind.DEADLINE, TimerKind.ENDING_SOON, TimerKind.JOURNAL):
            self.timers.disarm(panel.index, kind)
        self.timers.disarm(panel.index, TimerKind.POWER_ASK)
        self.timers.disarm(panel.index, TimerKind.POWER_CHECK)
        self._journaling.pop(session.id, None)
        panel.session = None
        self._running.discard(panel.index)
        self._running_changed = True
        self._dirty.add(panel.index)
        actual_s = session.elapsed(now.mono)
        ended = session.started_wall + timedelta(seconds=actual_s)
        self._days.count(panel, session, actual_s, now.wall)
        # The exposure counts the light until the OFF goes out, past the deadline too (a
        # deadline that passed while the broker was away): it is the panel's, not the plan's.
        panel.exposure.lit(session.started_mono, max(actual_s, now.mono - session.started_mono))
        if self.limits.cooldown_s > 0:
            cooldown = timedelta(seconds=self.limits.cooldown_s)
            until = session.started_mono + actual_s + self.limits.cooldown_s
            self._cool(panel, until, ended + cooldown)
        self._record_end(panel, session, now, reason, request_id, actual_s, ended)

    def _record_end(
        self,
        panel: Panel,
        session: Session,
        now: Now,
        reason: str,
        request_id: str | None,
        actual_s: float,
        ended: datetime,
    ) -> None:
        """The events and the history row of an ended session."""
        dose = actual_s * panel.irradiance / 1000 if panel.irradiance is not None else None
        if session.source == "external" and reason == "cutoff":
            # Safety rule 2: an ON redlight did not start was cut off at max_on.
            self._event(
                "cutoff_enforced",
                panel,
                now,
                session=session.id,
                on_s=num(actual_s),
                max_on_s=num(self.max_on_s),
            )
        fields: dict[str, Any] = {
            "session": session.id,
            "source": session.source,
            "reason": reason,
            "duration_s": num(actual_s),
            "planned_s": num(session.duration_s),
        }
        if dose is not None:
            fields["dose_j_cm2"] = round(dose, 2)
        request_id = request_id or (session.request_id if reason == "stopped" else None)
        if request_id is not None:
            fields["request_id"] = request_id
        self._event("session_finished", panel, now, **fields)
        rounded = round(dose, 3) if dose is not None else None
        self.out.add(SessionClosed(session.id, ended, actual_s, reason, rounded))

    def _cool(self, panel: Panel, until: float, wall: datetime) -> None:
        panel.cooldown_until = until
        panel.cooldown_wall = wall
        self.timers.arm(panel.index, TimerKind.COOLDOWN_END, until)

    def _external_on(self, panel: Panel, now: Now) -> None:
        """Safety rule 2: an ON redlight did not start is cut off at most max_on after it began.

        It began when it was reported, if redlight has watched the plug without a gap since its
        last OFF report; otherwise at any moment after that report, so the session counts from
        there and an ON hidden longer than max_on (or than the exposure's budget) ends at once.
        """
        unseen_s = 0.0 if panel.watching else now.mono - panel.off_seen_at  # inf: never seen off
        start = now.mono - min(unseen_s, self.max_on_s)
        session = Session(
            id=self._new_id(),
            source="external",
            started_mono=start,
            started_wall=now.wall - timedelta(seconds=now.mono - start),
            duration_s=max(0.0, self.max_on_s - panel.exposure.before(start)),
        )
        panel.go(Relay.ON)
        self._open(panel, session, now)
        fields: dict[str, Any] = {
            "session": session.id,
            "source": "external",
            "duration_s": num(session.duration_s),
            "ends_at": iso(ends_wall(session)),
        }
        if 0 < unseen_s < float("inf"):
            fields["unseen_s"] = num(unseen_s)
        self._event("session_started", panel, now, **fields)
        if now.mono >= session.deadline:
            self._end_session(panel, now, "cutoff")

    # ------------------------------------------------------------------ timers

    def _deadline(self, panel: Panel, now: Now) -> None:
        assert panel.session is not None
        self._end_session(panel, now, self._deadline_reason(panel.session))

    def _ending_soon(self, panel: Panel, now: Now) -> None:
        session = panel.session
        assert session is not None
        self._event(
            "ending_soon",
            panel,
            now,
            session=session.id,
            ends_at=iso(ends_wall(session)),
            remaining_s=num(session.deadline - now.mono),
        )

    def _on_unconfirmed(self, panel: Panel, now: Now) -> None:
        """The plug did not confirm an ON: switch it off rather than guess (rules 4 and 2)."""
        if panel.session is not None:
            self._end_session(panel, now, "cutoff")
        self.relays.unresponsive(panel, now, "on")

    def _cooldown_over(self, panel: Panel, now: Now) -> None:
        panel.cooldown_wall = None

    # ------------------------------------------------------------------ plug reports

    def _plug_report(self, panel: Panel, on: bool, now: Now, *, fresh: bool = True) -> None:
        """The plug says its relay is on or off; ``fresh`` unless the broker kept it retained
        (then it is the plug's last word, perhaps from before a gap, not news of now)."""
        self._dirty.add(panel.index)
        self.relays.heard(panel)
        if on:
            panel.power.off_since = None
        else:
            if panel.reported != "off" or panel.power.off_since is None:
                panel.power.off_since = now.mono
            if fresh:
                self.relays.seen_off(panel, now)
        panel.reported = "on" if on else "off"
        if on:
            self._reported_on(panel, now)
        else:
            self._reported_off(panel, now)

    def _reported_on(self, panel: Panel, now: Now) -> None:
        relay = panel.relay
        if relay is Relay.ON_REQUESTED:
            panel.go(Relay.ON)
            self.timers.disarm(panel.index, TimerKind.CONFIRM_ON)
            if panel.power.min_w is not None:
                self.timers.arm(panel.index, TimerKind.POWER_ASK, now.mono + POWER_ASK_S)
                self.timers.arm(panel.index, TimerKind.POWER_CHECK, now.mono + POWER_CHECK_S)
        elif panel.off_pending:
            # An OFF is on its way and re-sent until confirmed; this report may be stale.
            # Once the plug is known not to obey, each ON it reports is news to a person.
            if panel.exposure.stray_at is None:
                panel.exposure.stray_at = now.mono
            if panel.unresponsive:
                self.relays.off_not_obeyed(panel, now)
        elif relay in (Relay.UNKNOWN, Relay.OFF):
            self._external_on(panel, now)
        # ON, or JOURNALING: already on, or redlight's ON has not gone out yet (this report
        # says nothing of it; the plug's answer to that ON will).

    def _reported_off(self, panel: Panel, now: Now) -> None:
        if panel.off_pending:
            self.relays.off_confirmed(panel, now)
        elif panel.relay is Relay.ON:
            # Switched off by hand, by its own failsafe or by a power cut; OFF is still sent
            # (and confirmed), since a stale report must not leave a panel on unwatched.
            self._end_session(panel, now, "external_off")

    def _availability(self, panel: Panel, report: PlugAvailability, now: Now) -> None:
        self._dirty.add(panel.index)
        panel.availability[report.topic] = report.online
        # Any availability message means the plug (or its bridge) went away or came back: what
        # it did meanwhile was not seen, even when redlight never saw it go (a dying broker
        # sends no will).
        self.relays.lose_sight(panel)
        if panel.online:
            # Online, changed or not: ask what it is doing, and repeat a pending OFF at once.
            self.relays.send(panel.plug.ask_state())
            if panel.off_pending:
                self.relays.send_off(panel, now)

    # ------------------------------------------------------------------ power

    def _power_report(self, panel: Panel, watts: float, now: Now) -> None:
        """A power reading: remembered for the check after ON; a stuck relay after OFF."""
        power = panel.power
        assert power.min_w is not None
        power.watts = watts
        power.at = now.mono
        settled = power.off_since is not None and now.mono - power.off_since >= STUCK_AFTER_S
        off = panel.reported == "off" and not panel.off_pending
        if off and settled and watts >= power.min_w and not power.stuck:
            power.stuck = True
            self._event(
                "relay_stuck",
                panel,
                now,
                power_w=num(watts),
                message=f"the plug of {panel.name} says OFF but still passes {watts:g} W: "
                "its relay may be welded; unplug the panel",
            )
            self._dirty.add(panel.index)
        elif power.stuck and watts < power.min_w:
            power.stuck = False
            self._dirty.add(panel.index)

    def _ask_power(self, panel: Panel, now: Now) -> None:
        if self.connected:
            self.relays.send(panel.plug.ask_power())

    def _check_power(self, panel: Panel, now: Now) -> None:
        """A few seconds after ON: a panel that draws too little has its own switch off."""
        session = panel.session
        power = panel.power
        if session is None or power.min_w is None:
            return
        fresh = now.mono - power.at <= POWER_CHECK_S - POWER_ASK_S + 1.0
        if power.watts is None or not fresh:
            self.out.log("warning", "power_unknown", panel=panel.id, session=session.id)
            return
        if power.watts < power.min_w:
            self._end_session(panel, now, "no_power")

    # ------------------------------------------------------------------ commands

    def _own_topic(self, topic: str, payload: bytes, retain: bool, now: Now) -> None:
        parts = topic[len(self.topics.base) + 1 :].split("/")
        if parts[-1] != "set":
            return
        if retain:
            # Safety rule 7: a retained command is never obeyed, and is removed.
            self._clear_retained_command(topic, payload)
            return
        if not payload:
            # MQTT's "delete the retained message" (ours, echoed back, or a user's): not a
            # command, so nothing to reject either.
            return
        if parts == ["set"]:
            self._daemon_command(payload, now)
        elif len(parts) == 3 and parts[0] == "panel":
            self._panel_command(parts[1], payload, now)
        elif len(parts) == 4 and parts[0] == "panel" and parts[2] == "duration":
            self._duration_command(parts[1], payload, now)
        elif len(parts) == 3 and parts[0] == "routine":
            routine = cmd.parse_routine_command(payload)
            if isinstance(routine, cmd.Rejection):
                self._reject(None, routine, now, routine=parts[1])
            elif parts[1] not in self.config.routines:
                unknown = cmd.Rejection("unknown_routine", f"there is no routine {parts[1]!r}")
                self._reject(None, unknown, now, routine=parts[1])
            else:
                self._requests.append(RoutineRequest(parts[1], routine.start))
        elif len(parts) == 3 and parts[0] == "schedule":
            schedule = cmd.parse_schedule_command(payload)
            if isinstance(schedule, cmd.Rejection):
                self._reject(None, schedule, now, schedule=parts[1])
            elif parts[1] not in self.config.schedules:
                unknown = cmd.Rejection("unknown_schedule", f"there is no schedule {parts[1]!r}")
                self._reject(None, unknown, now, schedule=parts[1])
            else:
                self._requests.append(ScheduleToggle(parts[1], schedule.enabled))

    def _panel_command(self, panel_id: str, payload: bytes, now: Now) -> None:
        panel = self.panels.get(panel_id)
        parsed = cmd.parse_panel_command(payload)
        if panel is None:
            rid = None if isinstance(parsed, cmd.Rejection) else parsed.request_id
            self._reject(
                None, cmd.Rejection("unknown_panel", f"there is no panel {panel_id!r}", rid), now
            )
        elif isinstance(parsed, cmd.Rejection):
            self._reject(panel, parsed, now)
        elif isinstance(parsed, cmd.Start):
            self._start(panel_id, parsed, parsed.source, now)
        else:
            self._stop(panel, now, "stopped", parsed.request_id)

    def _duration_command(self, panel_id: str, payload: bytes, now: Now) -> None:
        panel = self.panels.get(panel_id)
        if panel is None:
            self._reject(
                None, cmd.Rejection("unknown_panel", f"there is no panel {panel_id!r}"), now
            )
            return
        parsed = cmd.parse_duration_minutes(payload, self.max_on_s)
        if isinstance(parsed, cmd.Rejection):
            self._reject(panel, parsed, now)
            return
        panel.default_s = parsed.duration_s
        self.out.add(SettingChanged(f"panel.{panel.id}.default_duration_s", str(panel.default_s)))
        self._republish(panel)  # the answer Home Assistant's number waits for

    def _daemon_command(self, payload: bytes, now: Now) -> None:
        parsed = cmd.parse_daemon_command(payload)
        if isinstance(parsed, cmd.Rejection):
            self._reject(None, parsed, now)
        elif isinstance(parsed, cmd.StopAll):
            # Routines first, so a routine ends as "stopped" rather than "aborted".
            self._requests.append(StopAllRequested())
            for panel in self.panels.values():
                self._stop(panel, now, "stopped")
        else:
            self._requests.append(OfferAccepted(parsed.offer, parsed.request_id))

    def _clear_retained_command(self, topic: str, payload: bytes) -> None:
        if not payload:
            return  # our own clearing, echoed back
        if topic in self._plug_command_topics:
            # A plug obeys a retained ON each time it reconnects: its removal goes out first.
            self.out.add(replace(clear_retained(topic), urgent=True))
        else:
            self.out.add(clear_retained(topic))
        self.out.add(
            LogLine(
                "warning",
                "retained_command_cleared",
                {"topic": topic, "payload": payload[:64].decode("utf-8", "replace")},
            )
        )

    def _reject(
        self, panel: Panel | None, rejection: cmd.Rejection, now: Now, **extra: Any
    ) -> None:
        fields: dict[str, Any] = {"reason": rejection.reason, "message": rejection.message}
        if rejection.allowed_at is not None:
            fields["allowed_at"] = rejection.allowed_at
        if rejection.request_id is not None:
            fields["request_id"] = rejection.request_id
        self._event("command_rejected", panel, now, **(fields | extra))

    # ------------------------------------------------------------------ output

    def _event(self, event_type: str, panel: Panel | None, now: Now, **fields: Any) -> None:
        self.out.event(event_type, panel.id if panel else None, now.wall, **fields)

    def _republish(self, panel: Panel) -> None:
        """Publish the panel's state in this step even if it did not change."""
        self._published.pop(panel.index, None)
        self._dirty.add(panel.index)

    def _publish_states(self, now: Now) -> None:
        """The state of every panel touched in this step, if it differs from what it showed."""
        for index in sorted(self._dirty):
            panel = self._order[index]
            body = self.panel_state(panel.id, now)
            if self._published.get(index) != body:
                self._published[index] = body
                self.out.add(panel_state_message(self.topics, panel.id, body))
        self._dirty.clear()

    def _publish_daemon_state(self, now: Now, *, force: bool = False) -> None:
        self._daemon_state_due = None
        running = self.running()
        if running == self._published_running and not force:
            return
        self._published_running = running
        self._daemon_state_at = now.mono
        body = {"active_sessions": len(running), "running": running}
        self.out.add(Message(self.topics.daemon_state, dumps(body), retain=True, qos=STATE_QOS))

    def _flush(self, now: Now) -> list[Effect]:
        """What this step decided: plug commands first (the outbox sorts them), then the rest."""
        self._publish_states(now)
        if self._running_changed:
            # Only when a session started or ended: the list is as long as the sessions.
            self._running_changed = False
            if self._daemon_state_due is None:
                self._daemon_state_due = max(now.mono, self._daemon_state_at + DAEMON_STATE_EVERY_S)
        due = self._daemon_state_due
        if due is not None and (now.mono >= due or self.stopping):
            self._publish_daemon_state(now)
        effects = self.out.take()
        first = next((i for i, e in enumerate(effects) if not urgent(e)), len(effects))
        requests: list[Effect] = list(self._requests)
        self._requests = []
        return [*effects[:first], *requests, *effects[first:]]
