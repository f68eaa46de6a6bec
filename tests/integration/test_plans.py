"""Routines and schedules with the real daemon on a private mosquitto (real time)."""

from __future__ import annotations

import json
import signal

import pytest

from tests.integration.harness import System, is_off, until
from tests.integration.test_cli import redlight

pytestmark = pytest.mark.integration

ROUTINE = """
[routines.hips]
name = "Both hips"
steps = [
  { panels = ["tasmota"], duration = "2s" },
  { pause = "1s", prompt = "Turn to your right side" },
  { panels = ["esphome"], duration = "2s" },
]
"""


async def test_routine_from_the_command_line_runs_every_step(system: System) -> None:
    """``start --routine --follow`` shows each step and the prompt; each panel is on once."""
    await system.up(["tasmota", "esphome"], extra=ROUTINE)
    ran = await redlight(system, "start", "--routine", "hips", "--follow")
    assert ran.code == 0, ran.err
    assert ran.out.splitlines() == [
        "started routine Both hips (3 steps)",
        "step 1/3: tasmota",
        "step 2/3: Turn to your right side",
        "step 3/3: esphome",
        "routine finished: completed",
    ]
    for name in ("tasmota", "esphome"):
        plug = system.plugs[name]
        await until(plug, is_off)
        assert plug.on_commands == 1
        [on_for] = plug.on_seconds()
        assert on_for == pytest.approx(2, abs=0.8)


async def test_every_minute_schedules_start_and_offer_and_disabling_sticks(system: System) -> None:
    """A start schedule starts on the minute; an offer waits for accept_offer; OFF is kept."""
    schedules = """
[schedules.minutely]
panels = ["generic"]
duration = "2s"
cron = "* * * * *"
timezone = "Europe/Amsterdam"

[schedules.asking]
panels = ["shelly_gen1"]
duration = "2s"
cron = "* * * * *"
mode = "offer"
"""
    await system.up(["generic", "shelly_gen1"], extra=schedules)
    listed = await redlight(system, "schedules")
    assert listed.code == 0, listed.err
    assert "minutely" in listed.out
    assert "enabled  next 20" in listed.out
    mark = system.observer.mark()
    started = await system.observer.event("session_started", since=mark, within=75, panel="generic")
    assert started["source"] == "schedule"
    offer = await system.observer.event("schedule_offer", since=mark, within=10, state="open")
    assert offer["schedule"] == "asking"
    assert system.plugs["shelly_gen1"].on_commands == 0
    accepted = system.observer.mark()
    system.observer.publish(
        "redlight/set", json.dumps({"action": "accept_offer", "offer": offer["offer"]})
    )
    got = await system.observer.event("session_started", since=accepted, panel="shelly_gen1")
    assert got["source"] == "schedule"

    # Disable, restart the daemon, and the schedule is still disabled.
    system.observer.publish("redlight/schedule/minutely/set", "OFF")
    await system.observer.wait(
        "redlight/schedule/minutely/state",
        lambda m: m.json() == {"enabled": False, "next_run": None},
    )
    assert system.daemon is not None
    system.daemon.signal(signal.SIGTERM)
    assert await system.daemon.wait_exit() == 0
    restart = system.observer.mark()
    await system.start_daemon()
    state = await system.observer.wait("redlight/schedule/minutely/state", since=restart)
    assert state.json()["enabled"] is False
