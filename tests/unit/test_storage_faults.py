"""History survives the disk: a database deleted or replaced under the writer, writes that fail
and are retried in order, a full buffer, and a stop while writes still fail (safety rule 12)."""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from redlight.storage import History, HistoryWriter
from tests.unit.test_storage import T0, Ack, Acks, Gate, committed, session

#: Fast retries, so a test spends milliseconds per failed attempt, not the daemon's seconds.
FAST = (0.005, 0.02)
FULL = sqlite3.OperationalError("database or disk is full")


class Faults:
    """The writer's fault seam: records every write attempt; fails them while told to."""

    def __init__(self) -> None:
        """No failures until :meth:`fail` is called."""
        self.attempts: list[str] = []
        self._left = 0
        self._changed = threading.Condition()

    def fail(self, times: int) -> None:
        """Fail the next ``times`` attempts (a very large number: until :meth:`clear`)."""
        with self._changed:
            self._left = times

    def clear(self) -> None:
        """The disk is healthy again."""
        self.fail(0)

    def __call__(self, operation: str) -> None:
        """Called by the writer at the start of each attempt."""
        with self._changed:
            self.attempts.append(operation)
            self._changed.notify_all()
            if self._left > 0:
                self._left -= 1
                raise FULL

    def wait_attempts(self, count: int, timeout: float = 5.0) -> None:
        """Wait (bounded) until the writer has made ``count`` attempts."""
        with self._changed:
            assert self._changed.wait_for(lambda: len(self.attempts) >= count, timeout)

    def settled(self) -> None:
        """Wait until the writer has taken in everything enqueued so far: it does so before
        each attempt, so two more attempts (the first may have begun before the last put)."""
        with self._changed:
            seen = len(self.attempts)
        self.wait_attempts(seen + 2)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """Where the test's database lives (not created yet)."""
    return tmp_path / "state" / "history.db"


@pytest.fixture
def faults() -> Faults:
    """A fault seam that fails nothing yet."""
    return Faults()


@pytest.fixture
def writer(db: Path, faults: Faults) -> Iterator[HistoryWriter]:
    """A writer with fast retries and the fault seam, closed after the test."""
    history_writer = HistoryWriter(db, retry_s=FAST, fault=faults)
    yield history_writer
    history_writer.close(timeout=5.0)


def events(logs: Sequence[MutableMapping[str, Any]], name: str) -> list[MutableMapping[str, Any]]:
    """The captured log entries called ``name``."""
    return [entry for entry in logs if entry["event"] == name]


def rows(db: Path) -> dict[str, str | None]:
    """Session id -> end reason (None: still open) in the database at ``db``."""
    with History.open(db) as history:
        return {row.id: row.reason for row in history.sessions()}


# ------------------------------------------------------------- deleted or replaced file


def delete_file(db: Path) -> None:
    """`rm history.db`: the WAL and shared-memory files stay."""
    db.unlink()


def delete_all(db: Path) -> None:
    """`rm history.db*`."""
    for path in db.parent.glob(db.name + "*"):
        path.unlink()


def delete_directory(db: Path) -> None:
    """`rm -r /var/lib/redlight`."""
    shutil.rmtree(db.parent)


@pytest.mark.parametrize("delete", [delete_file, delete_all, delete_directory])
def test_deleted_database_is_recreated_and_the_next_rows_land_in_it(
    db: Path, writer: HistoryWriter, delete: Callable[[Path], None]
) -> None:
    """A database deleted under the writer is noticed, re-created loudly, and written to: the
    session that was open in the old file ends up complete in the new one, as do settings."""
    writer.session_opened(session("before"))
    writer.session_closed("before", T0, 60.0, "completed", 3.0)
    writer.session_opened(session("open", started_at=T0))
    writer.set_setting("panel.hip_left.default_duration_s", "300")
    assert writer.flush(5.0)
    delete(db)
    with capture_logs() as logs:
        writer.session_closed("open", T0 + timedelta(minutes=10), 600.0, "completed", 30.0)
        writer.session_opened(session("after", started_at=T0 + timedelta(minutes=20)))
        writer.set_setting("schedule.evening.enabled", "false")
        assert writer.flush(5.0)
    [replaced] = events(logs, "storage_replaced")
    assert replaced["log_level"] == "error"
    assert replaced["path"] == str(db)
    assert replaced["found"] == "no file"
    assert db.exists()
    # "before" was only in the old file; "open" was re-inserted before its close.
    assert rows(db) == {"open": "completed", "after": None}
    with History.open(db) as history:
        [done] = [row for row in history.sessions() if row.id == "open"]
        assert (done.actual_s, done.dose_j_cm2, done.started_at) == (600.0, 30.0, T0)
        assert history.get_setting("schedule.evening.enabled") == "false"
        assert history.get_setting("panel.hip_left.default_duration_s") == "300"
    assert writer.errors == 0


def test_database_deleted_before_the_first_write_is_noticed(db: Path, faults: Faults) -> None:
    """The file the writer opened on starting (the daemon had read it) and gone by its first
    write is reported as replaced too, not silently started afresh."""
    History.open(db).close()
    writer = HistoryWriter(db, retry_s=FAST, fault=faults)
    try:
        assert writer.flush(5.0)  # it has opened the file (and started its WAL) on starting
        db.unlink()
        with capture_logs() as logs:
            writer.session_opened(session("s1"))
            assert writer.flush(5.0)
    finally:
        writer.close(timeout=5.0)
    [replaced] = events(logs, "storage_replaced")
    assert replaced["found"] == "no file"
    assert rows(db) == {"s1": None}


def test_replaced_database_is_detected_and_its_own_content_kept(
    db: Path, tmp_path: Path, writer: HistoryWriter
) -> None:
    """A database moved over the writer's file is noticed: new rows go into it, its own rows
    stay readable (the old file's WAL is not applied to it), and the open session completes."""
    writer.session_opened(session("old"))
    writer.session_closed("old", T0, 60.0, "completed", 3.0)
    writer.session_opened(session("open"))
    for n in range(50):  # enough for the old file's WAL to hold pages the other file lacks
        writer.set_setting(f"filler{n}", "x" * 200)
    assert writer.flush(5.0)
    other = tmp_path / "backup.db"
    backup = HistoryWriter(other)
    backup.session_opened(session("restored", started_at=T0 - timedelta(minutes=60)))
    backup.close(timeout=5.0)
    os.replace(other, db)
    with capture_logs() as logs:
        writer.session_closed("open", T0 + timedelta(minutes=10), 600.0, "completed", 30.0)
        assert writer.flush(5.0)
    [replaced] = events(logs, "storage_replaced")
    assert (replaced["found"], replaced["log_level"]) == ("another file", "error")
    assert rows(db) == {"restored": None, "open": "completed"}
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        conn.close()


# ----------------------------------------------------------------- retried in order


def test_failed_writes_are_retried_in_order_until_they_land(
    db: Path, writer: HistoryWriter, faults: Faults
) -> None:
    """A write that fails is kept and retried, with nothing after it written first; when the
    fault clears everything lands, and storage_recovered says how many writes were replayed."""
    faults.fail(10**9)
    with capture_logs() as logs:
        writer.set_setting("a", "1")
        writer.session_opened(session("s1"))
        writer.set_setting("b", "2")
        writer.set_setting("a", "3")  # the same key again: only the last value counts
        faults.settled()
        faults.clear()
        assert writer.flush(5.0)
    # Every failure was the first write's; then each write once, in the order given.
    failed = len(faults.attempts) - 3
    assert failed >= 2
    assert faults.attempts == ["set_setting"] * (failed + 1) + ["session_opened", "set_setting"]
    errors = events(logs, "storage_error")
    assert len(errors) == 1  # the same error again is not logged again (within a minute)
    assert errors[0]["retrying"] is True
    assert "full" in str(errors[0]["error"])
    [recovered] = events(logs, "storage_recovered")
    assert (recovered["replayed"], recovered["failed_attempts"], recovered["dropped"]) == (
        3,
        failed,
        0,
    )
    assert writer.errors == failed
    assert rows(db) == {"s1": None}
    with History.open(db) as history:
        assert (history.get_setting("a"), history.get_setting("b")) == ("3", "2")


def test_a_session_closed_while_writes_fail_lands_complete(
    db: Path, writer: HistoryWriter, faults: Faults
) -> None:
    """Opened and closed during an outage: the session is written as one complete row."""
    faults.fail(10**9)
    writer.session_opened(session("s1"))
    faults.wait_attempts(1)
    writer.session_closed("s1", T0 + timedelta(minutes=10), 600.0, "completed", 30.0)
    faults.settled()
    assert not writer.flush(0.05)  # still failing: nothing claims to be written
    faults.clear()
    assert writer.flush(5.0)
    assert rows(db) == {"s1": "completed"}


def test_journal_rows_are_acknowledged_while_writes_fail(db: Path, faults: Faults) -> None:
    """A row whose write fails is acknowledged after that attempt, and rows that come while
    writes fail at once: no ON waits on a sick disk. Each once, also after they land."""
    # The database first, then the writer, as the daemon does: the writer's opening writes
    # too, and the two racing for the lock failed this open on a busy machine.
    History.open(db).close()
    writer = HistoryWriter(db, retry_s=FAST, fault=faults)
    try:
        faults.fail(10**9)
        acks = Acks(db)
        writer.session_opened(session("s1"), acks.callback("s1"))
        acks.wait(1)
        for n in range(2, 22):
            writer.session_opened(session(f"s{n}"), acks.callback(f"s{n}"))
        acks.wait(21)  # while the first write is still being retried
        faults.clear()
        assert writer.flush(5.0)
    finally:
        writer.close(timeout=5.0)
    assert acks.calls == [Ack(f"s{n}", "redlight-history", {}) for n in range(1, 22)]
    assert committed(db) == {f"s{n}": None for n in range(1, 22)}


def test_a_journal_row_given_up_is_acknowledged(db: Path) -> None:
    """A write that can never succeed is logged, dropped, and its waiter released."""

    def bad_row(operation: str) -> None:
        raise sqlite3.IntegrityError("bad row")

    History.open(db).close()
    acks = Acks(db)
    writer = HistoryWriter(db, retry_s=FAST, fault=bad_row)
    try:
        with capture_logs() as logs:
            writer.session_opened(session("s1"), acks.callback("s1"))
            assert writer.flush(5.0)
    finally:
        writer.close(timeout=5.0)
    assert acks.calls == [Ack("s1", "redlight-history", {})]
    [error] = events(logs, "storage_error")
    assert (error["operation"], error["error"], error["retrying"]) == (
        "session_opened",
        "bad row",
        False,
    )


# ------------------------------------------------------------------------ overflow


def test_overflow_is_logged_once_with_a_count_and_the_journal_survives(
    db: Path, faults: Faults
) -> None:
    """With the buffer full, the oldest finished sessions are dropped first and the journal row
    of the open session last; the overflow is logged once, the count when storage recovers."""
    faults.fail(10**9)
    writer = HistoryWriter(db, capacity=5, retry_s=FAST, fault=faults)
    try:
        with capture_logs() as logs:
            writer.session_opened(session("journal"))
            faults.wait_attempts(1)
            for n in range(10):
                started = T0 + timedelta(minutes=n + 1)
                writer.session_opened(session(f"c{n}", panel="knee", started_at=started))
                writer.session_closed(f"c{n}", started, 30.0, "completed", None)
            writer.set_setting("k", "v")
            faults.settled()
            faults.clear()
            assert writer.flush(5.0)
    finally:
        writer.close(timeout=5.0)
    [overflow] = events(logs, "storage_overflow")
    assert (overflow["log_level"], overflow["capacity"], overflow["dropped"]) == ("error", 5, 1)
    [recovered] = events(logs, "storage_recovered")
    assert (recovered["dropped"], recovered["replayed"], recovered["log_level"]) == (
        7,
        5,
        "warning",
    )
    assert writer.dropped == 7
    assert rows(db) == {"journal": None, "c7": "completed", "c8": "completed", "c9": "completed"}
    with History.open(db) as history:
        assert history.get_setting("k") == "v"


def test_journal_rows_the_writer_is_behind_on_are_acknowledged_once(db: Path) -> None:
    """A burst beyond the buffer while a write is slow: the row it drops and the rows it is
    now behind on are acknowledged at once, unwritten; each exactly once, also when written."""
    History.open(db).close()
    gate = Gate()
    acks = Acks(db)
    writer = HistoryWriter(db, capacity=2, retry_s=FAST, fault=gate)
    try:
        with capture_logs() as logs:
            writer.session_opened(session("s0"), acks.callback("s0"))
            assert gate.held.wait(5.0)  # s0's write is under way, and slow
            for n in range(1, 4):
                writer.session_opened(session(f"s{n}"), acks.callback(f"s{n}"))
            gate.open()
            assert writer.flush(5.0)
    finally:
        writer.close(timeout=5.0)
    assert acks.calls == [
        Ack("s0", "redlight-history", {"s0": None}),
        Ack("s1", "redlight-history", {"s0": None}),  # dropped by the overflow
        Ack("s2", "redlight-history", {"s0": None}),  # behind: written after
        Ack("s3", "redlight-history", {"s0": None}),
    ]
    assert committed(db) == {"s0": None, "s2": None, "s3": None}
    [overflow] = events(logs, "storage_overflow")
    assert overflow["operation"] == "session_opened"


# ---------------------------------------------------------------------------- stop


def test_stop_while_writes_fail_is_bounded_and_says_what_was_lost(db: Path, faults: Faults) -> None:
    """close() while every write fails returns within its timeout and logs how many were lost."""
    faults.fail(10**9)
    writer = HistoryWriter(db, retry_s=FAST, fault=faults)
    writer.session_opened(session("s1"))
    writer.set_setting("k", "v")
    faults.wait_attempts(1)
    with capture_logs() as logs:
        started = time.monotonic()
        writer.close(timeout=0.5)
        took = time.monotonic() - started
    assert took < 2.0
    [lost] = [e for e in events(logs, "storage_error") if e["operation"] == "close"]
    assert lost["lost"] == 2
    assert writer.dropped == 2
