"""Routines: named sequences of sessions and pauses, run step by step on top of the core.

Pure, like the core: :class:`redlight.controller.Controller` calls it and it returns effects. A
step switches its panels through :meth:`Core.start` (so every safety rule and limit applies to
each of them), and the next step begins when the core's :class:`~redlight.core.SessionEnded`
notices say all of them have completed; a pause announces its prompt as a ``routine_step``
event and waits on the monotonic clock. A session of the routine that ends any other way
(stopped, cut off, switched off at the plug) or a step the core refuses ends the whole routine
and switches its panels off.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from redlight import commands as cmd
from redlight.config import Config, RoutineConfig
from redlight.core import Core, Effect, Now, SessionEnded
from redlight.messages import Event


@dataclass(slots=True)
class _Run:
    """One routine in progress."""

    id: str
    routine: str
    source: str
    step: int = -1
    resume_at: float | None = None
    sessions: dict[str, str] = field(default_factory=dict)  # session id -> panel


class Routines:
    """Runs the configured routines; at most one run per routine at a time."""

    def __init__(
        self, config: Config, core: Core, *, new_id: Callable[[], str] | None = None
    ) -> None:
        """Sequence ``config.routines`` through ``core``."""
        self.config = config
        self.core = core
        self._new_id = new_id or (lambda: uuid.uuid4().hex[:12])
        self.runs: dict[str, _Run] = {}

    # ------------------------------------------------------------------ inputs

    def start(self, routine_id: str, now: Now, *, source: str) -> list[Effect]:
        """Begin a routine with its first step."""
        routine = self.config.routines.get(routine_id)
        if routine is None:
            return [
                self._rejected(routine_id, "unknown_routine", f"no routine {routine_id!r}", now)
            ]
        if routine_id in self.runs:
            return [
                self._rejected(
                    routine_id, "already_running", f"{_name(routine, routine_id)} is running", now
                )
            ]
        run = _Run(self._new_id(), routine_id, source)
        self.runs[routine_id] = run
        out: list[Effect] = [
            self._event(
                "routine_started",
                run,
                now,
                name=_name(routine, routine_id),
                steps=len(routine.steps),
                source=source,
            )
        ]
        self._advance(run, now, out)
        return out

    def stop(self, routine_id: str, now: Now) -> list[Effect]:
        """Cancel the rest of a routine and switch its panels off."""
        run = self.runs.get(routine_id)
        if run is None:
            if routine_id not in self.config.routines:
                message = f"no routine {routine_id!r}"
                return [self._rejected(routine_id, "unknown_routine", message, now)]
            return []
        out: list[Effect] = []
        self._finish(run, now, out, "stopped")
        return out

    def stop_all(self, now: Now, *, sessions: bool = True) -> list[Effect]:
        """End every routine as "stopped", and its sessions with it; ``sessions=False`` leaves
        them to a caller that stops every panel next (``stop_all``: one OFF per plug)."""
        out: list[Effect] = []
        for run in list(self.runs.values()):
            if not sessions:
                run.sessions.clear()
            self._finish(run, now, out, "stopped")
        return out

    def session_ended(self, notice: SessionEnded, now: Now) -> list[Effect]:
        """A session ended: if it was a routine's, go on to the next step or give up."""
        out: list[Effect] = []
        run = self._owner(notice.session)
        if run is None:
            return out
        panel = run.sessions.pop(notice.session)
        if notice.reason != "completed":
            message = f"the session on {panel} ended early ({notice.reason})"
            self._finish(run, now, out, "aborted", message=message)
        elif not run.sessions:
            self._advance(run, now, out)
        return out

    def tick(self, now: Now) -> list[Effect]:
        """Time passed: pauses that are over go on to the next step."""
        out: list[Effect] = []
        for run in list(self.runs.values()):
            if run.resume_at is not None and now.mono >= run.resume_at:
                run.resume_at = None
                self._advance(run, now, out)
        return out

    def next_wakeup(self) -> float | None:
        """The end of the earliest pause."""
        pauses = [run.resume_at for run in self.runs.values() if run.resume_at is not None]
        return min(pauses, default=None)

    # ------------------------------------------------------------------ steps

    def _advance(self, run: _Run, now: Now, out: list[Effect]) -> None:
        routine = self.config.routines[run.routine]
        run.step += 1
        if run.step >= len(routine.steps):
            self._finish(run, now, out, "completed")
            return
        step = routine.steps[run.step]
        fields: dict[str, Any] = {"step": run.step + 1, "steps": len(routine.steps)}
        if step.prompt is not None:
            fields["prompt"] = step.prompt
        if step.pause is not None:
            pause_s = step.pause.total_seconds()
            out.append(self._event("routine_step", run, now, pause_s=pause_s, **fields))
            run.resume_at = now.mono + pause_s
            return
        panels = list(step.panels or ())
        out.append(self._event("routine_step", run, now, panels=panels, **fields))
        for panel in panels:
            if step.dose_j_cm2 is not None:
                request = cmd.Start(dose_j_cm2=step.dose_j_cm2)
            else:
                assert step.duration is not None  # config validation: duration or dose
                request = cmd.Start(duration_s=step.duration.total_seconds())
            started, effects = self.core.start(panel, request, "routine", now)
            out.extend(effects)
            if isinstance(started, cmd.Rejection):
                self._finish(run, now, out, "aborted", message=f"{panel}: {started.message}")
                return
            run.sessions[started.session] = panel

    def _finish(
        self, run: _Run, now: Now, out: list[Effect], reason: str, *, message: str | None = None
    ) -> None:
        """End a run; any of its sessions still on are stopped first."""
        self.runs.pop(run.routine, None)
        for session_id, panel in list(run.sessions.items()):
            state = self.core.panels[panel]
            # Running, or paused by its user (its panel off, the session not over).
            if any(s is not None and s.id == session_id for s in (state.session, state.paused)):
                out.extend(self.core.stop(panel, now))
        run.sessions.clear()
        fields: dict[str, Any] = {"reason": reason, "step": run.step + 1}
        if message is not None:
            fields["message"] = message
        out.append(self._event("routine_finished", run, now, **fields))

    def _owner(self, session_id: str) -> _Run | None:
        for run in self.runs.values():
            if session_id in run.sessions:
                return run
        return None

    def _event(self, event_type: str, run: _Run, now: Now, **fields: Any) -> Event:
        return Event(event_type, None, now.wall, {"routine": run.routine, "run": run.id} | fields)

    def _rejected(self, routine_id: str, reason: str, message: str, now: Now) -> Event:
        fields = {"reason": reason, "message": message, "routine": routine_id}
        return Event("command_rejected", None, now.wall, fields)


def _name(routine: RoutineConfig, routine_id: str) -> str:
    return routine.name or routine_id
