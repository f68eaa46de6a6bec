"""The controller: commands dispatched to the part they are for, routines led by the core's
notices of sessions that ended, and one effect list per input with plug commands first."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from redlight import commands as cmd
from redlight.broker import Message
from redlight.core import Effect, SessionEnded, SessionOpened, SettingChanged, Started
from tests.unit.corekit import (
    LEFT_POWER,
    SAUNA_SET,
    Kit,
    events,
    make_config,
    payloads,
    switched,
)

TWO_STEPS: dict[str, Any] = {
    "steps": [
        {"panels": ["hip_left"], "duration": "1m"},
        {"panels": ["sauna"], "duration": "30s"},
    ]
}


def routine_kit() -> Kit:
    """Both plugs confirmed off; routine 'two' runs the left hip for 1 min, then the sauna."""
    return Kit.create(make_config(routines={"two": TWO_STEPS})).ready()


def kinds(effects: list[Effect]) -> list[str]:
    """The event types among effects, in order."""
    return [event.event_type for event in events(effects)]


def assert_plug_commands_first(effects: list[Effect]) -> None:
    """Every plug command comes before anything else (an ON waits for its journal row)."""
    first = [isinstance(e, Message) and e.urgent for e in effects]
    assert first == sorted(first, reverse=True), effects


def test_stop_all_ends_the_routine_as_stopped_then_every_panel() -> None:
    """stop_all mid-step: the routine ends "stopped" (not "aborted" by its session stopping
    under it), its session and the other panel's are stopped, every plug is sent OFF first."""
    kit = routine_kit()
    kit.send("redlight/routine/two/set", "START")
    kit.report("hip_left", on=True)
    kit.start("sauna", 300)
    got = kit.send("redlight/set", '{"action":"stop_all"}')
    [finished] = events(got, "routine_finished")
    assert (finished.fields["reason"], finished.fields["step"]) == ("stopped", 1)
    assert [(e.panel, e.fields["reason"]) for e in events(got, "session_finished")] == [
        ("hip_left", "stopped"),
        ("sauna", "stopped"),
    ]
    assert kinds(got) == ["session_finished", "session_finished", "routine_finished"]
    assert switched(got, LEFT_POWER) == ["OFF"]
    assert switched(got, SAUNA_SET) == ["OFF"]
    assert_plug_commands_first(got)
    assert kit.controller.routines.runs == {}
    assert kit.core.running() == []


def test_stop_all_withdraws_open_offers() -> None:
    """An offer still open when stop_all arrives is withdrawn, so accepting it later fails."""
    offer_mode = {"panels": ["sauna"], "duration": "5m", "cron": "0 20 * * *", "mode": "offer"}
    config = make_config(schedules={"later": offer_mode})
    kit = Kit.create(config).ready()
    [offer] = events(kit.take(kit.controller.fire("later", kit.now)), "schedule_offer")
    got = kit.send("redlight/set", '{"action":"stop_all"}')
    [withdrawn] = events(got, "schedule_offer")
    assert (withdrawn.fields["offer"], withdrawn.fields["state"]) == (
        offer.fields["offer"],
        "withdrawn",
    )
    accept = f'{{"action":"accept_offer","offer":"{offer.fields["offer"]}"}}'
    [late] = events(kit.send("redlight/set", accept), "command_rejected")
    assert late.fields["reason"] == "unknown_offer"


def test_a_refused_step_aborts_the_routine_with_the_refusals_message() -> None:
    """The left hip is busy when the routine starts: the routine ends "aborted" with the
    core's own refusal as its message, and nothing is switched on."""
    kit = routine_kit()
    kit.start("hip_left", 300)
    kit.report("hip_left", on=True)
    got = kit.send("redlight/routine/two/set", "START")
    [refused] = events(got, "command_rejected")
    [finished] = events(got, "routine_finished")
    assert (finished.fields["reason"], finished.fields["step"]) == ("aborted", 1)
    assert finished.fields["message"] == f"hip_left: {refused.fields['message']}"
    assert refused.fields["reason"] == "already_running"
    assert switched(got, LEFT_POWER) == []
    assert kit.controller.routines.runs == {}


def test_a_completed_session_of_the_routine_starts_its_next_step() -> None:
    """The left hip's minute is up: in the same effect list its OFF (plug commands first), the
    next step's journal row, and the events in order: session_finished, routine_step,
    session_started; the sauna's ON follows the row's acknowledgement."""
    kit = routine_kit()
    kit.send("redlight/routine/two/set", "START")
    kit.report("hip_left", on=True)
    kit.advance(59.5)
    # One tick at the deadline: one effect list (taken as the runtime would, not acknowledged).
    kit.mono += 0.5
    kit.wall += timedelta(seconds=0.5)
    got = kit.controller.tick(kit.now)
    assert switched(got, LEFT_POWER) == ["OFF"]
    assert switched(got, SAUNA_SET) == []
    assert_plug_commands_first(got)
    assert kinds(got) == [
        "session_finished",
        "routine_step",
        "session_started",
    ]
    [opened] = [e for e in got if isinstance(e, SessionOpened)]
    assert opened.panel == "sauna"
    assert switched(kit.take(kit.controller.journaled(opened.id, kit.now)), SAUNA_SET) == ["ON"]
    [step] = events(got, "routine_step")
    assert (step.fields["step"], step.fields["panels"]) == (2, ["sauna"])
    assert kit.core.running() == ["sauna"]
    kit.report("sauna", on=True)
    done = kit.advance(30)
    [finished] = events(done, "routine_finished")
    assert finished.fields["reason"] == "completed"
    assert kit.core.running() == []


def test_a_session_of_the_routine_stopped_by_hand_aborts_it() -> None:
    """OFF on the routine's panel ends its session "stopped": the routine says it ended early."""
    kit = routine_kit()
    kit.send("redlight/routine/two/set", "START")
    kit.report("hip_left", on=True)
    got = kit.command("hip_left", "OFF")
    [finished] = events(got, "routine_finished")
    assert (finished.fields["reason"], finished.fields["message"]) == (
        "aborted",
        "the session on hip_left ended early (stopped)",
    )
    kit.advance(120)
    assert "ON" not in switched(kit.effects, SAUNA_SET)
    assert kit.core.running() == []


def test_the_core_answers_a_start_with_a_value_and_notices_each_ended_session() -> None:
    """Core.start returns Started or the Rejection; each ended session is noticed once."""
    kit = Kit.create().ready()
    started, _ = kit.core.start("hip_left", cmd.Start(duration_s=45), "cli", kit.now)
    assert started == Started("s1", "hip_left", 45)
    refused, effects = kit.core.start("hip_left", cmd.Start(duration_s=45), "cli", kit.now)
    assert isinstance(refused, cmd.Rejection)
    assert refused.message == events(effects, "command_rejected")[0].fields["message"]
    kit.core.stop("hip_left", kit.now)
    assert kit.core.take_ended() == [SessionEnded("s1", "hip_left", "stopped", "cli")]
    assert kit.core.take_ended() == []


def test_a_default_length_from_home_assistant_is_kept_and_published() -> None:
    """<b>/panel/<id>/duration/set: stored as a setting and in the panel's state."""
    kit = Kit.create().ready()
    got = kit.send("redlight/panel/hip_left/duration/set", "12")
    assert SettingChanged("panel.hip_left.default_duration_s", "720.0") in got
    [published] = payloads(got, "redlight/panel/hip_left/state")
    assert json.loads(published)["default_duration_s"] == 720
