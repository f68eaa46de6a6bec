"""SPEC §3, rule by rule, against the pure core in virtual time.

Each test names the rule it proves and fails when that rule is broken.
"""

from __future__ import annotations

import itertools
import json
from datetime import timedelta

import pytest

from redlight.config import HARD_MAX_ON, ConfigError, load_config
from redlight.core import MAX_OFF_RETRY_S, Restored, SessionClosed, SessionOpened
from tests.unit.corekit import (
    LEFT_POWER,
    LEFT_PULSE,
    SAUNA_SET,
    START_WALL,
    Kit,
    config_problems,
    events,
    make_config,
    messages,
    payloads,
    state,
    switched,
)

# ---------------------------------------------------------------- rule 1: hard ceiling


def test_rule1_ceiling_is_a_constant_of_fifteen_minutes() -> None:
    """The 15-minute ceiling is a constant in code, not a default."""
    assert timedelta(minutes=15) == HARD_MAX_ON


def test_rule1_max_on_above_fifteen_minutes_is_a_config_error(
    tmp_path: pytest.TempPathFactory,
) -> None:
    """safety.max_on = 16m is refused with a one-line reason naming the key."""
    path = tmp_path / "config.toml"  # type: ignore[operator]
    path.write_text('[safety]\nmax_on = "16m"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems == ["safety.max_on: must be at most 15 minutes (got 16m)"]


def test_rule1_over_ceiling_request_is_rejected_not_shortened() -> None:
    """A 15m01s request is rejected with a reason, and the plug is never switched on."""
    kit = Kit.create().ready()
    got = kit.command("hip_left", {"action": "start", "duration": "15m1s"})
    assert switched(got, LEFT_POWER) == []
    [rejected] = events(got, "command_rejected")
    assert rejected.fields["reason"] == "over_max_on"
    assert "15m1s" in rejected.fields["message"]
    assert state(kit, "hip_left")["session"] is None


def test_rule1_exactly_max_on_is_allowed() -> None:
    """A request of exactly max_on starts."""
    kit = Kit.create().ready()
    got = kit.command("hip_left", {"action": "start", "duration": "15m"})
    assert switched(got, LEFT_POWER) == ["ON"]


def test_rule1_lower_max_on_is_enforced_for_doses() -> None:
    """A dose that would need longer than max_on is rejected with the dose and the time it needs."""
    left = {
        "default_duration": "5m",
        "irradiance_mw_cm2": 50,
        "plug": {"preset": "tasmota", "topic": "panel_left"},
    }
    kit = Kit.create(make_config(safety={"max_on": "5m"}, panels={"hip_left": left})).ready()
    got = kit.command("hip_left", {"action": "start", "dose_j_cm2": 30})
    [rejected] = events(got, "command_rejected")
    assert rejected.fields["reason"] == "over_max_on"
    assert rejected.fields["message"] == (
        "30 J/cm² at 50 mW/cm² needs 10m, more than safety.max_on (5m)"
    )
    assert switched(got, LEFT_POWER) == []


def test_rule1_routine_keeping_a_panel_on_too_long_is_a_config_error() -> None:
    """Two 8-minute steps on one panel add up to 16 minutes: the routine is refused at load."""
    steps = [
        {"panels": ["hip_left"], "duration": "8m"},
        {"pause": "30s", "prompt": "turn"},
        {"panels": ["hip_left"], "duration": "8m"},
    ]
    assert config_problems(routines={"twice": {"steps": steps}}) == [
        "routines.twice: keeps panel 'hip_left' on for 16m in total, more than safety.max_on (15m)"
    ]


# ---------------------------------------------------------------- rule 2: whatever turned it on


def test_rule2_hand_switched_plug_is_cut_off_at_max_on() -> None:
    """An ON redlight did not start is switched off exactly max_on after it was first seen."""
    kit = Kit.create().ready()
    seen = kit.report("hip_left", on=True)
    assert [e.fields["source"] for e in events(seen, "session_started")] == ["external"]
    assert switched(kit.advance(15 * 60 - 0.5), LEFT_POWER) == []
    got = kit.advance(0.5)
    assert switched(got, LEFT_POWER) == ["OFF"]
    [cutoff] = events(got, "cutoff_enforced")
    assert cutoff.panel == "hip_left"
    [finished] = events(got, "session_finished")
    assert finished.fields["reason"] == "cutoff"


def test_rule2_repeated_on_reports_do_not_extend_the_cutoff() -> None:
    """Later ON reports (Tasmota's periodic tele/STATE) do not restart the max_on window."""
    kit = Kit.create().ready()
    kit.report("hip_left", on=True)
    kit.advance(600)
    kit.send("tele/panel_left/STATE", '{"POWER":"ON"}')
    got = kit.advance(300)
    assert switched(got, LEFT_POWER) == ["OFF"]


def test_rule2_plug_back_on_after_power_cut_is_cut_off() -> None:
    """A plug that comes back online reporting ON is cut off max_on later, with cutoff_enforced."""
    kit = Kit.create().ready()
    kit.send("tele/panel_left/LWT", "Offline")
    kit.send("tele/panel_left/LWT", "Online")
    kit.report("hip_left", on=True)
    got = kit.advance(15 * 60)
    assert switched(got, LEFT_POWER) == ["OFF"]
    assert len(events(got, "cutoff_enforced")) == 1


def test_rule2_an_off_report_mid_session_still_sends_off() -> None:
    """An OFF report mid-session (a hand, or a stale report delivered late) ends the session as
    external_off and OFF is still sent, so a panel that is in fact on is never left unwatched."""
    kit = Kit.create().ready()
    kit.start("hip_left", 420)
    kit.report("hip_left", on=True)
    kit.advance(60)
    got = kit.report("hip_left", on=False)
    assert switched(got, LEFT_POWER) == ["OFF"]
    [finished] = events(got, "session_finished")
    assert finished.fields["reason"] == "external_off"
    kit.report("hip_left", on=False)
    assert kit.core.all_off_confirmed()


def test_rule2_own_session_ends_at_its_own_deadline() -> None:
    """A 7-minute session is switched off at 7 minutes, as `completed`, without cutoff_enforced."""
    kit = Kit.create().ready()
    kit.start("hip_left", 420)
    kit.report("hip_left", on=True)
    assert switched(kit.advance(419.9), LEFT_POWER) == []
    got = kit.advance(0.1)
    assert switched(got, LEFT_POWER) == ["OFF"]
    assert events(got, "cutoff_enforced") == []
    assert [e.fields["reason"] for e in events(got, "session_finished")] == ["completed"]


def test_rule2_full_fifteen_minute_session_in_virtual_time() -> None:
    """A full max_on session: one ON, ending_soon 30 s before, OFF at 900 s, then confirmed."""
    kit = Kit.create().ready()
    kit.start("hip_left", 900)
    kit.report("hip_left", on=True)
    soon = kit.advance(870)
    assert [e.fields["remaining_s"] for e in events(soon, "ending_soon")] == [30]
    end = kit.advance(30)
    assert switched(end, LEFT_POWER) == ["OFF"]
    kit.report("hip_left", on=False)
    assert switched(kit.effects, LEFT_POWER) == ["ON", "OFF"]
    assert state(kit, "hip_left")["state"] == "idle"
    assert state(kit, "hip_left")["today_s"] == 900


# ---------------------------------------------------------------- rule 3: monotonic deadlines


@pytest.mark.parametrize("jump_hours", [-3, 3, 24])
def test_rule3_wall_clock_step_neither_shortens_nor_lengthens(jump_hours: int) -> None:
    """An NTP step of hours changes nothing: the end follows the monotonic clock."""
    kit = Kit.create().ready()
    kit.start("hip_left", 600)
    kit.report("hip_left", on=True)
    early = kit.advance(60, wall_jump=jump_hours * 3600)
    assert switched(early, LEFT_POWER) == []
    assert switched(kit.advance(539.9), LEFT_POWER) == []
    assert switched(kit.advance(0.1), LEFT_POWER) == ["OFF"]


# ---------------------------------------------------------------- rule 4: confirmed OFF


def test_rule4_off_is_resent_until_confirmed_at_least_every_ten_seconds() -> None:
    """An unconfirmed OFF is re-sent at least every 10 s; unresponsive, then recovered."""
    kit = Kit.create().ready()
    kit.answers_polls = False  # a plug that has gone silent
    kit.start("hip_left", 60)
    kit.report("hip_left", on=True)
    kit.advance(60)
    sent_at = [kit.mono]
    for _ in range(12):
        got = kit.advance(0.5)
        if "OFF" in switched(got, LEFT_POWER):
            sent_at.append(kit.mono)
    while kit.mono - sent_at[0] < 120:
        if "OFF" in switched(kit.advance(0.5), LEFT_POWER):
            sent_at.append(kit.mono)
    gaps = [b - a for a, b in itertools.pairwise(sent_at)]
    assert len(gaps) >= 10
    assert max(gaps) <= MAX_OFF_RETRY_S
    assert len(events(kit.effects, "plug_unresponsive")) == 1
    assert state(kit, "hip_left")["state"] == "fault"
    recovered = kit.report("hip_left", on=False)
    assert len(events(recovered, "plug_recovered")) == 1
    assert state(kit, "hip_left")["state"] == "idle"
    assert switched(kit.advance(60), LEFT_POWER) == []


def test_rule4_unconfirmed_on_switches_the_panel_off() -> None:
    """An ON the plug never confirms ends the session and the panel is switched off."""
    kit = Kit.create().ready()
    kit.start("hip_left", 600)
    got = kit.advance(5)
    assert switched(got, LEFT_POWER) == ["OFF"]
    assert len(events(got, "plug_unresponsive")) == 1
    assert [e.fields["reason"] for e in events(got, "session_finished")] == ["cutoff"]


# ---------------------------------------------------------------- rule 5: plug-side failsafe


def test_rule5_tasmota_pulsetime_is_armed_before_the_on() -> None:
    """Tasmota gets PulseTime = session + margin (10m + 30s = 630 s, encoded 730) before ON."""
    kit = Kit.create().ready()
    got = kit.start("hip_left", 600)
    plug_messages = [m for m in messages(got) if m.topic.startswith("cmnd/")]
    assert [(m.topic, m.payload_bytes().decode()) for m in plug_messages] == [
        (LEFT_PULSE, "730"),
        (LEFT_POWER, "ON"),
    ]
    [started] = events(got, "session_started")
    assert started.fields["failsafe_s"] == 630


def test_rule5_failsafe_never_exceeds_max_on_plus_margin() -> None:
    """At the ceiling the plug timer is max_on + margin: 900 + 30 s, encoded 1030."""
    kit = Kit.create().ready()
    got = kit.start("hip_left", 900)
    assert payloads(got, LEFT_PULSE) == ["1030"]


# ---------------------------------------------------------------- rule 6: ON is sent once


def test_rule6_on_is_sent_once_per_session() -> None:
    """A whole session publishes exactly one ON, however many reports and ticks it sees."""
    kit = Kit.create().ready()
    kit.start("hip_left", 900)
    for _ in range(30):
        kit.advance(29)
        kit.report("hip_left", on=True)
    kit.advance(60)
    assert switched(kit.effects, LEFT_POWER).count("ON") == 1


def test_rule6_no_session_starts_while_disconnected() -> None:
    """While the broker is down a start is rejected, and no ON is ever produced."""
    kit = Kit.create().ready()
    kit.take(kit.core.disconnect(kit.now))
    got = kit.start("hip_left", 60)
    assert [e.fields["reason"] for e in events(got, "command_rejected")] == ["disconnected"]
    kit.advance(10)
    reconnect = kit.connect()
    assert "ON" not in switched(got + reconnect, LEFT_POWER)


# ---------------------------------------------------------------- rule 7: nothing retained


def test_rule7_retained_on_on_own_command_topic_is_ignored_and_cleared() -> None:
    """A retained ON on <b>/panel/<id>/set starts nothing and is cleared with a warning."""
    kit = Kit.create().ready()
    got = kit.send("redlight/panel/hip_left/set", "ON", retain=True)
    assert switched(got, LEFT_POWER) == []
    [cleared] = messages(got, "redlight/panel/hip_left/set")
    assert (cleared.payload_bytes(), cleared.retain) == (b"", True)
    assert state(kit, "hip_left")["session"] is None


def test_rule7_retained_command_on_plug_topic_is_cleared() -> None:
    """A retained ON on the plug's own command topic (cmnd/.../POWER) is cleared."""
    kit = Kit.create().ready()
    got = kit.send(LEFT_POWER, "ON", retain=True)
    [cleared] = messages(got, LEFT_POWER)
    assert (cleared.payload_bytes(), cleared.retain) == (b"", True)


def test_rule7_no_command_is_ever_published_retained() -> None:
    """Over a session with stop, failsafe and retries, no plug command carries the retain flag."""
    kit = Kit.create().ready()
    kit.start("hip_left", 120)
    kit.start("sauna", 120)
    kit.advance(130)
    plug_commands = [m for m in messages(kit.effects) if not m.topic.startswith("redlight/")]
    assert plug_commands
    assert not any(m.retain for m in plug_commands)


# ---------------------------------------------------------------- rule 8: start safe


def test_rule8_start_up_asks_every_plug_and_switches_every_panel_off() -> None:
    """The first connect asks each plug for its state and sends each one OFF."""
    kit = Kit.create()
    got = kit.connect()
    assert payloads(got, LEFT_POWER) == ["", "OFF"]
    assert switched(got, SAUNA_SET) == ["OFF"]
    topics = [m.topic for m in messages(got)]
    last_plug_command = max(i for i, t in enumerate(topics) if not t.startswith("redlight/"))
    first_own_message = min(i for i, t in enumerate(topics) if t.startswith("redlight/"))
    assert last_plug_command < first_own_message


# ---------------------------------------------------------------- rule 9: stop safe (core side)


def test_rule9_shutdown_ends_sessions_and_switches_everything_off() -> None:
    """Shutdown finishes running sessions as `shutdown` and sends OFF to every plug."""
    kit = Kit.create().ready()
    kit.start("hip_left", 600)
    kit.report("hip_left", on=True)
    got = kit.take(kit.core.shutdown(kit.now))
    assert switched(got, LEFT_POWER) == ["OFF"]
    assert switched(got, SAUNA_SET) == ["OFF"]
    assert [e.fields["reason"] for e in events(got, "session_finished")] == ["shutdown"]
    assert not kit.core.all_off_confirmed()
    kit.report("hip_left", on=False)
    kit.report("sauna", on=False)
    assert kit.core.all_off_confirmed()


# ---------------------------------------------------------------- rule 10: reconnect safe


def test_rule10_deadline_passed_while_disconnected_is_enforced_on_reconnect() -> None:
    """A session whose end passed while the broker was down is switched off at reconnect."""
    kit = Kit.create().ready()
    kit.start("hip_left", 120)
    kit.report("hip_left", on=True)
    kit.take(kit.core.disconnect(kit.now))
    during = kit.advance(300)
    assert messages(during, LEFT_POWER) == []  # nothing can be sent while down
    assert events(during, "plug_unresponsive") == []  # and it is not the plug's fault
    got = kit.connect()
    assert payloads(got, LEFT_POWER) == ["", "OFF"]
    assert kit.core.subscriptions()  # re-subscribed by the runtime from this list


def test_rule10_session_still_running_at_reconnect_keeps_its_deadline() -> None:
    """A session whose end is still ahead is left alone at reconnect and ends on time."""
    kit = Kit.create().ready()
    kit.start("hip_left", 600)
    kit.report("hip_left", on=True)
    kit.take(kit.core.disconnect(kit.now))
    kit.advance(100)
    got = kit.connect()
    assert payloads(got, LEFT_POWER) == [""]
    assert switched(kit.advance(500), LEFT_POWER) == ["OFF"]


# ---------------------------------------------------------------- rule 11: limits


def test_rule11_cooldown_rejects_with_the_time_it_is_allowed() -> None:
    """Within cooldown a start is rejected with `cooldown` and when it would be allowed."""
    kit = Kit.create(make_config(safety={"cooldown": "10m"})).ready()
    kit.start("hip_left", 60)
    kit.report("hip_left", on=True)
    kit.advance(60)
    kit.report("hip_left", on=False)
    assert state(kit, "hip_left")["state"] == "cooldown"
    got = kit.start("hip_left", 60)
    [rejected] = events(got, "command_rejected")
    assert rejected.fields["reason"] == "cooldown"
    assert rejected.fields["allowed_at"] == "2026-11-24T07:41:00+01:00"
    kit.advance(600)
    assert state(kit, "hip_left")["state"] == "idle"
    assert payloads(kit.start("hip_left", 60), LEFT_POWER) == ["ON"]


def test_rule11_daily_max_rejects_until_midnight() -> None:
    """Past daily_max a start is rejected with `daily_max`, allowed again at local midnight."""
    kit = Kit.create(make_config(safety={"daily_max": "20m"})).ready()
    kit.start("hip_left", 900)
    kit.report("hip_left", on=True)
    kit.advance(900)
    kit.report("hip_left", on=False)
    kit.advance(600)  # off for safety.min_off: a new exposure, only the day's total counts
    got = kit.start("hip_left", 360)
    [rejected] = events(got, "command_rejected")
    assert rejected.fields["reason"] == "daily_max"
    assert rejected.fields["allowed_at"] == "2026-11-25T00:00:00+01:00"
    assert payloads(kit.start("hip_left", 300), LEFT_POWER) == ["ON"]


def test_rule11_daily_max_counts_sessions_restored_from_history() -> None:
    """Today's minutes from before a restart count toward daily_max."""
    restored = Restored(finished_today_s={"hip_left": 1150.0})
    kit = Kit.create(make_config(safety={"daily_max": "20m"}), restored).ready()
    got = kit.start("hip_left", 60)
    assert [e.fields["reason"] for e in events(got, "command_rejected")] == ["daily_max"]


def test_rule11_cooldown_survives_a_restart() -> None:
    """A session that ended 2 minutes before a restart still blocks for the rest of its cooldown."""
    restored = Restored(last_end={"hip_left": START_WALL - timedelta(minutes=2)})
    kit = Kit.create(make_config(safety={"cooldown": "10m"}), restored).ready()
    got = kit.start("hip_left", 60)
    assert [e.fields["reason"] for e in events(got, "command_rejected")] == ["cooldown"]


# ---------------------------------------------------------------- rule 12: storage (core side)


def test_rule12_off_comes_before_the_history_write() -> None:
    """At a deadline the OFF is the first effect; the history write follows it."""
    kit = Kit.create().ready()
    kit.start("hip_left", 60)
    kit.report("hip_left", on=True)
    got = kit.advance(60)
    off_index = next(i for i, e in enumerate(got) if e in messages(got, LEFT_POWER))
    closed_index = next(i for i, e in enumerate(got) if isinstance(e, SessionClosed))
    assert off_index < closed_index


def test_rule12_journal_is_written_before_the_on() -> None:
    """A session's journal record comes before its ON, so a crash leaves a record to reconcile."""
    kit = Kit.create().ready()
    got = kit.start("hip_left", 60)
    journal = next(i for i, e in enumerate(got) if isinstance(e, SessionOpened))
    switch_on = got.index(messages(got, LEFT_POWER)[0])
    assert journal < switch_on


# ---------------------------------------------------------------- rule 13: bad input


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ("on please", "invalid_payload"),
        ("[1, 2]", "invalid_payload"),
        ('{"action": "explode"}', "unknown_action"),
        ('{"action": "start", "duration": "forever"}', "invalid_duration"),
        ('{"action": "start", "duration": -5}', "invalid_duration"),
        ('{"action": "start", "dose_j_cm2": "lots"}', "invalid_dose"),
        ('{"action": "start", "duration": "1m", "colour": "red"}', "invalid_payload"),
        (b"\xff\xfe".decode("latin-1"), "invalid_payload"),
        ("x" * 5000, "invalid_payload"),
    ],
)
def test_rule13_malformed_command_changes_nothing(payload: str, reason: str) -> None:
    """A malformed command produces one command_rejected with a reason and changes nothing."""
    kit = Kit.create().ready()
    before = state(kit, "hip_left")
    got = kit.command("hip_left", payload)
    [rejected] = events(got, "command_rejected")
    assert rejected.fields["reason"] == reason
    assert rejected.fields["message"]
    assert switched(got, LEFT_POWER) == []
    assert state(kit, "hip_left") == before


def test_rule13_unknown_panel_is_rejected() -> None:
    """A command for a panel that does not exist is rejected as `unknown_panel`."""
    kit = Kit.create().ready()
    got = kit.command("nope", "ON")
    assert [e.fields["reason"] for e in events(got, "command_rejected")] == ["unknown_panel"]


def test_rule13_an_empty_payload_clears_and_is_not_a_command() -> None:
    """An empty message (clearing a retained one, e.g. redlight's own echo) changes nothing."""
    kit = Kit.create(make_config()).ready()
    got = kit.command("hip_left", "")
    assert events(got) == []
    assert messages(got) == []


def test_rule10_active_sessions_are_published_again_at_reconnect() -> None:
    """A session that ended while the broker was down leaves no stale count in Home Assistant."""
    kit = Kit.create().ready()
    kit.start("hip_left", 120)
    kit.report("hip_left", on=True)
    kit.take(kit.core.disconnect(kit.now))
    kit.advance(300)  # the session ends; the running set published meanwhile is lost
    got = kit.connect()
    assert [json.loads(p) for p in payloads(got, "redlight/state")] == [
        {"active_sessions": 0, "running": []}
    ]
