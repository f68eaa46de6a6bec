"""``redlight history``: what the sessions add up to, per day, panel and body area.

Pure functions over the rows of the history database: minutes and estimated dose per panel per
local day, end reasons, adherence to each schedule (planned runs done), the current streak, and
per week (Monday to Sunday, as the daemon's ``week_s``) the minutes per panel and body area with
each panel's weekly goal, met or not. Rendering is separate: a compact table with a bar chart
for people, JSON for scripts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, tzinfo
from typing import Any, Final

from redlight.areas import area_slug
from redlight.config import Config
from redlight.days import week_start
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
class WeekTotals:
    """One week of the report, Monday to Sunday: seconds per panel and per area (by name)."""

    monday: date
    #: The week is over (its Sunday is before the report's last day).
    complete: bool
    panels: dict[str, float]
    areas: dict[str, float]


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
    #: Every week the period touches, whole (days before the period count for its first).
    weeks: list[WeekTotals] = field(default_factory=list)
    #: Each panel's weekly goal in seconds, where it has one (the goal as configured now).
    goals: dict[str, float] = field(default_factory=dict)


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
    rows_in_order = sorted(rows, key=lambda r: r.started_at)
    for row in rows_in_order:
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
        weeks=_weeks(config, rows_in_order, (first, today), zone, list(panels)),
        goals={k: g.total_seconds() for k in panels if (g := _goal(config, k)) is not None},
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


def _goal(config: Config, panel: str) -> timedelta | None:
    settings = config.panels.get(panel)
    return settings.weekly_goal if settings is not None else None


def _weeks(
    config: Config,
    rows: Iterable[SessionRow],
    period: tuple[date, date],
    zone: tzinfo,
    panels: list[str],
) -> list[WeekTotals]:
    """The weeks from the period's first day's Monday to its last day's, each whole.

    A session counts for the week of the day it counts for above; its area is the one it was
    recorded with (what the panel was aimed at then), spellings merged as the daemon does.
    """
    first, last = period
    names = {slug: area.name for slug, area in config.areas.items()}
    shown = [a.name for a in config.areas.values() if set(a.panels) & set(panels)]
    weeks: dict[date, WeekTotals] = {}
    monday = week_start(first)
    while monday <= last:
        complete = monday + timedelta(days=6) < last
        weeks[monday] = WeekTotals(
            monday, complete, dict.fromkeys(panels, 0.0), dict.fromkeys(shown, 0.0)
        )
        monday += timedelta(days=7)
    for row in rows:
        day = row.started_at.astimezone(zone).date()
        week = weeks.get(week_start(day))
        if week is None or day > last or row.panel not in week.panels:
            continue
        seconds = row.actual_s or 0.0
        week.panels[row.panel] += seconds
        area = (row.area or "").strip()
        if area:
            name = names.setdefault(area_slug(area), area)
            week.areas[name] = week.areas.get(name, 0.0) + seconds
    return list(weeks.values())


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
        "weeks": [_week_json(week, report.goals) for week in report.weeks],
    }


def _week_json(week: WeekTotals, goals: dict[str, float]) -> dict[str, Any]:
    """A week for scripts: per panel its seconds, goal (or null) and whether it was met."""
    year, number, _ = week.monday.isocalendar()
    return {
        "week": f"{year}-W{number:02d}",
        "from": week.monday.isoformat(),
        "to": (week.monday + timedelta(days=6)).isoformat(),
        "complete": week.complete,
        "panels": {
            panel: {
                "seconds": round(seconds),
                "goal_s": round(goals[panel]) if panel in goals else None,
                "met": seconds >= goals[panel] if panel in goals else None,
            }
            for panel, seconds in week.panels.items()
        },
        "areas": {area: {"seconds": round(seconds)} for area, seconds in week.areas.items()},
        "seconds": round(sum(week.panels.values())),
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
    lines.extend(weeks_text(report))
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


def weeks_text(report: Report) -> list[str]:
    """Per week (Monday to Sunday) the minutes per panel, ✓ where its goal was met and ✗ where
    a finished week missed it, and the goals; then the same weeks per area."""
    if not report.weeks:
        return []
    goals = report.goals

    def cell(panel: str, week: WeekTotals) -> str:
        seconds = week.panels[panel]
        if panel not in goals:
            return _minutes(seconds)
        mark = "✓" if seconds >= goals[panel] else ("✗" if week.complete else " ")
        return f"{_minutes(seconds)} {mark}"

    panels = list(report.weeks[0].panels)
    rows = [
        (_week_label(week), [cell(p, week) for p in panels] + [_minutes(sum(week.panels.values()))])
        for week in report.weeks
    ]
    goal_cells = [format_duration(goals[p]) + "  " if p in goals else "-" for p in panels]
    if goals:
        rows.append(("weekly goal", [*goal_cells, ""]))
    lines = _table("week of", [*panels, "total"], rows)
    areas = list(report.weeks[0].areas)
    if areas:
        area_rows = [(_week_label(w), [_minutes(w.areas[a]) for a in areas]) for w in report.weeks]
        lines += _table("area, week of", areas, area_rows)
    return lines


def _week_label(week: WeekTotals) -> str:
    """``2026-11-23 W48``, and ``(so far)`` for the week not over yet."""
    label = f"{week.monday} W{week.monday.isocalendar()[1]:02d}"
    return label if week.complete else f"{label} (so far)"


def _table(title: str, columns: list[str], rows: list[tuple[str, list[str]]]) -> list[str]:
    """Right-aligned columns under ``columns``, each row led by its label; a blank line after."""
    first = max([len(title), *(len(label) for label, _ in rows)])
    widths = [
        max([8, len(name), *(len(cells[i]) for _, cells in rows)]) for i, name in enumerate(columns)
    ]
    lines = [
        f"{title:<{first}} " + " ".join(f"{c:>{w}}" for c, w in zip(columns, widths, strict=True))
    ]
    for label, cells in rows:
        line = f"{label:<{first}} " + " ".join(
            f"{c:>{w}}" for c, w in zip(cells, widths, strict=True)
        )
        lines.append(line.rstrip())
    return [*lines, ""]


def _minutes(seconds: float) -> str:
    return "-" if seconds <= 0 else format_duration(round(seconds))


__all__ = [
    "Adherence",
    "PanelTotals",
    "Report",
    "WeekTotals",
    "as_json",
    "as_text",
    "build_report",
    "weeks_text",
]
