"""This week's on-time per panel and area, and the weekly goal (issue 14's session controls).

A week is the ISO week of the local date a session started: Monday to Sunday. The core in
plain virtual time (a Kit); history read through the real reader; the runtime on the in-memory
broker with looptime and a wall clock that is stepped across midnight.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from redlight.areas import area_slug, group_areas
from redlight.broker import Message
from redlight.clockwatch import CLOCK_CHECK_S, DayRead, read_day
from redlight.config import Config
from redlight.core import Restored
from redlight.days import earlier_days, week_start
from redlight.runtime import restore
from redlight.storage import History, HistoryWriter, SessionRow
from tests.unit.corekit import START_WALL, ZONE, Kit, make_config, messages, state
from tests.unit.test_clock_steps import Stepped, cleanup, left_with, stepped_rig

__all__ = ["cleanup"]  # the fixture, imported for these tests

TUESDAY = START_WALL.date()  # 2026-11-24, the Kit's clock reads 07:30
MONDAY = date(2026, 11, 23)
SUNDAY = date(2026, 11, 29)
LEFT_STATE = "redlight/panel/hip_left/state"


def published(effects: list[Any], topic: str = LEFT_STATE) -> list[dict[str, Any]]:
    """The JSON states published on ``topic``, in order."""
    return [json.loads(m.payload) for m in messages(effects, topic)]


def run(kit: Kit, panel: str, seconds: float) -> None:
    """A whole session of ``seconds`` on ``panel``, its plug confirming ON and OFF."""
    kit.start(panel, seconds)
    kit.report(panel, on=True)
    kit.advance(seconds)
    kit.report(panel, on=False)


def record(db: Path, sessions: list[tuple[str, datetime, float]]) -> HistoryWriter:
    """A history holding closed ``hip_left`` sessions (id, start, seconds); its writer."""
    writer = HistoryWriter(db)
    for session, started, seconds in sessions:
        writer.session_opened(SessionRow(session, "hip_left", None, "cli", started, seconds, None))
        end = started + timedelta(seconds=seconds)
        writer.session_closed(session, end, seconds, "completed", None)
    assert writer.flush(5.0)
    return writer


# ---------------------------------------------------------------- what a week is


def test_a_week_runs_monday_to_sunday() -> None:
    """ISO weeks: Sunday's Monday is six days before it; a Monday has no earlier days."""
    assert week_start(SUNDAY) == MONDAY
    assert week_start(MONDAY) == MONDAY
    assert earlier_days(MONDAY) == []
    assert earlier_days(date(2026, 11, 25)) == [MONDAY, TUESDAY]


def test_areas_are_grouped_by_their_slug_in_config_order() -> None:
    """Spellings that differ in case or punctuation are one area, named as first written;
    a panel without an area (or a blank one) is in none; text without ASCII gets a hash."""
    areas = group_areas(
        [("a", "Left hip"), ("b", "left-hip"), ("c", None), ("d", " "), ("e", "腰")]
    )
    assert [(a.slug, a.name, a.panels) for a in areas.values()] == [
        ("left_hip", "Left hip", ("a", "b")),
        (area_slug("腰"), "腰", ("e",)),
    ]
    assert area_slug("腰").startswith("area_")
    assert area_slug("腰") != area_slug("膝")
    assert area_slug("Hüfte links") == "hufte_links"
    long = area_slug("x" * 300)
    assert len(long) <= 48
    assert long != area_slug("x" * 301)


# ---------------------------------------------------------------- config


def test_a_weekly_goal_is_a_duration_in_the_panel_state() -> None:
    """``weekly_goal = "1h"`` is parsed like every duration and published as
    ``weekly_goal_s``; a panel without a goal has no such key."""
    config = make_config(
        panels={
            "hip_left": make_config().panels["hip_left"].model_dump(exclude_unset=True)
            | {"weekly_goal": "60min"},
            "sauna": make_config().panels["sauna"].model_dump(exclude_unset=True),
        }
    )
    assert config.panels["hip_left"].weekly_goal == timedelta(hours=1)
    kit = Kit.create(config).ready()
    assert state(kit, "hip_left")["weekly_goal_s"] == 3600
    assert "weekly_goal_s" not in state(kit, "sauna")


@pytest.mark.parametrize(
    ("goal", "daily_max", "expected"),
    [
        (
            "0s",
            None,
            "panels.hip_left.weekly_goal: must be more than zero and at most a week (got 0s); "
            "leave it out for no weekly goal",
        ),
        (
            "200h",
            None,
            "panels.hip_left.weekly_goal: must be more than zero and at most a week "
            "(got 200h); leave it out for no weekly goal",
        ),
        (
            "6h",
            "45m",
            "panels.hip_left.weekly_goal: 6h cannot be reached with safety.daily_max 45m "
            "(at most 5h15m a week)",
        ),
    ],
)
def test_a_weekly_goal_that_cannot_be_met_is_one_line_with_where(
    goal: str, daily_max: str | None, expected: str
) -> None:
    """A goal of nothing, of more than a week, or beyond 7 x daily_max is a config error."""
    from pydantic import ValidationError

    from redlight.config import format_validation_error

    left = make_config().panels["hip_left"].model_dump(exclude_unset=True)
    safety = {} if daily_max is None else {"daily_max": daily_max}
    with pytest.raises(ValidationError) as caught:
        make_config(panels={"hip_left": left | {"weekly_goal": goal}}, safety=safety)
    assert format_validation_error(caught.value) == [expected]


# ---------------------------------------------------------------- the core's week


def test_week_s_counts_the_earlier_days_and_the_running_session() -> None:
    """Restored on a Tuesday with Monday's sessions: ``week_s`` is Monday's and Tuesday's
    together, and moves with a running session as ``today_s`` does."""
    restored = Restored(
        day=TUESDAY.isoformat(),
        day_sessions={"hip_left": {"tue": 120.0}},
        week_sessions={MONDAY.isoformat(): {"hip_left": {"mon": 300.0}}},
    )
    kit = Kit.create(make_config(), restored).ready()
    assert (state(kit, "hip_left")["today_s"], state(kit, "hip_left")["week_s"]) == (120, 420)
    kit.start("hip_left", 120)
    kit.report("hip_left", on=True)
    kit.advance(60)
    assert (state(kit, "hip_left")["today_s"], state(kit, "hip_left")["week_s"]) == (180, 480)
    kit.advance(60)
    kit.report("hip_left", on=False)
    assert state(kit, "hip_left")["week_s"] == 540


def test_the_week_starts_again_at_monday_midnight() -> None:
    """Sunday 23:55 a 10-minute session starts: it counts for Sunday's week, also after
    midnight; at Monday 00:00 the new day's read publishes ``week_s`` 0 for the new week."""
    saturday = date(2026, 11, 28).isoformat()
    restored = Restored(
        day=SUNDAY.isoformat(), week_sessions={saturday: {"hip_left": {"sat": 600.0}}}
    )
    kit = Kit.create(make_config(), restored)
    kit.wall = datetime(2026, 11, 29, 23, 55, tzinfo=ZONE)
    kit.ready()
    kit.start("hip_left", 600)
    kit.report("hip_left", on=True)
    kit.advance(240)
    assert state(kit, "hip_left")["week_s"] == 840
    got = kit.advance(120)  # 00:01 on Monday: the session started on Sunday
    got += kit.take(kit.core.day_totals(date(2026, 11, 30), {}, kit.now))
    assert published(got)[-1]["week_s"] == 0
    kit.advance(240)
    kit.report("hip_left", on=False)
    assert state(kit, "hip_left")["week_s"] == 0
    kit.wall = datetime(2026, 11, 29, 23, 59, tzinfo=ZONE)  # a step back sees it on Sunday
    assert state(kit, "hip_left")["week_s"] == 1200


def test_a_restart_mid_week_counts_what_came_before_once(tmp_path: Path) -> None:
    """Sessions on Monday and Tuesday, restart on Wednesday: ``restore`` reads the week, so
    ``week_s`` counts them; the week read again later (with a session the core saw itself)
    counts nothing twice."""
    db = tmp_path / "history.db"
    record(
        db,
        [
            ("mon", datetime(2026, 11, 23, 19, 0, tzinfo=ZONE), 300.0),
            ("tue", datetime(2026, 11, 24, 19, 0, tzinfo=ZONE), 240.0),
            ("last_week", datetime(2026, 11, 22, 19, 0, tzinfo=ZONE), 600.0),
        ],
    ).close()
    wednesday = datetime(2026, 11, 25, 8, 0, tzinfo=ZONE)
    with History.open(db) as history:
        restored, _ = restore(history, make_config(), wednesday)
    assert restored.week_sessions == {
        "2026-11-23": {"hip_left": {"mon": 300.0}},
        "2026-11-24": {"hip_left": {"tue": 240.0}},
    }
    kit = Kit.create(make_config(), restored)
    kit.wall = wednesday
    kit.ready()
    assert state(kit, "hip_left")["week_s"] == 540
    run(kit, "hip_left", 60)
    assert state(kit, "hip_left")["week_s"] == 600
    again = read_day(db, wednesday.date())
    kit.core.day_totals(again.day, {"hip_left": {"s1": 60.0}}, kit.now, again.earlier)
    assert state(kit, "hip_left")["week_s"] == 600


def test_a_clock_step_into_another_week_reads_its_earlier_days() -> None:
    """The clock steps from Tuesday to the next week's Thursday (NTP on a board whose clock
    was a week behind): the new day's read brings that week's Monday to Wednesday; stepping
    back, the first week's total is still known."""
    restored = Restored(
        day=TUESDAY.isoformat(), week_sessions={MONDAY.isoformat(): {"hip_left": {"mon": 300.0}}}
    )
    kit = Kit.create(make_config(), restored).ready()
    run(kit, "hip_left", 60)
    assert state(kit, "hip_left")["week_s"] == 360
    kit.wall = datetime(2026, 12, 3, 8, 0, tzinfo=ZONE)
    assert state(kit, "hip_left")["week_s"] == 0  # not read yet: what is known
    earlier = {"2026-11-30": {"hip_left": {"a": 100.0}}, "2026-12-02": {"hip_left": {"b": 50.0}}}
    got = kit.take(
        kit.core.day_totals(date(2026, 12, 3), {"hip_left": {"c": 7.0}}, kit.now, earlier)
    )
    assert published(got)[-1]["week_s"] == 157
    kit.wall = START_WALL + timedelta(minutes=5)
    assert state(kit, "hip_left")["week_s"] == 360


def test_two_whole_weeks_are_kept_across_steps_back_and_forth() -> None:
    """A clock stepping between two weeks whose every day history has answered for (a board
    whose clock was a week off) keeps both: stepping back, the first week's total is whole."""
    first = {(MONDAY + timedelta(n)).isoformat(): {"hip_left": {f"a{n}": 60.0}} for n in range(6)}
    restored = Restored(
        day=SUNDAY.isoformat(), day_sessions={"hip_left": {"a6": 60.0}}, week_sessions=first
    )
    kit = Kit.create(make_config(), restored)
    kit.wall = datetime(2026, 11, 29, 12, 0, tzinfo=ZONE)
    kit.ready()
    assert state(kit, "hip_left")["week_s"] == 420
    next_monday = date(2026, 11, 30)
    second = {
        (next_monday + timedelta(n)).isoformat(): {"hip_left": {f"b{n}": 10.0}} for n in range(6)
    }
    kit.wall += timedelta(days=7)
    kit.core.day_totals(date(2026, 12, 6), {"hip_left": {"b6": 10.0}}, kit.now, second)
    assert state(kit, "hip_left")["week_s"] == 70
    kit.wall -= timedelta(days=7)
    assert state(kit, "hip_left")["week_s"] == 420


def test_history_reads_a_new_day_with_its_weeks_earlier_days(tmp_path: Path) -> None:
    """``read_day`` (the new day's read, on a thread): the day's rows, and each earlier day of
    its week by ISO date; last week's Sunday is not among them."""
    db = tmp_path / "history.db"
    record(
        db,
        [
            ("sun", datetime(2026, 11, 22, 23, 0, tzinfo=ZONE), 30.0),
            ("mon", datetime(2026, 11, 23, 7, 0, tzinfo=ZONE), 60.0),
            ("tue", datetime(2026, 11, 24, 7, 0, tzinfo=ZONE), 45.0),
        ],
    ).close()
    assert read_day(db, TUESDAY) == DayRead(
        TUESDAY, {"hip_left": {"tue": 45.0}}, {"2026-11-23": {"hip_left": {"mon": 60.0}}}
    )


# ---------------------------------------------------------------- areas


def two_in_one_area(**extra: Any) -> dict[str, Any]:
    """``hip_left`` and ``sauna`` both aimed at the left hip (spelled two ways)."""
    panels = {key: p.model_dump(exclude_unset=True) for key, p in make_config().panels.items()}
    panels["sauna"]["area"] = "Left Hip"
    return panels | extra


def test_an_area_state_sums_its_panels_and_is_retained() -> None:
    """``<b>/area/<slug>/state``: the area as first spelled, its panels, and the sums of their
    ``today_s`` and ``week_s``, published when one of them changes."""
    kit = Kit.create(make_config(panels=two_in_one_area()))
    first = kit.connect()
    [initial] = messages(first, "redlight/area/left_hip/state")
    assert initial.retain
    assert json.loads(initial.payload) == {
        "area": "left hip",
        "panels": ["hip_left", "sauna"],
        "today_s": 0,
        "week_s": 0,
    }
    kit.report("hip_left", on=False)
    kit.report("sauna", on=False)
    kit.start("hip_left", 60)
    kit.report("hip_left", on=True)
    kit.advance(60)
    kit.report("hip_left", on=False)
    run(kit, "sauna", 30)
    areas = published(kit.effects, "redlight/area/left_hip/state")
    assert areas[-1] == {
        "area": "left hip",
        "panels": ["hip_left", "sauna"],
        "today_s": 90,
        "week_s": 90,
    }
    # Only changes are published: the same totals twice are one message.
    assert all(a != b for a, b in itertools.pairwise(areas))


def test_a_panel_without_an_area_publishes_no_area() -> None:
    """The generic ``sauna`` has no area: only ``hip_left``'s area has a state topic."""
    kit = Kit.create()
    topics = {m.topic for m in messages(kit.connect()) if "/area/" in m.topic}
    assert topics == {"redlight/area/left_hip/state"}


# ---------------------------------------------------------------- the runtime


async def restarted(
    tmp_path: Path, sessions: list[tuple[str, datetime, float]], at: datetime, config: Config
) -> tuple[Stepped, int]:
    """The runtime restarted at ``at`` on a history holding ``sessions`` (of ``hip_left``),
    restored as ``redlight run`` does; with the ``week_s`` it published first."""
    db = tmp_path / "history.db"
    writer = record(db, sessions)
    with History.open(db) as history:
        restored, _ = restore(history, config, at)
    rig = await stepped_rig(config, at, writer=writer, restored=restored)
    retained = rig.broker.retained(LEFT_STATE)
    assert retained is not None
    return rig, json.loads(retained)["week_s"]


@pytest.mark.looptime
async def test_runtime_restarted_on_sunday_resets_week_s_at_monday_midnight(
    tmp_path: Path, cleanup: list[Stepped]
) -> None:
    """Restarted on Sunday 23:59:50 with the week's sessions in history: ``week_s`` counts
    them at once, and at midnight the new day's read (off the loop) publishes 0, for the
    panel and for its area."""
    sessions = [
        ("mon", datetime(2026, 11, 23, 19, 0, tzinfo=ZONE), 300.0),
        ("sun", datetime(2026, 11, 29, 19, 0, tzinfo=ZONE), 200.0),
    ]
    late = datetime(2026, 11, 29, 23, 59, 50, tzinfo=ZONE)
    rig, week_s = await restarted(tmp_path, sessions, late, left_with())
    cleanup.append(rig)
    assert week_s == 500
    reset = rig.state(lambda body: body["week_s"] == 0)
    area = rig.broker.next(
        "redlight/area/left_hip/state", lambda m: json.loads(m.payload)["week_s"] == 0
    )
    async with asyncio.timeout(10 + 5 * CLOCK_CHECK_S):
        await reset
        await area
    assert rig.wall.now(ZONE).date() == date(2026, 11, 30)
    started = rig.event("session_started", panel="hip_left")
    assert rig.user.publish(
        Message("redlight/panel/hip_left/set", json.dumps({"action": "start", "duration": 5}))
    )
    await started
    counted = rig.state(lambda body: body["week_s"] == 5 and body["session"] is None)
    async with asyncio.timeout(30):
        await counted


@pytest.mark.looptime
async def test_runtime_stepped_into_a_later_week_reads_its_earlier_days(
    tmp_path: Path, cleanup: list[Stepped]
) -> None:
    """Started a week behind (a board without a real-time clock), the clock is stepped to the
    right Wednesday: the new day's read on its thread brings that week's Monday and Tuesday,
    and ``week_s`` counts them, with the Wednesday's own session, once."""
    sessions = [
        ("mon", datetime(2026, 11, 30, 19, 0, tzinfo=ZONE), 300.0),
        ("tue", datetime(2026, 12, 1, 19, 0, tzinfo=ZONE), 200.0),
        ("wed", datetime(2026, 12, 2, 7, 0, tzinfo=ZONE), 50.0),
        ("behind", datetime(2026, 11, 24, 7, 0, tzinfo=ZONE), 40.0),
    ]
    behind = datetime(2026, 11, 25, 12, 0, tzinfo=ZONE)
    rig, week_s = await restarted(tmp_path, sessions, behind, left_with())
    cleanup.append(rig)
    assert week_s == 40
    synced = rig.state(lambda body: body["week_s"] == 550)
    rig.wall.step(7 * 86400)
    async with asyncio.timeout(5 * CLOCK_CHECK_S):
        body = json.loads((await synced).payload)
    assert body["today_s"] == 50
