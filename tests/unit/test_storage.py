"""Session history: the SQLite schema, the reader, and the writer thread's failure handling."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from redlight.storage import (
    SCHEMA_VERSION,
    History,
    HistoryWriter,
    SessionRow,
    StorageError,
)

CET = timezone(timedelta(hours=1))
CEST = timezone(timedelta(hours=2))
T0 = datetime(2026, 11, 24, 7, 0, tzinfo=CET)


def session(
    id: str = "s1",  # the name mirrors SessionRow.id
    panel: str = "hip_left",
    started_at: datetime = T0,
    planned_s: float = 600.0,
    irradiance: float | None = 50.0,
) -> SessionRow:
    """A journal row (not ended yet)."""
    return SessionRow(
        id=id,
        panel=panel,
        area="left hip",
        source="cli",
        started_at=started_at,
        planned_s=planned_s,
        irradiance_mw_cm2=irradiance,
    )


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """Where the test's database lives (not created yet)."""
    return tmp_path / "state" / "history.db"


@pytest.fixture
def writer(db: Path) -> Iterator[HistoryWriter]:
    """A history writer that is closed after the test."""
    history_writer = HistoryWriter(db)
    yield history_writer
    history_writer.close(timeout=5.0)


def test_the_writer_starts_the_wal_before_the_first_journal_row(
    writer: HistoryWriter, db: Path
) -> None:
    """Rule 8's ON waits for the first journal row: the two syncs of starting a WAL (its header,
    a new file's directory) happen when the writer starts, not in that row's commit."""
    assert writer.flush(timeout=5.0)
    wal = db.with_name(db.name + "-wal")
    # The header (32 bytes) and at least one frame (24 bytes and a page) are on disk.
    assert wal.stat().st_size > 32 + 24
    assert writer.errors == 0


def storage_errors(logs: Sequence[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    """The ``storage_error`` entries among captured log entries."""
    return [entry for entry in logs if entry["event"] == "storage_error"]


def committed(db: Path) -> dict[str, str | None]:
    """Session id -> end reason (None: the journal row of an open session), as another
    connection reads the database at ``db`` right now: only what is committed."""
    if not db.exists():
        return {}
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return dict(conn.execute("SELECT id, reason FROM sessions"))
    finally:
        conn.close()


@dataclass(frozen=True)
class Ack:
    """One journal acknowledgement: for which session, on which thread, and what was committed
    when it came."""

    session: str
    thread: str
    committed: dict[str, str | None]


class Acks:
    """Records the writer's journal acknowledgements (the runtime's ON waits for them)."""

    def __init__(self, db: Path) -> None:
        """Acknowledgements of rows written to the database at ``db``."""
        self.db = db
        self.calls: list[Ack] = []
        self._changed = threading.Condition()

    def callback(self, session_id: str) -> Callable[[], None]:
        """The ``acknowledged`` callback for ``session_id``'s journal row."""

        def acknowledged() -> None:
            seen = committed(self.db)
            with self._changed:
                self.calls.append(Ack(session_id, threading.current_thread().name, seen))
                self._changed.notify_all()

        return acknowledged

    def wait(self, count: int, timeout: float = 5.0) -> None:
        """Wait (bounded) until ``count`` acknowledgements have come."""
        with self._changed:
            assert self._changed.wait_for(lambda: len(self.calls) >= count, timeout)

    def sessions(self) -> list[str]:
        """The sessions acknowledged so far, in order, once per acknowledgement."""
        with self._changed:
            return [ack.session for ack in self.calls]


class Gate:
    """A fault seam: while it is closed, the writer's attempts wait for it to open (bounded)."""

    def __init__(self) -> None:
        """Closed: the next attempt waits."""
        #: Set once an attempt waits at the closed gate.
        self.held = threading.Event()
        self._open = threading.Event()

    def __call__(self, operation: str) -> None:
        """Called by the writer at the start of each attempt."""
        if not self._open.is_set():
            self.held.set()
            assert self._open.wait(5.0), "the test never opened the gate"

    def open(self) -> None:
        """Let the writer go on."""
        self._open.set()

    def close(self) -> None:
        """Hold the next attempt again."""
        self.held.clear()
        self._open.clear()


# ------------------------------------------------------------------------------ schema


def test_open_creates_schema_version_and_wal(db: Path) -> None:
    """Opening a new database creates its directory and schema at user_version 1 in WAL mode."""
    History.open(db).close()
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert SCHEMA_VERSION == 1
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
        assert {"sessions", "settings"} <= tables
    finally:
        conn.close()


def test_reopening_keeps_the_data(db: Path, writer: HistoryWriter) -> None:
    """Opening an existing database again neither migrates nor loses what it holds."""
    History.open(db).close()
    writer.set_setting("k", "v")
    assert writer.flush(5.0)
    with History.open(db) as history:
        assert history.get_setting("k") == "v"


def test_newer_schema_is_refused(db: Path) -> None:
    """A database written by a newer redlight is a StorageError that says so."""
    History.open(db).close()
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version = 2")
    conn.close()
    with pytest.raises(StorageError, match="newer"):
        History.open(db)


def test_corrupt_file_is_a_storage_error(db: Path) -> None:
    """A file that is not a SQLite database is a StorageError, not a sqlite3 exception."""
    db.parent.mkdir()
    db.write_bytes(b"this is no database, just garbage\x00\xff" * 200)
    with pytest.raises(StorageError, match="not a database"):
        History.open(db)


# --------------------------------------------------------------------------- round trip


def test_session_round_trip(db: Path, writer: HistoryWriter) -> None:
    """A session opened and closed through the writer is read back with its totals and end."""
    writer.session_opened(session("s1"))
    ended = T0 + timedelta(seconds=590)
    writer.session_closed("s1", ended, 590.0, "completed", 29.5)
    writer.session_opened(session("s2", panel="knee", started_at=T0 + timedelta(hours=1)))
    assert writer.flush(5.0)
    assert writer.errors == 0
    with History.open(db) as history:
        [row] = history.sessions(panel="hip_left")
        assert row == SessionRow(
            id="s1",
            panel="hip_left",
            area="left hip",
            source="cli",
            started_at=T0,
            planned_s=600.0,
            irradiance_mw_cm2=50.0,
            ended_at=ended,
            actual_s=590.0,
            reason="completed",
            dose_j_cm2=29.5,
        )
        assert row.started_at.utcoffset() == timedelta(hours=1)
        assert [r.id for r in history.sessions()] == ["s1", "s2"]
        assert [r.id for r in history.sessions(since=T0 + timedelta(minutes=1))] == ["s2"]
        assert history.seconds_between("hip_left", T0, T0 + timedelta(seconds=1)) == 590.0
        assert history.seconds_between("hip_left", T0 + timedelta(seconds=1), ended) == 0.0
        assert history.seconds_between("knee", T0, T0 + timedelta(days=1)) == 0.0
        assert history.last_end("hip_left") == ended
        assert history.last_end("knee") is None
        assert history.last_end("nope") is None


def test_a_journal_row_is_acknowledged_once_after_it_is_committed(db: Path) -> None:
    """session_opened returns at once; each row's acknowledgement comes on the writer thread,
    once, after the row is committed (also a row whose close merged into it meanwhile)."""
    History.open(db).close()
    gate = Gate()
    acks = Acks(db)
    writer = HistoryWriter(db, fault=gate)
    try:
        writer.session_opened(session("s1"), acks.callback("s1"))
        assert gate.held.wait(5.0)
        # The writer holds s1's write: the calls return, and nothing is acknowledged yet.
        writer.session_opened(session("s2"), acks.callback("s2"))
        writer.session_closed("s2", T0 + timedelta(minutes=10), 600.0, "completed", 30.0)
        assert (acks.sessions(), committed(db)) == ([], {})
        gate.open()
        assert writer.flush(5.0)
    finally:
        writer.close(timeout=5.0)
    assert acks.calls == [
        Ack("s1", "redlight-history", {"s1": None}),
        Ack("s2", "redlight-history", {"s1": None, "s2": "completed"}),
    ]
    assert writer.errors == 0


def test_seconds_between_compares_instants_across_utc_offsets(
    db: Path, writer: HistoryWriter
) -> None:
    """Range queries compare instants, so rows written under another UTC offset count right."""
    # 07:30+02:00 is 06:30+01:00: before T0 although its text sorts after T0's.
    early = datetime(2026, 11, 24, 7, 30, tzinfo=CEST)
    writer.session_opened(session("dst", started_at=early))
    writer.session_closed("dst", early + timedelta(minutes=5), 300.0, "completed", None)
    writer.session_opened(session("s1"))
    writer.session_closed("s1", T0 + timedelta(minutes=5), 300.0, "completed", None)
    assert writer.flush(5.0)
    with History.open(db) as history:
        assert history.seconds_between("hip_left", T0, T0 + timedelta(hours=1)) == 300.0
        assert [r.id for r in history.sessions()] == ["dst", "s1"]
        assert history.last_end("hip_left") == T0 + timedelta(minutes=5)


def test_settings_round_trip(db: Path, writer: HistoryWriter) -> None:
    """A setting written twice reads back as its last value; an unknown key reads as None."""
    writer.set_setting("panel.hip_left.default_duration_s", "300")
    writer.set_setting("panel.hip_left.default_duration_s", "420")
    assert writer.flush(5.0)
    with History.open(db) as history:
        assert history.get_setting("panel.hip_left.default_duration_s") == "420"
        assert history.get_setting("missing") is None


def test_close_interrupted_closes_only_journal_rows(db: Path, writer: HistoryWriter) -> None:
    """Open rows are closed as interrupted with an estimated time and dose; closed rows stay."""
    writer.session_opened(session("done", started_at=T0 - timedelta(hours=2)))
    writer.session_closed("done", T0 - timedelta(hours=1), 600.0, "completed", 30.0)
    writer.session_opened(session("short", started_at=T0))
    writer.session_opened(
        session("long", panel="knee", started_at=T0 - timedelta(hours=1), irradiance=None)
    )
    assert writer.flush(5.0)
    wall = T0 + timedelta(seconds=120)
    with History.open(db) as history:
        closed = history.close_interrupted(wall)
        assert [(r.id, r.reason, r.ended_at, r.actual_s, r.dose_j_cm2) for r in closed] == [
            ("long", "interrupted", wall, 600.0, None),
            ("short", "interrupted", wall, 120.0, 6.0),
        ]
        assert history.close_interrupted(wall) == []
        rows = {r.id: r for r in history.sessions()}
        assert rows["short"] == closed[1]
        assert rows["long"] == closed[0]
        assert (rows["done"].reason, rows["done"].actual_s) == ("completed", 600.0)
        assert rows["done"].ended_at == T0 - timedelta(hours=1)


def test_close_interrupted_never_estimates_negative_time(db: Path, writer: HistoryWriter) -> None:
    """A journal row that starts after the wall clock (clock stepped back) is closed with 0 s."""
    writer.session_opened(session("future", started_at=T0 + timedelta(hours=1)))
    assert writer.flush(5.0)
    with History.open(db) as history:
        [row] = history.close_interrupted(T0)
    assert (row.actual_s, row.dose_j_cm2) == (0.0, 0.0)


def test_writer_close_drains_the_queue(db: Path) -> None:
    """Closing the writer writes what was queued before it returns."""
    history_writer = HistoryWriter(db)
    for n in range(20):
        history_writer.set_setting(f"k{n}", str(n))
    history_writer.close(timeout=5.0)
    with History.open(db) as history:
        assert history.get_setting("k19") == "19"


def test_writes_after_close_are_reported_not_raised(db: Path) -> None:
    """A write after close is logged as a storage error and does not raise."""
    history_writer = HistoryWriter(db)
    history_writer.close(timeout=5.0)
    with capture_logs() as logs:
        history_writer.session_opened(session())
        history_writer.set_setting("k", "v")
    assert history_writer.errors == 2
    assert [e["operation"] for e in storage_errors(logs)] == ["session_opened", "set_setting"]


def test_a_closed_writer_acknowledges_at_once_in_the_callers_thread(db: Path) -> None:
    """After close, session_opened acknowledges its row before it returns, in the caller's
    thread (no ON waits for a writer that is gone), and reports the row as not written."""
    writer = HistoryWriter(db)
    writer.close(timeout=5.0)
    acks = Acks(db)
    with capture_logs() as logs:
        writer.session_opened(session("s1"), acks.callback("s1"))
        assert acks.calls == [Ack("s1", threading.current_thread().name, {})]
    assert [e["error"] for e in storage_errors(logs)] == ["history writer is closed"]


def test_an_acknowledgement_that_raises_is_logged_and_the_writer_goes_on(db: Path) -> None:
    """A callback that raises (say, its event loop is closed) is logged as a storage error,
    on the writer thread and in the caller's alike; the writer keeps writing."""

    def broken() -> None:
        raise RuntimeError("Event loop is closed")

    writer = HistoryWriter(db)
    acks = Acks(db)
    try:
        with capture_logs() as logs:
            writer.session_opened(session("s1"), broken)
            writer.session_opened(session("s2"), acks.callback("s2"))
            acks.wait(1)
            assert writer.flush(5.0)
    finally:
        writer.close(timeout=5.0)
    with capture_logs() as closed_logs:
        writer.session_opened(session("s3"), broken)
    assert acks.calls == [Ack("s2", "redlight-history", {"s1": None, "s2": None})]
    failed = [e for e in storage_errors(logs + closed_logs) if e["operation"] == "acknowledge"]
    assert [(e["session"], e["error"], e["exc_info"]) for e in failed] == [
        ("s1", "Event loop is closed", True),
        ("s3", "Event loop is closed", True),
    ]


def test_close_of_an_unknown_session_is_reported(db: Path, writer: HistoryWriter) -> None:
    """Closing a session whose journal row is missing is reported, not silently ignored."""
    with capture_logs() as logs:
        writer.session_closed("ghost", T0, 1.0, "completed", None)
        assert writer.flush(5.0)
    [entry] = storage_errors(logs)
    assert entry["operation"] == "session_closed"
    assert "ghost" in str(entry["error"])


# ---------------------------------------------------------------------- rule 12: faults


def test_writer_reports_a_corrupt_database_and_writes_once_it_is_gone(db: Path) -> None:
    """With a corrupt file writes fail loudly and are kept; moved away, they all land."""
    db.parent.mkdir()
    db.write_bytes(b"garbage!" * 512)
    attempts = threading.Semaphore(0)
    history_writer = HistoryWriter(db, retry_s=(0.01, 0.05), fault=lambda _: attempts.release())
    try:
        with capture_logs() as logs:
            history_writer.session_opened(session())
            history_writer.session_closed("s1", T0, 1.0, "completed", None)
            history_writer.set_setting("k", "v")
            for _ in range(2):  # a second attempt: the first one failed
                assert attempts.acquire(timeout=5.0)
            db.rename(db.with_name("broken.db"))
            assert history_writer.flush(5.0)
    finally:
        history_writer.close(timeout=5.0)
    errors = storage_errors(logs)
    assert errors
    assert all(e["log_level"] == "error" and e["path"] == str(db) for e in errors)
    assert "not a database" in str(errors[0]["error"])
    assert history_writer.errors >= 1
    [recovered] = [e for e in logs if e["event"] == "storage_recovered"]
    assert recovered["replayed"] >= 2  # the session (as one row, if merged in time), the setting
    with History.open(db) as history:
        assert [(r.id, r.reason) for r in history.sessions()] == [("s1", "completed")]
        assert history.get_setting("k") == "v"


def test_locked_database_never_holds_up_the_caller(db: Path) -> None:
    """With the database locked, writer calls return at once and fail loudly; the writes are
    kept and land once the lock is released."""
    History.open(db).close()
    attempts = threading.Semaphore(0)
    writer = HistoryWriter(db, retry_s=(0.01, 0.05), fault=lambda _: attempts.release())
    locker = sqlite3.connect(db, isolation_level=None)
    try:
        locker.execute("BEGIN EXCLUSIVE")
        with capture_logs() as logs:
            started = time.monotonic()
            writer.session_opened(session("s1"))
            writer.session_closed("s1", T0, 1.0, "completed", None)
            writer.set_setting("k", "v")
            enqueued_s = time.monotonic() - started
            for _ in range(2):  # a second attempt: the first one failed
                assert attempts.acquire(timeout=5.0)
            assert not writer.flush(0.05)
        locker.execute("ROLLBACK")
        writer.session_opened(session("s2"))
        writer.set_setting("k", "after")
        assert writer.flush(5.0)
    finally:
        locker.close()
        writer.close(timeout=5.0)
    assert enqueued_s < 0.1  # three puts on a queue; generous for a busy CI machine
    assert writer.errors >= 1
    assert "locked" in str(storage_errors(logs)[0]["error"])
    with History.open(db) as history:
        assert [(r.id, r.reason) for r in history.sessions()] == [("s1", "completed"), ("s2", None)]
        assert history.get_setting("k") == "after"


def test_read_only_directory_is_reported_without_raising(tmp_path: Path) -> None:
    """In a directory it cannot write, the writer reports errors and History.open raises; once
    the directory is writable again the writes land.

    The directory is a link to /proc, where nobody can create a file: not even root, who
    ignores a directory's mode bits (so this runs as root too, as here and in CI). Making it
    writable again is pointing the path at a real directory.
    """
    directory = tmp_path / "ro"
    directory.symlink_to("/proc", target_is_directory=True)
    db = directory / "history.db"
    attempts = threading.Semaphore(0)
    history_writer = HistoryWriter(db, retry_s=(0.01, 0.05), fault=lambda _: attempts.release())
    try:
        with capture_logs() as logs:
            history_writer.session_opened(session())
            history_writer.set_setting("k", "v")
            for _ in range(2):
                assert attempts.acquire(timeout=5.0)
        with pytest.raises(StorageError):
            History.open(db)
        # Re-pointed at once (a new link renamed over the old one): a path that is missing for
        # a moment would let the writer's next retry create the directory itself.
        real = tmp_path / "real"
        real.mkdir()
        (tmp_path / "ro.new").symlink_to(real, target_is_directory=True)
        os.replace(tmp_path / "ro.new", directory)
        assert history_writer.flush(5.0)
    finally:
        history_writer.close(timeout=5.0)
    assert history_writer.errors >= 1
    assert storage_errors(logs)[0]["operation"] == "session_opened"
    with History.open(db) as history:
        assert history.get_setting("k") == "v"


def test_unusable_directory_is_reported_and_written_once_it_is_fixed(tmp_path: Path) -> None:
    """When the database's directory cannot be created, writes are reported, never raise, and
    land once the directory can be created."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    db = blocker / "sub" / "history.db"
    attempts = threading.Semaphore(0)
    history_writer = HistoryWriter(db, retry_s=(0.01, 0.05), fault=lambda _: attempts.release())
    try:
        with capture_logs() as logs:
            history_writer.session_opened(session())
            history_writer.set_setting("k", "v")
            for _ in range(2):
                assert attempts.acquire(timeout=5.0)
        with pytest.raises(StorageError):
            History.open(db)
        blocker.unlink()
        assert history_writer.flush(5.0)
    finally:
        history_writer.close(timeout=5.0)
    assert history_writer.errors >= 1
    assert storage_errors(logs)[0]["operation"] == "session_opened"
    with History.open(db) as history:
        assert [r.id for r in history.sessions()] == ["s1"]
        assert history.get_setting("k") == "v"
