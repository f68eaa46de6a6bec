"""Session controls against the pure core in virtual time: extend, pause, resume.

Each control goes through the limits a start does: the on-time of a session in all stays within
``max_on`` (rule 1), the plug's own timer follows every change (rule 5), and a paused session's
panel is off and handled as an idle one (rule 2 for an ON during the pause).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import pytest

from redlight import commands as cmd
from redlight.core import Effect, SessionClosed
from tests.unit.corekit import (
    LEFT_POWER,
    LEFT_PULSE,
    Kit,
    events,
    make_config,
    payloads,
    state,
    switched,
)


def lit(kit: Kit, seconds: float) -> None:
    """A confirmed ``seconds`` session on hip_left, with nothing else recorded yet."""
    kit.start("hip_left", seconds)
    kit.report("hip_left", on=True)
    kit.effects.clear()


def rejection(kit: Kit, payload: str | dict[str, object]) -> cmd.Rejection:
    """The reason and message of the one refusal a command got."""
    [refused] = events(kit.command("hip_left", payload), "command_rejected")
    return cmd.Rejection(refused.fields["reason"], refused.fields["message"])


def on_seconds(kit: LoggedKit) -> float:
    """Seconds the Tasmota relay was on in all, from the ONs and OFFs the core sent."""
    total, since = 0.0, None
    for at, payload in kit.switch_log:
        if payload == "ON" and since is None:
            since = at
        elif payload == "OFF" and since is not None:
            total, since = total + at - since, None
    return total


@pytest.fixture
def kit() -> LoggedKit:
    """A ready core whose switching commands to hip_left are logged with their time."""
    return LoggedKit.create().ready()


@dataclass
class LoggedKit(Kit):
    """A :class:`Kit` that notes when each ON and OFF went to hip_left's plug."""

    switch_log: list[tuple[float, str]] = field(default_factory=list)

    def take(self, effects: Iterable[Effect]) -> list[Effect]:
        """Effects as :meth:`Kit.take` records them, and the time of each switching command."""
        got = super().take(effects)
        self.switch_log.extend((self.mono, p) for p in switched(got, LEFT_POWER))
        return got


# ---------------------------------------------------------------- extend


def test_extend_moves_the_end_and_rearms_the_plug_timer(kit: LoggedKit) -> None:
    """Extending by 2m at 5m of 10m ends the session at 12m; Tasmota gets the new PulseTime
    (7m left + 30 s margin = 450 s, encoded 550) with the ON that restarts it."""
    lit(kit, 600)
    kit.advance(300)
    got = kit.command("hip_left", {"action": "extend", "by": "2m", "request_id": "x1"})
    assert payloads(got, LEFT_PULSE) == ["550"]
    assert switched(got, LEFT_POWER) == ["ON"]
    [extended] = events(got, "session_extended")
    assert extended.fields == {
        "session": "s1",
        "by_s": 120,
        "duration_s": 720,
        "ends_at": "2026-11-24T07:42:00+01:00",
        "failsafe_s": 450,
        "request_id": "x1",
    }
    assert state(kit, "hip_left")["session"]["duration_s"] == 720
    assert switched(kit.advance(419), LEFT_POWER) == []
    assert switched(kit.advance(1), LEFT_POWER) == ["OFF"]
    [closed] = [e for e in kit.effects if isinstance(e, SessionClosed)]
    assert (closed.actual_s, closed.reason) == (720, "completed")


def test_extend_past_max_on_is_rejected_not_shortened(kit: LoggedKit) -> None:
    """A 14m session extended by 2m would last 16m: refused, saying 1m is the most, and the
    session still ends at 14m."""
    lit(kit, 840)
    refused = rejection(kit, {"action": "extend", "by": "2m"})
    assert refused.reason == "over_max_on"
    assert "16m" in refused.message
    assert "extended by 1m at most" in refused.message
    assert switched(kit.advance(840), LEFT_POWER) == ["OFF"]
    assert on_seconds(kit) == pytest.approx(840)


def test_extend_counts_the_exposure_before_the_session() -> None:
    """5m on, 1m off (less than min_off), then an 8m session: 13m of one exposure, so an
    extension by 3m (16m) is refused as ``exposure``; by 2m (15m) is allowed."""
    kit = Kit.create().ready()
    lit(kit, 300)
    kit.advance(300)
    kit.report("hip_left", on=False)
    kit.advance(60)
    lit(kit, 480)
    assert rejection(kit, {"action": "extend", "by": "3m"}).reason == "exposure"
    assert events(kit.command("hip_left", {"action": "extend", "by": "2m"}), "session_extended")


def test_extend_counts_the_daily_maximum() -> None:
    """With daily_max 20m and 10m already today, an 8m session may grow by 2m, not 3m."""
    kit = Kit.create(make_config(safety={"daily_max": "20m", "min_off": "1m"})).ready()
    lit(kit, 600)
    kit.advance(600)
    kit.report("hip_left", on=False)
    kit.advance(120)
    lit(kit, 480)
    assert rejection(kit, {"action": "extend", "by": "3m"}).reason == "daily_max"
    assert events(kit.command("hip_left", {"action": "extend", "by": "2m"}), "session_extended")


def test_only_a_session_redlight_started_can_be_extended_or_paused(kit: LoggedKit) -> None:
    """Nothing to extend without a session; an ON from the plug's button is not redlight's
    to lengthen or pause (it is cut off at max_on)."""
    assert rejection(kit, {"action": "extend", "by": 60}).reason == "not_running"
    assert rejection(kit, "PAUSE").reason == "not_running"
    kit.report("hip_left", on=True)
    assert rejection(kit, {"action": "extend", "by": 60}).reason == "external"
    assert rejection(kit, "PAUSE").reason == "external"
    assert switched(kit.advance(900), LEFT_POWER) == ["OFF"]


def test_an_extension_while_the_on_waits_for_the_journal_goes_out_with_that_on() -> None:
    """Extended before its ON went out (the journal row not yet acknowledged), the session's
    one ON carries the new length's timer: no second ON."""
    kit = Kit.create().ready()
    kit.journal_acks = False
    kit.start("hip_left", 600)
    got = kit.command("hip_left", {"action": "extend", "by": "1m"})
    assert switched(got, LEFT_POWER) == []
    got = kit.advance(0.2)  # the journal wait is over: the ON goes out
    assert payloads(got, LEFT_PULSE) == [str(round(660 - 0.1 + 30) + 100)]
    assert switched(got, LEFT_POWER) == ["ON"]


# ---------------------------------------------------------------- pause and resume


def test_pause_switches_off_and_resume_lights_what_is_left(kit: LoggedKit) -> None:
    """Paused at 4m of 10m for 3m, the panel is off; resumed, it is on for the 6m left (its
    timer armed for 6m + 30 s) and the session's on-time in all is 10m, in one history row."""
    lit(kit, 600)
    kit.advance(240)
    got = kit.command("hip_left", "PAUSE")
    assert switched(got, LEFT_POWER) == ["OFF"]
    [paused] = events(got, "session_paused")
    assert (paused.fields["on_s"], paused.fields["remaining_s"]) == (240, 360)
    kit.report("hip_left", on=False)
    view = state(kit, "hip_left")
    assert (view["state"], view["session"]["remaining_s"], view["session"]["ends_at"]) == (
        "paused",
        360,
        None,
    )
    kit.advance(180)
    assert state(kit, "hip_left")["session"]["remaining_s"] == 360
    got = kit.command("hip_left", "RESUME")
    assert payloads(got, LEFT_PULSE) == [str(360 + 30 + 100)]
    assert switched(got, LEFT_POWER) == ["ON"]
    assert events(got, "session_resumed")[0].fields["remaining_s"] == 360
    kit.report("hip_left", on=True)
    assert switched(kit.advance(359), LEFT_POWER) == []
    assert switched(kit.advance(1), LEFT_POWER) == ["OFF"]
    assert on_seconds(kit) == pytest.approx(600)
    [closed] = [e for e in kit.effects if isinstance(e, SessionClosed)]
    assert (closed.id, closed.actual_s, closed.reason) == ("s1", 600, "completed")
    [finished] = events(kit.effects, "session_finished")
    assert finished.fields["duration_s"] == 600


def test_a_pause_longer_than_max_pause_ends_the_session(kit: LoggedKit) -> None:
    """Not resumed within max_pause (10m by default), the session ends as pause_timeout; the
    panel stays off and a resume finds nothing to resume."""
    lit(kit, 600)
    kit.advance(60)
    kit.command("hip_left", "PAUSE")
    kit.report("hip_left", on=False)
    assert events(kit.advance(599), "session_finished") == []
    got = kit.advance(1)
    [finished] = events(got, "session_finished")
    assert (finished.fields["reason"], finished.fields["duration_s"]) == ("pause_timeout", 60)
    assert switched(got, LEFT_POWER) == []
    assert state(kit, "hip_left")["session"] is None
    assert rejection(kit, "RESUME").reason == "not_paused"


def test_stop_ends_a_paused_session(kit: LoggedKit) -> None:
    """A stop while paused ends the session as stopped and sends OFF (off means off)."""
    lit(kit, 600)
    kit.advance(60)
    kit.command("hip_left", "PAUSE")
    kit.report("hip_left", on=False)
    got = kit.command("hip_left", "OFF")
    assert [e.fields["reason"] for e in events(got, "session_finished")] == ["stopped"]
    assert switched(got, LEFT_POWER) == ["OFF"]
    assert state(kit, "hip_left")["state"] == "idle"


def test_an_on_during_a_pause_is_cut_off_within_the_exposure(kit: LoggedKit) -> None:
    """The plug's button pressed during a pause: an ON redlight did not start, cut off when
    the exposure (the 5m before the pause, less than min_off ago) reaches max_on, and the
    paused session cannot resume over it."""
    lit(kit, 600)
    kit.advance(300)
    kit.command("hip_left", "PAUSE")
    kit.report("hip_left", on=False)
    kit.advance(60)
    kit.report("hip_left", on=True)
    assert rejection(kit, "RESUME").reason == "already_running"
    assert switched(kit.advance(599), LEFT_POWER) == []
    assert switched(kit.advance(1), LEFT_POWER) == ["OFF"]
    assert on_seconds(kit) <= 900


def test_today_counts_a_paused_session_once(kit: LoggedKit) -> None:
    """Today's on-time is the light: 2m before the pause, 3m after, 5m in all."""
    lit(kit, 300)
    kit.advance(120)
    kit.command("hip_left", "PAUSE")
    kit.report("hip_left", on=False)
    kit.advance(60)
    assert state(kit, "hip_left")["today_s"] == 120
    kit.command("hip_left", "RESUME")
    kit.report("hip_left", on=True)
    kit.advance(60)
    assert state(kit, "hip_left")["today_s"] == 180
    kit.advance(120)
    assert state(kit, "hip_left")["today_s"] == 300


def test_resume_goes_through_the_start_limits(kit: LoggedKit) -> None:
    """A resume is refused while the plug is offline, as a start would be, and the session
    stays paused."""
    lit(kit, 600)
    kit.advance(60)
    kit.command("hip_left", "PAUSE")
    kit.report("hip_left", on=False)
    kit.send("tele/panel_left/LWT", "Offline", retain=True)
    assert rejection(kit, "RESUME").reason == "plug_offline"
    assert state(kit, "hip_left")["state"] == "paused"


def test_a_paused_session_cannot_be_paused_or_started_over(kit: LoggedKit) -> None:
    """Pause twice, or start while paused: refused, naming the paused session."""
    lit(kit, 600)
    kit.command("hip_left", "PAUSE")
    assert rejection(kit, "PAUSE").reason == "paused"
    assert rejection(kit, "ON").reason == "already_running"


def test_a_paused_session_can_be_extended(kit: LoggedKit) -> None:
    """Extended while paused, the resume lights the longer remainder."""
    lit(kit, 600)
    kit.advance(100)
    kit.command("hip_left", "PAUSE")
    kit.report("hip_left", on=False)
    kit.command("hip_left", {"action": "extend", "by": 60})
    assert events(kit.command("hip_left", "RESUME"), "session_resumed")[0].fields[
        "remaining_s"
    ] == (560)
    kit.report("hip_left", on=True)
    assert switched(kit.advance(560), LEFT_POWER) == ["OFF"]
    assert on_seconds(kit) == pytest.approx(660)


def test_shutdown_ends_a_paused_session(kit: LoggedKit) -> None:
    """Safety rule 9 for a paused session: it ends as shutdown."""
    lit(kit, 600)
    kit.command("hip_left", "PAUSE")
    got = kit.take(kit.controller.shutdown(kit.now))
    assert [e.fields["reason"] for e in events(got, "session_finished")] == ["shutdown"]


# ---------------------------------------------------------------- the commands


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ("pause", cmd.Pause()),
        ("Resume", cmd.Resume()),
        ('{"action": "pause", "request_id": "p"}', cmd.Pause("p")),
        ('{"action": "resume"}', cmd.Resume()),
        ('{"action": "extend", "by": "2m"}', cmd.Extend(120)),
        ('{"action": "extend", "by": 90, "request_id": "e"}', cmd.Extend(90, "e")),
    ],
)
def test_the_controls_parse(payload: str, expected: object) -> None:
    """PAUSE, RESUME and the JSON actions become typed commands."""
    assert cmd.parse_panel_command(payload.encode()) == expected


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ('{"action": "extend"}', "'extend' needs 'by', e.g. \"2m\""),
        ('{"action": "extend", "by": 0}', "'by': extend by at least 1 second"),
        ('{"action": "extend", "by": "soon"}', "'by': expected a duration"),
        ('{"action": "pause", "by": 3}', "unknown key 'by'"),
    ],
)
def test_a_bad_control_is_refused(payload: str, message: str) -> None:
    """An extension without a length, or a pause with one, is refused with why."""
    parsed = cmd.parse_panel_command(payload.encode())
    assert isinstance(parsed, cmd.Rejection)
    assert parsed.message.startswith(message)


def test_the_week_counts_a_paused_session_once(kit: LoggedKit) -> None:
    """This week's on-time is the light too: 2m before the pause and 1m after, 3m."""
    lit(kit, 300)
    kit.advance(120)
    kit.command("hip_left", "PAUSE")
    kit.report("hip_left", on=False)
    kit.command("hip_left", "RESUME")
    kit.report("hip_left", on=True)
    kit.advance(60)
    assert state(kit, "hip_left")["week_s"] == 180
