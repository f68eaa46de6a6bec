"""Schedules: cron in a zone, date windows, quiet hours, offers, DST and wall-clock steps."""

from __future__ import annotations

import asyncio
import json
from datetime import date, datetime, time, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from structlog.testing import capture_logs

from redlight.broker import Message
from redlight.config import Config, ScheduleConfig
from redlight.core import ScheduleChanged, SettingChanged
from redlight.schedules import (
    OFFER_TTL_S,
    ScheduleClock,
    Schedules,
    cron_trigger,
    crontab_weekdays,
    in_quiet_hours,
)
from tests.unit.clockkit import FakeWall, patch_wall
from tests.unit.corekit import Kit, events, make_config

AMS = ZoneInfo("Europe/Amsterdam")


def schedule(**fields: Any) -> ScheduleConfig:
    """A schedule of the left hip for 5 minutes."""
    raw: dict[str, Any] = {"panels": ["hip_left"], "duration": "5m", "cron": "0 19 * * tue,thu"}
    return ScheduleConfig(**(raw | fields))


def fire_times(sched: ScheduleConfig, zone: tzinfo, start: datetime, count: int) -> list[datetime]:
    """The next ``count`` fire times after ``start``."""
    trigger = cron_trigger(sched, zone)
    times: list[datetime] = []
    previous = None
    now = start
    for _ in range(count):
        nxt = trigger.get_next_fire_time(previous, now)
        if nxt is None:
            break
        times.append(nxt)
        previous, now = nxt, nxt + timedelta(seconds=1)
    return times


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("1-5", "mon-fri"),
        ("0", "sun"),
        ("7", "sun"),
        ("tue,thu,sat", "tue,thu,sat"),
        ("*/2", "*/2"),
    ],
)
def test_crontab_weekday_numbers_mean_what_crontab_means(field: str, expected: str) -> None:
    """Sunday is 0 (and 7) as in crontab, not Monday as in APScheduler 3.x."""
    assert crontab_weekdays(field) == expected


def test_fires_at_its_time_in_its_zone() -> None:
    """'0 19 * * tue,thu' in Amsterdam: Tuesday and Thursday at 19:00 local time."""
    start = datetime(2026, 11, 23, 12, 0, tzinfo=AMS)  # a Monday
    times = fire_times(schedule(), AMS, start, 3)
    assert [(t.strftime("%a %H:%M"), t.utcoffset()) for t in times] == [
        ("Tue 19:00", timedelta(hours=1)),
        ("Thu 19:00", timedelta(hours=1)),
        ("Tue 19:00", timedelta(hours=1)),
    ]


def test_date_window_bounds_a_recovery_plan() -> None:
    """start_date..end_date (inclusive): nothing before, nothing after."""
    plan = schedule(start_date=date(2026, 12, 1), end_date=date(2026, 12, 10))
    times = fire_times(plan, AMS, datetime(2026, 11, 1, tzinfo=AMS), 10)
    assert [t.date().isoformat() for t in times] == [
        "2026-12-01",
        "2026-12-03",
        "2026-12-08",
        "2026-12-10",
    ]


def test_dst_spring_forward_runs_once_an_hour_later() -> None:
    """Europe/Amsterdam, 29 March 2026: 02:30 does not exist; the run comes at 03:30 CEST."""
    nightly = schedule(cron="30 2 * * *")
    [first, second] = fire_times(nightly, AMS, datetime(2026, 3, 28, 12, 0, tzinfo=AMS), 2)
    utc = ZoneInfo("UTC")
    assert first.astimezone(utc).astimezone(AMS).strftime("%d %H:%M %Z") == "29 03:30 CEST"
    assert second.astimezone(utc).astimezone(AMS).strftime("%d %H:%M %Z") == "30 02:30 CEST"


def test_dst_fall_back_fires_twice_but_the_schedule_starts_once() -> None:
    """25 October 2026: APScheduler fires 02:30 CEST and 02:30 CET; only the first starts."""
    nightly = schedule(cron="30 2 * * *")
    first, second = fire_times(nightly, AMS, datetime(2026, 10, 24, 12, 0, tzinfo=AMS), 2)
    assert (first.utcoffset(), second.utcoffset()) == (timedelta(hours=2), timedelta(hours=1))
    config = make_config(
        schedules={
            "nightly": nightly.model_dump(exclude_unset=True) | {"timezone": "Europe/Amsterdam"}
        }
    )
    kit = Kit.create(config).ready()
    book = kit.controller.schedules
    kit.wall = first
    started = book.fire("nightly", kit.now)
    assert len(events(started, "session_started")) == 1
    kit.mono += 3600
    kit.wall = second
    assert book.fire("nightly", kit.now) == []


@pytest.mark.parametrize(
    ("clock", "inside"),
    [(time(23, 0), True), (time(5, 59), True), (time(6, 0), False), (time(12, 0), False)],
)
def test_quiet_hours_cross_midnight(clock: time, inside: bool) -> None:
    """'22:30-06:00' holds 23:00 and 05:59, not 06:00 or noon."""
    moment = datetime.combine(date(2026, 11, 24), clock, AMS)
    assert in_quiet_hours(moment, (time(22, 30), time(6, 0))) is inside


# ---------------------------------------------------------------- decisions (pure)


def planned(mode: str = "start", **safety: Any) -> tuple[Kit, Schedules, Config]:
    """A ready core with schedule 'evening' (left hip, 5 minutes) in the given mode."""
    config = make_config(
        safety=safety,
        schedules={
            "evening": {
                "panels": ["hip_left"],
                "duration": "5m",
                "cron": "0 19 * * *",
                "mode": mode,
            }
        },
    )
    kit = Kit.create(config).ready()
    return kit, kit.controller.schedules, config


def test_start_mode_starts_the_session_with_source_schedule() -> None:
    """A start-mode schedule switches its panel on for its duration."""
    kit, book, _ = planned()
    [started] = events(kit.take(book.fire("evening", kit.now)), "session_started")
    assert (started.fields["source"], started.fields["duration_s"]) == ("schedule", 300)


def test_quiet_hours_start_nothing_and_say_so() -> None:
    """Inside quiet hours the schedule is refused with reason quiet_hours."""
    kit, book, _ = planned(quiet_hours="07:00-08:00")  # the kit's clock reads 07:30
    [refused] = events(book.fire("evening", kit.now), "command_rejected")
    assert (refused.fields["reason"], refused.fields["schedule"]) == ("quiet_hours", "evening")
    assert kit.core.running() == []


def test_a_refusal_by_a_limit_is_reported_never_retried() -> None:
    """The panel is busy: the refusal names the schedule; nothing is queued for later."""
    kit, book, _ = planned()
    kit.start("hip_left", 60)
    [refused] = events(book.fire("evening", kit.now), "command_rejected")
    assert (refused.fields["reason"], refused.fields["schedule"]) == ("already_running", "evening")
    assert book.next_wakeup() is None


def test_offer_is_accepted_within_ten_minutes() -> None:
    """Offer mode: schedule_offer first; accept_offer starts the session."""
    kit, book, _ = planned("offer")
    [offer] = events(book.fire("evening", kit.now), "schedule_offer")
    assert offer.fields["state"] == "open"
    assert kit.core.running() == []
    kit.advance(OFFER_TTL_S - 1)
    effects = kit.send(
        "redlight/set", json.dumps({"action": "accept_offer", "offer": offer.fields["offer"]})
    )
    assert [e.fields["state"] for e in events(effects, "schedule_offer")] == ["accepted"]
    assert len(events(effects, "session_started")) == 1


def offer_states(effects: list[Any]) -> list[Any]:
    """The bodies of the retained ``<b>/offer`` messages among effects."""
    return [
        json.loads(e.payload)
        for e in effects
        if isinstance(e, Message) and e.topic == "redlight/offer" and e.retain
    ]


def test_the_newest_open_offer_is_retained_and_accepted_without_its_id() -> None:
    """``<b>/offer`` says which offer is open (Home Assistant's "Accept offer" is available
    while it names one); ``accept_offer`` without an id accepts that one."""
    kit, book, _ = planned("offer")
    fired = book.fire("evening", kit.now)
    [offer] = events(fired, "schedule_offer")
    [shown] = offer_states(fired)
    assert shown["offer"] == offer.fields["offer"]
    assert shown["schedule"] == "evening"
    effects = kit.send("redlight/set", json.dumps({"action": "accept_offer"}))
    assert [e.fields["state"] for e in events(effects, "schedule_offer")] == ["accepted"]
    assert len(events(effects, "session_started")) == 1
    assert offer_states(effects) == [{"offer": None}]
    [again] = events(kit.send("redlight/set", '{"action":"accept_offer"}'), "command_rejected")
    assert again.fields["reason"] == "unknown_offer"
    assert "offer" not in again.fields


def test_an_expired_offer_leaves_the_offer_topic_empty() -> None:
    """An offer that expires clears ``<b>/offer`` too (the Accept button goes unavailable)."""
    kit, book, _ = planned("offer")
    book.fire("evening", kit.now)
    kit.mono += OFFER_TTL_S
    assert offer_states(book.tick(kit.now)) == [{"offer": None}]
    assert offer_states(book.tick(kit.now)) == []  # said once


def test_offer_expires_after_ten_minutes() -> None:
    """Not accepted in time: the offer expires and a late accept is refused."""
    kit, book, _ = planned("offer")
    [offer] = events(book.fire("evening", kit.now), "schedule_offer")
    assert book.next_wakeup() == pytest.approx(kit.mono + OFFER_TTL_S)
    kit.mono += OFFER_TTL_S
    [expired] = events(book.tick(kit.now), "schedule_offer")
    assert expired.fields["state"] == "expired"
    [late] = events(book.accept(offer.fields["offer"], kit.now), "command_rejected")
    assert late.fields["reason"] == "unknown_offer"
    assert kit.core.running() == []


def test_disabling_is_kept_and_stops_firing() -> None:
    """OFF on <b>/schedule/<id>/set: stored, the job paused, and a fire does nothing."""
    kit, book, _ = planned()
    effects = kit.send("redlight/schedule/evening/set", "OFF")
    assert SettingChanged("schedule.evening.enabled", "0") in effects
    assert ScheduleChanged("evening", False) in effects
    assert book.fire("evening", kit.now) == []
    state = json.loads(book.state_message("evening", None).payload)
    assert state == {"enabled": False, "next_run": None}
    restarted = Schedules(book.config, kit.core, book.routines, enabled={"evening": False})
    assert restarted.enabled == {"evening": False}


def test_schedule_state_carries_next_run_with_offset() -> None:
    """<b>/schedule/<id>/state is retained JSON with next_run in ISO 8601 with its offset."""
    _, book, _ = planned()
    message = book.state_message("evening", datetime(2026, 11, 24, 19, 0, tzinfo=AMS))
    assert message.retain
    assert json.loads(message.payload) == {"enabled": True, "next_run": "2026-11-24T19:00:00+01:00"}


# ---------------------------------------------------------------- APScheduler and clock steps


@pytest.fixture
def fake_wall(monkeypatch: pytest.MonkeyPatch) -> list[FakeWall]:
    """Patch the wall clock APScheduler and redlight.schedules read."""
    return patch_wall(monkeypatch)


def clock_config(cron: str) -> Config:
    """One schedule in Amsterdam."""
    return make_config(
        schedules={
            "s": {
                "panels": ["hip_left"],
                "duration": "5m",
                "cron": cron,
                "timezone": "Europe/Amsterdam",
            }
        }
    )


@pytest.mark.looptime
async def test_a_forward_step_of_three_hours_is_not_missed(
    fake_wall: list[FakeWall],
) -> None:
    """15:59 becomes 18:59: judged again at once, the 19:00 run still happens, once."""
    fake_wall.append(FakeWall(datetime(2026, 11, 24, 15, 59, tzinfo=AMS)))
    fired: list[str] = []
    jobs = ScheduleClock(clock_config("0 19 * * *"), fired.append)
    jobs.start({"s": True})
    await asyncio.sleep(1)
    fake_wall[0].step(3 * 3600)
    jobs.clock_stepped(3 * 3600)
    await asyncio.sleep(120)
    jobs.shutdown()
    assert fired == ["s"]


@pytest.mark.looptime
async def test_a_forward_step_never_fires_a_burst(fake_wall: list[FakeWall]) -> None:
    """Every 15 minutes, then +3 hours: at most one (coalesced) run, not twelve."""
    fake_wall.append(FakeWall(datetime(2026, 11, 24, 12, 1, tzinfo=AMS)))
    fired: list[str] = []
    jobs = ScheduleClock(clock_config("*/15 * * * *"), fired.append)
    jobs.start({"s": True})
    await asyncio.sleep(60)
    fake_wall[0].offset = timedelta(hours=3)
    jobs.scheduler.wakeup()  # as the timer would, late
    await asyncio.sleep(1)
    assert len(fired) <= 1
    jobs.shutdown()


@pytest.mark.looptime
async def test_a_backward_step_of_three_hours_does_not_hang(fake_wall: list[FakeWall]) -> None:
    """18:59 becomes 15:59: nothing fires early; the next run is still 19:00 local."""
    fake_wall.append(FakeWall(datetime(2026, 11, 24, 18, 59, tzinfo=AMS)))
    fired: list[str] = []
    jobs = ScheduleClock(clock_config("0 19 * * *"), fired.append)
    jobs.start({"s": True})
    fake_wall[0].step(-3 * 3600)
    jobs.clock_stepped(-3 * 3600)
    await asyncio.sleep(120)
    assert fired == []
    next_run = jobs.next_run("s")
    assert next_run is not None
    assert next_run.astimezone(AMS).strftime("%d %H:%M") == "24 19:00"
    await asyncio.sleep(3 * 3600)
    jobs.shutdown()
    assert fired == ["s"]


def at(hour: int, minute: int, second: int = 0, day: int = 24) -> datetime:
    """A moment of November 2026 in Amsterdam."""
    return datetime(2026, 11, day, hour, minute, second, tzinfo=AMS)


@pytest.mark.looptime
@pytest.mark.parametrize("late_s", [2, 20, 299])
async def test_a_run_the_forward_step_skipped_over_fires_once_within_grace(
    fake_wall: list[FakeWall], late_s: int
) -> None:
    """18:30 steps to just past 19:00 (the run fell inside the step): it fires at once, once,
    and the next run is tomorrow's."""
    fake_wall.append(FakeWall(at(18, 30)))
    fired: list[str] = []
    jobs = ScheduleClock(clock_config("0 19 * * *"), fired.append)
    jobs.start({"s": True})
    await asyncio.sleep(1)
    step = (at(19, 0) - at(18, 30, 1)).total_seconds() + late_s
    fake_wall[0].step(step)
    jobs.clock_stepped(step)
    await asyncio.sleep(1)
    assert fired == ["s"]
    await asyncio.sleep(3600)
    jobs.shutdown()
    assert fired == ["s"]
    next_run = jobs.next_run("s")
    assert next_run is not None
    assert next_run.astimezone(AMS).strftime("%d %H:%M") == "25 19:00"


@pytest.mark.looptime
async def test_a_run_the_step_skipped_by_more_than_the_grace_is_skipped_and_logged(
    fake_wall: list[FakeWall],
) -> None:
    """18:30 steps to 19:06: the 19:00 run is 6 minutes late, past the 5-minute grace; it is
    not made up for, and the log says so."""
    fake_wall.append(FakeWall(at(18, 30)))
    fired: list[str] = []
    jobs = ScheduleClock(clock_config("0 19 * * *"), fired.append)
    jobs.start({"s": True})
    with capture_logs() as logs:
        jobs.clock_stepped(_step_to(fake_wall[0], at(19, 6)))
    await asyncio.sleep(3600)
    jobs.shutdown()
    assert fired == []
    [missed] = [line for line in logs if line["event"] == "schedule_missed"]
    assert (missed["schedule"], missed["run_time"]) == ("s", "2026-11-24T19:00:00+01:00")


@pytest.mark.looptime
async def test_a_backward_step_never_fires_a_run_twice(fake_wall: list[FakeWall]) -> None:
    """19:00 fired; at 19:01 the clock steps back to 18:56: 19:00 does not fire again."""
    fake_wall.append(FakeWall(at(18, 59)))
    fired: list[str] = []
    jobs = ScheduleClock(clock_config("0 19 * * *"), fired.append)
    jobs.start({"s": True})
    await asyncio.sleep(120)
    assert fired == ["s"]
    jobs.clock_stepped(_step_to(fake_wall[0], at(18, 56)))
    await asyncio.sleep(600)
    jobs.shutdown()
    assert fired == ["s"]


@pytest.mark.looptime
async def test_a_step_of_decades_is_judged_without_walking_every_run(
    fake_wall: list[FakeWall],
) -> None:
    """A board booting at 1970 steps to 2026 with an every-minute schedule: one run, at once
    (APScheduler alone would walk 29 million missed runs on the event loop)."""
    fake_wall.append(FakeWall(datetime(1970, 1, 1, 0, 0, 30, tzinfo=AMS)))
    fired: list[str] = []
    jobs = ScheduleClock(clock_config("* * * * *"), fired.append)
    jobs.start({"s": True})
    jobs.clock_stepped(_step_to(fake_wall[0], at(12, 0, 10)))
    await asyncio.sleep(1)
    assert fired == ["s"]
    jobs.shutdown()


def _step_to(wall: FakeWall, target: datetime) -> float:
    """Step ``wall`` so that it reads ``target`` now; the step in seconds."""
    seconds = (target - wall.now(AMS)).total_seconds()
    wall.step(seconds)
    return seconds
