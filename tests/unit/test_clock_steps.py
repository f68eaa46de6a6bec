"""Wall-clock steps and new days: daily_max and today_s from history, schedules across a step.

The core in plain virtual time (a Kit); the runtime on the in-memory broker with looptime and a
wall clock that can be stepped (an NTP step on a board without a real-time clock).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from redlight.broker import Message
from redlight.clockwatch import CLOCK_CHECK_S
from redlight.config import Config
from redlight.core import Now, Restored
from redlight.membroker import MemoryBroker, MemoryClient
from redlight.messages import Topics, status_message
from redlight.runtime import Runtime, restore
from redlight.simplug import SimulatedPlug
from redlight.storage import History, HistoryWriter, SessionRow
from tests.unit.clockkit import FakeWall, patch_wall
from tests.unit.corekit import START_WALL, ZONE, Kit, events, make_config, state
from tests.unit.test_runtime import RecordingNotifier, next_event

TODAY = START_WALL.date()  # 2026-11-24, the Kit's clock reads 07:30
YESTERDAY = TODAY - timedelta(days=1)


def limited(daily_max: str = "10m", **extra: Any) -> Config:
    """Both test panels, with a daily_max."""
    return make_config(safety={"daily_max": daily_max}, **extra)


def reasons(effects: list[Any]) -> list[str]:
    """The reasons of the refusals among effects."""
    return [e.fields["reason"] for e in events(effects, "command_rejected")]


# ---------------------------------------------------------------- the core's day accounting


def test_a_session_seen_and_read_from_history_counts_once() -> None:
    """History's rows are merged by session id with the core's own: a session in both counts
    once, and one only in history (from before a restart) counts too."""
    restored = Restored(day=TODAY.isoformat(), day_sessions={"hip_left": {"before": 120.0}})
    kit = Kit.create(limited(), restored).ready()
    kit.start("hip_left", 60)
    kit.report("hip_left", on=True)
    kit.advance(60)
    kit.report("hip_left", on=False)
    assert state(kit, "hip_left")["today_s"] == 180
    kit.core.day_totals(TODAY, {"hip_left": {"before": 120.0, "s1": 60.0}}, kit.now)
    assert state(kit, "hip_left")["today_s"] == 180


def test_today_moves_every_minute_of_a_running_session() -> None:
    """Home Assistant's "Today" reads the retained state: while a session runs, the state is
    published again each minute with the minutes so far, not only when the session ends (or
    when a poll's answer happens to touch it: 5 minutes apart here)."""
    kit = Kit.create(make_config(safety={"poll_interval": "5m"})).ready()
    kit.start("hip_left", 300)
    kit.report("hip_left", on=True)
    published: list[int] = []
    for _ in range(3):
        got = kit.advance(60)
        published += [
            json.loads(m.payload)["today_s"]
            for m in got
            if isinstance(m, Message) and m.topic == "redlight/panel/hip_left/state"
        ]
    assert {60, 120, 180} <= set(published)  # a poll's answer may add one in between
    kit.advance(150)  # the session is over: 5 minutes counted, no more
    kit.report("hip_left", on=False)
    kit.advance(180)
    assert state(kit, "hip_left")["today_s"] == 300


def test_restarted_a_day_behind_the_synced_day_is_read_from_history() -> None:
    """Item 5: restored for yesterday (the clock was a day behind), the clock syncs to today:
    today's 8 minutes from history are published and count toward daily_max."""
    kit = Kit.create(limited(), Restored(day=YESTERDAY.isoformat())).ready()
    got = kit.take(kit.core.day_totals(TODAY, {"hip_left": {"earlier": 480.0}}, kit.now))
    [published] = [
        json.loads(m.payload)
        for m in got
        if isinstance(m, Message) and m.topic == "redlight/panel/hip_left/state"
    ]
    assert published["today_s"] == 480
    assert reasons(kit.start("hip_left", 180)) == ["daily_max"]
    assert state(kit, "hip_left")["today_s"] == 480


def test_until_history_answers_a_new_day_counts_the_larger_known_total() -> None:
    """The day changed and history has not answered yet: the previous day's total is assumed
    (a start that it would refuse is refused); history's answer then decides."""
    yesterday = {"hip_left": {"y1": 500.0}}
    kit = Kit.create(limited(), Restored(day=YESTERDAY.isoformat(), day_sessions=yesterday))
    kit.ready()
    assert state(kit, "hip_left")["today_s"] == 500
    assert reasons(kit.start("hip_left", 200)) == ["daily_max"]
    kit.core.day_totals(TODAY, {}, kit.now)
    assert state(kit, "hip_left")["today_s"] == 0
    assert reasons(kit.start("hip_left", 200)) == []


def test_a_step_back_across_midnight_reads_that_day_and_forgets_nothing() -> None:
    """README: a clock stepped back across midnight starts a new day; its total comes from
    history, and stepping forward again brings back today's, sessions seen since included."""
    kit = Kit.create(limited(), Restored(day=TODAY.isoformat())).ready()
    kit.start("hip_left", 100)
    kit.report("hip_left", on=True)
    kit.advance(100)
    kit.report("hip_left", on=False)
    kit.wall = datetime(2026, 11, 23, 23, 50, tzinfo=ZONE)
    kit.core.day_totals(YESTERDAY, {"hip_left": {"late": 420.0}}, kit.now)
    assert state(kit, "hip_left")["today_s"] == 420
    kit.wall = START_WALL + timedelta(minutes=10)
    assert state(kit, "hip_left")["today_s"] == 100


def test_without_history_a_new_day_starts_at_zero() -> None:
    """No history to ask (the pure core, or storage unavailable at start): midnight resets."""
    kit = Kit.create(limited()).ready()
    kit.start("hip_left", 300)
    kit.report("hip_left", on=True)
    kit.advance(300)
    kit.report("hip_left", on=False)
    kit.wall = datetime(2026, 11, 25, 0, 0, 1, tzinfo=ZONE)
    assert state(kit, "hip_left")["today_s"] == 0


def test_history_reads_a_day_by_the_date_each_session_was_recorded_with(tmp_path: Path) -> None:
    """History.day_sessions: id -> seconds per panel for the local date in started_at, without
    open rows and without the neighbouring days."""
    db = tmp_path / "history.db"
    writer = HistoryWriter(db)
    for session, started, actual in [
        ("before", datetime(2026, 11, 23, 23, 59, tzinfo=ZONE), 30.0),
        ("first", datetime(2026, 11, 24, 0, 0, tzinfo=ZONE), 60.0),
        ("last", datetime(2026, 11, 24, 23, 59, tzinfo=ZONE), 45.0),
        ("open", datetime(2026, 11, 24, 12, 0, tzinfo=ZONE), None),
    ]:
        writer.session_opened(SessionRow(session, "hip_left", None, "cli", started, 60.0, None))
        if actual is not None:
            writer.session_closed(session, started + timedelta(seconds=actual), actual, "x", None)
    assert writer.flush(5.0)
    writer.close()
    with History.open(db) as history:
        assert history.day_sessions(TODAY) == {"hip_left": {"first": 60.0, "last": 45.0}}


# ---------------------------------------------------------------- the runtime, stepped


@dataclass
class Stepped:
    """A runtime whose wall clock a test can step, a memory broker, a plug and a user."""

    broker: MemoryBroker
    runtime: Runtime
    plug: SimulatedPlug
    user: MemoryClient
    wall: FakeWall
    task: asyncio.Task[int]

    def event(self, event_type: str, **fields: Any) -> asyncio.Future[Message]:
        """The next event of a type (with the given fields) on ``<b>/event``."""
        return next_event(self.broker, event_type, **fields)

    def state(self, predicate: Callable[[dict[str, Any]], bool]) -> asyncio.Future[Message]:
        """The next state of ``hip_left`` that satisfies ``predicate``."""
        return self.broker.next(
            "redlight/panel/hip_left/state", lambda m: predicate(json.loads(m.payload))
        )


async def stepped_rig(
    config: Config,
    start: datetime,
    *,
    writer: HistoryWriter | None = None,
    walls: list[FakeWall] | None = None,
    **args: Any,
) -> Stepped:
    """Start the runtime with a wall clock reading ``start`` (now), a plug and a user.

    ``walls`` (from :func:`patch_wall`) makes APScheduler read the same clock.
    """
    loop = asyncio.get_running_loop()
    wall = FakeWall(start)
    if walls is not None:
        walls.append(wall)
    broker = MemoryBroker()
    runtime = Runtime(
        config,
        broker.client("redlight", will=status_message(Topics("redlight"), online=False)),
        clock=lambda: Now(loop.time(), wall.now(start.tzinfo)),
        notifier=RecordingNotifier(),
        writer=writer,
        **args,
    )
    plug_config = config.panels["hip_left"].plug
    plug = SimulatedPlug(
        "hip_left",
        plug_config,
        base_topic="redlight",
        client=broker.client("plug", will=SimulatedPlug.last_will(plug_config)),
    )
    await plug.start()
    user = broker.client("user")
    user.start(lambda event: None)
    off = broker.next(
        "redlight/panel/hip_left/state", lambda m: json.loads(m.payload)["plug"] == "off"
    )
    task = asyncio.create_task(runtime.run())
    await off
    return Stepped(broker, runtime, plug, user, wall, task)


@pytest.fixture
async def cleanup() -> AsyncIterator[list[Stepped]]:
    """Stops the rigs a test made."""
    rigs: list[Stepped] = []
    yield rigs
    for rig in rigs:
        if not rig.task.done():
            rig.runtime.request_shutdown()
        await rig.task
        await rig.plug.stop()


def left_with(**overrides: Any) -> Config:
    """Only the Tasmota panel ``hip_left``, with other sections as given."""
    left = make_config().panels["hip_left"].model_dump(exclude_unset=True)
    return make_config(panels={"hip_left": left}, **overrides)


@pytest.mark.looptime
async def test_runtime_restarted_a_day_behind_reads_the_synced_day(
    tmp_path: Path, cleanup: list[Stepped]
) -> None:
    """Item 5 through the runtime: 8 s of a 10 s daily_max used today, restart with the clock a
    day behind, the clock syncs: today_s reads 8 and a 6 s session is refused by daily_max."""
    config = left_with(safety={"daily_max": "10s"})
    db = tmp_path / "history.db"
    writer = HistoryWriter(db)
    started = datetime(2026, 11, 24, 11, 0, tzinfo=ZONE)
    writer.session_opened(SessionRow("earlier", "hip_left", None, "cli", started, 8.0, None))
    writer.session_closed("earlier", started + timedelta(seconds=8), 8.0, "completed", None)
    assert writer.flush(5.0)
    behind = datetime(2026, 11, 23, 12, 0, tzinfo=ZONE)
    with History.open(db) as history:
        restored, _ = restore(history, config, behind)
    rig = await stepped_rig(config, behind, writer=writer, restored=restored)
    cleanup.append(rig)
    assert restored.finished_today_s == {"hip_left": 0.0}
    synced = rig.state(lambda body: body["today_s"] == 8)
    rig.wall.step(86400)
    async with asyncio.timeout(5 * CLOCK_CHECK_S):
        await synced
    refused = rig.event("command_rejected", panel="hip_left")
    assert rig.user.publish(
        Message("redlight/panel/hip_left/set", json.dumps({"action": "start", "duration": 6}))
    )
    assert json.loads((await refused).payload)["reason"] == "daily_max"
    assert rig.plug.on_commands == 0


@pytest.mark.looptime
async def test_runtime_publishes_today_s_zero_after_midnight(
    tmp_path: Path, cleanup: list[Stepped]
) -> None:
    """At midnight the new day's total is read and published, without waiting for a command."""
    config = left_with(safety={"daily_max": "10m"})
    db = tmp_path / "history.db"
    writer = HistoryWriter(db)
    started = datetime(2026, 11, 24, 23, 0, tzinfo=ZONE)
    writer.session_opened(SessionRow("evening", "hip_left", None, "cli", started, 300.0, None))
    writer.session_closed("evening", started + timedelta(seconds=300), 300.0, "completed", None)
    assert writer.flush(5.0)
    late = datetime(2026, 11, 24, 23, 59, 50, tzinfo=ZONE)
    with History.open(db) as history:
        restored, _ = restore(history, config, late)
    rig = await stepped_rig(config, late, writer=writer, restored=restored)
    cleanup.append(rig)
    reset = rig.state(lambda body: body["today_s"] == 0)
    async with asyncio.timeout(10 + 5 * CLOCK_CHECK_S):
        await reset
    assert rig.wall.now(ZONE).date() == date(2026, 11, 25)


@pytest.mark.looptime
async def test_an_unreadable_history_is_reported_and_the_day_counts_what_was_seen(
    tmp_path: Path, cleanup: list[Stepped]
) -> None:
    """Rule 12: the new day's read fails (here: the database path is a directory): it is
    logged as storage_error, and the day is not held at the previous day's total for ever."""
    config = left_with(safety={"daily_max": "10m"})
    broken = tmp_path / "not-a-database"
    broken.mkdir()
    yesterday = Restored(day=YESTERDAY.isoformat(), day_sessions={"hip_left": {"y": 500.0}})
    with capture_logs() as logs:
        rig = await stepped_rig(
            config, START_WALL, writer=HistoryWriter(broken), restored=yesterday
        )
        cleanup.append(rig)
        # The failed read's answer publishes today_s 0; it may have come already (retained).
        retained = rig.broker.retained("redlight/panel/hip_left/state")
        assert retained is not None
        if json.loads(retained)["today_s"] != 0:
            async with asyncio.timeout(5 * CLOCK_CHECK_S):
                await rig.state(lambda body: body["today_s"] == 0)
    assert [line["operation"] for line in logs if line["event"] == "storage_error"] == ["read_day"]
    started = rig.event("session_started", panel="hip_left")
    assert rig.user.publish(
        Message("redlight/panel/hip_left/set", json.dumps({"action": "start", "duration": 200}))
    )
    assert json.loads((await started).payload)["duration_s"] == 200


def evening(mode: str = "start") -> Config:
    """``hip_left`` for 5 minutes at 19:00 every day, in Amsterdam."""
    return left_with(
        schedules={
            "evening": {
                "panels": ["hip_left"],
                "duration": "5m",
                "cron": "0 19 * * *",
                "timezone": "Europe/Amsterdam",
                "mode": mode,
            }
        }
    )


@pytest.mark.looptime
@pytest.mark.parametrize("lands_at", ["18:59:57", "19:00:02"])
async def test_a_forward_step_just_before_a_schedule_still_runs_it(
    monkeypatch: pytest.MonkeyPatch, cleanup: list[Stepped], lands_at: str
) -> None:
    """Item 6: the clock steps from 18:30 to just before (or just after) 19:00: the schedule
    runs, within seconds, once; its next run is tomorrow's."""
    walls = patch_wall(monkeypatch)
    start = datetime(2026, 11, 24, 18, 30, tzinfo=ZONE)
    rig = await stepped_rig(evening(), start, walls=walls)
    cleanup.append(rig)
    await asyncio.sleep(5)
    started = rig.event("session_started", panel="hip_left", source="schedule")
    hour, minute, second = map(int, lands_at.split(":"))
    target = start.replace(hour=hour, minute=minute, second=second)
    rig.wall.step((target - rig.wall.now(ZONE)).total_seconds())
    async with asyncio.timeout(10):
        message = await started
    at = datetime.fromisoformat(json.loads(message.payload)["at"])
    assert datetime(2026, 11, 24, 19, 0, tzinfo=ZONE) <= at
    assert at - target <= timedelta(seconds=3 + CLOCK_CHECK_S)
    await asyncio.sleep(600)
    next_run = rig.runtime.clock_jobs.next_run("evening")
    assert next_run is not None
    assert next_run.date() == date(2026, 11, 25)
    retained = rig.broker.retained("redlight/schedule/evening/state")
    assert retained is not None
    assert json.loads(retained)["next_run"] == "2026-11-25T19:00:00+01:00"
    await rig.plug.wait_for(lambda plug: not plug.is_on)
    assert rig.plug.on_commands == 1


@pytest.mark.looptime
async def test_a_backward_step_after_a_schedule_ran_does_not_run_it_again(
    monkeypatch: pytest.MonkeyPatch, cleanup: list[Stepped]
) -> None:
    """19:00 ran; at 19:06 the clock steps back to 18:58: 19:00 does not run a second time."""
    walls = patch_wall(monkeypatch)
    start = datetime(2026, 11, 24, 18, 59, 50, tzinfo=ZONE)
    rig = await stepped_rig(evening(), start, walls=walls)
    cleanup.append(rig)
    await rig.plug.wait_for(lambda plug: plug.is_on)
    await rig.plug.wait_for(lambda plug: not plug.is_on)
    await asyncio.sleep(10)
    rig.wall.step(-8 * 60)
    await asyncio.sleep(900)
    assert rig.plug.on_commands == 1
