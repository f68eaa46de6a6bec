"""Sessions: a panel held on for a length of time, from the request to the record.

A session is admitted by the limits (:mod:`redlight.limits`), journaled, switched on when the
journal row is acknowledged (or the wait for it is over), and ended at its deadline or before:
OFF first, then its events, its history row, the cooldown and the exposure it adds to. An ON
redlight did not start is watched as a session too (safety rule 2).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from redlight import commands as cmd
from redlight.days import DayBook
from redlight.effects import Now, Outbox, SessionClosed, SessionOpened
from redlight.limits import Limits, Moment, admit
from redlight.messages import iso
from redlight.panel import Panel, Relay, Session, Source
from redlight.relay import RelayControl
from redlight.timers import TimerKind, Timers
from redlight.view import Board, ends_wall, num

#: ``ending_soon`` is announced this long before a session ends.
ENDING_SOON_S: Final = 30.0
#: A running session's state is published again this often, so that ``today_s`` (Home
#: Assistant's "Today") moves during the session, not only when it ends.
TODAY_EVERY_S: Final = 60.0
#: Power verification: ask the plug for its power this long after it confirmed ON, and judge
#: it this long after (a panel needs a moment to draw its full power; plugs average).
POWER_ASK_S: Final = 3.0
POWER_CHECK_S: Final = 6.0
#: Safety rule 8 vs. rule 12: how long a session's ON waits for its journal row to be
#: acknowledged. Long enough for a healthy disk (a crash after the ON then leaves a row to
#: close as interrupted); short enough that a sick one delays only that ON, and nothing else:
#: the core goes on meanwhile, and the ON goes out when the wait is over (``storage_slow``).
JOURNAL_WAIT_S: Final = 0.1


@dataclass(frozen=True, slots=True)
class Started:
    """:meth:`Core.start`'s answer when the session began (its ON follows the journal row)."""

    session: str
    panel: str
    duration_s: float


@dataclass(frozen=True, slots=True)
class SessionEnded:
    """A notice, not an effect: a session ended (for routines, via :meth:`Core.take_ended`)."""

    session: str
    panel: str
    reason: str
    source: str


class Sessions:
    """Starts, switches on and ends the sessions of every panel."""

    def __init__(  # noqa: PLR0913 - the parts it works with, keyword-only and named at the call
        self,
        limits: Limits,
        *,
        margin_s: float,
        journal_wait_s: float,
        relays: RelayControl,
        board: Board,
        days: DayBook,
        new_id: Callable[[], str],
        restored_last_end: Mapping[str, datetime],
        restored_exposure: Mapping[str, tuple[datetime, float]],
    ) -> None:
        """The parts a session touches; ``restored_*`` come from history at start-up."""
        self.limits = limits
        self.max_on_s = limits.max_on_s
        self.margin_s = margin_s
        self.confirm_s = relays.confirm_s
        self.journal_wait_s = journal_wait_s
        self.relays = relays
        self.out: Outbox = relays.out
        self.timers: Timers = relays.timers
        self.board = board
        self.days = days
        self._new_id = new_id
        self.restored_last_end = dict(restored_last_end)
        self.restored_exposure = dict(restored_exposure)
        self.stopping = False
        #: Sessions whose ON waits for the journal: session id -> panel.
        self.journaling: dict[str, Panel] = {}
        #: Sessions that ended, until the controller takes them (:meth:`Core.take_ended`).
        self.ended: list[SessionEnded] = []

    def start_safe(self, panel: Panel, now: Now) -> None:
        """Safety rule 8: every panel is switched off before commands are accepted."""
        self.relays.send_off(panel, now)
        last_end = self.restored_last_end.get(panel.id)
        cooldown_s = self.limits.cooldown_s
        if last_end is not None and cooldown_s > 0:
            # A clock behind the last end (no real-time clock after a power cut) means the
            # session may have ended just now: the whole cooldown, never none.
            remaining = cooldown_s - max(0.0, (now.wall - last_end).total_seconds())
            if remaining > 0:
                self._cool(panel, now.mono + remaining, now.wall + timedelta(seconds=remaining))
        exposure = self.restored_exposure.get(panel.id)
        if exposure is not None:
            ended, on_s = exposure
            panel.exposure.end = now.mono - max(0.0, (now.wall - ended).total_seconds())
            panel.exposure.on_s = on_s

    def start(
        self, panel: Panel, request: cmd.Start, source: Source, now: Now
    ) -> Session | cmd.Rejection:
        """A session is asked for: admitted by the limits, journaled, then switched on."""
        answer = admit(self.limits, panel, request, self.moment(panel, now))
        if isinstance(answer, cmd.Rejection):
            if answer.reason == "plug_state_unknown":
                self.relays.learn_state(panel, now)
            return answer
        session = Session(self._new_id(), source, now.mono, now.wall, answer, request.request_id)
        panel.exposure.close_stray(now.mono)
        self.timers.disarm(panel.index, TimerKind.OFF_RETRY)  # a pending OFF is overtaken
        panel.go(Relay.JOURNALING)
        self._open(panel, session, now)
        # Safety rule 12 with rule 8: the journal row first; the ON on its acknowledgement.
        self.journaling[session.id] = panel
        self.timers.arm(panel.index, TimerKind.JOURNAL, now.mono + self.journal_wait_s)
        fields: dict[str, Any] = {
            "session": session.id,
            "source": source,
            "duration_s": num(answer),
            "ends_at": iso(ends_wall(session)),
        }
        if request.dose_j_cm2 is not None:
            fields["dose_j_cm2"] = request.dose_j_cm2
        if panel.plug.has_failsafe:
            fields["failsafe_s"] = num(min(answer, self.max_on_s) + self.margin_s)
        if request.request_id is not None:
            fields["request_id"] = request.request_id
        self._event("session_started", panel, now, **fields)
        return session

    def moment(self, panel: Panel, now: Now) -> Moment:
        """What the limits read of now: the clocks, the connection, today's on-time."""
        today_s = 0.0
        if self.limits.daily_max_s is not None:
            today_s = self.days.today_s(panel, now.mono, now.wall)
        return Moment(now.mono, now.wall, self.relays.connected, self.stopping, today_s)

    def _open(self, panel: Panel, session: Session, now: Now) -> None:
        """``session`` begins on ``panel``: journaled, timed, listed as running."""
        panel.session = session
        self.board.session(panel)
        self.out.add(
            SessionOpened(
                id=session.id,
                panel=panel.id,
                area=panel.area,
                source=session.source,
                started_at=session.started_wall,
                planned_s=session.duration_s,
                irradiance_mw_cm2=panel.irradiance,
            )
        )
        self.board.touch(panel)
        self.time(panel, session, now)

    def time(self, panel: Panel, session: Session, now: Now) -> None:
        """The timers of a lit stretch: its deadline, ``ending_soon``, "Today" moving."""
        self.timers.arm(panel.index, TimerKind.DEADLINE, session.deadline)
        if session.deadline - ENDING_SOON_S > now.mono:
            self.timers.arm(panel.index, TimerKind.ENDING_SOON, session.deadline - ENDING_SOON_S)
        else:
            self.timers.disarm(panel.index, TimerKind.ENDING_SOON)
        self.timers.arm(panel.index, TimerKind.TODAY, now.mono + TODAY_EVERY_S)

    def switch_on(self, panel: Panel, now: Now) -> None:
        """Safety rules 5 and 6: the stretch's one ON, with the plug's own timer armed for what
        is left (a session's start, or its resume)."""
        session = panel.session
        assert session is not None
        self.journaling.pop(session.id, None)
        self.timers.disarm(panel.index, TimerKind.JOURNAL)
        left_s = min(session.deadline - now.mono, self.max_on_s)
        if left_s <= 0:
            # The acknowledgement came after the deadline (the loop was held up): too late.
            self.end(panel, now, self.deadline_reason(session))
            return
        panel.go(Relay.ON_REQUESTED)
        failsafe = left_s + self.margin_s if panel.plug.has_failsafe else None
        self.relays.send(panel.plug.turn_on(failsafe))
        self.timers.arm(panel.index, TimerKind.CONFIRM_ON, now.mono + self.confirm_s)

    def journal_slow(self, panel: Panel, now: Now) -> None:
        """The journal row was not acknowledged in time: the ON does not wait any longer."""
        assert panel.session is not None
        self.out.log(
            "warning",
            "storage_slow",
            operation="session_opened",
            waited_s=self.journal_wait_s,
            session=panel.session.id,
        )
        self.switch_on(panel, now)

    def stop(self, panel: Panel, now: Now, reason: str, request_id: str | None = None) -> None:
        """End the panel's session, or switch the panel off if it has none."""
        if panel.session is not None:
            self.end(panel, now, reason, request_id=request_id)
        else:
            # Nothing redlight knows of is running, but "off" must always mean off; the state
            # is published even unchanged, as the answer a stop waits for.
            self.relays.send_off(panel, now)
            self.board.republish(panel)

    def deadline_reason(self, session: Session) -> str:
        return "cutoff" if session.source == "external" else "completed"

    def end(self, panel: Panel, now: Now, reason: str, *, request_id: str | None = None) -> None:
        """The session is over: OFF first, then its record, the cooldown and the exposure."""
        session = panel.session
        assert session is not None
        self.darken(panel, now)
        self.journaling.pop(session.id, None)
        panel.session = None
        self.board.session(panel)
        self.days.count(panel, session, session.elapsed(now.mono), now.wall)
        # The exposure counts the light until the OFF goes out, past the deadline too (a
        # deadline that passed while the broker was away): it is the panel's, not the plan's.
        lit_s = session.stretch(now.mono)
        panel.exposure.lit(session.started_mono, max(lit_s, now.mono - session.started_mono))
        self.cool(panel, session, session.started_mono + lit_s, now)
        self.record_end(panel, session, now, reason, request_id)

    def darken(self, panel: Panel, now: Now) -> None:
        """OFF, and the timers of the lit stretch disarmed."""
        self.relays.send_off(panel, now)
        for kind in (TimerKind.DEADLINE, TimerKind.ENDING_SOON, TimerKind.JOURNAL, TimerKind.TODAY):
            self.timers.disarm(panel.index, kind)
        self.timers.disarm(panel.index, TimerKind.POWER_ASK)
        self.timers.disarm(panel.index, TimerKind.POWER_CHECK)

    def cool(self, panel: Panel, session: Session, light_end: float, now: Now) -> None:
        """The cooldown after ``session``, whose light ended at ``light_end``."""
        if self.limits.cooldown_s > 0:
            cooldown = timedelta(seconds=self.limits.cooldown_s)
            wall = session.ended_wall(now.mono) + cooldown
            self._cool(panel, light_end + self.limits.cooldown_s, wall)

    def record_end(
        self, panel: Panel, session: Session, now: Now, reason: str, request_id: str | None
    ) -> None:
        """The events and the history row of an ended session."""
        actual_s = session.elapsed(now.mono)
        ended = session.ended_wall(now.mono)
        dose = actual_s * panel.irradiance / 1000 if panel.irradiance is not None else None
        if session.source == "external" and reason == "cutoff":
            # Safety rule 2: an ON redlight did not start was cut off at max_on.
            self._event(
                "cutoff_enforced",
                panel,
                now,
                session=session.id,
                on_s=num(actual_s),
                max_on_s=num(self.max_on_s),
            )
        fields: dict[str, Any] = {
            "session": session.id,
            "source": session.source,
            "reason": reason,
            "duration_s": num(actual_s),
            "planned_s": num(session.duration_s),
        }
        if dose is not None:
            fields["dose_j_cm2"] = round(dose, 2)
        request_id = request_id or (session.request_id if reason == "stopped" else None)
        if request_id is not None:
            fields["request_id"] = request_id
        self._event("session_finished", panel, now, **fields)
        rounded = round(dose, 3) if dose is not None else None
        self.out.add(SessionClosed(session.id, ended, actual_s, reason, rounded))
        self.ended.append(SessionEnded(session.id, panel.id, reason, session.source))

    def _cool(self, panel: Panel, until: float, wall: datetime) -> None:
        panel.cooldown_until = until
        panel.cooldown_wall = wall
        self.timers.arm(panel.index, TimerKind.COOLDOWN_END, until)

    def external_on(self, panel: Panel, now: Now) -> None:
        """Safety rule 2: an ON redlight did not start is cut off at most max_on after it began.

        It began when it was reported, if redlight has watched the plug without a gap since its
        last OFF report; otherwise at any moment after that report, so the session counts from
        there and an ON hidden longer than max_on (or than the exposure's budget) ends at once.
        """
        unseen_s = 0.0 if panel.watching else now.mono - panel.off_seen_at  # inf: never seen off
        start = now.mono - min(unseen_s, self.max_on_s)
        session = Session(
            id=self._new_id(),
            source="external",
            started_mono=start,
            started_wall=now.wall - timedelta(seconds=now.mono - start),
            duration_s=max(0.0, self.max_on_s - panel.exposure.before(start)),
        )
        panel.go(Relay.ON)
        self._open(panel, session, now)
        fields: dict[str, Any] = {
            "session": session.id,
            "source": "external",
            "duration_s": num(session.duration_s),
            "ends_at": iso(ends_wall(session)),
        }
        if 0 < unseen_s < float("inf"):
            fields["unseen_s"] = num(unseen_s)
        self._event("session_started", panel, now, **fields)
        if now.mono >= session.deadline:
            self.end(panel, now, "cutoff")

    # ------------------------------------------------------------------ timers that are due

    def deadline(self, panel: Panel, now: Now) -> None:
        assert panel.session is not None
        self.end(panel, now, self.deadline_reason(panel.session))

    def ending_soon(self, panel: Panel, now: Now) -> None:
        session = panel.session
        assert session is not None
        self._event(
            "ending_soon",
            panel,
            now,
            session=session.id,
            ends_at=iso(ends_wall(session)),
            remaining_s=num(session.deadline - now.mono),
        )

    def on_unconfirmed(self, panel: Panel, now: Now) -> None:
        """The plug did not confirm an ON: switch it off rather than guess (rules 4 and 2)."""
        if panel.session is not None:
            self.end(panel, now, "cutoff")
        self.relays.unresponsive(panel, now, "on")

    def cooldown_over(self, panel: Panel, now: Now) -> None:
        panel.cooldown_wall = None

    def today_moved(self, panel: Panel, now: Now) -> None:
        """A minute of the session went by: its state (``today_s``) is published again."""
        self.board.touch(panel)
        if panel.session is not None:
            self.timers.arm(panel.index, TimerKind.TODAY, now.mono + TODAY_EVERY_S)

    def _event(self, event_type: str, panel: Panel, now: Now, **fields: Any) -> None:
        self.out.event(event_type, panel.id, now.wall, **fields)
