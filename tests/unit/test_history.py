"""``redlight history``: a few weeks of sessions read well, and add up."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from redlight.cli import main
from redlight.config import Config
from redlight.history import as_json, as_text, build_report, weeks_text
from redlight.storage import HistoryWriter, SessionRow
from tests.unit.corekit import make_config

AMS = ZoneInfo("Europe/Amsterdam")
TODAY = date(2026, 11, 28)
NOW = datetime.combine(TODAY, time(21, 0), AMS)


def row(day: date, hour: int, panel: str, seconds: float, reason: str = "completed") -> SessionRow:
    """A closed session."""
    start = datetime.combine(day, time(hour, 0), AMS)
    dose = seconds * 50 / 1000 if panel == "hip_left" else None
    return SessionRow(
        id=f"{panel}-{day}-{hour}",
        panel=panel,
        area="left hip" if panel == "hip_left" else None,
        source="schedule",
        started_at=start,
        planned_s=seconds,
        irradiance_mw_cm2=50 if panel == "hip_left" else None,
        ended_at=start + timedelta(seconds=seconds),
        actual_s=seconds,
        reason=reason,
        dose_j_cm2=dose,
    )


def three_weeks() -> list[SessionRow]:
    """Evening sessions on most days of three weeks, a stopped one, and a gap."""
    rows = []
    for back in range(21):
        day = TODAY - timedelta(days=back)
        if back in (5, 12):
            continue  # rest days without a session
        rows.append(row(day, 19, "hip_left", 600))
        if back % 2 == 0:
            rows.append(row(day, 19, "sauna", 300, "stopped" if back == 4 else "completed"))
    return rows


def test_report_adds_up_per_day_panel_and_area() -> None:
    """Minutes, dose and end reasons per panel; adherence and streak for 14 days."""
    config = make_config(
        schedules={
            "evening": {
                "panels": ["hip_left"],
                "duration": "10m",
                "cron": "0 19 * * *",
                "timezone": "Europe/Amsterdam",
            }
        }
    )
    report = build_report(config, three_weeks(), today=TODAY, days=14, zone=AMS, now=NOW)
    left = report.panels["hip_left"]
    assert (left.sessions, left.seconds) == (12, 12 * 600)
    assert left.dose_j_cm2 == pytest.approx(12 * 30)
    assert report.panels["sauna"].reasons == {"completed": 5, "stopped": 1}
    [evening] = report.adherence
    assert (evening.planned, evening.done) == (14, 12)
    assert report.streak_days == 5  # today back to the rest day 5 days ago
    data = as_json(report)
    assert data["days"][-1] == {
        "date": "2026-11-28",
        "panels": {
            "hip_left": {"seconds": 600, "dose_j_cm2": 30.0},
            "sauna": {"seconds": 300, "dose_j_cm2": 0.0},
        },
        "seconds": 900,
    }


def test_text_report_reads_well() -> None:
    """A line per day with minutes per panel and a bar; then totals, adherence and streak."""
    config = make_config()
    report = build_report(config, three_weeks(), today=TODAY, days=7, zone=AMS, now=NOW)
    lines = as_text(report)
    assert lines[0] == "sessions from 2026-11-22 to 2026-11-28"
    assert lines[2] == "date        hip_left    sauna    total"
    assert lines[3] == "2026-11-22 Sun      10m       5m      15m  " + "█" * 30
    assert lines[4] == "2026-11-23 Mon        -        -        -"
    assert lines[6] == "2026-11-25 Wed      10m        -      10m  " + "█" * 20
    assert lines[9] == "2026-11-28 Sat      10m       5m      15m  " + "█" * 30
    assert lines[10] == ""
    assert lines[-2] == "Sauna: 4 sessions, 20m; ended: completed 3, stopped 1"
    assert lines[-1] == "streak: 5 days"


def test_history_command_with_a_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``redlight history`` on a real database prints the report; ``--json`` parses."""
    db = tmp_path / "history.db"
    writer = HistoryWriter(db)
    today = datetime.now().astimezone()
    for back in range(10):
        start = (today - timedelta(days=back)).replace(hour=7, minute=0, second=0, microsecond=0)
        writer.session_opened(
            SessionRow(f"s{back}", "hip_left", "left hip", "cli", start, 600.0, 50.0)
        )
        writer.session_closed(f"s{back}", start + timedelta(minutes=10), 600.0, "completed", 30.0)
    assert writer.flush(5.0)
    writer.close()
    path = tmp_path / "config.toml"
    path.write_text(
        f'[storage]\npath = "{db}"\n[panels.hip_left]\narea = "left hip"\n'
        'plug = { preset = "tasmota", topic = "t" }\n'
    )
    assert main(["history", "--config", str(path), "--days", "7"]) == 0
    out = capsys.readouterr().out
    assert "Hip left (left hip): 7 sessions, 1h10m, ~210 J/cm²; ended: completed 7" in out
    assert main(["history", "--config", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["streak_days"] == 10
    assert data["panels"]["hip_left"]["sessions"] == 10


def config_for(tmp_path: Path, db: Path) -> Path:
    """A config file whose history database is ``db``."""
    path = tmp_path / "config.toml"
    path.write_text(
        f'[storage]\npath = "{db}"\n[panels.hip_left]\n'
        'plug = { preset = "tasmota", topic = "t" }\n'
    )
    return path


def test_history_without_a_database_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No database yet: one sentence naming the path, exit 0; --json is an empty report."""
    db = tmp_path / "none.db"
    config = config_for(tmp_path, db)
    assert main(["history", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert out == f"no history yet: {db} does not exist yet (redlight run creates it)\n"
    assert not db.exists()  # reading never creates the database
    assert main(["history", "--config", str(config), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["streak_days"], data["panels"]["hip_left"]["sessions"]) == (0, 0)


def test_history_of_an_empty_database_says_no_history_yet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A database that exists but holds no session (settings only) is no history yet, exit 0."""
    db = tmp_path / "history.db"
    writer = HistoryWriter(db)
    writer.set_setting("panel.hip_left.default_duration_s", "300")
    writer.close(timeout=5.0)
    assert main(["history", "--config", str(config_for(tmp_path, db))]) == 0
    assert capsys.readouterr().out == f"no history yet: {db} holds no sessions\n"


def unreadable(kind: str, db: Path) -> str:
    """Make ``db`` unreadable in one of a few ways (that stop root too); the reason expected."""
    if kind == "corrupt":
        db.write_bytes(b"garbage, not a database " * 200)
        return "file is not a database"
    if kind == "directory":
        db.mkdir()
        return "unable to open database file"
    db.parent.rmdir()
    db.parent.write_text("a file where the directory should be")
    return "Not a directory"


@pytest.mark.parametrize("kind", ["corrupt", "directory", "parent_is_a_file"])
def test_history_of_an_unavailable_database_is_an_error_not_no_history(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    """A database that is there but cannot be read: one line with the path and why, exit 1."""
    db = tmp_path / "state" / "history.db"
    db.parent.mkdir()
    reason = unreadable(kind, db)
    assert main(["history", "--config", str(config_for(tmp_path, db))]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    [line] = captured.err.splitlines()
    assert line.startswith(f"redlight: the history database is unavailable: {db}: ")
    assert reason in line
    assert "no history" not in line


def with_goal(goal: str = "1h") -> Config:
    """The test panels, ``hip_left`` with a weekly goal."""
    panels = {key: p.model_dump(exclude_unset=True) for key, p in make_config().panels.items()}
    panels["hip_left"]["weekly_goal"] = goal
    return make_config(panels=panels)


def test_weeks_are_whole_with_each_goal_met_or_missed() -> None:
    """Every week the period touches, Monday to Sunday and whole (its days before the period
    count too): minutes per panel, ✓ where the goal was met, ✗ where a finished week missed
    it, nothing yet for the week not over; the goals; then the same weeks per area."""
    rows = [*three_weeks(), row(date(2026, 11, 9), 7, "hip_left", 600)]
    report = build_report(with_goal("65m"), rows, today=TODAY, days=14, zone=AMS, now=NOW)
    lines = as_text(report)
    start = lines.index("week of                 hip_left    sauna    total")
    assert lines[start : start + 10] == [
        "week of                 hip_left    sauna    total",
        "2026-11-09 W46           1h20m ✓      15m    1h35m",
        "2026-11-16 W47              1h ✗      15m    1h15m",
        "2026-11-23 W48 (so far)    50m        15m     1h5m",
        "weekly goal               1h5m          -",
        "",
        "area, week of           left hip",
        "2026-11-09 W46             1h20m",
        "2026-11-16 W47                1h",
        "2026-11-23 W48 (so far)      50m",
    ]
    assert lines[start - 1] == ""  # after the day table


def test_weeks_in_json_carry_goal_and_met() -> None:
    """``--json``'s weeks: ISO week, its days, whether it is over, per panel seconds, goal
    (null without one) and met, per area seconds."""
    report = build_report(with_goal(), three_weeks(), today=TODAY, days=7, zone=AMS, now=NOW)
    weeks = as_json(report)["weeks"]
    assert [w["week"] for w in weeks] == ["2026-W47", "2026-W48"]
    assert weeks[0] == {
        "week": "2026-W47",
        "from": "2026-11-16",
        "to": "2026-11-22",
        "complete": True,
        "panels": {
            "hip_left": {"seconds": 3600, "goal_s": 3600, "met": True},
            "sauna": {"seconds": 900, "goal_s": None, "met": None},
        },
        "areas": {"left hip": {"seconds": 3600}},
        "seconds": 4500,
    }
    assert (weeks[1]["complete"], weeks[1]["panels"]["hip_left"]["met"]) == (False, False)


def test_a_week_counts_each_session_for_the_area_it_was_recorded_with() -> None:
    """A session's area is the one in its row (what the panel was aimed at then), spellings
    merged as the daemon merges them; without goals there is no goal row and no marks."""
    moved = replace(row(TODAY, 8, "sauna", 120), area="Left-Hip")
    report = build_report(
        make_config(), [*three_weeks(), moved], today=TODAY, days=3, zone=AMS, now=NOW
    )
    [week] = report.weeks
    assert week.areas == {"left hip": 3000 + 120}
    text = weeks_text(report)
    assert "weekly goal" not in "\n".join(text)
    assert text[1] == "2026-11-23 W48 (so far)      50m      17m     1h7m"


def test_history_command_shows_the_weeks_and_their_goal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``redlight history`` on a real database with a weekly goal: the week table has the
    goal, and ``--json`` the weeks with it."""
    db = tmp_path / "history.db"
    writer = HistoryWriter(db)
    start = datetime.now().astimezone().replace(hour=7, minute=0, second=0, microsecond=0)
    writer.session_opened(SessionRow("s", "hip_left", "left hip", "cli", start, 600.0, None))
    writer.session_closed("s", start + timedelta(minutes=10), 600.0, "completed", None)
    writer.close(timeout=5.0)
    path = tmp_path / "config.toml"
    path.write_text(
        f'[storage]\npath = "{db}"\n[panels.hip_left]\narea = "left hip"\n'
        'weekly_goal = "10m"\nplug = { preset = "tasmota", topic = "t" }\n'
    )
    assert main(["history", "--config", str(path), "--days", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    table = out.index("week of                 hip_left    total")
    assert out[table + 1].endswith(" (so far)    10m ✓      10m")
    assert out[table + 2] == "weekly goal                10m"
    assert main(["history", "--config", str(path), "--days", "1", "--json"]) == 0
    [week] = json.loads(capsys.readouterr().out)["weeks"]
    assert week["panels"]["hip_left"] == {"seconds": 600, "goal_s": 600, "met": True}


def test_one_session_is_one_session() -> None:
    """Issue 14 item 10: a panel with a single session reads "1 session", not "1 sessions"."""
    config = make_config()
    rows = [row(TODAY, 19, "sauna", 300)]
    lines = as_text(build_report(config, rows, today=TODAY, days=7, zone=AMS, now=NOW))
    assert "Sauna: 1 session, 5m; ended: completed 1" in lines
