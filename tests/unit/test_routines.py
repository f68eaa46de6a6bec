"""Routines and dose-based sessions on the runtime, the memory broker and simulated plugs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from redlight.broker import Message
from redlight.config import Config
from redlight.membroker import MemoryBroker, MemoryClient
from redlight.messages import Topics, status_message
from redlight.runtime import Runtime
from redlight.simplug import SimulatedPlug
from tests.unit.corekit import make_config
from tests.unit.test_runtime import RecordingNotifier, body, clock

pytestmark = pytest.mark.looptime

POST_RUN: dict[str, Any] = {
    "name": "Post-run hips",
    "steps": [
        {"panels": ["hip_left"], "duration": "7m"},
        {"pause": "45s", "prompt": "Turn to your right side"},
        {"panels": ["hip_right"], "dose_j_cm2": 25},
    ],
}


def two_hips(**overrides: Any) -> Config:
    """A Tasmota panel on the left hip, a Zigbee panel (50 mW/cm²) on the right, a routine."""
    panels = {
        "hip_left": {"plug": {"preset": "tasmota", "topic": "panel_left"}},
        "hip_right": {
            "irradiance_mw_cm2": 50,
            "plug": {"preset": "zigbee2mqtt", "device": "right plug"},
        },
    }
    return make_config(panels=panels, routines={"post_run": POST_RUN}, **overrides)


@dataclass
class Hips:
    """The runtime with two simulated plugs, and a client for commands and events."""

    broker: MemoryBroker
    runtime: Runtime
    plugs: dict[str, SimulatedPlug]
    user: MemoryClient
    task: asyncio.Task[int]
    seen: list[tuple[float, dict[str, Any]]]

    def send(self, topic: str, payload: str | dict[str, Any]) -> None:
        """Publish a command."""
        text = payload if isinstance(payload, str) else json.dumps(payload)
        assert self.user.publish(Message(topic, text))

    def event(self, event_type: str, **fields: Any) -> asyncio.Future[Message]:
        """The next event of a type with the given fields."""

        def wanted(message: Message) -> bool:
            got = body(message)
            return got["event_type"] == event_type and all(
                got.get(k) == v for k, v in fields.items()
            )

        return self.broker.next("redlight/event", wanted)

    def kinds(self) -> list[str]:
        """The event types seen so far, in order (ending_soon left out)."""
        return [e["event_type"] for _, e in self.seen if e["event_type"] != "ending_soon"]


@pytest.fixture
async def hips() -> AsyncIterator[Hips]:
    """Two hips, online, every plug confirmed off."""
    config = two_hips()
    broker = MemoryBroker()
    runtime = Runtime(
        config,
        broker.client("redlight", will=status_message(Topics("redlight"), online=False)),
        clock=clock,
        notifier=RecordingNotifier(),
    )
    plugs = {
        key: SimulatedPlug(key, panel.plug, client=broker.client(f"plug-{key}"))
        for key, panel in config.panels.items()
    }
    for plug in plugs.values():
        await plug.start()
    seen: list[tuple[float, dict[str, Any]]] = []
    loop = asyncio.get_running_loop()

    def record(event: object) -> None:
        from redlight.broker import Connected, Received

        if isinstance(event, Connected):
            user.subscribe(["redlight/event"])
        elif isinstance(event, Received):
            seen.append((loop.time(), json.loads(event.payload)))

    user = broker.client("user")
    user.start(record)
    online = broker.next("redlight/status", lambda m: m.payload_bytes() == b"online")
    task = asyncio.create_task(runtime.run())
    await online
    await asyncio.sleep(1)
    seen.clear()
    got = Hips(broker, runtime, plugs, user, task, seen)
    yield got
    if not task.done():
        runtime.request_shutdown()
        await task
    for plug in plugs.values():
        await plug.stop()


async def test_routine_runs_its_steps_in_order_with_the_pause(hips: Hips) -> None:
    """Left hip 7 min, a 45 s pause with its prompt, right hip 25 J/cm² = 500 s, then done."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    done = hips.event("routine_finished")
    hips.send("redlight/routine/post_run/set", "START")
    finished = body(await done)
    assert finished["reason"] == "completed"
    assert loop.time() - t0 == pytest.approx(420 + 45 + 500, abs=1e-3)
    assert hips.kinds() == [
        "routine_started",
        "routine_step",
        "session_started",
        "session_finished",
        "routine_step",
        "routine_step",
        "session_started",
        "session_finished",
        "routine_finished",
    ]
    steps = [(at - t0, e) for at, e in hips.seen if e["event_type"] == "routine_step"]
    assert [at for at, _ in steps] == pytest.approx([0, 420, 465], abs=1e-3)
    assert steps[1][1]["prompt"] == "Turn to your right side"
    assert steps[1][1]["pause_s"] == 45
    right_start = next(
        e
        for _, e in hips.seen
        if e["event_type"] == "session_started" and e["panel"] == "hip_right"
    )
    assert (right_start["source"], right_start["duration_s"]) == ("routine", 500)
    assert right_start["dose_j_cm2"] == 25
    assert hips.plugs["hip_left"].on_seconds() == pytest.approx([420], abs=1e-3)
    assert hips.plugs["hip_right"].on_seconds() == pytest.approx([500], abs=1e-3)


async def test_stop_during_the_pause_cancels_the_rest(hips: Hips) -> None:
    """STOP while the routine waits: the next step never starts, everything stays off."""
    paused = hips.event("routine_step", step=2)
    hips.send("redlight/routine/post_run/set", "START")
    await paused
    stopped = hips.event("routine_finished")
    hips.send("redlight/routine/post_run/set", "STOP")
    assert body(await stopped)["reason"] == "stopped"
    await asyncio.sleep(600)
    assert hips.plugs["hip_right"].on_commands == 0
    assert not any(p.is_on for p in hips.plugs.values())


async def test_stop_all_ends_the_routine_and_its_session(hips: Hips) -> None:
    """stop_all mid-step: the session stops, the routine ends as stopped, nothing else runs."""
    hips.send("redlight/routine/post_run/set", "START")
    await hips.plugs["hip_left"].wait_for(lambda p: p.is_on)
    stopped = hips.event("routine_finished")
    hips.send("redlight/set", {"action": "stop_all"})
    assert body(await stopped)["reason"] == "stopped"
    await hips.plugs["hip_left"].wait_for(lambda p: not p.is_on)
    await asyncio.sleep(900)
    assert hips.plugs["hip_right"].on_commands == 0


async def test_a_routine_stopped_while_its_session_is_paused_ends_that_session(
    hips: Hips,
) -> None:
    """STOP while the step's session is paused: the session ends as stopped with the
    routine, and nothing is resumed or started later."""
    hips.send("redlight/routine/post_run/set", "START")
    left = hips.plugs["hip_left"]
    await left.wait_for(lambda p: p.is_on)
    paused = hips.event("session_paused")
    hips.send("redlight/panel/hip_left/set", "PAUSE")
    await paused
    await left.wait_for(lambda p: not p.is_on)
    finished = hips.event("session_finished")
    hips.send("redlight/routine/post_run/set", "STOP")
    assert body(await finished)["reason"] == "stopped"
    await asyncio.sleep(900)
    assert [p.on_commands for p in hips.plugs.values()] == [1, 0]
    assert hips.runtime.core.panels["hip_left"].paused is None


async def test_a_session_ended_at_the_plug_aborts_the_routine(hips: Hips) -> None:
    """Someone switches the left panel off at its plug: the routine gives up, says why."""
    hips.send("redlight/routine/post_run/set", "START")
    left = hips.plugs["hip_left"]
    await left.wait_for(lambda p: p.is_on)
    aborted = hips.event("routine_finished")
    left.press_button()
    finished = body(await aborted)
    assert finished["reason"] == "aborted"
    assert finished["message"] == "the session on hip_left ended early (external_off)"
    await asyncio.sleep(600)
    assert hips.plugs["hip_right"].on_commands == 0


async def test_a_refused_step_aborts_with_the_reason(hips: Hips) -> None:
    """The right plug is offline when its step comes: the routine ends with the refusal."""
    hips.send("redlight/routine/post_run/set", "START")
    await hips.plugs["hip_left"].wait_for(lambda p: p.is_on)
    availability = "zigbee2mqtt/right plug/availability"
    assert hips.user.publish(Message(availability, '{"state":"offline"}', retain=True))
    aborted = hips.event("routine_finished")
    finished = body(await aborted)
    assert finished["reason"] == "aborted"
    assert finished["message"] == "hip_right: the plug of Hip right is offline"


async def test_unknown_and_malformed_routine_commands_are_rejected(hips: Hips) -> None:
    """A routine that does not exist, or a payload that is not START/STOP, is refused."""
    unknown = hips.event("command_rejected", routine="nope")
    hips.send("redlight/routine/nope/set", "START")
    assert body(await unknown)["reason"] == "unknown_routine"
    bad = hips.event("command_rejected", routine="post_run")
    hips.send("redlight/routine/post_run/set", "GO")
    assert body(await bad)["reason"] == "invalid_payload"
    twice = hips.event("command_rejected", routine="post_run")
    hips.send("redlight/routine/post_run/set", "START")
    hips.send("redlight/routine/post_run/set", "START")
    assert body(await twice)["reason"] == "already_running"


async def test_a_dose_becomes_the_right_length(hips: Hips) -> None:
    """30 J/cm² at 50 mW/cm² is 600 s; the history gets the dose delivered."""
    started = hips.event("session_started", panel="hip_right")
    hips.send("redlight/panel/hip_right/set", {"action": "start", "dose_j_cm2": 30})
    assert body(await started)["duration_s"] == 600
    finished = hips.event("session_finished", panel="hip_right")
    got = body(await finished)
    assert got["dose_j_cm2"] == pytest.approx(30, abs=1e-3)
