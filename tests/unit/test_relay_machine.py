"""The relay machine (panel.py) and the journal as a state: each move, and the moves it refuses."""

from __future__ import annotations

import pytest

from redlight.core import JOURNAL_WAIT_S, LogLine, SessionOpened
from redlight.panel import TRANSITIONS, IllegalTransition, Relay
from redlight.timers import TimerKind
from tests.unit.corekit import LEFT_POWER, Kit, events, switched


def held_kit() -> Kit:
    """A ready kit whose history never acknowledges a journal row by itself."""
    kit = Kit.create().ready()
    kit.journal_acks = False
    return kit


def relay(kit: Kit) -> Relay:
    """The left panel's relay state now."""
    return kit.core.panels["hip_left"].relay


def opened(kit: Kit) -> SessionOpened:
    [row] = [e for e in kit.effects if isinstance(e, SessionOpened)]
    return row


def test_every_state_is_in_the_table_and_nothing_leaves_to_a_state_outside_it() -> None:
    """The table names every state, and every move ends in a state of the table."""
    assert set(TRANSITIONS) == set(Relay)
    assert all(targets <= set(Relay) for targets in TRANSITIONS.values())


def test_a_move_the_table_lacks_is_refused() -> None:
    """ON straight from an unconfirmed OFF would skip safety rule 4: go() refuses it."""
    kit = held_kit()
    panel = kit.core.panels["hip_left"]
    kit.core.stop("hip_left", kit.now)
    assert panel.relay is Relay.OFF_PENDING
    with pytest.raises(IllegalTransition, match="off_pending -> on"):
        panel.go(Relay.ON)


def test_a_session_walks_journaling_on_requested_on_off_pending_off() -> None:
    """The states a session passes through, with the timer each one owns."""
    kit = held_kit()
    assert relay(kit) is Relay.OFF
    got = kit.start("hip_left", 60)
    assert (relay(kit), switched(got, LEFT_POWER)) == (Relay.JOURNALING, [])
    assert TimerKind.JOURNAL in kit.core.armed("hip_left")
    got = kit.take(kit.controller.journaled(opened(kit).id, kit.now))
    assert (relay(kit), switched(got, LEFT_POWER)) == (Relay.ON_REQUESTED, ["ON"])
    assert TimerKind.CONFIRM_ON in kit.core.armed("hip_left")
    kit.report("hip_left", on=True)
    assert relay(kit) is Relay.ON
    assert TimerKind.CONFIRM_ON not in kit.core.armed("hip_left")
    kit.advance(60)
    assert relay(kit) is Relay.OFF_PENDING
    kit.report("hip_left", on=False)
    assert relay(kit) is Relay.OFF
    assert set(kit.core.armed("hip_left")) == {TimerKind.POLL}  # the config has no cooldown


def test_an_unacknowledged_journal_row_holds_the_on_for_the_bounded_wait_only() -> None:
    """Rule 12: a slow disk delays only that ON, by JOURNAL_WAIT_S, logged as storage_slow."""
    kit = held_kit()
    kit.start("hip_left", 60)
    assert switched(kit.advance(JOURNAL_WAIT_S - 0.001), LEFT_POWER) == []
    got = kit.advance(0.001)
    assert switched(got, LEFT_POWER) == ["ON"]
    [slow] = [e for e in got if isinstance(e, LogLine) and e.event == "storage_slow"]
    assert slow.fields["session"] == opened(kit).id
    # The acknowledgement that comes after all switches nothing on a second time.
    late = kit.take(kit.controller.journaled(opened(kit).id, kit.now))
    assert switched(late, LEFT_POWER) == []


def test_a_session_stopped_while_journaling_is_never_switched_on() -> None:
    """Stop before the acknowledgement: OFF (off means off), and the late ack sends no ON."""
    kit = held_kit()
    kit.start("hip_left", 60)
    got = kit.take(kit.controller.stop("hip_left", kit.now))
    assert switched(got, LEFT_POWER) == ["OFF"]
    late = kit.take(kit.controller.journaled(opened(kit).id, kit.now))
    assert switched(late, LEFT_POWER) == []
    assert switched(kit.advance(JOURNAL_WAIT_S), LEFT_POWER) == []


def test_the_broker_lost_while_journaling_ends_the_session_unlit() -> None:
    """Rule 6: an ON that could not go out in time never goes out (reason disconnected)."""
    kit = held_kit()
    kit.start("hip_left", 60)
    got = kit.take(kit.core.disconnect(kit.now))
    [finished] = events(got, "session_finished")
    assert finished.fields["reason"] == "disconnected"
    kit.take(kit.core.connect(kit.now))
    late = kit.take(kit.controller.journaled(opened(kit).id, kit.now))
    assert switched(late, LEFT_POWER) == []
    assert "ON" not in switched(kit.effects, LEFT_POWER)


def test_an_acknowledgement_after_the_deadline_switches_nothing_on() -> None:
    """A loop held up past the deadline: the late ack ends the session instead of an ON."""
    kit = held_kit()
    kit.start("hip_left", 60)
    kit.mono += 61  # no tick in between: the loop was stalled
    got = kit.take(kit.controller.journaled(opened(kit).id, kit.now))
    assert switched(got, LEFT_POWER) == ["OFF"]
    [finished] = events(got, "session_finished")
    assert finished.fields["reason"] == "completed"
