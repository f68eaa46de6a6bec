"""``redlight history``: what the sessions add up to, per day, panel and body area.

Pure functions over the rows of the history database: minutes and estimated dose per panel per
local day, end reasons, adherence to each schedule (planned runs done), and the current streak.
Rendering is separate: a compact table with a bar chart for people, JSON for scripts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, tzinfo
from typing import Any, Final

from redlight.config import Config
from redlight.durations import format_duration
from redlight.schedules import cron_trigger, schedule_zone
from redlight.storage import SessionRow

#: A planned run counts as done if a session on one of its panels completed within this time
#: after it (by the schedule, or started by hand: doing it is what counts).
DONE_WITHIN: Final = timedelta(hours=3)
_BAR_WIDTH: Final = 30


@dataclass
class PanelTotals:
    """One panel's sessions in the period."""

    panel: str
    name: str
    area: str | None
    sessions: int = 0
    seconds: float = 0.0
    dose_j_cm2: float = 0.0
    reasons: Counter[str] = field(default_factory=Counter)


@dataclass
class Adherence:
    """A schedule's planned runs in the period, and how many were done."""

    schedule: str
    planned: int
    done: int


@dataclass
class Report:
    """Everything ``redlight history`` shows."""

    first: date
    last: date
    days: dict[date, dict[str, float]]  # day -> panel -> seconds
    doses: dict[date, dict[str, float]]
    panels: dict[str, PanelTotals]
    adherence: list[Adherence]
    streak_days: int


def build_report(  # noqa: PLR0913 - the period and filter, keyword-only and named at each call
    config: Config,
    rows: Iterable[SessionRow],
    *,
    today: date,
    days: int,
    zone: tzinfo,
    now: datetime,
    panel: str | None = None,
) -> Report:
    """Aggregate ``rows`` (already limited to the period) into a :class:`Report`."""
    first = today - timedelta(days=days - 1)
    per_day: dict[date, dict[str, float]] = {first + timedelta(n): {} for n in range(days)}
    doses: dict[date, dict[str, float]] = {day: {} for day in per_day}
    panels = {
        key: PanelTotals(key, config.panel_name(key), settings.area)
        for key, settings in config.panels.items()
        if panel is None or key == panel
    }
    done_days: set[date] = set()
    completed: list[SessionRow] = []
    for row in sorted(rows, key=lambda r: r.started_at):
        day = row.started_at.astimezone(zone).date()
        if row.reason == "completed":
            done_days.add(day)
            completed.append(row)
        if day in per_day and (panel is None or row.panel == panel):
            _count(row, panels, per_day[day], doses[day])
    return Report(
        first=first,
        last=today,
        days=per_day,
        doses=doses,
        panels=panels,
        adherence=_adherence(config, completed, first, now),
        streak_days=_streak(done_days, today),
    )


def _count(
    row: SessionRow,
    panels: dict[str, PanelTotals],
    day: dict[str, float],
    day_doses: dict[str, float],
) -> None:
    """Add one session of the period to its panel's totals and to its day's."""
    seconds = row.actual_s or 0.0
    totals = panels.setdefault(row.panel, PanelTotals(row.panel, row.panel, row.area))
    totals.sessions += 1
    totals.seconds += seconds
    totals.dose_j_cm2 += row.dose_j_cm2 or 0.0
    totals.reasons[row.reason or "open"] += 1
    day[row.panel] = day.get(row.panel, 0.0) + seconds
    if row.dose_j_cm2:
        day_doses[row.panel] = day_doses.get(row.panel, 0.0) + row.dose_j_cm2


def _streak(done_days: set[date], today: date) -> int:
    """Consecutive days with a completed session, up to today (or yesterday, if none yet)."""
    day = today if today in done_days else today - timedelta(days=1)
    count = 0
    while day in done_days:
        count += 1
        day -= timedelta(days=1)
    return count


def _adherence(
    config: Config, completed: Sequence[SessionRow], first: date, now: datetime
) -> list[Adherence]:
    out: list[Adherence] = []
    for key, schedule in config.schedules.items():
        zone = schedule_zone(schedule)
        trigger = cron_trigger(schedule, zone)
        panels = set(schedule.panels or ())
        if schedule.routine is not None:
            for step in config.routines[schedule.routine].steps:
                panels.update(step.panels or ())
        moment = datetime.combine(first, datetime.min.time(), zone)
        previous: datetime | None = None
        planned = done = 0
        while True:
            run = trigger.get_next_fire_time(previous, moment)
            if run is None or run > now:
                break
            planned += 1
            if any(
                row.panel in panels and run <= row.started_at <= run + DONE_WITHIN
                for row in completed
            ):
                done += 1
            previous, moment = run, run + timedelta(seconds=1)
        out.append(Adherence(key, planned, done))
    return out


# ---------------------------------------------------------------------- rendering


def as_json(report: Report) -> dict[str, Any]:
    """The report for scripts (``--json``)."""
    return {
        "from": report.first.isoformat(),
        "to": report.last.isoformat(),
        "days": [
            {
                "date": day.isoformat(),
                "panels": {
                    panel: {
                        "seconds": round(seconds),
                        "dose_j_cm2": round(report.doses[day].get(panel, 0.0), 1),
                    }
                    for panel, seconds in sorted(by_panel.items())
                },
                "seconds": round(sum(by_panel.values())),
            }
            for day, by_panel in sorted(report.days.items())
        ],
        "panels": {
            key: {
                "name": totals.name,
                "area": totals.area,
                "sessions": totals.sessions,
                "seconds": round(totals.seconds),
                "dose_j_cm2": round(totals.dose_j_cm2, 1),
                "reasons": dict(sorted(totals.reasons.items())),
            }
            for key, totals in report.panels.items()
        },
        "schedules": {a.schedule: {"planned": a.planned, "done": a.done} for a in report.adherence},
        "streak_days": report.streak_days,
    }


def as_text(report: Report) -> list[str]:
    """The report for people: a table per day with a bar chart, then totals."""
    panels = list(report.panels)
    lines = [f"sessions from {report.first} to {report.last}", ""]
    widths = [max(8, len(p)) for p in panels]
    header = "date        " + " ".join(f"{p:>{w}}" for p, w in zip(panels, widths, strict=True))
    lines.append(header + "    total")
    most = max((sum(day.values()) for day in report.days.values()), default=0.0) or 1.0
    for day, by_panel in sorted(report.days.items()):
        cells = " ".join(
            f"{_minutes(by_panel.get(p, 0.0)):>{w}}" for p, w in zip(panels, widths, strict=True)
        )
        total = sum(by_panel.values())
        bar = "█" * round(total / most * _BAR_WIDTH) if total else ""
        lines.append(f"{day} {day:%a} {cells} {_minutes(total):>8}  {bar}".rstrip())
    lines.append("")
    for totals in report.panels.values():
        where = f" ({totals.area})" if totals.area else ""
        dose = f", ~{totals.dose_j_cm2:.0f} J/cm²" if totals.dose_j_cm2 else ""
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(totals.reasons.items())) or "none"
        count = f"{totals.sessions} session{'' if totals.sessions == 1 else 's'}"
        lines.append(
            f"{totals.name}{where}: {count}, "
            f"{format_duration(round(totals.seconds))}{dose}; ended: {reasons}"
        )
    for item in report.adherence:
        share = f" ({item.done / item.planned:.0%})" if item.planned else ""
        lines.append(
            f"schedule {item.schedule}: {item.done} of {item.planned} planned runs done{share}"
        )
    lines.append(f"streak: {report.streak_days} day{'s' if report.streak_days != 1 else ''}")
    return lines


def _minutes(seconds: float) -> str:
    return "-" if seconds <= 0 else format_duration(round(seconds))


__all__ = ["Adherence", "PanelTotals", "Report", "as_json", "as_text", "build_report"]
