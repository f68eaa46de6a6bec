"""The journal as a state of the session (safety rules 8 and 12): a session's ON waits for the
writer thread to acknowledge its journal row, at most ``JOURNAL_WAIT_S``, and the event loop
never waits for the disk.

In real time, not looptime's: the writer is a real thread, and virtual time would jump to the
next timer while it writes. A slow disk is a write held at a gate until the test opens it, so
what a test sees happen while the write is held is certain, not a matter of timing; the only
timing bounds are the generous ones on how late something is.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from redlight.broker import Message
from redlight.config import Config
from redlight.core import JOURNAL_WAIT_S
from redlight.membroker import MemoryBroker, MemoryClient
from redlight.messages import Topics, status_message
from redlight.runtime import Runtime
from redlight.simplug import SimulatedPlug
from redlight.storage import History, HistoryWriter
from tests.unit.corekit import make_config
from tests.unit.test_runtime import RecordingNotifier, body, next_event
from tests.unit.test_storage import Gate, committed

#: How late a due OFF may go out here: the loop's own latency on a busy 2-core machine, far
#: below the seconds a held journal write lasts in these tests.
LATE_S = 0.25
#: How long a test waits for something that should come (it fails instead of hanging).
COMES_S = 5.0


def two_panels() -> Config:
    """Two Tasmota panels: ``hip_left`` (topic panel_left) and ``hip_right`` (panel_right)."""
    left = make_config().panels["hip_left"].model_dump(exclude_unset=True)
    right = left | {"name": "Right hip panel", "area": "right hip"}
    right["plug"] = left["plug"] | {"topic": "panel_right"}
    return make_config(panels={"hip_left": left, "hip_right": right})


def power(word: str) -> Callable[[Message], bool]:
    """A broker predicate: the message's payload is ``word``."""
    return lambda message: message.payload_bytes() == word.encode()


@dataclass
class JournalRig:
    """A runtime writing a real history whose writes can be held, and two simulated plugs."""

    broker: MemoryBroker
    runtime: Runtime
    writer: HistoryWriter
    gate: Gate
    db: Path
    plugs: dict[str, SimulatedPlug]
    user: MemoryClient
    task: asyncio.Task[int]

    def command(self, panel: str, payload: dict[str, Any]) -> None:
        """Publish a panel command as a user would."""
        assert self.user.publish(Message(f"redlight/panel/{panel}/set", json.dumps(payload)))

    def ons(self, topic: str) -> list[Message]:
        """The ONs sent on a plug's command topic so far."""
        return [m for m in self.broker.messages_on(topic) if m.payload_bytes() == b"ON"]

    async def barrier(self) -> None:
        """Return once the runtime has handled everything queued before this call: a stop of
        the idle ``hip_left`` is answered with an OFF, after whatever came before it."""
        off = self.broker.next("cmnd/panel_left/POWER", power("OFF"))
        self.command("hip_left", {"action": "stop"})
        await asyncio.wait_for(off, COMES_S)

    async def start(self, panel: str, duration_s: float) -> str:
        """Start a session; its id, once the runtime has announced it."""
        started = next_event(self.broker, "session_started", panel=panel)
        self.command(panel, {"action": "start", "duration": duration_s})
        return str(body(await asyncio.wait_for(started, COMES_S))["session"])


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[JournalRig]:
    """The runtime online with both plugs off, writes passing the gate until it is closed."""
    db = tmp_path / "history.db"
    History.open(db).close()
    gate = Gate()
    gate.open()
    writer = HistoryWriter(db, fault=gate)
    config = two_panels()
    broker = MemoryBroker()
    will = status_message(Topics("redlight"), online=False)
    runtime = Runtime(
        config,
        broker.client("redlight", will=will),
        writer=writer,
        notifier=RecordingNotifier(),
    )
    plugs: dict[str, SimulatedPlug] = {}
    for panel in config.panels:
        plug_config = config.panels[panel].plug
        plugs[panel] = SimulatedPlug(
            panel,
            plug_config,
            client=broker.client(panel, will=SimulatedPlug.last_will(plug_config)),
        )
        await plugs[panel].start()
    user = broker.client("user")
    user.start(lambda event: None)
    online = broker.next("redlight/status", power("online"))
    # Start safe (rule 8): each plug asked and switched off before commands are taken.
    safe = [
        broker.next(f"redlight/panel/{panel}/state", lambda m: body(m)["plug"] == "off")
        for panel in config.panels
    ]
    task = asyncio.create_task(runtime.run())
    await asyncio.wait_for(asyncio.gather(online, *safe), COMES_S)
    got = JournalRig(broker, runtime, writer, gate, db, plugs, user, task)
    yield got
    gate.open()
    runtime.request_shutdown()
    assert await asyncio.wait_for(task, COMES_S + 5) == 0
    for plug in plugs.values():
        await plug.stop()


async def test_the_on_waits_for_the_journal_while_the_loop_goes_on(rig: JournalRig) -> None:
    """Rule 8 without blocking (rule 12): while the new session's journal write is held, the
    loop serves on (another session's OFF goes out at its deadline) and the new session's ON
    waits; it goes out when the writer acknowledges the committed row, not before."""
    rig.runtime.core.sessions.journal_wait_s = (
        60.0  # only the acknowledgement can switch it on here
    )
    loop = asyncio.get_running_loop()
    with capture_logs() as logs:
        await rig.start("hip_left", 1.0)
        await asyncio.wait_for(rig.plugs["hip_left"].wait_for(lambda p: p.is_on), COMES_S)
        left = rig.runtime.core.panels["hip_left"].session
        assert left is not None
        off = rig.broker.next("cmnd/panel_left/POWER", power("OFF"))
        rig.gate.close()
        right = await rig.start("hip_right", 600.0)
        assert await asyncio.to_thread(rig.gate.held.wait, COMES_S)
        await asyncio.wait_for(off, COMES_S)
        late_s = loop.time() - left.deadline
        # The loop went on while the journal write was held: the OFF, and no ON.
        assert rig.ons("cmnd/panel_right/POWER") == []
        assert right not in committed(rig.db)
        on = rig.broker.next("cmnd/panel_right/POWER", power("ON"))
        rig.gate.open()
        await asyncio.wait_for(on, COMES_S)
        assert committed(rig.db)[right] is None
    assert late_s < LATE_S
    assert [e for e in logs if e["event"] == "storage_slow"] == []
    assert len(rig.ons("cmnd/panel_right/POWER")) == 1


async def test_a_slow_journal_holds_the_on_for_journal_wait_s_and_says_so(rig: JournalRig) -> None:
    """Rule 12: a journal write that is not acknowledged within JOURNAL_WAIT_S lets the ON go
    out (storage_slow says so); its late acknowledgement sends no second ON (rule 6)."""
    loop = asyncio.get_running_loop()
    with capture_logs() as logs:
        rig.gate.close()
        on = rig.broker.next("cmnd/panel_right/POWER", power("ON"))
        asked = loop.time()
        right = await rig.start("hip_right", 600.0)
        await asyncio.wait_for(on, COMES_S)
        waited_s = loop.time() - asked
        assert rig.gate.held.is_set()  # the write is still held: it was not the row that came
        assert right not in committed(rig.db)
        rig.gate.open()
        assert await asyncio.to_thread(rig.writer.flush, COMES_S)
        await rig.barrier()  # the acknowledgement, queued before the barrier, was handled
    assert JOURNAL_WAIT_S <= waited_s < JOURNAL_WAIT_S + LATE_S
    [slow] = [e for e in logs if e["event"] == "storage_slow"]
    assert (slow["session"], slow["waited_s"], slow["log_level"]) == (
        right,
        JOURNAL_WAIT_S,
        "warning",
    )
    assert len(rig.ons("cmnd/panel_right/POWER")) == 1
    assert committed(rig.db)[right] is None


async def test_an_acknowledgement_after_the_stop_switches_nothing_on(rig: JournalRig) -> None:
    """A session stopped while its journal write is held never gets its ON (rule 6: the
    acknowledgement of a session that is over is no reason to switch on)."""
    rig.runtime.core.sessions.journal_wait_s = 60.0
    rig.gate.close()
    right = await rig.start("hip_right", 600.0)
    assert await asyncio.to_thread(rig.gate.held.wait, COMES_S)
    finished = next_event(rig.broker, "session_finished", panel="hip_right")
    rig.command("hip_right", {"action": "stop"})
    assert body(await asyncio.wait_for(finished, COMES_S))["reason"] == "stopped"
    rig.gate.open()
    assert await asyncio.to_thread(rig.writer.flush, COMES_S)
    await rig.barrier()
    assert rig.ons("cmnd/panel_right/POWER") == []
    assert committed(rig.db)[right] == "stopped"
