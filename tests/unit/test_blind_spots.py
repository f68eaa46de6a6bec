"""The ceiling holds for what redlight did not see: outages, lost reports, silent plugs, and
ON time that follows an OFF too soon (SPEC §3 rules 1, 2 and 10, issue "no blind spots")."""

from __future__ import annotations

from datetime import timedelta

from redlight.core import Restored, Resubscribe
from tests.unit.corekit import (
    LEFT_POWER,
    START_WALL,
    Kit,
    events,
    make_config,
    payloads,
    state,
    switched,
)

LWT = "tele/panel_left/LWT"


def test_on_during_a_broker_outage_is_found_when_the_plug_says_online_again() -> None:
    """The broker restarts; redlight is back before the plug, so its question is lost. The
    plug's ``Online`` (redlight never saw it go) makes redlight ask again, and the ON it
    finds is switched off at once: it may have been on since the outage began, over max_on."""
    kit = Kit.create().ready()
    kit.take(kit.core.disconnect(kit.now))
    kit.advance(20 * 60)  # the broker is down; someone presses the plug's button meanwhile
    assert payloads(kit.connect(), LEFT_POWER) == [""]  # asked, but the plug is not back yet
    kit.advance(1)
    asked = kit.send(LWT, "Online", retain=True)
    assert payloads(asked, LEFT_POWER) == [""]
    got = kit.report("hip_left", on=True)
    assert switched(got, LEFT_POWER) == ["OFF"]
    [started] = events(got, "session_started")
    assert started.fields["source"] == "external"
    assert started.fields["unseen_s"] == 20 * 60 + 1
    [cutoff] = events(got, "cutoff_enforced")
    assert cutoff.fields["on_s"] == 15 * 60


def test_every_online_message_asks_the_plug_its_state() -> None:
    """Not only a change: ``Online`` while redlight thinks the plug is online asks too."""
    kit = Kit.create().ready()
    assert payloads(kit.send(LWT, "Online", retain=True), LEFT_POWER) == [""]
    assert payloads(kit.send(LWT, "Online"), LEFT_POWER) == [""]
    assert payloads(kit.send(LWT, "Offline"), LEFT_POWER) == []


def test_an_on_found_after_a_gap_counts_from_the_last_off_report() -> None:
    """An ON found after the plug re-announced itself runs only what is left of max_on,
    counted from the plug's last OFF report."""
    kit = Kit.create().ready()
    kit.answers_polls = False
    kit.advance(30)
    kit.report("hip_left", on=False)  # the last OFF redlight heard, at 30 s
    kit.advance(100)
    kit.send(LWT, "Online")
    got = kit.report("hip_left", on=True)
    [started] = events(got, "session_started")
    assert started.fields["unseen_s"] == 100
    assert switched(kit.advance(15 * 60 - 100 - 0.1), LEFT_POWER) == []
    assert switched(kit.advance(0.1), LEFT_POWER) == ["OFF"]


def test_an_on_seen_while_watching_counts_from_when_it_is_seen() -> None:
    """Watched without a gap since its OFF report, a hand-switched ON gets the full max_on."""
    kit = Kit.create().ready()
    kit.answers_polls = False
    kit.advance(50)
    kit.report("hip_left", on=False)  # answers the poll at 30 s (late, but it answers)
    kit.advance(5)
    got = kit.report("hip_left", on=True)
    [started] = events(got, "session_started")
    assert "unseen_s" not in started.fields
    assert started.fields["duration_s"] == 900
    assert switched(kit.advance(899.9), LEFT_POWER) == []
    assert switched(kit.advance(0.1), LEFT_POWER) == ["OFF"]


def test_every_plug_is_polled_on_the_interval_spread_over_it() -> None:
    """After the connect's own question, each plug is asked again every poll_interval, the
    panels' first polls spread over one interval so that many plugs never answer at once."""
    kit = Kit.create(make_config(safety={"poll_interval": "60s"})).ready()
    kit.answers_polls = False
    asks: list[float] = []
    for _ in range(200):
        if payloads(kit.advance(1), LEFT_POWER) == [""]:
            asks.append(kit.mono - 1000)
            kit.report("hip_left", on=False)
    assert asks == [30, 90, 150]  # the first of two panels: half an interval after connecting
    # The second (a generic plug with a retained state and no query) is polled a whole
    # interval after connecting, by subscribing to its state topic again.
    kit = Kit.create(make_config(safety={"poll_interval": "60s"})).ready()
    resubscribed = [e for e in kit.advance(60) if isinstance(e, Resubscribe)]
    assert resubscribed == [Resubscribe(("sauna/panel/state",))]


def test_an_on_whose_report_was_lost_is_found_by_the_next_poll() -> None:
    """A lost ON report (nothing else seen) is found by the next poll: at most max_on plus
    poll_interval in all."""
    kit = Kit.create(make_config(safety={"poll_interval": "60s"})).ready()
    kit.answers_polls = False
    kit.advance(29)
    assert payloads(kit.advance(1), LEFT_POWER) == [""]
    got = kit.report("hip_left", on=True)
    assert [e.fields["source"] for e in events(got, "session_started")] == ["external"]
    assert "OFF" in switched(kit.advance(15 * 60), LEFT_POWER)


def test_an_unanswered_poll_is_a_gap() -> None:
    """A plug that does not answer a poll may be away: its next ON counts from its last OFF."""
    kit = Kit.create(make_config(safety={"poll_interval": "60s"})).ready()
    kit.answers_polls = False
    kit.advance(31)
    kit.report("hip_left", on=False)  # answers the first poll (last OFF heard: 31 s)
    kit.advance(65)  # the poll at 90 s goes unanswered
    got = kit.report("hip_left", on=True)
    [started] = events(got, "session_started")
    assert started.fields["unseen_s"] == 65


# ---------------------------------------------------------------- exposure: the ceiling is on light


def test_back_to_back_sessions_cannot_keep_a_panel_lit_past_max_on() -> None:
    """With cooldown 0, a session right after another continues the same exposure: refused
    beyond max_on in total until the panel has been off for min_off, then allowed again."""
    kit = Kit.create(make_config(safety={"cooldown": "0s", "min_off": "10m"})).ready()
    kit.start("hip_left", 600)
    kit.report("hip_left", on=True)
    kit.advance(600)
    kit.report("hip_left", on=False)
    kit.advance(5)
    got = kit.start("hip_left", 301)
    [rejected] = events(got, "command_rejected")
    assert rejected.fields["reason"] == "exposure"
    assert "5m is left" in rejected.fields["message"]
    ended = START_WALL + timedelta(seconds=600)
    assert rejected.fields["allowed_at"] == (ended + timedelta(minutes=10)).isoformat()
    assert switched(got, LEFT_POWER) == []
    assert switched(kit.start("hip_left", 300), LEFT_POWER) == ["ON"]
    kit.report("hip_left", on=True)
    kit.advance(300)
    kit.report("hip_left", on=False)
    assert events(kit.start("hip_left", 1), "command_rejected")[0].fields["reason"] == "exposure"
    kit.advance(599)
    assert events(kit.start("hip_left", 1), "command_rejected")
    kit.advance(1)
    assert switched(kit.start("hip_left", 900), LEFT_POWER) == ["ON"]


def test_a_hand_switched_on_right_after_a_session_gets_only_what_is_left() -> None:
    """Pressing the plug's button after a session continues its exposure: cut off at the rest."""
    kit = Kit.create().ready()
    kit.start("hip_left", 600)
    kit.report("hip_left", on=True)
    kit.advance(600)
    kit.report("hip_left", on=False)
    kit.advance(10)
    got = kit.report("hip_left", on=True)
    [started] = events(got, "session_started")
    assert started.fields["duration_s"] == 300
    assert switched(kit.advance(299.9), LEFT_POWER) == []
    got = kit.advance(0.1)
    assert switched(got, LEFT_POWER) == ["OFF"]
    assert len(events(got, "cutoff_enforced")) == 1


def test_an_exposure_survives_a_restart() -> None:
    """The last exposure read from history still counts after a restart."""
    restored = Restored(exposure={"hip_left": (START_WALL - timedelta(minutes=2), 720.0)})
    kit = Kit.create(restored=restored).ready()
    [rejected] = events(kit.start("hip_left", 181), "command_rejected")
    assert rejected.fields["reason"] == "exposure"
    assert switched(kit.start("hip_left", 180), LEFT_POWER) == ["ON"]


# ---------------------------------------------------------------- a plug that does not obey


def test_an_on_from_a_plug_that_ignores_off_raises_an_event_every_time() -> None:
    """With OFF unconfirmed (the broker refuses redlight's commands, say), every ON the plug
    reports is an ``off_not_obeyed`` event, and the panel shows as a fault."""
    kit = Kit.create().ready()
    kit.answers_polls = False
    kit.start("hip_left", 60)
    kit.report("hip_left", on=True)
    kit.advance(60 + 5)  # OFF sent at 60 s, not confirmed
    assert state(kit, "hip_left")["state"] == "fault"
    for _ in range(3):
        kit.advance(30)
        got = kit.report("hip_left", on=True)
        [warning] = events(got, "off_not_obeyed")
        assert "switch it off at the plug" in warning.fields["message"]
    assert warning.fields["off_pending_s"] == 95


# ---------------------------------------------------------------- no ON on a plug out of sight


def test_no_session_starts_on_a_plug_not_heard_from_since_a_gap() -> None:
    """After a gap the relay may be on unseen, and a session's max_on would add to that: the
    start is refused as ``plug_state_unknown`` and the plug asked; once it answers, it starts."""
    kit = Kit.create(make_config(safety={"poll_interval": "60s"})).ready()
    kit.answers_polls = False
    kit.advance(40)  # the poll at 30 s goes unanswered
    got = kit.start("hip_left", 60)
    [rejected] = events(got, "command_rejected")
    assert rejected.fields["reason"] == "plug_state_unknown"
    assert payloads(got, LEFT_POWER) == [""]  # asked, nothing switched
    kit.report("hip_left", on=False)
    assert switched(kit.start("hip_left", 60), LEFT_POWER) == ["ON"]


def test_a_plug_that_cannot_be_asked_is_switched_off_to_learn_its_state() -> None:
    """The generic plug has no query and no retained state: after a reconnect, a start is
    refused and OFF sent (it is idle, so off is what it should be); its OFF report lets the
    next start through."""
    kit = Kit.create().ready()
    kit.take(kit.core.disconnect(kit.now))
    kit.connect()
    got = kit.start("sauna", 60)
    assert events(got, "command_rejected")[0].fields["reason"] == "plug_state_unknown"
    assert switched(got, "sauna/panel/set") == ["OFF"]
    kit.report("sauna", on=False)
    assert switched(kit.start("sauna", 60), "sauna/panel/set") == ["ON"]


def test_a_cooldown_survives_a_restart_with_the_clock_behind() -> None:
    """The last session ended after what the clock says now (a board without a real-time
    clock): the whole cooldown applies, rather than none."""
    restored = Restored(last_end={"hip_left": START_WALL + timedelta(hours=20)})
    kit = Kit.create(make_config(safety={"cooldown": "1h"}), restored=restored).ready()
    [rejected] = events(kit.start("hip_left", 60), "command_rejected")
    assert rejected.fields["reason"] == "cooldown"


def test_a_plug_never_heard_from_is_not_called_online() -> None:
    """Issue 14 item 6: ``plug_online`` is null until the plug has said anything (a state or
    an availability message): a topic typo must not read as "online"."""
    kit = Kit.create(make_config())
    kit.connect()
    assert state(kit, "hip_left")["plug_online"] is None
    assert state(kit, "hip_left")["plug"] == "unknown"
    kit.report("hip_left", on=False)
    assert state(kit, "hip_left")["plug_online"] is True
