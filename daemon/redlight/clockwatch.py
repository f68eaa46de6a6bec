"""Watching the wall clock: steps (NTP on a board without a real-time clock) and new days.

Safety rule 3 keeps sessions on the monotonic clock; schedules and the day's totals do not.
A step makes APScheduler judge its jobs at once (a run the step skipped over still fires
within the misfire grace); a new local date has its sessions read from history, on a thread,
with those of its week's earlier days (``week_s``: a step may land in a week not read yet).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Final

import structlog

from redlight.days import DayRows, WeekRows, earlier_days
from redlight.effects import Now
from redlight.storage import History

log = structlog.get_logger("redlight")

#: How often the wall clock is compared with the monotonic one and the local date looked at:
#: soon enough that a schedule due just after a step still runs, and a new day's total is read
#: before a start needs it. One wake-up a second: 0.06 % of one core for an idle daemon,
#: against 0.02 % without (README).
CLOCK_CHECK_S: Final = 1.0
#: A change of the wall clock's offset from the monotonic one by more than this is a step.
CLOCK_STEP_S: Final = 1.0


@dataclass(frozen=True, slots=True)
class DayRead:
    """History's sessions of one local day (panel -> session id -> seconds), read off the loop,
    and of the days of its week before it (ISO date -> that day's rows)."""

    day: date
    rows: DayRows
    earlier: WeekRows = field(default_factory=dict)


def earlier_sessions(history: History, day: date) -> WeekRows:
    """The sessions of ``day``'s week before it, by local date (ISO): what ``week_s`` adds."""
    return {d.isoformat(): history.day_sessions(d) for d in earlier_days(day)}


def read_day(path: Path, day: date) -> DayRead:
    """Every panel's sessions of ``day`` and of its week's earlier days from the history
    (blocking: run it on a thread)."""
    with History.open(path) as history:
        return DayRead(day, history.day_sessions(day), earlier_sessions(history, day))


class ClockWatch:
    """Compares the clocks at each check; asks for a new day's sessions once per day."""

    def __init__(
        self, history: Path | None, day_known: date | None, answer: Callable[[DayRead], None]
    ) -> None:
        """``answer`` receives each day's sessions (on the loop); ``day_known`` is read already."""
        self.history = history
        self._day_asked = day_known
        self._answer = answer
        self._offset: float | None = None

    def check(self, now: Now) -> float | None:
        """The seconds the wall clock stepped since the last check, if it did."""
        offset = now.wall.timestamp() - now.mono
        stepped = None
        if self._offset is not None and abs(offset - self._offset) > CLOCK_STEP_S:
            stepped = offset - self._offset
            log.warning("wall_clock_stepped", seconds=round(stepped))
        self._offset = offset
        self._check_day(now)
        return stepped

    def _check_day(self, now: Now) -> None:
        """A local date not asked for yet: read its sessions on a thread, answer on the loop."""
        day = now.wall.date()
        if day == self._day_asked:
            return
        self._day_asked = day
        if self.history is None:
            # Nothing to read: the day counts what the core sees (it must not wait for history).
            self._answer(DayRead(day, {}))
            return
        path = self.history
        reading = asyncio.get_running_loop().run_in_executor(None, read_day, path, day)

        def answer(done: asyncio.Future[DayRead]) -> None:
            if done.cancelled():
                return
            read = DayRead(day, {})
            error = done.exception()
            if error is None:
                read = done.result()
            else:
                # Rule 12: reported; the day counts what the core saw itself.
                log.error("storage_error", operation="read_day", path=str(path), error=str(error))
            self._answer(read)

        reading.add_done_callback(answer)
