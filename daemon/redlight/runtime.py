"""The daemon's shell: one asyncio task that owns the controller and carries out its effects.

Broker events, signals and time all arrive through one queue and are applied in order; paho's
thread and the storage thread never touch state (STYLE: one owner of state). Plug commands are
published before anything else an effect list holds, and storage is written on its own thread,
so nothing can delay an OFF (safety rule 12).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Final, TypeAlias

import structlog

from redlight.broker import (
    BrokerClient,
    BrokerEvent,
    Connected,
    ConnectFailed,
    Disconnected,
    Message,
    Received,
)
from redlight.clockwatch import CLOCK_CHECK_S, ClockWatch, DayRead, earlier_sessions
from redlight.config import Config
from redlight.controller import Controller
from redlight.core import (
    Core,
    Effect,
    LogLine,
    Now,
    Restored,
    Resubscribe,
    ScheduleChanged,
)
from redlight.hass import HassBridge
from redlight.inbox import Inbox
from redlight.messages import Event, event_messages, status_message
from redlight.recorder import Recorder
from redlight.routines import Routines
from redlight.schedules import ScheduleClock, Schedules, setting_key
from redlight.shedding import RejectionGate
from redlight.storage import History, HistoryWriter, SessionRow, StorageError
from redlight.systemd import Notifier

log = structlog.get_logger("redlight")

#: Events a person must act on (a plug that does not answer or obey, a cut-off ON): their log
#: lines are warnings, so a journal filtered by priority shows them.
FAULT_EVENTS: Final = frozenset(
    {"plug_unresponsive", "off_not_obeyed", "relay_stuck", "cutoff_enforced"}
)

Item: TypeAlias = "BrokerEvent | _Shutdown | _Wake | _Announce | _Fired | DayRead"

#: Safety rule 9: how long shutdown waits for plugs to confirm OFF, at most.
SHUTDOWN_CONFIRM_S: Final = 5.0


@dataclass(frozen=True, slots=True)
class _Shutdown:
    """Sentinel: a signal asked the daemon to stop."""


@dataclass(frozen=True, slots=True)
class _Wake:
    """Sentinel: something arrived beside the queue (a journal acknowledgement)."""


@dataclass(frozen=True, slots=True)
class _Announce:
    """Sentinel: time to send Home Assistant discovery and every state again."""


@dataclass(frozen=True, slots=True)
class _Fired:
    """APScheduler fired a schedule (its job runs on the loop and only enqueues this)."""

    schedule: str


#: The most time spent applying already-arrived messages before deadlines are checked.
BATCH_S: Final = 0.05
#: Queued items applied back to back before the loop's other callbacks get a turn.
BACKLOG_TURN: Final = 100
#: Added to every timed wake-up (see ``Runtime._timeout``): 10 µs, far below epoll's 1 ms.
TIMER_SLACK_S: Final = 1e-5


#: After Home Assistant's birth message, wait this long (plus jitter) before rediscovery, as
#: its docs advise, so a restarted Home Assistant is not flooded by every client at once.
BIRTH_DELAY_S: Final = 2.0
BIRTH_JITTER_S: Final = 3.0


def system_now(loop: asyncio.AbstractEventLoop | None = None) -> Now:
    """Read the loop's monotonic clock and the local wall clock together."""
    mono = loop.time() if loop is not None else time.monotonic()
    return Now(mono=mono, wall=datetime.now().astimezone())


def restore(
    history: History | None, config: Config, wall: datetime
) -> tuple[Restored, list[SessionRow]]:
    """Close sessions left open by a crash (rule 8) and read today's totals and settings.

    Safety rule 12: a database that fails here (locked by another process, say) is reported
    and the daemon starts without what it would restore, rather than not at all, since only
    a running daemon switches the panels off.
    """
    if history is None:
        return Restored(), []
    try:
        return _restore(history, config, wall)
    except StorageError as error:
        log.error("storage_error", operation="restore", path=str(history.path), error=str(error))
        return Restored(), []


def _restore(history: History, config: Config, wall: datetime) -> tuple[Restored, list[SessionRow]]:
    interrupted = history.close_interrupted(wall)
    # Read by session id, so that the core can merge later reads of the same day (after a clock
    # step or at midnight: ClockWatch) with what it saw itself, counting each once.
    day = wall.date()
    sessions = history.day_sessions(day)
    today: dict[str, float] = {}
    last_end: dict[str, datetime] = {}
    defaults: dict[str, float] = {}
    for panel in config.panels:
        today[panel] = sum(sessions.get(panel, {}).values())
        end = history.last_end(panel)
        if end is not None:
            last_end[panel] = end
        stored = history.get_setting(f"panel.{panel}.default_duration_s")
        if stored is not None:
            with contextlib.suppress(ValueError):
                seconds = float(stored)
                if 1 <= seconds <= config.safety.max_on.total_seconds():
                    defaults[panel] = seconds
    exposure = _exposures(history, config, wall)
    enabled: dict[str, bool] = {}
    for schedule in config.schedules:
        stored = history.get_setting(setting_key(schedule))
        if stored is not None:
            enabled[schedule] = stored == "1"
    day_sessions = {panel: sessions.get(panel, {}) for panel in config.panels}
    restored = Restored(
        finished_today_s=today,
        last_end=last_end,
        default_duration_s=defaults,
        schedule_enabled=enabled,
        exposure=exposure,
        day=day.isoformat(),
        day_sessions=day_sessions,
        week_sessions=earlier_sessions(history, day),
    )
    return restored, interrupted


def _exposures(
    history: History, config: Config, wall: datetime
) -> dict[str, tuple[datetime, float]]:
    """Each panel's last exposure, if it may still go on: its end and its on-time.

    Sessions that followed each other with less than ``min_off`` between form one exposure.
    """
    min_off = config.safety.min_off
    since = wall - min_off - 4 * config.safety.max_on - timedelta(days=1)
    found: dict[str, tuple[datetime, float]] = {}
    for panel in config.panels:
        end: datetime | None = None
        on_s = 0.0
        for row in history.sessions(since=since, panel=panel):
            if row.ended_at is None or row.actual_s is None:
                continue
            if end is None or row.started_at - end >= min_off:
                on_s = 0.0
            on_s += row.actual_s
            end = row.ended_at
        if end is not None and wall - end < min_off:
            found[panel] = (end, on_s)
    return found


class Runtime:
    """Runs the controller (and the core below it) against a broker until told to stop."""

    def __init__(  # noqa: PLR0913 - the adapters, keyword-only and named at every call
        self,
        config: Config,
        broker: BrokerClient,
        *,
        writer: HistoryWriter | None = None,
        restored: Restored | None = None,
        interrupted: Iterable[SessionRow] = (),
        notifier: Notifier | None = None,
        clock: Callable[[], Now] | None = None,
    ) -> None:
        """Wire the core to its adapters; nothing starts until :meth:`run`."""
        self.config = config
        self.broker = broker
        self.core = Core(config, restored=restored)
        self.writer = writer
        self.notifier = notifier or Notifier.from_env()
        self._clock = clock
        self._interrupted = list(interrupted)
        self.hass = HassBridge(config)
        self.routines = Routines(config, self.core)
        self.schedules = Schedules(
            config,
            self.core,
            self.routines,
            enabled=restored.schedule_enabled if restored else None,
        )
        self.controller = Controller(config, self.core, self.routines, self.schedules)
        self.clock_jobs = ScheduleClock(config, self._fired)
        self.clock = self._clock_watch(writer, restored)
        commands = set(self.core.topics.command_filters())
        self.inbox: Inbox[Item] = Inbox(
            self.core.topics.base, set(self.core.subscriptions()) - commands
        )
        self.recorder = Recorder(writer, lambda: self.inbox.put(_Wake()))
        self.connected_once = asyncio.Event()
        self._announce_pending = False
        self._rejections = RejectionGate()

    def _clock_watch(self, writer: HistoryWriter | None, restored: Restored | None) -> ClockWatch:
        """Later days' totals are read from history (off the loop), answered through the queue."""
        known = date.fromisoformat(restored.day) if restored and restored.day else None
        path = writer.path if writer is not None else None
        return ClockWatch(path, known, lambda read: self.inbox.put(read))

    def now(self) -> Now:
        """The current time on both clocks."""
        return self._clock() if self._clock else system_now(asyncio.get_running_loop())

    def request_shutdown(self) -> None:
        """Ask :meth:`run` to stop safely (thread-safe only from the loop's thread)."""
        self.inbox.put(_Shutdown())

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT stop the daemon safely (rule 9)."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_shutdown)

    async def run(self) -> int:
        """Serve until a shutdown request; return the process exit code."""
        self.broker.start(lambda event: self.inbox.arrive(event, self.now().mono))
        self.clock_jobs.start(self.schedules.enabled)
        self.notifier.ready()
        self.notifier.status("waiting for the broker")
        watchdog = self.notifier.watchdog_interval_s()
        loop = asyncio.get_running_loop()
        next_ping = loop.time()
        backlog = 0
        while True:
            item: Item | None
            if not self.inbox.empty() and backlog < BACKLOG_TURN:
                # A backlog is taken without a timer per item; deadlines are judged after
                # each one all the same (_tick), and the loop gets a turn every so often.
                backlog += 1
                item = self.inbox.get_nowait()
            else:
                backlog = 0
                item = await self.inbox.get(self._timeout(watchdog, next_ping))
            if watchdog is not None and loop.time() >= next_ping:
                # Heartbeats come from this loop, so a blocked loop gets the service restarted.
                self.notifier.watchdog()
                next_ping = loop.time() + watchdog / 2
            if isinstance(item, _Shutdown):
                break
            self._handle(item)
            self._tick()
        await self._shutdown()
        return 0

    def _timeout(self, watchdog: float | None, next_ping: float) -> float | None:
        wakes = [
            self.controller.next_wakeup(),
            self._rejections.next_wakeup(),
            self.inbox.shed.next_wakeup(),
        ]
        watch_clock = self.config.schedules or self.clock.history is not None
        timeouts: list[float] = [CLOCK_CHECK_S] if watch_clock else []
        mono = self.now().mono
        timeouts.extend(wake - mono for wake in wakes if wake is not None)
        if watchdog is not None:
            timeouts.append(next_ping - asyncio.get_running_loop().time())
        if not timeouts:
            return None
        timeout = min(timeouts)
        # asyncio runs a timer up to its clock resolution early, when the core does not yet
        # see the time as due: waking just after it, the core always does (under virtual time,
        # waking early again and again would never let the clock move on).
        return 0.0 if timeout <= 0 else timeout + TIMER_SLACK_S

    def _fired(self, schedule: str) -> None:
        self.inbox.put(_Fired(schedule))

    def _handle(self, item: BrokerEvent | _Wake | _Announce | _Fired | DayRead | None) -> None:
        """Apply one queued item (time is judged afterwards, by :meth:`_tick`)."""
        now = self.now()
        effects: list[Effect] = []
        if isinstance(item, Received) and self.hass.handles(item.topic):
            self._from_hass(item)
        elif isinstance(item, Received):
            effects = self.controller.receive(item.topic, item.payload, item.retain, now)
        elif isinstance(item, _Announce):
            self._announce_pending = False
            if self.broker.connected:
                self.apply(self.hass.announce())
                effects = self.core.states(now) + self._schedule_states()
        elif isinstance(item, _Fired):
            log.info("schedule_fired", schedule=item.schedule)
            effects = self.controller.fire(item.schedule, now)
            # APScheduler has moved the job on by now: publish its next run.
            next_run = self.clock_jobs.next_run(item.schedule)
            effects.append(self.schedules.state_message(item.schedule, next_run))
        elif isinstance(item, DayRead):
            effects = self.core.day_totals(item.day, item.rows, now, item.earlier)
        elif isinstance(item, Connected):
            self._on_connected(now)
            return
        elif isinstance(item, ConnectFailed):
            return  # logged by the adapter, which keeps trying; nothing changed here
        elif isinstance(item, Disconnected):
            log.warning("broker_disconnected", reason=item.reason)
            self.notifier.status("broker disconnected; reconnecting")
            effects = self.controller.disconnect(now)
        self.apply(effects)

    def _tick(self) -> None:
        """Time passed: deadlines, confirmations, retries, pauses and offers that are due."""
        self._switch_on_journaled()
        now = self.now()
        if not self.inbox.empty() and self.core.confirmation_due(now):
            # A plug's confirmation may be waiting in the backlog: apply what has already
            # arrived before calling the plug silent (rule 4). Bounded, so a flood cannot
            # hold back an OFF that is due; only then, so deadlines are judged at once.
            loop = asyncio.get_running_loop()
            batch_end = loop.time() + BATCH_S
            while not self.inbox.empty() and loop.time() < batch_end:
                item = self.inbox.get_nowait()
                if isinstance(item, _Shutdown):
                    self.inbox.put(item)
                    break
                self._handle(item)
            now = self.now()
        self.apply(self.controller.tick(now))
        for summary in self._rejections.due(now.mono):
            self._publish_event(summary)
        self.inbox.shed_due(now.mono)
        stepped = self.clock.check(now)
        if stepped is not None and self.config.schedules:
            self.clock_jobs.clock_stepped(stepped)
            self.apply(self._schedule_states())

    def _from_hass(self, item: Received) -> None:
        if self.hass.is_birth(item.topic, item.payload):
            if self._announce_pending:
                return  # one rediscovery is already on its way: it covers this birth too
            self._announce_pending = True
            delay = BIRTH_DELAY_S + random.uniform(0, BIRTH_JITTER_S)  # noqa: S311 - jitter only
            log.info("homeassistant_online", rediscovery_in_s=round(delay, 1))
            asyncio.get_running_loop().call_later(delay, self.inbox.put, _Announce())
            return
        leftovers = self.hass.leftover(item.topic, item.payload, item.retain)
        if leftovers:
            log.info("homeassistant_discovery_removed", topic=item.topic)
            self.apply(leftovers)

    def _on_connected(self, now: Now) -> None:
        first = not self.core.ready
        log.info("broker_connected", first=first)
        filters = self.core.subscriptions() + self.hass.subscriptions()
        commands = command_subscriptions(self.core)
        self.broker.subscribe([f for f in filters if f in commands], commands=True)
        self.broker.subscribe([f for f in filters if f not in commands])
        effects = self.controller.connect(now)
        if first:
            # Rule 8: the sessions a crash left open were closed at start-up; now they are told.
            effects.extend(interrupted_events(self._interrupted, self.core.panels, now))
            self._interrupted = []
        self.apply(effects)
        self.broker.publish(status_message(self.core.topics, online=True))
        # Discovery on every connect: Home Assistant's birth is not retained, so a redlight
        # starting while Home Assistant already runs would never hear it.
        self.apply(self.hass.announce())
        self.apply(self._schedule_states())
        self.notifier.status(f"connected; {len(self.core.panels)} panels")
        self.connected_once.set()

    def apply(self, effects: Iterable[Effect]) -> None:
        """Carry out effects in order (the core puts plug commands first); nothing reads them
        back: the controller has already followed up whatever they record. Then the ONs whose
        journal rows were acknowledged meanwhile."""
        self._carry_out(effects)
        self._switch_on_journaled()

    def _schedule_states(self) -> list[Effect]:
        book, jobs = self.schedules, self.clock_jobs
        states = [book.state_message(key, jobs.next_run(key)) for key in self.config.schedules]
        return [*states, *book.offer_messages()]

    def _rejection_key(self, event: Event) -> str | None:
        """A configured routine or schedule has rejections of its own: ``redlight routine``
        waits for its routine's refusal, which carries no request_id. Unknown names share one
        key, so a flood of made-up ones is coalesced all the same."""
        routine = event.fields.get("routine")
        if routine in self.config.routines:
            return f"routine/{routine}"
        schedule = event.fields.get("schedule")
        if schedule in self.config.schedules:
            return f"schedule/{schedule}"
        return None

    def _publish_event(self, event: Event) -> None:
        for message in event_messages(self.core.topics, event):
            self.broker.publish(message)
        loud = event.event_type in FAULT_EVENTS
        (log.warning if loud else log.info)(event.event_type, panel=event.panel, **event.fields)

    def _carry_out(self, effects: Iterable[Effect]) -> None:
        """Each effect to its adapter: the broker, the log, the history, APScheduler."""
        for effect in effects:
            if isinstance(effect, Message):
                self.broker.publish(effect)
            elif isinstance(effect, Event):
                self._event(effect)
            elif isinstance(effect, LogLine):
                getattr(log, effect.level)(effect.event, **effect.fields)
            elif isinstance(effect, Resubscribe):
                self.broker.subscribe(effect.topics)
            elif isinstance(effect, ScheduleChanged):
                self.clock_jobs.set_enabled(effect.schedule, effect.enabled)
                next_run = self.clock_jobs.next_run(effect.schedule)
                self.broker.publish(self.schedules.state_message(effect.schedule, next_run))
            else:
                self.recorder.record(effect)

    def _event(self, event: Event) -> None:
        rejected = event.event_type == "command_rejected"
        if rejected and not self._rejections.admit(
            event, self.now().mono, self._rejection_key(event)
        ):
            return  # counted: the summary follows within a second
        self._publish_event(event)

    def _switch_on_journaled(self) -> None:
        while acked := self.recorder.take_acked():
            for session_id in acked:
                self.apply(self.controller.journaled(session_id, self.now()))

    async def _shutdown(self) -> None:
        """Safety rule 9: everything OFF, wait (bounded) for confirmation, then offline."""
        log.info("shutting_down", running=self.core.running())
        self.notifier.stopping()
        self.clock_jobs.shutdown()
        self.apply(self.controller.shutdown(self.now()))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SHUTDOWN_CONFIRM_S
        while self.broker.connected and not self.core.all_off_confirmed():
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            wake = self.core.next_wakeup()
            wait = remaining if wake is None else min(remaining, max(0.0, wake - self.now().mono))
            item = await self.inbox.get(wait)
            if isinstance(item, Received):
                now = self.now()
                self.apply(self.controller.receive(item.topic, item.payload, item.retain, now))
            # Safety rule 4 holds while stopping too: an unconfirmed OFF is re-sent when due.
            self.apply(self.controller.tick(self.now()))
        unconfirmed = [p.id for p in self.core.panels.values() if p.off_pending]
        if unconfirmed:
            log.error("off_unconfirmed_at_shutdown", panels=unconfirmed)
        self.broker.publish(status_message(self.core.topics, online=False))
        await self.broker.stop()
        if self.writer is not None:
            self.writer.close(timeout=2.0)
        log.info("stopped")


def interrupted_events(
    rows: Iterable[SessionRow], panels: Container[str], now: Now
) -> list[Effect]:
    """``session_finished`` (reason ``interrupted``) for each session a crash left open."""
    return [
        Event(
            "session_finished",
            row.panel,
            now.wall,
            {"session": row.id, "source": row.source, "reason": "interrupted"},
        )
        for row in rows
        if row.panel in panels
    ]


def command_subscriptions(core: Core) -> frozenset[str]:
    """The filters subscribed with the broker's command options (see ``BrokerClient.subscribe``).

    redlight's own command filters, and the plug command topics watched for retained commands
    (safety rule 7). Everything else, plug reports and Home Assistant's topics among it, is a
    plain subscription: a live retained state or discovery message there stays unflagged, as
    the code reading them expects.
    """
    plugs = {panel.plug.command_topic for panel in core.panels.values()}
    return frozenset(core.topics.command_filters()) | plugs


def open_history(config: Config) -> History | None:
    """Open storage; a broken database is reported loudly and the daemon runs without it."""
    try:
        return History.open(config.storage.path)
    except StorageError as error:
        log.error("storage_unavailable", path=str(config.storage.path), error=str(error))
        return None
