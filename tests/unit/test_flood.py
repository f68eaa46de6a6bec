"""Floods, in virtual time on the memory broker: plug commands never wait, junk costs little."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from structlog.testing import capture_logs

from redlight.broker import UNWRITTEN_LIMIT, Message, Received
from redlight.inbox import INBOUND_COMMANDS
from redlight.membroker import MemoryClient
from redlight.messages import Event
from redlight.runtime import BIRTH_DELAY_S, BIRTH_JITTER_S
from redlight.shedding import RejectionGate, ShedCounter
from tests.unit.corekit import START_WALL
from tests.unit.test_runtime import Rig, body, clock, left_only, make_rig

pytestmark = pytest.mark.looptime

PLUG_COMMAND = "cmnd/panel_left/POWER"
PLUG_STATE = "stat/panel_left/POWER"
PANEL_EVENT = "redlight/panel/hip_left/event"
PANEL_SET = "redlight/panel/hip_left/set"
#: Virtual seconds an awaited message may take: a missing one fails the test, never hangs it.
WAIT_S = 60


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    """A running rig with one Tasmota panel."""
    got = await make_rig(left_only())
    yield got
    await got.stop()


def rejected(event: Message) -> bool:
    """A ``command_rejected`` event."""
    return bool(body(event)["event_type"] == "command_rejected")


async def test_an_off_overtakes_hundreds_of_queued_events(rig: Rig) -> None:
    """Safety rule 12: an OFF decided behind 1,000 queued events goes out ahead of nearly all."""
    rig.command("hip_left", {"action": "start", "duration": "10m"})
    await rig.plug.wait_for(lambda plug: plug.is_on)
    # 2,000 messages (each event goes to two topics): under the outbox's bound, none dropped.
    flood = [Event("test_noise", "hip_left", clock().wall, {"n": n}) for n in range(1000)]
    off = rig.broker.next(PLUG_COMMAND, lambda m: m.payload_bytes() == b"OFF")
    last_noise = rig.broker.next(PANEL_EVENT, lambda m: body(m).get("n") == 999)
    rig.runtime.apply(flood)
    rig.command("hip_left", {"action": "stop"})
    await asyncio.wait_for(off, WAIT_S)
    published = [m for _, m in rig.broker.published]
    off_at = max(i for i, m in enumerate(published) if m.topic == PLUG_COMMAND)
    noise_ahead = sum(1 for m in published[:off_at] if "test_noise" in str(m.payload_bytes()))
    # Only what the connection wrote in the few loop turns the stop took to arrive is ahead.
    assert noise_ahead < 200  # of 2,000 (80 on this code: 4 loop turns of 20)
    await asyncio.wait_for(last_noise, WAIT_S)  # and every event still goes out, in order
    noise = [body(m)["n"] for m in rig.broker.messages_on(PANEL_EVENT) if "n" in body(m)]
    assert noise == list(range(1000))


async def test_rejections_of_anonymous_commands_are_coalesced_per_panel(rig: Rig) -> None:
    """200 junk commands: the first rejection at once, then one summary with the count."""
    first = rig.broker.next(PANEL_EVENT, rejected)
    summary = rig.broker.next(PANEL_EVENT, lambda m: rejected(m) and "suppressed" in body(m))
    with capture_logs() as logs:
        for n in range(200):
            rig.command("hip_left", f"junk {n}")
        started = asyncio.get_running_loop().time()
        assert "suppressed" not in body(await asyncio.wait_for(first, WAIT_S))
        got = body(await asyncio.wait_for(summary, WAIT_S))
        took = asyncio.get_running_loop().time() - started
    assert got["suppressed"] == 199
    assert took <= 1.0 + 1e-3
    events = [m for m in rig.broker.messages_on(PANEL_EVENT) if rejected(m)]
    assert len(events) == 2
    assert len(rig.broker.messages_on("redlight/event")) >= 2
    lines = [line for line in logs if line["event"] == "command_rejected"]
    assert [line.get("suppressed") for line in lines] == [None, 199]


async def test_a_rejection_someone_waits_for_is_never_coalesced(rig: Rig) -> None:
    """A rejected command with a request_id gets its own answer, in the middle of a flood."""
    for n in range(50):
        rig.command("hip_left", f"junk {n}")
    answer = rig.broker.next(PANEL_EVENT, lambda m: body(m).get("request_id") == "cli-7")
    rig.command("hip_left", {"action": "start", "duration": "99h", "request_id": "cli-7"})
    for n in range(50):
        rig.command("hip_left", f"junk {n}")
    got = body(await asyncio.wait_for(answer, WAIT_S))
    assert got["event_type"] == "command_rejected"
    assert "suppressed" not in got


async def test_births_while_a_rediscovery_is_pending_add_nothing() -> None:
    """500 births of Home Assistant in a row bring one rediscovery, not 500."""
    rig = await make_rig(left_only())
    try:
        configs = "homeassistant/device/+/config"
        per_announce = len(rig.runtime.hass.announce())
        before = len(rig.broker.messages_on(configs))
        first = rig.broker.next(configs)
        for _ in range(500):
            assert rig.user.publish(Message("homeassistant/status", "online"))
        await asyncio.wait_for(first, WAIT_S)
        # Every rediscovery a birth could have scheduled is due by now.
        await asyncio.sleep(BIRTH_DELAY_S + BIRTH_JITTER_S + 1)
        assert len(rig.broker.messages_on(configs)) - before == per_announce
        # A birth after that run brings one more.
        again = rig.broker.next(configs)
        assert rig.user.publish(Message("homeassistant/status", "online"))
        await asyncio.wait_for(again, WAIT_S)
        await asyncio.sleep(BIRTH_DELAY_S + BIRTH_JITTER_S + 1)
        assert len(rig.broker.messages_on(configs)) - before == 2 * per_announce
    finally:
        await rig.stop()


async def test_the_inbound_queue_is_bounded_and_plug_reports_all_get_through(rig: Rig) -> None:
    """Commands past the bound are dropped (counted, logged); no plug report ever is."""
    assert isinstance(rig.runtime.broker, MemoryClient)
    sink = rig.runtime.broker._dispatch  # the memory client's hand-off, as paho's thread does
    assert rig.runtime.inbox.queue.empty()
    with capture_logs() as logs:
        for n in range(5 * INBOUND_COMMANDS):
            sink(Received(PANEL_SET, b"junk"))
            if n % 100 == 0:
                sink(Received(PLUG_STATE, b"ON" if n % 200 else b"OFF"))
        queued = list(rig.runtime.inbox.queue._queue)  # type: ignore[attr-defined]
        reports = [i for i in queued if isinstance(i, Received) and i.topic == PLUG_STATE]
        commands = [i for i in queued if isinstance(i, Received) and i.topic == PANEL_SET]
        assert len(reports) == 50
        assert len(commands) == INBOUND_COMMANDS
        # Once the backlog is worked off, commands are taken again (the plug's last report
        # was ON, so this start is refused as already_running: an answer either way).
        for _ in range(100_000):
            if rig.runtime.inbox.queue.empty():
                break
            await asyncio.sleep(0)  # a loop turn for the runtime, not a wait for time
        assert rig.runtime.inbox.queue.empty()
        ok = rig.broker.next(PANEL_EVENT, lambda m: body(m).get("request_id") == "after")
        rig.command("hip_left", {"action": "start", "duration": "1m", "request_id": "after"})
        await asyncio.wait_for(ok, WAIT_S)
        await asyncio.sleep(1.1)  # the summary of the drops is due within a second
    dropped = [
        (line["count"], line["log_level"]) for line in logs if line["event"] == "commands_dropped"
    ]
    assert dropped == [(1, "warning"), (4 * INBOUND_COMMANDS - 1, "warning")]


def test_rejection_gate_sums_up_once_a_second_and_forgets_a_quiet_topic() -> None:
    """The gate's schedule: first at once, a summary per busy second, at once after a lull."""
    gate = RejectionGate()

    def junk(panel: str | None) -> Event:
        return Event("command_rejected", panel, START_WALL, {"reason": "invalid"})

    assert gate.admit(junk("a"), 0.0)
    assert not gate.admit(junk("a"), 0.1)
    assert gate.admit(junk(None), 0.2)  # another topic has its own second
    assert gate.next_wakeup() == 1.0
    assert gate.due(0.9) == []
    [summary] = gate.due(1.0)
    assert (summary.panel, summary.fields["suppressed"]) == ("a", 1)
    assert gate.next_wakeup() is None
    assert gate.due(2.5) == []  # a quiet second: forgotten
    assert gate.admit(junk("a"), 2.6)


def test_shed_counter_reports_at_once_then_once_a_second() -> None:
    """The first drop is reported at once; later ones add up until their second is over."""
    counter = ShedCounter()
    assert counter.shed(0.0) == 1
    assert [counter.shed(0.1), counter.shed(0.5)] == [0, 0]
    assert counter.next_wakeup() == 1.0
    assert counter.due(0.9) == 0
    assert counter.due(1.0) == 2
    assert counter.next_wakeup() is None
    assert counter.total == 3


async def test_plug_commands_are_urgent_and_nothing_else_is(rig: Rig) -> None:
    """The priority is a property of the message, set where the plug's commands are built."""
    plug = rig.runtime.core.panels["hip_left"].plug
    for message in [*plug.turn_on(None), *plug.turn_off(), *plug.ask_state()]:
        assert message.urgent
    assert not Message("redlight/event", json.dumps({})).urgent
    assert UNWRITTEN_LIMIT >= 1


def test_a_configured_routine_has_rejections_of_its_own() -> None:
    """A routine's refusal (which `redlight routine` waits for) is not hidden by other junk."""
    gate = RejectionGate()
    junk = Event("command_rejected", None, START_WALL, {"reason": "invalid"})
    refused = Event("command_rejected", None, START_WALL, {"routine": "after_run"})
    assert gate.admit(junk, 0.0)
    assert not gate.admit(junk, 0.1)
    assert gate.admit(refused, 0.2, "routine/after_run")
