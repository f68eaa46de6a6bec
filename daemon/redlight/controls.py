"""Session controls: extending, pausing and resuming a session redlight started.

Each goes through the limits a start does (:mod:`redlight.limits`), so none of them can keep a
panel on longer than a start could: a session's on-time in all, pauses not counted, stays
within ``max_on`` (safety rule 1), and every stretch of light within the exposure and the daily
maximum. A paused session's panel is *off*: the session waits beside the relay machine
(:attr:`Panel.paused`), so a report, a gap or an ON nobody asked for during the pause is
handled as for an idle panel (an ON is an external session, cut off at ``max_on``).

Safety rule 6 (one ON per session) is kept per stretch: the ON of a resume, and the timed ON
that re-arms the plug's own off-timer for an extension, are each sent once, for one command a
person gave, never as a keepalive; each arms the plug's timer for what is left + the margin.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from redlight import commands as cmd
from redlight.durations import format_duration
from redlight.effects import Now
from redlight.limits import admit_extension, admit_resume
from redlight.messages import iso
from redlight.panel import Panel, Relay, Session
from redlight.sessions import Sessions
from redlight.timers import TimerKind
from redlight.view import ends_wall, num


class SessionControls:
    """``extend``, ``pause`` and ``resume``: each answers ``None`` or the refusal."""

    def __init__(self, sessions: Sessions) -> None:
        """The sessions they change; a pause longer than ``limits.max_pause_s`` ends one."""
        self.sessions = sessions
        self.limits = sessions.limits
        self.relays = sessions.relays
        self.timers = sessions.timers
        self.max_pause_s = sessions.limits.max_pause_s

    def change(self, panel: Panel, change: cmd.SessionChange, now: Now) -> cmd.Rejection | None:
        """Carry out ``change`` on ``panel``'s session, or say why not."""
        self.sessions.board.touch(panel)
        match change:
            case cmd.Extend(by_s, rid):
                return self.extend(panel, by_s, now, rid)
            case cmd.Pause(rid):
                return self.pause(panel, now, rid)
            case cmd.Resume(rid):
                return self.resume(panel, now, rid)

    def extend(
        self, panel: Panel, by_s: float, now: Now, rid: str | None = None
    ) -> cmd.Rejection | None:
        """Make the running or paused session ``by_s`` longer; the plug's timer follows."""
        session = panel.paused or panel.session
        refusal = self._own(panel, session, "extend", rid)
        if refusal is None:
            assert session is not None
            moment = self.sessions.moment(panel, now)
            refusal = admit_extension(self.limits, panel, session, by_s, moment, rid)
        if refusal is not None:
            return refusal
        assert session is not None
        session.duration_s += by_s
        fields: dict[str, Any] = {"session": session.id, "by_s": num(by_s)}
        fields["duration_s"] = num(session.duration_s)
        if session is panel.session:
            self.sessions.time(panel, session, now)
            fields["ends_at"] = iso(ends_wall(session))
            failsafe = self._rearm(panel, session, now)
            if failsafe is not None:
                fields["failsafe_s"] = num(failsafe)
        self._event("session_extended", panel, now, rid, **fields)
        return None

    def _rearm(self, panel: Panel, session: Session, now: Now) -> float | None:
        """The plug's own off-timer for the new end (rule 5): a timed ON while it is on."""
        if not panel.plug.has_failsafe or panel.relay not in (Relay.ON, Relay.ON_REQUESTED):
            return None  # no timer to move, or the ON (with the new length) is still to come
        failsafe = min(session.deadline - now.mono, self.limits.max_on_s) + self.sessions.margin_s
        self.relays.send(panel.plug.turn_on(failsafe))
        return failsafe

    def pause(self, panel: Panel, now: Now, rid: str | None = None) -> cmd.Rejection | None:
        """Switch the panel off and keep its session for ``max_pause``."""
        session = panel.session
        if session is None and panel.paused is not None:
            return cmd.Rejection("paused", f"{panel.name}'s session is paused already", rid)
        refusal = self._own(panel, session, "pause", rid)
        if refusal is not None:
            return refusal
        assert session is not None
        if panel.relay is Relay.JOURNALING:
            return cmd.Rejection(
                "starting", f"{panel.name}'s session is switching on; try again in a moment", rid
            )
        self._darken(panel, now)
        self.timers.arm(panel.index, TimerKind.PAUSE_END, now.mono + self.max_pause_s)
        self._event(
            "session_paused",
            panel,
            now,
            rid,
            session=session.id,
            on_s=num(session.on_before_s),
            remaining_s=num(session.remaining(now.mono)),
            resume_by=iso(now.wall + timedelta(seconds=self.max_pause_s)),
        )
        return None

    def resume(self, panel: Panel, now: Now, rid: str | None = None) -> cmd.Rejection | None:
        """Switch a paused session's panel on again for its remaining on-time."""
        session = panel.paused
        if session is None:
            return cmd.Rejection("not_paused", f"{panel.name} has no paused session", rid)
        remaining = session.remaining(now.mono)
        moment = self.sessions.moment(panel, now)
        refusal = admit_resume(self.limits, panel, remaining, moment, rid)
        if refusal is not None:
            if refusal.reason == "plug_state_unknown":
                self.relays.learn_state(panel, now)
            return refusal
        self.timers.disarm(panel.index, TimerKind.PAUSE_END)
        self._relight(panel, now)
        self._event(
            "session_resumed",
            panel,
            now,
            rid,
            session=session.id,
            remaining_s=num(remaining),
            ends_at=iso(ends_wall(session)),
        )
        return None

    def pause_over(self, panel: Panel, now: Now) -> None:
        """``max_pause`` went by without a resume: the session ends (its panel is off)."""
        if panel.paused is not None:
            self.end_paused(panel, now, "pause_timeout")

    def _darken(self, panel: Panel, now: Now) -> None:
        """The panel goes off; its session waits beside the relay machine (``paused``)."""
        session = panel.session
        assert session is not None
        lit_s = session.stretch(now.mono)
        self.sessions.darken(panel, now)
        panel.exposure.lit(session.started_mono, max(lit_s, now.mono - session.started_mono))
        session.on_before_s = session.elapsed(now.mono)
        session.paused_at = now.mono
        panel.session, panel.paused = None, session
        self.sessions.board.session(panel)
        self.sessions.days.count(panel, session, session.on_before_s, now.wall)

    def _relight(self, panel: Panel, now: Now) -> None:
        """The paused session lights its panel again for what it has left (admitted already)."""
        session = panel.paused
        assert session is not None
        assert session.paused_at is not None
        session.paused_s += now.mono - session.paused_at
        session.paused_at, session.started_mono = None, now.mono
        panel.paused = None
        panel.exposure.close_stray(now.mono)
        self.timers.disarm(panel.index, TimerKind.OFF_RETRY)  # a pending OFF is overtaken
        panel.session = session
        self.sessions.board.session(panel)
        self.sessions.time(panel, session, now)
        self.sessions.switch_on(panel, now)

    def end_paused(
        self, panel: Panel, now: Now, reason: str, request_id: str | None = None
    ) -> None:
        """A paused session is over (stopped, or not resumed in time): its panel is off."""
        session = panel.paused
        assert session is not None
        assert session.paused_at is not None
        panel.paused = None
        self.timers.disarm(panel.index, TimerKind.PAUSE_END)
        self.sessions.board.session(panel)
        self.sessions.cool(panel, session, session.paused_at, now)
        self.sessions.record_end(panel, session, now, reason, request_id)

    def _own(
        self, panel: Panel, session: Session | None, what: str, rid: str | None
    ) -> cmd.Rejection | None:
        """Only a session redlight started can be changed."""
        if session is None:
            return cmd.Rejection("not_running", f"{panel.name} has no session to {what}", rid)
        if session.source == "external":
            return cmd.Rejection(
                "external",
                f"{panel.name} was switched on outside redlight: it goes off at "
                f"safety.max_on ({format_duration(self.limits.max_on_s)}), or at once with stop",
                rid,
            )
        return None

    def _event(self, kind: str, panel: Panel, now: Now, rid: str | None, **fields: Any) -> None:
        if rid is not None:
            fields["request_id"] = rid
        self.sessions.board.republish(panel)  # the state the command line and HA read next
        self.sessions.out.event(kind, panel.id, now.wall, **fields)
