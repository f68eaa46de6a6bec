"""Schedules: APScheduler decides when a session or routine *starts*; the core decides the rest.

Two parts. :class:`Schedules` is pure, like the core: a schedule fired (or an offer was
accepted, or a schedule was switched on or off) and it returns effects — a start through the
core or :class:`~redlight.routines.Routines`, a ``schedule_offer`` event, a refusal with its
reason. :class:`ScheduleClock` is the APScheduler 3.11 adapter: an ``AsyncIOScheduler`` with an
in-memory job store rebuilt from config on every start, ``CronTrigger`` with an explicit zone,
``coalesce`` and a bounded ``misfire_grace_time``, whose jobs only enqueue "schedule X fired"
for the runtime's one task (STYLE: one owner of state).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, time, timedelta, tzinfo
from typing import Any, Final
from zoneinfo import ZoneInfo

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger

from redlight import commands as cmd
from redlight.broker import STATE_QOS, Message
from redlight.config import Config, ScheduleConfig
from redlight.core import Core, Effect, Now, ScheduleChanged, SettingChanged
from redlight.messages import Event, Topics, dumps, iso
from redlight.routines import Routines

log = structlog.get_logger("redlight.schedules")

#: An offer (mode "offer") starts the session only if accepted within this time (SPEC §4).
OFFER_TTL_S: Final = 600.0
#: A run missed by more than this (the machine slept, the clock stepped) is skipped, not
#: made up for: one late session is fine, a burst of them is not.
MISFIRE_GRACE_S: Final = 300
#: Crontab numbers weekdays from Sunday = 0 (and 7); APScheduler 3.x from Monday = 0.
_WEEKDAYS: Final = ("sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun")


def setting_key(schedule_id: str) -> str:
    """Where a schedule's enabled flag is kept across restarts."""
    return f"schedule.{schedule_id}.enabled"


def crontab_weekdays(field: str) -> str:
    """Crontab's day-of-week field with numbers turned into names (0 and 7 are Sunday)."""
    return re.sub(r"(?<![/\d])([0-7])(?!\d)", lambda m: _WEEKDAYS[int(m.group(1))], field)


def schedule_zone(schedule: ScheduleConfig, local: tzinfo | None = None) -> tzinfo:
    """The schedule's zone: explicit, else the system's."""
    if schedule.timezone is not None:
        return ZoneInfo(schedule.timezone)
    return local or datetime.now().astimezone().tzinfo or ZoneInfo("UTC")


def cron_trigger(schedule: ScheduleConfig, zone: tzinfo) -> CronTrigger:
    """The schedule's trigger, with its date window (a recovery plan of N weeks)."""
    minute, hour, day, month, weekday = schedule.cron.split()
    end = None
    if schedule.end_date is not None:
        # The end date is inclusive: runs on that day still happen.
        end = datetime.combine(schedule.end_date, time(23, 59, 59), zone)
    start = datetime.combine(schedule.start_date, time(0, 0), zone) if schedule.start_date else None
    return CronTrigger(
        minute=minute,
        hour=hour,
        day=day,
        month=month,
        day_of_week=crontab_weekdays(weekday),
        timezone=zone,
        start_date=start,
        end_date=end,
    )


def in_quiet_hours(moment: datetime, quiet: tuple[time, time] | None) -> bool:
    """``safety.quiet_hours`` contains this local time (the window may cross midnight)."""
    if quiet is None:
        return False
    begin, end = quiet
    now = moment.timetz().replace(tzinfo=None)
    if begin <= end:
        return begin <= now < end
    return now >= begin or now < end


@dataclass(slots=True)
class _Offer:
    id: str
    schedule: str
    expires_mono: float
    expires_wall: datetime


class Schedules:
    """What happens when a schedule fires, is switched, or its offer is accepted."""

    def __init__(
        self,
        config: Config,
        core: Core,
        routines: Routines,
        *,
        enabled: Mapping[str, bool] | None = None,
        new_id: Callable[[], str] | None = None,
    ) -> None:
        """``enabled`` is what storage kept; schedules start enabled otherwise."""
        self.config = config
        self.core = core
        self.routines = routines
        self.topics = Topics(config.mqtt.base_topic)
        stored = enabled or {}
        self.enabled = {key: stored.get(key, True) for key in config.schedules}
        self.offers: dict[str, _Offer] = {}
        self._last_local: dict[str, datetime] = {}
        self._new_id = new_id or (lambda: uuid.uuid4().hex[:8])

    # ------------------------------------------------------------------ inputs

    def withdraw_offers(self, now: Now) -> list[Effect]:
        """``stop_all``: every open offer is withdrawn."""
        out: list[Effect] = [self._offer_event(o, now, "withdrawn") for o in self.offers.values()]
        if self.offers:
            self.offers.clear()
            out.append(self.offer_message())
        return out

    def toggle(self, schedule_id: str, enabled: bool, now: Now) -> list[Effect]:
        """Enable or disable a schedule; kept across restarts."""
        self.enabled[schedule_id] = enabled
        log.info("schedule_switched", schedule=schedule_id, enabled=enabled)
        return [
            SettingChanged(setting_key(schedule_id), "1" if enabled else "0"),
            ScheduleChanged(schedule_id, enabled),
        ]

    def fire(self, schedule_id: str, now: Now) -> list[Effect]:
        """APScheduler says the schedule's time has come."""
        schedule = self.config.schedules.get(schedule_id)
        if schedule is None or not self.enabled.get(schedule_id, False):
            return []
        # When clocks go back, APScheduler fires 02:30 twice (summer, then winter time):
        # a schedule runs at most once per local minute, so a therapy plan never doubles.
        local = now.wall.astimezone(schedule_zone(schedule, now.wall.tzinfo))
        minute = local.replace(second=0, microsecond=0, tzinfo=None)
        if self._last_local.get(schedule_id) == minute:
            log.info("schedule_repeated_local_time_skipped", schedule=schedule_id)
            return []
        self._last_local[schedule_id] = minute
        if in_quiet_hours(now.wall, self.config.safety.quiet_hours):
            return [
                self._refused(
                    schedule_id,
                    "quiet_hours",
                    "it is inside safety.quiet_hours, so the schedule starts nothing",
                    now,
                )
            ]
        if schedule.mode == "offer":
            offer = _Offer(
                self._new_id(),
                schedule_id,
                now.mono + OFFER_TTL_S,
                now.wall + timedelta(seconds=OFFER_TTL_S),
            )
            self.offers[offer.id] = offer
            return [self._offer_event(offer, now, "open"), self.offer_message()]
        return self._launch(schedule_id, schedule, now)

    def accept(self, offer_id: str | None, now: Now, request_id: str | None = None) -> list[Effect]:
        """``accept_offer``: start what the offer proposed, if it is still open (``None``: the
        newest open offer, the one ``<b>/offer`` shows and Home Assistant's button accepts)."""
        if offer_id is None:
            newest = self._newest()
            offer_id = newest.id if newest is not None else None
        offer = self.offers.pop(offer_id, None) if offer_id is not None else None
        if offer is None:
            which = "no open offer" if offer_id is None else f"no open offer {offer_id!r}"
            fields: dict[str, Any] = {
                "reason": "unknown_offer",
                "message": f"there is {which} (offers expire after 10 minutes)",
            }
            if offer_id is not None:
                fields["offer"] = offer_id
            if request_id is not None:
                fields["request_id"] = request_id
            return [Event("command_rejected", None, now.wall, fields)]
        out: list[Effect] = [self._offer_event(offer, now, "accepted"), self.offer_message()]
        out.extend(self._launch(offer.schedule, self.config.schedules[offer.schedule], now))
        return out

    def tick(self, now: Now) -> list[Effect]:
        """Offers not accepted in time expire."""
        out: list[Effect] = []
        for offer in list(self.offers.values()):
            if now.mono >= offer.expires_mono:
                del self.offers[offer.id]
                out.append(self._offer_event(offer, now, "expired"))
        if out:
            out.append(self.offer_message())
        return out

    def next_wakeup(self) -> float | None:
        """When the earliest offer expires."""
        return min((o.expires_mono for o in self.offers.values()), default=None)

    def offer_message(self) -> Message:
        """``<b>/offer``, retained: the newest open offer, or ``{"offer": null}``."""
        newest = self._newest()
        body: dict[str, Any] = {"offer": None}
        if newest is not None:
            body = {
                "offer": newest.id,
                "schedule": newest.schedule,
                "expires_at": iso(newest.expires_wall),
            }
        return Message(self.topics.offer, dumps(body), True, STATE_QOS)

    def offer_messages(self) -> list[Message]:
        """:meth:`offer_message` where a schedule offers (on connect), else nothing."""
        return [self.offer_message()] if self.config.offers else []

    def _newest(self) -> _Offer | None:
        return max(self.offers.values(), key=lambda o: o.expires_mono, default=None)

    def state_message(self, schedule_id: str, next_run: datetime | None) -> Message:
        """``<b>/schedule/<id>/state``, retained: enabled, and the next run with its offset."""
        enabled = self.enabled.get(schedule_id, False)
        body = {"enabled": enabled, "next_run": iso(next_run) if next_run and enabled else None}
        return Message(self.topics.schedule_state(schedule_id), dumps(body), True, STATE_QOS)

    # ------------------------------------------------------------------ starting

    def _launch(self, schedule_id: str, schedule: ScheduleConfig, now: Now) -> list[Effect]:
        if schedule.routine is not None:
            effects = self.routines.start(schedule.routine, now, source="schedule")
            return [_tag(e, schedule_id) for e in effects]
        out: list[Effect] = []
        for panel in schedule.panels or ():
            request = cmd.Start(
                duration_s=schedule.duration.total_seconds() if schedule.duration else None
            )
            # A refusal (cooldown, daily_max, plug offline) is reported, never retried.
            _, effects = self.core.start(panel, request, "schedule", now)
            out.extend(_tag(e, schedule_id) for e in effects)
        return out

    def _offer_event(self, offer: _Offer, now: Now, state: str) -> Event:
        schedule = self.config.schedules[offer.schedule]
        fields: dict[str, Any] = {
            "schedule": offer.schedule,
            "offer": offer.id,
            "state": state,
            "expires_at": iso(offer.expires_wall),
        }
        if schedule.routine is not None:
            fields["routine"] = schedule.routine
        else:
            fields["panels"] = list(schedule.panels or ())
        return Event("schedule_offer", None, now.wall, fields)

    def _refused(self, schedule_id: str, reason: str, message: str, now: Now) -> Event:
        fields = {"reason": reason, "message": message, "schedule": schedule_id}
        return Event("command_rejected", None, now.wall, fields)


def _tag(effect: Effect, schedule_id: str) -> Effect:
    """Name the schedule in the refusals it caused, so the user sees which one."""
    if isinstance(effect, Event) and effect.event_type == "command_rejected":
        return replace(effect, fields=dict(effect.fields) | {"schedule": schedule_id})
    return effect


class ScheduleClock:
    """APScheduler 3.11 on the event loop; its jobs only call ``fired(schedule_id)``."""

    def __init__(self, config: Config, fired: Callable[[str], None]) -> None:
        """One cron job per schedule, rebuilt from config (nothing persisted but 'enabled')."""
        self.config = config
        self.scheduler = AsyncIOScheduler(
            job_defaults={
                "coalesce": True,
                "misfire_grace_time": MISFIRE_GRACE_S,
                "max_instances": 1,
            }
        )
        self.zones = {key: schedule_zone(s) for key, s in config.schedules.items()}

        async def job(schedule_id: str) -> None:
            # A coroutine, so APScheduler runs it on the loop, not in a worker thread.
            fired(schedule_id)

        for key, schedule in config.schedules.items():
            self.scheduler.add_job(
                job,
                trigger=cron_trigger(schedule, self.zones[key]),
                args=[key],
                id=key,
                name=f"schedule {key}",
            )

    def start(self, enabled: Mapping[str, bool]) -> None:
        """Start on the running loop; disabled schedules start paused."""
        self.scheduler.start()
        for key, on in enabled.items():
            if not on:
                self.scheduler.pause_job(key)

    def set_enabled(self, schedule_id: str, enabled: bool) -> None:
        """Pause or resume a schedule's job."""
        if enabled:
            self.scheduler.resume_job(schedule_id)
        else:
            self.scheduler.pause_job(schedule_id)

    def next_run(self, schedule_id: str) -> datetime | None:
        """When the schedule fires next, in its own zone (``None``: paused or past its window)."""
        job = self.scheduler.get_job(schedule_id)
        return job.next_run_time if job is not None else None

    def clock_stepped(self, seconds: float) -> None:
        """The wall clock stepped by ``seconds``: every job is judged again, at once.

        APScheduler's timer waits on the monotonic clock for a wall time computed before the
        step. Forward, the runs the step skipped over are due now: the latest one still within
        :data:`MISFIRE_GRACE_S` fires, once (coalesced), and older ones are skipped and logged.
        Backward, every job keeps its next run, so nothing fires early, and no run fires twice
        (a clock that was a day ahead resumes at the first run after the latest time it showed).
        """
        if seconds > 0:
            for job in self.scheduler.get_jobs():
                self._skip_missed(job)
        self.scheduler.wakeup()

    def _skip_missed(self, job: Any) -> None:
        due = job.next_run_time
        if due is None:
            return  # paused, or past its window
        now = datetime.now(self.zones[job.id])
        if due > now:
            return
        # The first run inside the grace window, found directly: APScheduler itself would walk
        # every run since ``due`` (a clock stepped from 1970 to today: millions for */1).
        first = job.trigger.get_next_fire_time(None, now - timedelta(seconds=MISFIRE_GRACE_S))
        if first is None or first <= due:
            # The run it holds is still within grace and fires as it is; or the schedule's
            # window is over, and APScheduler retires the job as usual.
            return
        log.warning(
            "schedule_missed",
            schedule=job.id,
            run_time=iso(due),
            reason="the wall clock stepped past it by more than the misfire grace",
        )
        job.modify(next_run_time=first)

    def shutdown(self) -> None:
        """Stop firing."""
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)


__all__ = [
    "OFFER_TTL_S",
    "ScheduleChanged",
    "ScheduleClock",
    "Schedules",
    "cron_trigger",
    "crontab_weekdays",
    "in_quiet_hours",
    "setting_key",
]
