"""The runtime (the one task that owns the core) on the in-memory broker, in virtual time."""

from __future__ import annotations

import asyncio
import itertools
import json
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from redlight import commands as cmd
from redlight.broker import Message, Received
from redlight.config import Config, MqttProtocol
from redlight.core import Now, Restored
from redlight.membroker import MemoryBroker, MemoryClient
from redlight.messages import Topics, status_message
from redlight.runtime import Runtime, restore
from redlight.simplug import SimulatedPlug
from redlight.storage import History, HistoryWriter, SessionRow
from redlight.systemd import Notifier
from tests.unit.corekit import START_WALL, make_config

pytestmark = pytest.mark.looptime


class RecordingNotifier(Notifier):
    """A notifier that records what it would tell systemd, with the loop time."""

    def __init__(self, watchdog_s: float | None = None) -> None:
        """Pretend systemd asked for a watchdog of ``watchdog_s``."""
        super().__init__(None, int(watchdog_s * 1e6) if watchdog_s else None)
        self.sent: list[tuple[float, str]] = []

    def _record(self, what: str) -> None:
        self.sent.append((asyncio.get_running_loop().time(), what))

    def ready(self) -> None:
        """Record READY=1."""
        self._record("READY=1")

    def watchdog(self) -> None:
        """Record WATCHDOG=1."""
        self._record("WATCHDOG=1")

    def stopping(self) -> None:
        """Record STOPPING=1."""
        self._record("STOPPING=1")

    def status(self, text: str) -> None:
        """Record STATUS=."""
        self._record(f"STATUS={text}")


def clock() -> Now:
    """Virtual monotonic time from the loop; a wall clock that follows it."""
    loop = asyncio.get_running_loop()
    return Now(loop.time(), START_WALL + timedelta(seconds=loop.time()))


def left_only() -> Config:
    """The test config with only the Tasmota panel ``hip_left``."""
    left = make_config().panels["hip_left"].model_dump(exclude_unset=True)
    return make_config(panels={"hip_left": left})


def next_event(broker: MemoryBroker, event_type: str, **fields: Any) -> asyncio.Future[Message]:
    """A future for the next event of a type (with the given fields) on ``<b>/event``."""

    def wanted(message: Message) -> bool:
        body = json.loads(message.payload)
        return bool(
            body["event_type"] == event_type and all(body.get(k) == v for k, v in fields.items())
        )

    return broker.next("redlight/event", wanted)


@dataclass
class Rig:
    """A runtime, a memory broker, a simulated Tasmota plug, and a user's client."""

    broker: MemoryBroker
    runtime: Runtime
    plug: SimulatedPlug
    user: MemoryClient
    task: asyncio.Task[int]
    extra: dict[str, Any] = field(default_factory=dict)

    def event(self, event_type: str, **fields: Any) -> asyncio.Future[Message]:
        """A future for the next event of a type (with the given fields) on ``<b>/event``."""
        return next_event(self.broker, event_type, **fields)

    def command(self, panel: str, payload: str | dict[str, Any]) -> None:
        """Publish a panel command as a user would."""
        text = payload if isinstance(payload, str) else json.dumps(payload)
        assert self.user.publish(Message(f"redlight/panel/{panel}/set", text))

    async def stop(self) -> int:
        """Ask the runtime to stop and wait for its exit code."""
        if not self.task.done():
            self.runtime.request_shutdown()
        code = await self.task
        await self.plug.stop()
        return code


def body(message: Message) -> dict[str, Any]:
    """A message's JSON payload."""
    value = json.loads(message.payload)
    assert isinstance(value, dict)
    return value


async def make_rig(config: Config, protocol: MqttProtocol = "3.1.1", **runtime_args: Any) -> Rig:
    """Start a plug, a user and the runtime on a fresh memory broker; wait until online."""
    broker = MemoryBroker(protocol)
    will = status_message(Topics("redlight"), online=False)
    runtime_args.setdefault("notifier", RecordingNotifier())
    runtime = Runtime(config, broker.client("redlight", will=will), clock=clock, **runtime_args)
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
    online = broker.next("redlight/status", lambda m: m.payload_bytes() == b"online")
    task = asyncio.create_task(runtime.run())
    await online
    # Start safe (rule 8): the plug is asked and switched off before commands are taken.
    await broker.next("redlight/panel/hip_left/state", lambda m: body(m)["plug"] == "off")
    return Rig(broker, runtime, plug, user, task)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    """A running rig with one Tasmota panel."""
    got = await make_rig(left_only())
    yield got
    await got.stop()


async def test_full_fifteen_minute_session_in_virtual_time(rig: Rig) -> None:
    """A 15-minute session ends at 900 s of loop time with one ON and the plug off."""
    loop = asyncio.get_running_loop()
    started = rig.event("session_started", panel="hip_left")
    finished = rig.event("session_finished", panel="hip_left")
    t0 = loop.time()
    rig.command("hip_left", {"action": "start", "duration": "15m"})
    assert body(await started)["duration_s"] == 900
    assert body(await finished)["reason"] == "completed"
    assert loop.time() - t0 == pytest.approx(900, abs=1e-3)
    assert rig.plug.on_commands == 1
    assert not rig.plug.is_on
    [on_for] = rig.plug.on_seconds()
    assert on_for == pytest.approx(900, abs=1e-3)
    # Rule 5: Tasmota's own timer was armed for the session + the 30 s margin.
    assert rig.plug.pulsetime == 1030


async def test_shutdown_switches_off_and_says_offline(rig: Rig) -> None:
    """A shutdown request ends the session, switches the plug off, says offline, returns 0."""
    rig.command("hip_left", {"action": "start", "duration": "10m"})
    await rig.plug.wait_for(lambda plug: plug.is_on)
    assert await rig.stop() == 0
    assert not rig.plug.is_on
    assert rig.broker.retained("redlight/status") == b"offline"
    notifier = rig.runtime.notifier
    assert isinstance(notifier, RecordingNotifier)
    sent = [what for _, what in notifier.sent]
    assert sent[0] == "READY=1"
    assert "STOPPING=1" in sent


async def test_watchdog_is_fed_from_the_event_loop() -> None:
    """With WatchdogSec=30 the loop sends WATCHDOG=1 at least every 15 s, also when idle."""
    notifier = RecordingNotifier(watchdog_s=30)
    rig = await make_rig(left_only(), notifier=notifier)
    await asyncio.sleep(120)
    await rig.stop()
    pings = [at for at, what in notifier.sent if what == "WATCHDOG=1"]
    assert len(pings) >= 120 / 15
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert max(gaps) <= 15.0 + 1e-3, gaps


async def test_deadline_passing_while_the_broker_is_down(rig: Rig) -> None:
    """Rule 10: the end passes with the broker down; the OFF goes out at once on reconnect."""
    loop = asyncio.get_running_loop()
    rig.command("hip_left", {"action": "start", "duration": "60s"})
    await rig.plug.wait_for(lambda plug: plug.is_on)
    rig.broker.stop()
    await asyncio.sleep(75)  # past the 60 s end, before PulseTime's 90 s
    assert rig.plug.is_on
    back = loop.time()
    rig.broker.start()
    await rig.plug.wait_for(lambda plug: not plug.is_on)
    assert loop.time() - back < 1e-3, loop.time() - back
    assert rig.plug.on_commands == 1


async def test_a_retained_on_on_the_command_topic_is_ignored_and_cleared() -> None:
    """Rule 7: a retained ON waiting on <b>/panel/<id>/set at start-up starts nothing."""
    broker = MemoryBroker()
    stale = broker.client("stale")
    stale.start(lambda event: None)
    await asyncio.sleep(0)
    assert stale.publish(Message("redlight/panel/hip_left/set", "ON", retain=True))
    await stale.stop()
    runtime = Runtime(
        left_only(), broker.client("redlight"), clock=clock, notifier=RecordingNotifier()
    )
    plug_config = left_only().panels["hip_left"].plug
    plug = SimulatedPlug("hip_left", plug_config, client=broker.client("plug"))
    await plug.start()
    cleared = broker.next("redlight/panel/hip_left/set", lambda m: m.payload_bytes() == b"")
    task = asyncio.create_task(runtime.run())
    message = await cleared
    assert message.retain
    await asyncio.sleep(30)
    runtime.request_shutdown()
    assert await task == 0
    await plug.stop()
    assert plug.on_commands == 0
    assert "redlight/panel/hip_left/set" not in broker.retained


async def test_on_5_a_live_retained_on_is_cleared_not_obeyed() -> None:
    """Rule 7 on MQTT 5: a retained ON published while redlight is connected starts nothing.

    Retain As Published keeps its flag, so it is recognised and cleared like one waiting at
    start-up (on 3.1.1 it would arrive unflagged, the README's documented limitation).
    """
    rig = await make_rig(left_only(), protocol="5")
    try:
        cleared = rig.broker.next(
            "redlight/panel/hip_left/set", lambda m: m.retain and m.payload_bytes() == b""
        )
        assert rig.user.publish(Message("redlight/panel/hip_left/set", "ON", retain=True))
        await cleared
        # The barrier: a plain start after the clearing is the first and only session.
        started = rig.event("session_started", panel="hip_left")
        rig.command("hip_left", {"action": "start", "duration": "1m", "request_id": "after"})
        assert body(await started)["request_id"] == "after"
    finally:
        await rig.stop()

    events = [body(m) for m in rig.broker.messages_on("redlight/event")]
    assert [e["request_id"] for e in events if e["event_type"] == "session_started"] == ["after"]
    assert "redlight/panel/hip_left/set" not in rig.broker.retained


async def test_locked_database_never_delays_the_off(tmp_path: Path) -> None:
    """Rule 12: with the history database locked, the OFF still goes out at the deadline."""
    db = tmp_path / "history.db"
    History.open(db).close()
    locker = sqlite3.connect(db, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    writer = HistoryWriter(db)
    try:
        with capture_logs() as logs:
            rig = await make_rig(left_only(), writer=writer)
            loop = asyncio.get_running_loop()
            finished = rig.event("session_finished", reason="completed")
            t0 = loop.time()
            rig.command("hip_left", {"action": "start", "duration": 30})
            await finished
            off_after = loop.time() - t0
            await rig.stop()
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert off_after == pytest.approx(30, abs=1e-3)
    assert not rig.plug.is_on
    assert any(entry["event"] == "storage_error" for entry in logs)


async def test_interrupted_sessions_are_reported_at_start(tmp_path: Path) -> None:
    """Rule 8: a journal row left open by a crash is closed as interrupted and announced."""
    db = tmp_path / "history.db"
    writer = HistoryWriter(db)
    writer.session_opened(
        SessionRow(
            id="old1",
            panel="hip_left",
            area="left hip",
            source="cli",
            started_at=datetime(2026, 11, 24, 7, 0, tzinfo=START_WALL.tzinfo),
            planned_s=600.0,
            irradiance_mw_cm2=None,
        )
    )
    assert writer.flush(5.0)
    config = left_only()
    with History.open(db) as history:
        restored, interrupted = restore(history, config, START_WALL)
    assert [row.id for row in interrupted] == ["old1"]
    broker = MemoryBroker()
    announced = broker.next("redlight/panel/hip_left/event")
    runtime = Runtime(
        config,
        broker.client("redlight"),
        restored=restored,
        interrupted=interrupted,
        clock=clock,
        writer=writer,
        notifier=RecordingNotifier(),
    )
    plug = SimulatedPlug("hip_left", config.panels["hip_left"].plug, client=broker.client("plug"))
    await plug.start()
    task = asyncio.create_task(runtime.run())
    event = body(await announced)
    runtime.request_shutdown()
    await task
    await plug.stop()
    assert (event["event_type"], event["reason"], event["session"]) == (
        "session_finished",
        "interrupted",
        "old1",
    )
    with History.open(db) as check:
        assert [(r.id, r.reason) for r in check.sessions()] == [("old1", "interrupted")]
        # 30 minutes before the restart, a 10-minute plan: counted as 10 minutes today.
        assert restored.finished_today_s["hip_left"] == pytest.approx(600)


async def test_a_locked_database_at_start_up_is_reported_not_fatal(tmp_path: Path) -> None:
    """Rule 12: restore() on a database another connection holds locked logs storage_error and
    starts with nothing restored, instead of keeping the daemon (and its OFFs) from starting."""
    db = tmp_path / "history.db"
    History.open(db).close()
    locker = sqlite3.connect(db, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        with History.open(db) as history, capture_logs() as logs:
            restored, interrupted = restore(history, left_only(), START_WALL)
    finally:
        locker.close()
    assert (restored, interrupted) == (Restored(), [])
    assert [line["event"] for line in logs] == ["storage_error"]


async def test_core_start_through_apply_uses_the_same_path(rig: Rig) -> None:
    """A session started in-process (as schedules will) switches the plug like a command."""
    effects = rig.runtime.controller.start("hip_left", cmd.Start(duration_s=45), "cli", clock())
    rig.runtime.apply(effects)
    await rig.plug.wait_for(lambda plug: plug.is_on)
    await rig.plug.wait_for(lambda plug: not plug.is_on)
    [on_for] = rig.plug.on_seconds()
    assert on_for == pytest.approx(45, abs=1e-3)


async def test_a_confirmation_waiting_in_the_backlog_is_not_taken_for_silence() -> None:
    """Rule 4 under load: the plug's ON report arrived in time but is still queued when the
    confirm timeout passes; the runtime applies it first instead of cutting the session off."""
    clock_now = [Now(100.0, START_WALL)]
    runtime = Runtime(
        left_only(),
        MemoryBroker().client("redlight"),
        clock=lambda: clock_now[0],
        notifier=RecordingNotifier(),
    )
    core = runtime.core
    runtime.apply(core.connect(clock_now[0]))
    runtime.apply(core.receive("stat/panel_left/POWER", b"OFF", False, clock_now[0]))
    start = cmd.Start(duration_s=600)
    runtime.apply(runtime.controller.start("hip_left", start, "cli", clock_now[0]))
    runtime.inbox.put(Received("stat/panel_left/POWER", b"ON"))
    confirm_s = left_only().safety.confirm_timeout.total_seconds()
    clock_now[0] = Now(100.0 + confirm_s + 1, START_WALL + timedelta(seconds=confirm_s + 1))
    runtime._tick()
    assert core.running() == ["hip_left"]
    assert core.panels["hip_left"].reported == "on"
    assert not core.panels["hip_left"].unresponsive


async def test_a_plug_that_does_not_answer_is_a_warning_in_the_log() -> None:
    """Issue 14 item 6: ``plug_unresponsive`` is something a person must act on, so its log
    line is a warning (a journal filtered by priority shows it); a session start stays info."""
    with capture_logs() as logs:
        rig = await make_rig(left_only())
        rig.plug.set_responsive(False)
        unresponsive = rig.event("plug_unresponsive", panel="hip_left")
        rig.command("hip_left", {"action": "start", "duration": 60})
        await unresponsive
        await rig.stop()
    levels = {entry["event"]: entry["log_level"] for entry in logs}
    assert levels["plug_unresponsive"] == "warning"
    assert levels["session_started"] == "info"
