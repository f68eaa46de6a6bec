"""The runtime (the one task that owns the core) on the in-memory broker, in virtual time."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from redlight.config import Config
from redlight.core import Now
from redlight.membroker import MemoryBroker
from redlight.messages import Topics, status_message
from redlight.presets import PlugConfig
from redlight.runtime import Runtime, restore
from redlight.simplug import SimulatedPlug
from redlight.storage import History, HistoryWriter, SessionRow
from tests.unit.corekit import START_WALL, make_config

pytestmark = pytest.mark.looptime


@dataclass
class Rig:
    """A runtime, a memory broker, and a simulated Tasmota plug for panel hip_left."""

    broker: MemoryBroker
    runtime: Runtime
    plug: SimulatedPlug
    task: asyncio.Task[int]
    observer: Any

    async def event(self, event_type: str, **fields: Any) -> dict[str, Any]:
        """The next event of a type on ``<b>/event``."""
        import json

        def wanted(message: Any) -> bool:
            body = json.loads(message.payload)
            return bool(
                body["event_type"] == event_type
                and all(body.get(k) == v for k, v in fields.items())
            )

        message = await self.broker.next("redlight/event", wanted)
        return dict(json.loads(message.payload))


def clock() -> Now:
    """Virtual monotonic time from the loop, a wall clock that follows it."""
    loop = asyncio.get_running_loop()
    return Now(loop.time(), START_WALL + timedelta(seconds=loop.time()))


async def make_rig(config: Config, **runtime_args: Any) -> Rig:
    """Start the runtime and a plug on a fresh memory broker; wait until it is online."""
    broker = MemoryBroker()
    will = status_message(Topics("redlight"), online=False)
    runtime = Runtime(
        config, broker.client("redlight", will=will), clock=clock, **runtime_args
    )
    plug_config = config.panels["hip_left"].plug
    plug = SimulatedPlug("hip_left", plug_config, base_topic="redlight", client=broker.client("plug"))
    await plug.start()
    online = asyncio.ensure_future(broker.next("redlight/status", lambda m: m.payload == b"online"))
    task = asyncio.create_task(runtime.run())
    await online
    return Rig(broker, runtime, plug, task, None)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    """A running rig with the default two-panel config (only hip_left has a plug)."""
    config = make_config(panels={"hip_left": make_config().panels["hip_left"].model_dump()})
    got = await make_rig(config)
    yield got
    if not got.task.done():
        got.runtime.request_shutdown()
        await got.task
    await got.plug.stop()


async def test_full_fifteen_minute_session_in_virtual_time(rig: Rig) -> None:
    """A 15-minute session ends at 900 s of loop time, exactly, with one ON and one OFF."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    rig.broker.client("user").publish  # noqa: B018 - a client exists for users
    user = rig.broker.client("user")
    user.start(lambda event: None)
    await asyncio.sleep(0)
    from redlight.broker import Message

    assert user.publish(Message("redlight/panel/hip_left/set", '{"action":"start","duration":"15m"}'))
    await rig.event("session_started", panel="hip_left")
    finished = await rig.event("session_finished", panel="hip_left")
    assert finished["reason"] == "completed"
    assert loop.time() - started == pytest.approx(900, abs=0.1)
    assert rig.plug.on_commands == 1
    assert not rig.plug.is_on


async def test_shutdown_switches_off_and_says_offline(rig: Rig) -> None:
    """A shutdown request ends the session, switches the plug off, says offline, returns 0."""
    rig.runtime.core.start  # noqa: B018
    from redlight import commands as cmd

    rig.runtime.apply(rig.runtime.core.start("hip_left", cmd.Start(600), "cli", clock()))
    await asyncio.sleep(1)
    assert rig.plug.is_on
    rig.runtime.request_shutdown()
    assert await rig.task == 0
    assert not rig.plug.is_on
    assert rig.broker.retained("redlight/status") == b"offline"


async def test_locked_database_never_delays_the_off(tmp_path: Path) -> None:
    """With the history database locked, the OFF still goes out at the deadline (rule 12)."""
    db = tmp_path / "history.db"
    History.open(db).close()
    locker = sqlite3.connect(db, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    writer = HistoryWriter(db)
    config = make_config(panels={"hip_left": make_config().panels["hip_left"].model_dump()})
    with capture_logs() as logs:
        rig = await make_rig(config, writer=writer)
        from redlight import commands as cmd

        loop = asyncio.get_running_loop()
        t0 = loop.time()
        rig.runtime.apply(rig.runtime.core.start("hip_left", cmd.Start(30), "cli", clock()))
        await rig.event("session_finished", reason="completed")
        off_at = loop.time() - t0
        rig.runtime.request_shutdown()
        await rig.task
        await rig.plug.stop()
    locker.execute("ROLLBACK")
    locker.close()
    assert off_at == pytest.approx(30, abs=0.1)
    assert not rig.plug.is_on
    assert any(entry["event"] == "storage_failed" for entry in logs)


async def test_interrupted_sessions_are_reported_at_start(tmp_path: Path) -> None:
    """A journal row left open by a crash is closed as interrupted and announced (rule 8)."""
    db = tmp_path / "history.db"
    history = History.open(db)
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
    config = make_config(panels={"hip_left": make_config().panels["hip_left"].model_dump()})
    restored, interrupted = restore(history, config, START_WALL)
    history.close()
    assert [row.id for row in interrupted] == ["old1"]
    broker = MemoryBroker()
    runtime = Runtime(config, broker.client("redlight"), interrupted=interrupted, clock=clock, writer=writer)
    plug = SimulatedPlug("hip_left", config.panels["hip_left"].plug, base_topic="redlight", client=broker.client("plug"))
    await plug.start()
    announced = asyncio.ensure_future(broker.next("redlight/panel/hip_left/event"))
    task = asyncio.create_task(runtime.run())
    message = await announced
    runtime.request_shutdown()
    await task
    await plug.stop()
    import json

    body = json.loads(message.payload)
    assert (body["event_type"], body["reason"], body["session"]) == ("session_finished", "interrupted", "old1")
    check = History.open(db)
    assert [(r.id, r.reason) for r in check.sessions()] == [("old1", "interrupted")]
    check.close()
    writer.close(timeout=2)
    _ = PlugConfig
