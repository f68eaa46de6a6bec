"""The session core: every safety rule of SPEC §3 that decides when a panel is on or off.

Pure logic with an injected clock. It takes what happened (a command, a plug report, the
broker connecting, time passing) and returns effects to carry out, plug commands first, so a
full 15-minute session is tested in microseconds. Deadlines are on the monotonic clock
(safety rule 3); the wall clock only labels events and finds the local day.
"""

from __future__ import annotations

import heapq
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import Any, Final, Literal

from paho.mqtt.client import topic_matches_sub

from redlight import commands as cmd
from redlight.broker import STATE_QOS, Message
from redlight.config import Config, dose_to_duration
from redlight.durations import format_duration
from redlight.messages import (
    Event,
    Topics,
    clear_retained,
    dumps,
    event_messages,
    iso,
    panel_state_message,
)
from redlight.presets import Plug, PlugAvailability, PlugState, build_plug

#: Safety rule 4: an unconfirmed OFF is re-sent at least this often.
MAX_OFF_RETRY_S: Final = 10.0
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

Source = Literal["homeassistant", "cli", "schedule", "routine", "external"]


@dataclass(frozen=True, slots=True)
class Now:
    """One reading of both clocks: ``mono`` times deadlines, ``wall`` (aware) labels them."""

    mono: float
    wall: datetime


@dataclass(frozen=True, slots=True)
class SessionOpened:
    """Journal a session before its plug is switched on."""

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


@dataclass(frozen=True, slots=True)
class Started:
    """:meth:`Core.start`'s answer when the session began (the ON is among the effects)."""

    session: str
    panel: str
    duration_s: float


@dataclass(frozen=True, slots=True)
class SessionEnded:
    """A notice, not an effect: a session ended (for routines, via :meth:`Core.take_ended`)."""

    session: str
    panel: str
    reason: str
    source: str


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


@dataclass(slots=True)
class Session:
    """A period in which redlight holds a panel on, or watches an ON it did not start."""

    id: str
    source: Source
    started_mono: float
    started_wall: datetime
    duration_s: float
    request_id: str | None = None
    confirmed: bool = False
    ending_soon_sent: bool = False

    @property
    def deadline(self) -> float:
        """When the panel must be off, on the monotonic clock."""
        return self.started_mono + self.duration_s

    def elapsed(self, now: Now) -> float:
        """Seconds on so far."""
        return max(0.0, min(now.mono, self.deadline) - self.started_mono)


@dataclass(slots=True)
class Panel:
    """Everything the core knows about one panel; only the core mutates it."""

    id: str
    name: str
    area: str | None
    plug: Plug
    irradiance: float | None
    default_s: float
    day: str = ""
    finished_today_s: float = 0.0
    carry_s: float = 0.0
    plug_state: Literal["on", "off", "unknown"] = "unknown"
    availability: dict[str, bool] = field(default_factory=dict)
    session: Session | None = None
    on_confirm_by: float | None = None
    off_pending: bool = False
    off_next_at: float = 0.0
    off_attempts: int = 0
    unresponsive: bool = False
    cooldown_until: float = float("-inf")
    cooldown_wall: datetime | None = None
    min_power_w: float | None = None
    power_w: float | None = None
    power_at: float = float("-inf")
    power_ask_at: float | None = None
    power_check_at: float | None = None
    off_since: float | None = None
    relay_stuck: bool = False
    #: When the OFF now pending was first sent (``off_not_obeyed`` says how long ago).
    off_requested_at: float = 0.0
    # Blind spots: the last OFF the plug reported, and whether redlight has watched it without
    # a gap since (connected throughout, the plug not re-announced, every poll answered). An ON
    # found after a gap may have been on since that OFF report.
    off_seen_at: float = float("-inf")
    watching: bool = False
    poll_at: float | None = None
    poll_answer_by: float | None = None
    #: The exposure (ON time with less than ``min_off`` of OFF between): its on-time so far,
    #: and when its last ON ended.
    exposure_s: float = 0.0
    exposure_end: float = float("-inf")
    #: The plug reported ON while an OFF was pending (a press racing the OFF, a stale report):
    #: lit from then on until the OFF is confirmed, as far as the exposure is concerned.
    stray_on_at: float | None = None

    @property
    def online(self) -> bool:
        """The plug (and its bridge) are not known to be offline."""
        return all(self.availability.values())


class _Timers:
    """The earliest due time of each panel, in a heap with lazy removal.

    With a thousand panels, scanning all of them after every message would delay the OFFs
    that are due (SPEC §8): setting a time and finding the earliest are O(log n) instead.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int]] = []
        self._at: dict[int, float] = {}

    def set(self, index: int, when: float | None) -> None:
        """Panel ``index`` is next due at ``when`` (``None``: nothing to do)."""
        if when is None:
            self._at.pop(index, None)
        elif self._at.get(index) != when:
            self._at[index] = when
            heapq.heappush(self._heap, (when, index))
            if len(self._heap) > 4 * len(self._at) + 64:
                # Superseded entries are dropped lazily; rebuild before they pile up.
                self._heap = [(at, i) for i, at in self._at.items()]
                heapq.heapify(self._heap)

    def earliest(self) -> float | None:
        """The earliest time any panel is due."""
        heap = self._heap
        while heap:
            when, index = heap[0]
            if self._at.get(index) == when:
                return when
            heapq.heappop(heap)
        return None

    def pop_due(self, now: float) -> list[int]:
        """Remove and return the panels due at ``now``, earliest first (config order on ties)."""
        due: list[int] = []
        while (first := self.earliest()) is not None and first <= now:
            _, index = heapq.heappop(self._heap)
            del self._at[index]
            due.append(index)
        return due


class _DayBook:
    """Seconds on per local day, panel and session id: what the core saw, and what history said.

    A session is counted on the local date it started (``today_s``: "sessions started today").
    The two sources are merged by session id, so a session both seen and read counts once and
    a restart (or a clock step back into a day already lived) loses nothing.
    """

    #: Days kept per source; a clock that steps back and forth revisits only a few.
    KEEP: Final = 8

    def __init__(self, expect_history: bool) -> None:
        self.expect_history = expect_history
        self.seen: dict[str, dict[str, dict[str, float]]] = {}
        self.read: dict[str, dict[str, dict[str, float]]] = {}

    def add_seen(self, day: str, panel: str, session: str, seconds: float) -> None:
        self._day(self.seen, day).setdefault(panel, {})[session] = seconds

    def add_read(self, day: str, rows: Mapping[str, Mapping[str, float]]) -> None:
        book = self._day(self.read, day)
        for panel, sessions in rows.items():
            book.setdefault(panel, {}).update(sessions)

    def known(self, day: str) -> bool:
        """History has answered for ``day`` (or will never be asked)."""
        return not self.expect_history or day in self.read

    def total(self, day: str, panel: str) -> float:
        merged = dict(self.read.get(day, {}).get(panel, {}))
        merged.update(self.seen.get(day, {}).get(panel, {}))
        return sum(merged.values())

    def _day(
        self, book: dict[str, dict[str, dict[str, float]]], day: str
    ) -> dict[str, dict[str, float]]:
        entry = book.pop(day, None)
        book[day] = entry = entry if entry is not None else {}
        while len(book) > self.KEEP:
            del book[next(iter(book))]
        return entry


class Core:
    """Owns every panel's state; each public method returns the effects to carry out."""

    def __init__(
        self,
        config: Config,
        *,
        restored: Restored | None = None,
        new_id: Callable[[], str] | None = None,
    ) -> None:
        """Build the panels from config; ``restored`` brings totals and settings from storage."""
        self.config = config
        self.topics = Topics(config.mqtt.base_topic)
        self.max_on_s = config.safety.max_on.total_seconds()
        self.cooldown_s = config.safety.cooldown.total_seconds()
        self.confirm_s = config.safety.confirm_timeout.total_seconds()
        self.margin_s = config.safety.failsafe_margin.total_seconds()
        self.min_off_s = config.safety.min_off.total_seconds()
        self.poll_s = config.safety.poll_interval.total_seconds()
        self.daily_max_s = (
            config.safety.daily_max.total_seconds() if config.safety.daily_max else None
        )
        self._new_id = new_id or (lambda: uuid.uuid4().hex[:12])
        restored = restored or Restored()
        self.panels: dict[str, Panel] = {}
        for key, settings in config.panels.items():
            plug = build_plug(key, settings.plug, base_topic=config.mqtt.base_topic)
            self.panels[key] = Panel(
                id=key,
                name=config.panel_name(key),
                area=settings.area,
                plug=plug,
                irradiance=settings.irradiance_mw_cm2,
                default_s=restored.default_duration_s.get(
                    key, config.default_duration(key).total_seconds()
                ),
                finished_today_s=restored.finished_today_s.get(key, 0.0),
                availability=dict.fromkeys(plug.availability_topics, True),
                min_power_w=settings.min_power_w,
            )
        self._restored_last_end = dict(restored.last_end)
        self._restored_exposure = dict(restored.exposure)
        self._days = _DayBook(expect_history=restored.day is not None)
        if restored.day is not None:
            self._days.add_read(restored.day, restored.day_sessions)
            for panel in self.panels.values():
                panel.day = restored.day
                panel.finished_today_s = self._days.total(restored.day, panel.id)
        self._order = list(self.panels.values())
        self._index = {panel.id: i for i, panel in enumerate(self._order)}
        # Panels whose timers changed since the last flush, and every panel's next due time.
        self._touched: set[int] = set(range(len(self._order)))
        self._wakes = _Timers()
        self._confirms = _Timers()
        self._running: set[int] = set()
        self._exact_routes: dict[str, list[Panel]] = {}
        self._wild_routes: list[tuple[str, Panel]] = []
        self._plug_command_topics: dict[str, Panel] = {}
        for panel in self.panels.values():
            for topic in panel.plug.subscriptions:
                if "+" in topic or "#" in topic:
                    self._wild_routes.append((topic, panel))
                else:
                    self._exact_routes.setdefault(topic, []).append(panel)
            self._plug_command_topics[panel.plug.command_topic] = panel
        self.connected = False
        self.ready = False
        self.stopping = False
        self._published_running: list[str] | None = None
        self._running_changed = True
        self._daemon_state_at = float("-inf")
        self._daemon_state_due: float | None = None
        self._plug_out: list[Effect] = []  # plug commands, and the journal entry before an ON
        self._out: list[Effect] = []
        self._ended: list[SessionEnded] = []

    # ------------------------------------------------------------------ inputs

    def subscriptions(self) -> list[str]:
        """Every topic filter to subscribe to after each connect."""
        topics = list(self.topics.command_filters())
        for panel in self.panels.values():
            topics.extend(panel.plug.subscriptions)
        # Safety rule 7: watch plug command topics for retained commands to clear.
        topics.extend(self._plug_command_topics)
        return list(dict.fromkeys(topics))

    def connect(self, now: Now) -> list[Effect]:
        """The broker connection is (re)established: rules 8 and 10."""
        self.connected = True
        self._touch_all()  # a pending OFF is timed again once it can be sent
        # Whatever was published while disconnected was dropped: send the running set again.
        self._published_running = None
        self._running_changed = True
        self._daemon_state_at = float("-inf")
        count = len(self._order)
        for index, panel in enumerate(self._order):
            self._plug(panel.plug.ask_state())
            # Polls spread over the interval, so a thousand plugs never answer at once.
            panel.poll_at = now.mono + self.poll_s * (index + 1) / count
            if not self.ready:
                self._start_safe(panel, now)
            elif panel.session is not None and now.mono >= panel.session.deadline:
                # Safety rule 10: a deadline that passed while disconnected is enforced now.
                self._end_session(panel, now, self._deadline_reason(panel))
            elif panel.off_pending:
                self._send_off(panel, now)
            self._publish_state(panel, now)
        self.ready = True
        return self._flush(now)

    def disconnect(self, now: Now) -> list[Effect]:
        """The broker connection is lost; deadlines keep running on the monotonic clock."""
        self.connected = False
        self._touch_all()
        for panel in self._order:
            # Whatever a plug reports from now on is lost until redlight is back.
            panel.watching = False
            panel.poll_answer_by = None
        return self._flush(now)

    def receive(self, topic: str, payload: bytes, retain: bool, now: Now) -> list[Effect]:
        """A message arrived on a subscribed topic."""
        if retain and (topic in self._plug_command_topics or self._own_command(topic)):
            # Safety rule 7: a retained command is never obeyed, and is removed. Commands that
            # are not retained are routed above the core (redlight.router, redlight.controller).
            self._clear_retained_command(topic, payload)
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
            if panel.min_power_w is not None:
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
    ) -> tuple[Started | cmd.Rejection, list[Effect]]:
        """Start a session (for commands, schedules and routines): whether it began, and the
        effects (a refusal is among them as ``command_rejected`` too)."""
        outcome = self._start(panel_id, request, source, now)
        return outcome, self._flush(now)

    def stop(self, panel_id: str, now: Now, request_id: str | None = None) -> list[Effect]:
        """Stop a panel's session, or switch it off if it is on."""
        panel = self.panels.get(panel_id)
        if panel is None:
            self._reject(None, cmd.Rejection("unknown_panel", f"no panel {panel_id!r}"), now)
        else:
            self._stop(panel, now, "stopped", request_id)
        return self._flush(now)

    def set_default_duration(self, panel_id: str, seconds: float, now: Now) -> list[Effect]:
        """A panel's default session length (1 s to max_on, checked by the command parser)."""
        panel = self.panels[panel_id]
        panel.default_s = seconds
        self._out.append(
            SettingChanged(f"panel.{panel.id}.default_duration_s", str(panel.default_s))
        )
        self._publish_state(panel, now)
        return self._flush(now)

    def take_ended(self) -> list[SessionEnded]:
        """The sessions that ended since the last call, oldest first (for routines)."""
        ended, self._ended = self._ended, []
        return ended

    def tick(self, now: Now) -> list[Effect]:
        """Time passed: enforce deadlines, confirmations and retries that are due."""
        for index in self._wakes.pop_due(now.mono):
            panel = self._order[index]
            self._touched.add(index)
            session = panel.session
            if session is not None:
                if now.mono >= session.deadline:
                    self._end_session(panel, now, self._deadline_reason(panel))
                elif (
                    not session.ending_soon_sent
                    and session.duration_s > ENDING_SOON_S
                    and now.mono >= session.deadline - ENDING_SOON_S
                ):
                    session.ending_soon_sent = True
                    self._event(
                        "ending_soon",
                        panel,
                        now,
                        session=session.id,
                        ends_at=iso(self._ends_wall(session)),
                        remaining_s=_num(session.deadline - now.mono),
                    )
            if panel.on_confirm_by is not None and now.mono >= panel.on_confirm_by:
                self._on_unconfirmed(panel, now)
            if panel.power_ask_at is not None and now.mono >= panel.power_ask_at:
                panel.power_ask_at = None
                if self.connected:
                    self._plug(panel.plug.ask_power())
            if panel.power_check_at is not None and now.mono >= panel.power_check_at:
                self._check_power(panel, now)
            if panel.off_pending and self.connected and now.mono >= panel.off_next_at:
                self._retry_off(panel, now)
            if panel.poll_answer_by is not None and now.mono >= panel.poll_answer_by:
                self._poll_unanswered(panel, now)
            if panel.poll_at is not None and now.mono >= panel.poll_at:
                self._poll(panel, now)
            if panel.cooldown_wall is not None and now.mono >= panel.cooldown_until:
                panel.cooldown_wall = None
                self._publish_state(panel, now)
        return self._flush(now)

    def confirmation_due(self, now: Now) -> bool:
        """A plug's confirmation is overdue: the next tick would call the plug silent."""
        first = self._confirms.earliest()
        return first is not None and now.mono >= first

    def next_wakeup(self) -> float | None:
        """The earliest monotonic time at which :meth:`tick` has something to do."""
        times = [self._wakes.earliest(), self._daemon_state_due]
        return min((t for t in times if t is not None), default=None)

    def wakeup(self, panel: Panel) -> float | None:
        """The earliest monotonic time at which :meth:`tick` has something to do for ``panel``."""
        times: list[float] = []
        session = panel.session
        if session is not None:
            times.append(session.deadline)
            if not session.ending_soon_sent and session.duration_s > ENDING_SOON_S:
                times.append(session.deadline - ENDING_SOON_S)
        if panel.on_confirm_by is not None:
            times.append(panel.on_confirm_by)
        for moment in (panel.power_ask_at, panel.power_check_at):
            if moment is not None:
                times.append(moment)
        if panel.off_pending and self.connected:
            # While disconnected nothing can be sent; connect() sends OFF at once.
            times.append(panel.off_next_at)
        if panel.cooldown_wall is not None:
            times.append(panel.cooldown_until)
        for moment in (panel.poll_answer_by, panel.poll_at):
            if moment is not None:
                times.append(moment)
        return min(times, default=None)

    def shutdown(self, now: Now) -> list[Effect]:
        """Safety rule 9: end every session and switch every panel off."""
        self.stopping = True
        for panel in self.panels.values():
            if panel.session is not None:
                self._end_session(panel, now, "shutdown")
            else:
                self._send_off(panel, now)
                self._publish_state(panel, now)
        return self._flush(now)

    def all_off_confirmed(self) -> bool:
        """Every OFF sent has been confirmed by its plug."""
        return not any(panel.off_pending for panel in self.panels.values())

    def running(self) -> list[str]:
        """Panels with a session, in config order."""
        return [self._order[i].id for i in sorted(self._running)]

    # ------------------------------------------------------------------ start/stop

    def _start_safe(self, panel: Panel, now: Now) -> None:
        """Safety rule 8: every panel is switched off before commands are accepted."""
        self._touch(panel)
        self._send_off(panel, now)
        last_end = self._restored_last_end.get(panel.id)
        if last_end is not None and self.cooldown_s > 0:
            # A clock behind the last end (no real-time clock after a power cut) means the
            # session may have ended just now: the whole cooldown, never none.
            since_end = max(0.0, (now.wall - last_end).total_seconds())
            remaining = self.cooldown_s - since_end
            if remaining > 0:
                panel.cooldown_until = now.mono + remaining
                panel.cooldown_wall = now.wall + timedelta(seconds=remaining)
        exposure = self._restored_exposure.get(panel.id)
        if exposure is not None:
            ended, on_s = exposure
            panel.exposure_end = now.mono - max(0.0, (now.wall - ended).total_seconds())
            panel.exposure_s = on_s

    def _start(
        self, panel_id: str, request: cmd.Start, source: Source, now: Now
    ) -> Started | cmd.Rejection:
        panel = self.panels.get(panel_id)
        if panel is None:
            unknown = cmd.Rejection(
                "unknown_panel", f"there is no panel {panel_id!r}", request.request_id
            )
            self._reject(None, unknown, now)
            return unknown
        rejection = self._refusal(panel, request, now)
        if isinstance(rejection, cmd.Rejection):
            if rejection.reason == "plug_state_unknown":
                self._learn_state(panel, now)
            self._reject(panel, rejection, now)
            return rejection
        duration_s = rejection
        session = Session(
            id=self._new_id(),
            source=source,
            started_mono=now.mono,
            started_wall=now.wall,
            duration_s=duration_s,
            request_id=request.request_id,
        )
        self._close_stray(panel, now)
        panel.session = session
        self._touch(panel)
        # The journal comes before the ON, so a crash leaves a record to reconcile; it goes
        # to the storage thread's queue, which never blocks.
        self._plug_out.append(
            SessionOpened(
                id=session.id,
                panel=panel.id,
                area=panel.area,
                source=source,
                started_at=now.wall,
                planned_s=duration_s,
                irradiance_mw_cm2=panel.irradiance,
            )
        )
        panel.off_pending = False
        panel.off_attempts = 0
        failsafe = (
            min(duration_s, self.max_on_s) + self.margin_s if panel.plug.has_failsafe else None
        )
        # Safety rules 5 and 6: the plug's own timer is armed with the one and only ON.
        self._plug(panel.plug.turn_on(failsafe))
        panel.on_confirm_by = now.mono + self.confirm_s
        fields: dict[str, Any] = {
            "session": session.id,
            "source": source,
            "duration_s": _num(duration_s),
            "ends_at": iso(self._ends_wall(session)),
        }
        if request.dose_j_cm2 is not None:
            fields["dose_j_cm2"] = request.dose_j_cm2
        if failsafe is not None:
            fields["failsafe_s"] = _num(failsafe)
        if request.request_id is not None:
            fields["request_id"] = request.request_id
        self._event("session_started", panel, now, **fields)
        self._publish_state(panel, now)
        return Started(session.id, panel.id, duration_s)

    def _refusal(self, panel: Panel, request: cmd.Start, now: Now) -> float | cmd.Rejection:
        """The session length to use, or why the session may not start."""
        rid = request.request_id
        if not self.connected:
            return cmd.Rejection("disconnected", "redlight is not connected to the broker", rid)
        if self.stopping:
            return cmd.Rejection("shutting_down", "redlight is shutting down", rid)
        if not panel.online:
            return cmd.Rejection("plug_offline", f"the plug of {panel.name} is offline", rid)
        if panel.unresponsive:
            return cmd.Rejection(
                "plug_unresponsive",
                f"the plug of {panel.name} has not confirmed it is off; check it first",
                rid,
            )
        if panel.session is None and not panel.watching:
            # After a gap in its view the relay may be on unseen: an ON now would add to that.
            return cmd.Rejection(
                "plug_state_unknown",
                f"redlight has not heard from the plug of {panel.name} since it was out of "
                "sight, so it may be on already; it has been asked: try again in a moment",
                rid,
            )
        if panel.session is not None:
            what = (
                "is switched on outside redlight"
                if panel.session.source == "external"
                else ("already has a session")
            )
            return cmd.Rejection("already_running", f"{panel.name} {what}; stop it first", rid)
        max_on = format_duration(self.max_on_s)
        if request.dose_j_cm2 is not None:
            if panel.irradiance is None:
                return cmd.Rejection(
                    "no_irradiance",
                    f"{panel.name} has no irradiance_mw_cm2 configured, so a dose cannot "
                    "become a duration",
                    rid,
                )
            try:
                duration_s = dose_to_duration(request.dose_j_cm2, panel.irradiance).total_seconds()
            except ValueError as error:  # a dose so large it would overflow a timedelta
                return cmd.Rejection(
                    "over_max_on", f"{error}, more than safety.max_on ({max_on})", rid
                )
            if duration_s > self.max_on_s:
                return cmd.Rejection(
                    "over_max_on",
                    f"{request.dose_j_cm2:g} J/cm² at {panel.irradiance:g} mW/cm² needs "
                    f"{format_duration(duration_s)}, more than safety.max_on ({max_on})",
                    rid,
                )
        else:
            duration_s = request.duration_s if request.duration_s is not None else panel.default_s
            if duration_s > self.max_on_s:
                return cmd.Rejection(
                    "over_max_on",
                    f"{format_duration(duration_s)} is more than safety.max_on ({max_on})",
                    rid,
                )
        if duration_s < 1:
            return cmd.Rejection("invalid_duration", "a session lasts at least 1 second", rid)
        if now.mono < panel.cooldown_until and panel.cooldown_wall is not None:
            return cmd.Rejection(
                "cooldown",
                f"{panel.name} is cooling down until {panel.cooldown_wall:%H:%M:%S} "
                f"(safety.cooldown {format_duration(self.cooldown_s)})",
                rid,
                allowed_at=iso(panel.cooldown_wall),
            )
        prior = self._exposure_before(panel, now.mono)
        if prior + duration_s > self.max_on_s:
            allowed_wall = now.wall + timedelta(
                seconds=panel.exposure_end + self.min_off_s - now.mono
            )
            return cmd.Rejection(
                "exposure",
                f"{panel.name} was on for {format_duration(prior)} with less than "
                f"{format_duration(self.min_off_s)} off since, and an exposure may last "
                f"{max_on} (safety.max_on); {format_duration(self.max_on_s - prior)} is left "
                f"until it has been off for {format_duration(self.min_off_s)}, at "
                f"{allowed_wall:%H:%M:%S} (safety.min_off)",
                rid,
                allowed_at=iso(allowed_wall),
            )
        if self.daily_max_s is not None:
            used = self._today_s(panel, now)
            if used + duration_s > self.daily_max_s:
                left = max(0.0, self.daily_max_s - used)
                midnight = _next_midnight(now.wall)
                return cmd.Rejection(
                    "daily_max",
                    f"{panel.name} has {format_duration(left)} left today "
                    f"(safety.daily_max {format_duration(self.daily_max_s)}); a "
                    f"{format_duration(duration_s)} session is allowed again from "
                    f"{midnight:%Y-%m-%d %H:%M}",
                    rid,
                    allowed_at=iso(midnight),
                )
        return duration_s

    def _stop(self, panel: Panel, now: Now, reason: str, request_id: str | None = None) -> None:
        if panel.session is not None:
            self._end_session(panel, now, reason, request_id=request_id)
        else:
            # Nothing redlight knows of is running, but "off" must always mean off.
            self._send_off(panel, now)
            self._publish_state(panel, now)

    def _exposure_before(self, panel: Panel, at: float) -> float:
        """On-time of the exposure that an ON at ``at`` continues (0 after ``min_off`` OFF)."""
        stray = panel.stray_on_at
        last = panel.exposure_end if stray is None else stray
        chained = panel.exposure_s if last - panel.exposure_end < self.min_off_s else 0.0
        if stray is not None:
            return chained + max(0.0, at - stray)
        return chained if at - panel.exposure_end < self.min_off_s else 0.0

    def _close_stray(self, panel: Panel, now: Now) -> None:
        """The ON reported during a pending OFF ended (or a session takes over): it joins the
        exposure."""
        stray = panel.stray_on_at
        if stray is None:
            return
        panel.stray_on_at = None
        panel.exposure_s = self._exposure_before(panel, stray) + (now.mono - stray)
        panel.exposure_end = now.mono

    def _deadline_reason(self, panel: Panel) -> str:
        assert panel.session is not None
        return "cutoff" if panel.session.source == "external" else "completed"

    def _end_session(
        self,
        panel: Panel,
        now: Now,
        reason: str,
        *,
        send_off: bool = True,
        request_id: str | None = None,
    ) -> None:
        session = panel.session
        assert session is not None
        self._touch(panel)
        panel.power_ask_at = panel.power_check_at = None
        if send_off:
            self._send_off(panel, now)
        panel.session = None
        actual_s = session.elapsed(now)
        ended = session.started_wall + timedelta(seconds=actual_s)
        dose = actual_s * panel.irradiance / 1000 if panel.irradiance is not None else None
        self._count_day(panel, session, actual_s, now)
        # The exposure counts the light until the OFF goes out, past the deadline too (a
        # deadline that passed while the broker was away): it is the panel's, not the plan's.
        lit_s = max(actual_s, now.mono - session.started_mono)
        panel.exposure_s = self._exposure_before(panel, session.started_mono) + lit_s
        panel.exposure_end = session.started_mono + lit_s
        if self.cooldown_s > 0:
            panel.cooldown_until = session.started_mono + actual_s + self.cooldown_s
            panel.cooldown_wall = ended + timedelta(seconds=self.cooldown_s)
        if session.source == "external" and reason == "cutoff":
            # Safety rule 2: an ON redlight did not start was cut off at max_on.
            self._event(
                "cutoff_enforced",
                panel,
                now,
                session=session.id,
                on_s=_num(actual_s),
                max_on_s=_num(self.max_on_s),
            )
        fields: dict[str, Any] = {
            "session": session.id,
            "source": session.source,
            "reason": reason,
            "duration_s": _num(actual_s),
            "planned_s": _num(session.duration_s),
        }
        if dose is not None:
            fields["dose_j_cm2"] = round(dose, 2)
        request_id = request_id or (session.request_id if reason == "stopped" else None)
        if request_id is not None:
            fields["request_id"] = request_id
        self._event("session_finished", panel, now, **fields)
        self._out.append(
            SessionClosed(
                id=session.id,
                ended_at=ended,
                actual_s=actual_s,
                reason=reason,
                dose_j_cm2=round(dose, 3) if dose is not None else None,
            )
        )
        self._publish_state(panel, now)
        self._ended.append(SessionEnded(session.id, panel.id, reason, session.source))

    # ------------------------------------------------------------------ plug reports

    def _plug_report(self, panel: Panel, on: bool, now: Now, *, fresh: bool = True) -> None:
        """The plug says its relay is on or off; ``fresh`` unless the broker kept it retained
        (then it is the plug's last word, perhaps from before a gap, not news of now)."""
        self._touch(panel)
        before = (self._plug_view(panel), panel.unresponsive)
        panel.poll_answer_by = None
        if on:
            panel.off_since = None
        else:
            if panel.plug_state != "off" or panel.off_since is None:
                panel.off_since = now.mono
            if fresh:
                # From here on an ON would be reported as it happens, until a gap in the view.
                panel.off_seen_at = now.mono
                panel.watching = True
        panel.plug_state = "on" if on else "off"
        session = panel.session
        if on:
            if session is not None:
                if not session.confirmed:
                    session.confirmed = True
                    panel.on_confirm_by = None
                    self._recovered(panel, now)
                    if panel.min_power_w is not None:
                        panel.power_ask_at = now.mono + POWER_ASK_S
                        panel.power_check_at = now.mono + POWER_CHECK_S
            elif panel.off_pending:
                # An OFF is on its way and re-sent until confirmed; this report may be stale.
                # Once the plug is known not to obey, each ON it reports is news to a person.
                if panel.stray_on_at is None:
                    panel.stray_on_at = now.mono
                if panel.unresponsive:
                    self._off_not_obeyed(panel, now)
            else:
                self._external_on(panel, now)
        else:
            if panel.off_pending:
                panel.off_pending = False
                panel.off_attempts = 0
                self._close_stray(panel, now)
                self._recovered(panel, now)
            if session is not None and session.confirmed:
                # Switched off by hand, by its own failsafe or by a power cut; OFF is still sent
                # (and confirmed), since a stale report must not leave a panel on unwatched.
                self._end_session(panel, now, "external_off")
                return
        if (self._plug_view(panel), panel.unresponsive) != before:
            self._publish_state(panel, now)

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
            duration_s=max(0.0, self.max_on_s - self._exposure_before(panel, start)),
            confirmed=True,
        )
        panel.session = session
        self._touch(panel)
        self._out.append(
            SessionOpened(
                id=session.id,
                panel=panel.id,
                area=panel.area,
                source="external",
                started_at=session.started_wall,
                planned_s=session.duration_s,
                irradiance_mw_cm2=panel.irradiance,
            )
        )
        fields: dict[str, Any] = {
            "session": session.id,
            "source": "external",
            "duration_s": _num(session.duration_s),
            "ends_at": iso(self._ends_wall(session)),
        }
        if 0 < unseen_s < float("inf"):
            fields["unseen_s"] = _num(unseen_s)
        self._event("session_started", panel, now, **fields)
        if now.mono >= session.deadline:
            self._end_session(panel, now, "cutoff")

    def _off_not_obeyed(self, panel: Panel, now: Now) -> None:
        waited = now.mono - panel.off_requested_at
        self._event(
            "off_not_obeyed",
            panel,
            now,
            off_pending_s=_num(waited),
            message=f"the plug of {panel.name} reports ON although redlight has sent OFF for "
            f"{format_duration(waited)} without effect; switch it off at the plug",
        )

    def _availability(self, panel: Panel, report: PlugAvailability, now: Now) -> None:
        was_online = panel.online
        seen_before = self._plug_view(panel)
        panel.availability[report.topic] = report.online
        # Any availability message means the plug (or its bridge) went away or came back: what
        # it did meanwhile was not seen, even when redlight never saw it go (a dying broker
        # sends no will).
        panel.watching = False
        if panel.online:
            # Online, changed or not: ask what it is doing, and repeat a pending OFF at once.
            self._touch(panel)
            self._plug(panel.plug.ask_state())
            if panel.off_pending:
                self._send_off(panel, now)
        if panel.online != was_online or self._plug_view(panel) != seen_before:
            self._publish_state(panel, now)

    # ------------------------------------------------------------------ power

    def _power_report(self, panel: Panel, watts: float, now: Now) -> None:
        """A power reading: remembered for the check after ON; a stuck relay after OFF."""
        assert panel.min_power_w is not None
        panel.power_w = watts
        panel.power_at = now.mono
        settled = panel.off_since is not None and now.mono - panel.off_since >= STUCK_AFTER_S
        stuck = panel.plug_state == "off" and not panel.off_pending and settled
        if stuck and watts >= panel.min_power_w and not panel.relay_stuck:
            panel.relay_stuck = True
            self._event(
                "relay_stuck",
                panel,
                now,
                power_w=_num(watts),
                message=f"the plug of {panel.name} says OFF but still passes {watts:g} W: "
                "its relay may be welded; unplug the panel",
            )
            self._publish_state(panel, now)
        elif panel.relay_stuck and watts < panel.min_power_w:
            panel.relay_stuck = False
            self._publish_state(panel, now)

    def _check_power(self, panel: Panel, now: Now) -> None:
        """A few seconds after ON: a panel that draws too little has its own switch off."""
        self._touch(panel)
        panel.power_check_at = None
        session = panel.session
        if session is None or panel.min_power_w is None:
            return
        fresh = now.mono - panel.power_at <= POWER_CHECK_S - POWER_ASK_S + 1.0
        if panel.power_w is None or not fresh:
            self._out.append(
                LogLine("warning", "power_unknown", {"panel": panel.id, "session": session.id})
            )
            return
        if panel.power_w < panel.min_power_w:
            self._end_session(panel, now, "no_power")

    def _on_unconfirmed(self, panel: Panel, now: Now) -> None:
        """The plug did not confirm an ON: switch it off rather than guess (rules 4 and 2)."""
        self._touch(panel)
        panel.on_confirm_by = None
        if panel.session is not None:
            self._end_session(panel, now, "cutoff")
        self._unresponsive(panel, now, "on")

    # ------------------------------------------------------------------ OFF, confirmed

    def _send_off(self, panel: Panel, now: Now) -> None:
        """Safety rule 4: send OFF and expect the plug's report within confirm_timeout."""
        self._touch(panel)
        panel.on_confirm_by = None
        if not panel.off_pending:
            panel.off_attempts = 0
            panel.off_requested_at = now.mono
        panel.off_pending = True
        panel.off_next_at = now.mono + self._retry_interval(panel.off_attempts)
        if self.connected:
            self._plug(panel.plug.turn_off())

    def _retry_off(self, panel: Panel, now: Now) -> None:
        self._touch(panel)
        self._unresponsive(panel, now, "off")
        panel.off_attempts += 1
        panel.off_next_at = now.mono + self._retry_interval(panel.off_attempts)
        if self.connected:
            self._plug(panel.plug.turn_off())
            self._plug(panel.plug.ask_state())

    def _learn_state(self, panel: Panel, now: Now) -> None:
        """Make the plug report now: ask it, or, if it cannot be asked, switch it off (it is
        idle, so "off" is what redlight holds it to) and have the OFF confirmed."""
        asks = panel.plug.ask_state()
        if asks:
            self._plug(asks)
        elif not panel.off_pending:
            self._send_off(panel, now)

    def _poll(self, panel: Panel, now: Now) -> None:
        """Ask the plug its state on a fixed interval: an ON whose report was lost is found."""
        self._touch(panel)
        panel.poll_at = now.mono + self.poll_s
        if not self.connected:
            return
        asks = panel.plug.ask_state()
        if not asks:
            # A plug that retains its state and takes no query is asked by subscribing again;
            # whether anything is retained is the plug's business, so no answer is expected.
            self._plug_out.append(Resubscribe(tuple(s.topic for s in panel.plug.states)))
            return
        self._plug(asks)
        if panel.poll_answer_by is None:
            panel.poll_answer_by = now.mono + self.confirm_s

    def _poll_unanswered(self, panel: Panel, now: Now) -> None:
        """A poll went unanswered: the plug may be away, so its next ON may be an old one."""
        self._touch(panel)
        panel.poll_answer_by = None
        if panel.watching:
            panel.watching = False
            self._out.append(LogLine("info", "plug_silent", {"panel": panel.id}))
            self._publish_state(panel, now)

    def _plug_view(self, panel: Panel) -> str:
        """The relay as redlight knows it now: ``unknown`` after a gap until the plug reports
        again (no session starts then: ``plug_state_unknown``)."""
        if panel.session is None and not panel.watching:
            return "unknown"
        return panel.plug_state

    def _retry_interval(self, attempts: int) -> float:
        return min(MAX_OFF_RETRY_S, self.confirm_s * 2.0 ** min(attempts, 8))

    def _unresponsive(self, panel: Panel, now: Now, command: str) -> None:
        if panel.unresponsive or not self.connected:
            return
        panel.unresponsive = True
        self._event(
            "plug_unresponsive",
            panel,
            now,
            command=command,
            online=panel.online,
            message=f"the plug of {panel.name} did not confirm {command.upper()} within "
            f"{format_duration(self.confirm_s)}",
        )
        self._publish_state(panel, now)

    def _recovered(self, panel: Panel, now: Now) -> None:
        if panel.unresponsive:
            panel.unresponsive = False
            self._event("plug_recovered", panel, now)

    # ------------------------------------------------------------------ commands

    def _own_command(self, topic: str) -> bool:
        """``<b>/.../set``: one of redlight's own command topics."""
        return topic.startswith(self.topics.base + "/") and topic.endswith("/set")

    def _clear_retained_command(self, topic: str, payload: bytes) -> None:
        if not payload:
            return  # our own clearing, echoed back
        if topic in self._plug_command_topics:
            # A plug obeys a retained ON each time it reconnects: its removal goes out first.
            self._plug_out.append(replace(clear_retained(topic), urgent=True))
        else:
            self._other(clear_retained(topic))
        self._out.append(
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

    # ------------------------------------------------------------------ state and output

    def panel_state(self, panel_id: str, now: Now) -> dict[str, Any]:
        """A panel's state object (SPEC §4)."""
        panel = self.panels[panel_id]
        session = panel.session
        if panel.unresponsive:
            state = "fault"
        elif session is not None:
            state = "running"
        elif panel.cooldown_wall is not None and now.mono < panel.cooldown_until:
            state = "cooldown"
        else:
            state = "idle"
        session_view = None
        if session is not None:
            session_view = {
                "id": session.id,
                "source": session.source,
                "started_at": iso(session.started_wall),
                "ends_at": iso(self._ends_wall(session)),
                "duration_s": _num(session.duration_s),
            }
        return {
            "state": state,
            "plug": self._plug_view(panel),
            "plug_online": panel.online,
            "session": session_view,
            "default_duration_s": _num(panel.default_s),
            "today_s": round(self._today_s(panel, now)),
            "relay_stuck": panel.relay_stuck,
        }

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
        before = {p.id: round(self._today_s(p, now)) for p in self.panels.values()}
        self._days.add_read(key, seconds_by_session)
        for panel in self.panels.values():
            if panel.day == key:
                panel.finished_today_s = self._days.total(key, panel.id)
                if round(self._today_s(panel, now)) != before[panel.id]:
                    self._publish_state(panel, now)
        return self._flush(now)

    def _today_s(self, panel: Panel, now: Now) -> float:
        self._roll_day(panel, now)
        session = panel.session
        running = 0.0
        if session is not None and session.started_wall.date().isoformat() == panel.day:
            running = session.elapsed(now)
        total = panel.finished_today_s + running
        if not self._days.known(panel.day):
            # History has not answered for this day yet (milliseconds after the day changed,
            # or a clock step made it change): the larger of what is known, so a step can never
            # make room for a session that daily_max would refuse.
            return max(total, panel.carry_s)
        return total

    def _roll_day(self, panel: Panel, now: Now) -> None:
        today = now.wall.date().isoformat()
        if panel.day == today:
            return
        if panel.day:
            known = self._days.known(panel.day)
            panel.carry_s = (
                panel.finished_today_s if known else max(panel.finished_today_s, panel.carry_s)
            )
        elif panel.finished_today_s:
            # Totals restored without a date count for the first day seen.
            self._days.add_read(today, {panel.id: {"": panel.finished_today_s}})
        panel.day = today
        panel.finished_today_s = self._days.total(today, panel.id)

    def _count_day(self, panel: Panel, session: Session, actual_s: float, now: Now) -> None:
        """An ended session counts on the local date it started."""
        self._roll_day(panel, now)
        day = session.started_wall.date().isoformat()
        self._days.add_seen(day, panel.id, session.id, actual_s)
        if day == panel.day:
            panel.finished_today_s = self._days.total(day, panel.id)

    def _ends_wall(self, session: Session) -> datetime:
        return session.started_wall + timedelta(seconds=session.duration_s)

    def _publish_state(self, panel: Panel, now: Now) -> None:
        self._other(panel_state_message(self.topics, panel.id, self.panel_state(panel.id, now)))

    def _publish_daemon_state(self, now: Now, *, force: bool = False) -> None:
        self._daemon_state_due = None
        running = self.running()
        if running == self._published_running and not force:
            return
        self._published_running = running
        self._daemon_state_at = now.mono
        body = {"active_sessions": len(running), "running": running}
        self._other(Message(self.topics.daemon_state, dumps(body), retain=True, qos=STATE_QOS))

    def states(self, now: Now) -> list[Effect]:
        """Every retained state again (after Home Assistant restarts and rediscovers)."""
        for panel in self.panels.values():
            self._publish_state(panel, now)
        self._publish_daemon_state(now, force=True)
        return self._flush(now)

    def _event(self, event_type: str, panel: Panel | None, now: Now, **fields: Any) -> None:
        self._out.append(Event(event_type, panel.id if panel else None, now.wall, fields))

    def _touch(self, panel: Panel) -> None:
        """``panel``'s timers may have changed: its next due time is updated at the flush."""
        self._touched.add(self._index[panel.id])

    def _touch_all(self) -> None:
        self._touched.update(range(len(self._order)))

    def _update_timers(self) -> None:
        for index in self._touched:
            panel = self._order[index]
            self._wakes.set(index, self.wakeup(panel))
            self._confirms.set(index, panel.on_confirm_by)
            running = panel.session is not None
            if running != (index in self._running):
                self._running_changed = True
                if running:
                    self._running.add(index)
                else:
                    self._running.discard(index)
        self._touched.clear()

    def _plug(self, messages: Iterable[Message]) -> None:
        self._plug_out.extend(messages)

    def _other(self, message: Message) -> None:
        self._out.append(message)

    def _flush(self, now: Now) -> list[Effect]:
        """Plug commands first, so nothing else can delay an OFF; then the rest, in order."""
        self._update_timers()
        if self._running_changed:
            # Only when a session started or ended: the list is as long as the sessions.
            self._running_changed = False
            if self._daemon_state_due is None:
                self._daemon_state_due = max(now.mono, self._daemon_state_at + DAEMON_STATE_EVERY_S)
        due = self._daemon_state_due
        if due is not None and (now.mono >= due or self.stopping):
            self._publish_daemon_state(now)
        out = self._plug_out + self._out
        self._plug_out = []
        self._out = []
        return out


def event_effects(topics: Topics, effects: Iterable[Effect]) -> list[Message]:
    """The messages that publish the events among ``effects`` (for adapters and tests)."""
    messages: list[Message] = []
    for effect in effects:
        if isinstance(effect, Event):
            messages.extend(event_messages(topics, effect))
    return messages


def _num(value: float) -> float | int:
    """Whole seconds as an int, else rounded to a tenth."""
    rounded = round(value, 1)
    return int(rounded) if rounded == int(rounded) else rounded


def _next_midnight(wall: datetime) -> datetime:
    tomorrow = (wall + timedelta(days=1)).date()
    return datetime(tomorrow.year, tomorrow.month, tomorrow.day, tzinfo=wall.tzinfo)
