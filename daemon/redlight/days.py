"""Seconds on per local day: what ``safety.daily_max``, ``today_s`` and ``week_s`` count.

A session is counted on the local date it started ("sessions started today"). What the core
saw and what history said are merged by session id, so a restart (or a clock step back into a
day already lived) loses nothing and counts nothing twice.

A week is the ISO week of those local dates: Monday to Sunday, so "this week" starts again at
Monday's midnight, as a calendar does. A session started late on Sunday counts for the week it
started in, as it counts for the day it started on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Final, TypeAlias

from redlight.panel import Panel, Session

#: One day's sessions as history has them: panel -> session id -> seconds on.
DayRows: TypeAlias = Mapping[str, Mapping[str, float]]
#: Several days' sessions: the local date (ISO) -> that day's rows.
WeekRows: TypeAlias = Mapping[str, DayRows]


def week_start(day: date) -> date:
    """The Monday of ``day``'s week (ISO 8601: weeks run Monday to Sunday)."""
    return day - timedelta(days=day.weekday())


def earlier_days(day: date) -> list[date]:
    """The days of ``day``'s week before it, Monday first (none on a Monday)."""
    monday = week_start(day)
    return [monday + timedelta(days=n) for n in range(day.weekday())]


@dataclass(frozen=True, slots=True)
class Totals:
    """A panel's seconds on today and this week, its running session included."""

    today_s: float
    week_s: float


class DayBook:
    """Per day, panel and session id: the seconds on, as seen and as read from history."""

    #: Days kept per source: this week's, and the few a clock that steps back and forth
    #: across a week's end revisits (a day no longer kept is read from history again).
    KEEP: Final = 16

    def __init__(self, expect_history: bool) -> None:
        """``expect_history``: history will answer for every day (the daemon has storage)."""
        self.expect_history = expect_history
        self.seen: dict[str, dict[str, dict[str, float]]] = {}
        self.read: dict[str, dict[str, dict[str, float]]] = {}

    def add_seen(self, day: str, panel: str, session: str, seconds: float) -> None:
        """The core saw ``session`` on ``panel`` last ``seconds``."""
        self._day(self.seen, day).setdefault(panel, {})[session] = seconds

    def add_read(self, day: str, rows: Mapping[str, Mapping[str, float]]) -> None:
        """History's sessions of ``day``: panel -> session id -> seconds."""
        book = self._day(self.read, day)
        for panel, sessions in rows.items():
            book.setdefault(panel, {}).update(sessions)

    def add_days(self, days: WeekRows) -> None:
        """History's sessions of several days (ISO date -> panel -> session id -> seconds)."""
        for day, rows in days.items():
            self.add_read(day, rows)

    def known(self, day: str) -> bool:
        """History has answered for ``day`` (or will never be asked)."""
        return not self.expect_history or day in self.read

    def total(self, day: str, panel: str) -> float:
        """Seconds on ``panel`` by sessions started on ``day``."""
        merged = dict(self.read.get(day, {}).get(panel, {}))
        merged.update(self.seen.get(day, {}).get(panel, {}))
        return sum(merged.values())

    def today_s(self, panel: Panel, mono: float, wall: datetime) -> float:
        """Seconds ``panel`` has been on today, its running session included."""
        self.roll(panel, wall)
        session = panel.session
        running = 0.0
        if session is not None and session.started_wall.date().isoformat() == panel.day:
            # The stretch since the last resume: the stretches before it are counted already.
            running = session.stretch(mono)
        total = panel.finished_today_s + running
        if not self.known(panel.day):
            # History has not answered for this day yet (milliseconds after the day changed,
            # or a clock step made it change): the larger of what is known, so a step can never
            # make room for a session that daily_max would refuse.
            return max(total, panel.carry_s)
        return total

    def totals(self, panel: Panel, mono: float, wall: datetime) -> Totals:
        """``today_s`` and ``week_s`` of ``panel`` at ``wall``."""
        return Totals(self.today_s(panel, mono, wall), self.week_s(panel, mono, wall))

    def week_s(self, panel: Panel, mono: float, wall: datetime) -> float:
        """Seconds ``panel`` has been on this week (Monday to today), its running session
        included. Unlike ``today_s`` it is not held up while history has yet to answer for a
        day: it limits nothing, and a total that fell back would look like a new week."""
        self.roll(panel, wall)
        today = wall.date()
        earlier = sum(self.total(day.isoformat(), panel.id) for day in earlier_days(today))
        session = panel.session
        running = 0.0
        if session is not None and week_start(today) <= session.started_wall.date() <= today:
            running = session.stretch(mono)  # as in today_s: earlier stretches are counted
        return earlier + panel.finished_today_s + running

    def answer(
        self, day: str, rows: DayRows, earlier: WeekRows, panels: Iterable[Panel], wall: datetime
    ) -> None:
        """History answered for ``day`` and the days of its week before it. Every panel is
        brought to the date of ``wall`` first, so one that has not noticed a new day yet
        (nothing asked since the clock stepped) is compared too; then the rows are merged."""
        panels = list(panels)
        for panel in panels:
            self.roll(panel, wall)
        self.add_days(earlier)
        self.add_read(day, rows)
        for panel in panels:
            if panel.day == day:
                panel.finished_today_s = self.total(day, panel.id)

    def roll(self, panel: Panel, wall: datetime) -> None:
        """Bring ``panel`` to the local date of ``wall``."""
        today = wall.date().isoformat()
        if panel.day == today:
            return
        if panel.day:
            known = self.known(panel.day)
            panel.carry_s = (
                panel.finished_today_s if known else max(panel.finished_today_s, panel.carry_s)
            )
        elif panel.finished_today_s:
            # Totals restored without a date count for the first day seen.
            self.add_read(today, {panel.id: {"": panel.finished_today_s}})
        panel.day = today
        panel.finished_today_s = self.total(today, panel.id)

    def count(self, panel: Panel, session: Session, actual_s: float, wall: datetime) -> None:
        """An ended session counts on the local date it started."""
        self.roll(panel, wall)
        day = session.started_wall.date().isoformat()
        self.add_seen(day, panel.id, session.id, actual_s)
        if day == panel.day:
            panel.finished_today_s = self.total(day, panel.id)

    def _day(
        self, book: dict[str, dict[str, dict[str, float]]], day: str
    ) -> dict[str, dict[str, float]]:
        entry = book.pop(day, None)
        book[day] = entry = entry if entry is not None else {}
        while len(book) > self.KEEP:
            del book[next(iter(book))]
        return entry
