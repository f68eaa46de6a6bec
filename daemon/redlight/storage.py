"""Session history in SQLite: a synchronous reader and a writer on its own thread.

Every session gets a row when it opens (``ended_at`` NULL: the journal) and the row is completed
when it closes; rows left open by a crash are closed as ``interrupted`` at the next start
(safety rule 8). The daemon writes through :class:`HistoryWriter`, whose thread is the only one
that waits for the disk, so a locked, corrupt or full database is reported loudly but never
delays an OFF (safety rule 12).
"""

from __future__ import annotations

import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import structlog

log = structlog.get_logger("redlight.storage")

#: How long a statement waits for another connection's lock before failing. Short, because the
#: writer thread would rather report a locked database than fall behind the sessions it records.
BUSY_TIMEOUT_S: Final = 0.2

#: Safety rule 12 vs. rule 8: how long ``session_opened`` waits for its journal row to be
#: committed before the plug is switched on. Long enough for a healthy disk, so a crash right
#: after the ON still leaves a row to close as interrupted; short enough that a sick one cannot
#: hold up the event loop (and with it every OFF) noticeably.
JOURNAL_WAIT_S: Final = 0.1

#: A day in seconds: a local date lies within a day of the same UTC date (offsets are < 24 h).
_DAY_S: Final = 86400.0


class StorageError(Exception):
    """The history database cannot be opened, read or written."""


@dataclass(frozen=True, slots=True)
class SessionRow:
    """One session as recorded in the history; the ``ended_*`` fields are None while it runs."""

    id: str
    panel: str
    area: str | None
    source: str
    started_at: datetime
    planned_s: float
    irradiance_mw_cm2: float | None
    ended_at: datetime | None = None
    actual_s: float | None = None
    reason: str | None = None
    dose_j_cm2: float | None = None


# ------------------------------------------------------------------------------- schema


def _migrate_to_1(conn: sqlite3.Connection) -> None:
    # Datetimes are ISO 8601 text with their UTC offset, for people reading the database; the
    # *_epoch columns hold the same instants as Unix seconds, because text only sorts correctly
    # within one offset and a daylight-saving change would break range queries.
    conn.execute(
        """
        CREATE TABLE sessions (
            id TEXT PRIMARY KEY,
            panel TEXT NOT NULL,
            area TEXT,
            source TEXT NOT NULL,
            started_at TEXT NOT NULL,
            started_epoch REAL NOT NULL,
            planned_s REAL NOT NULL,
            irradiance_mw_cm2 REAL,
            ended_at TEXT,
            ended_epoch REAL,
            actual_s REAL,
            reason TEXT,
            dose_j_cm2 REAL
        )
        """
    )
    conn.execute("CREATE INDEX sessions_panel_started ON sessions (panel, started_epoch)")
    conn.execute("CREATE INDEX sessions_open ON sessions (ended_at) WHERE ended_at IS NULL")
    conn.execute("CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)")


#: ``_MIGRATIONS[n]`` brings a database from version ``n`` to ``n + 1``; append, never edit.
_MIGRATIONS: Final[Sequence[Callable[[sqlite3.Connection], None]]] = (_migrate_to_1,)

#: The schema version this code writes; ``PRAGMA user_version`` holds the database's.
SCHEMA_VERSION: Final = len(_MIGRATIONS)


def _user_version(conn: sqlite3.Connection) -> int:
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    return int(version)


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    if _user_version(conn) == SCHEMA_VERSION:
        return
    # IMMEDIATE takes the write lock first, so two connections opening a new database at the
    # same time cannot both run a migration; the version is read again under the lock.
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = _user_version(conn)
        if version > SCHEMA_VERSION:
            raise StorageError(
                f"{path} has schema version {version}, newer than this redlight understands "
                f"({SCHEMA_VERSION}); upgrade redlight or move the database away"
            )
        for target, step in enumerate(_MIGRATIONS[version:], start=version + 1):
            step(conn)
            # PRAGMA takes no bound parameters; target is an int from this module.
            conn.execute(f"PRAGMA user_version = {int(target)}")
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise


def _rollback(conn: sqlite3.Connection) -> None:
    # SQLite rolls some failures (a full disk, for one) back by itself; a second ROLLBACK would
    # then replace the real error with "no transaction is active".
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def _connect(path: Path) -> sqlite3.Connection:
    """Open (creating if needed) and migrate the database; errors become StorageError."""
    conn: sqlite3.Connection | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: autocommit, transactions are explicit, so a reader never holds
        # a snapshot open and always sees what the writer thread committed.
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        # WAL: the daemon's writer and a `redlight history` reader do not block each other.
        (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
        if str(mode).lower() != "wal":
            raise StorageError(f"{path}: cannot switch to WAL journal mode (got {mode!r})")
        # NORMAL: in WAL mode a committed row survives a crash or kill -9 of the daemon (what
        # the journal is for) without an fsync per write; a power cut may lose the last rows,
        # but it also switched the plugs off. FULL cost ~0.5 ms per ON on this kind of disk.
        conn.execute("PRAGMA synchronous = NORMAL")
        _migrate(conn, path)
    except StorageError:
        if conn is not None:
            conn.close()
        raise
    except (sqlite3.Error, OSError) as error:
        if conn is not None:
            conn.close()
        raise StorageError(f"{path}: {error}") from error
    return conn


# ------------------------------------------------------------------------------ helpers


def _aware(value: datetime, name: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got {value!r}")
    return value


def _iso(value: datetime, name: str) -> str:
    return _aware(value, name).isoformat()


def _epoch(value: datetime, name: str) -> float:
    return _aware(value, name).timestamp()


def _parse(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _dose(actual_s: float, irradiance_mw_cm2: float | None) -> float | None:
    # mW/cm² x s = mJ/cm²; the history records J/cm².
    return None if irradiance_mw_cm2 is None else actual_s * irradiance_mw_cm2 / 1000


# Queries are whole literals with bound values, never assembled from strings.
_SELECT_OPEN: Final = """
    SELECT id, panel, area, source, started_at, planned_s, irradiance_mw_cm2,
           ended_at, actual_s, reason, dose_j_cm2
    FROM sessions WHERE ended_at IS NULL ORDER BY started_epoch, id
"""
_SELECT_SESSIONS: Final = """
    SELECT id, panel, area, source, started_at, planned_s, irradiance_mw_cm2,
           ended_at, actual_s, reason, dose_j_cm2
    FROM sessions
    WHERE (:since IS NULL OR started_epoch >= :since) AND (:panel IS NULL OR panel = :panel)
    ORDER BY started_epoch, id
"""

_Raw = tuple[
    str,
    str,
    str | None,
    str,
    str,
    float,
    float | None,
    str | None,
    float | None,
    str | None,
    float | None,
]


def _row(raw: _Raw) -> SessionRow:
    return SessionRow(
        id=raw[0],
        panel=raw[1],
        area=raw[2],
        source=raw[3],
        started_at=datetime.fromisoformat(raw[4]),
        planned_s=raw[5],
        irradiance_mw_cm2=raw[6],
        ended_at=_parse(raw[7]),
        actual_s=raw[8],
        reason=raw[9],
        dose_j_cm2=raw[10],
    )


def _insert_session(conn: sqlite3.Connection, row: SessionRow) -> None:
    conn.execute(
        "INSERT INTO sessions (id, panel, area, source, started_at, started_epoch, planned_s,"
        " irradiance_mw_cm2, ended_at, ended_epoch, actual_s, reason, dose_j_cm2)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            row.id,
            row.panel,
            row.area,
            row.source,
            _iso(row.started_at, "started_at"),
            _epoch(row.started_at, "started_at"),
            row.planned_s,
            row.irradiance_mw_cm2,
            None if row.ended_at is None else _iso(row.ended_at, "ended_at"),
            None if row.ended_at is None else _epoch(row.ended_at, "ended_at"),
            row.actual_s,
            row.reason,
            row.dose_j_cm2,
        ),
    )


def _close_session(
    conn: sqlite3.Connection,
    session_id: str,
    ended_at: datetime,
    actual_s: float,
    reason: str,
    dose_j_cm2: float | None,
) -> None:
    cursor = conn.execute(
        "UPDATE sessions SET ended_at = ?, ended_epoch = ?, actual_s = ?, reason = ?,"
        " dose_j_cm2 = ? WHERE id = ?",
        (
            _iso(ended_at, "ended_at"),
            _epoch(ended_at, "ended_at"),
            actual_s,
            reason,
            dose_j_cm2,
            session_id,
        ),
    )
    if cursor.rowcount == 0:
        # The journal row never made it (its write failed, and was reported, earlier); say so
        # again rather than let the history silently miss a session.
        raise StorageError(f"session {session_id} has no journal row to close")


def _set_setting(conn: sqlite3.Connection, key: str, value: str) -> None:
    conn.execute(
        "INSERT INTO settings (key, value) VALUES (?, ?)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


# ------------------------------------------------------------------------------- reader


class History:
    """A synchronous handle for reading the history and closing interrupted sessions."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        """Wrap an open, migrated connection; use :meth:`open` instead."""
        self._conn = conn
        self.path = path

    @classmethod
    def open(cls, path: Path) -> History:
        """Open the database at ``path``, creating or migrating its schema as needed."""
        return cls(_connect(path), path)

    def __enter__(self) -> Self:
        """Use the handle as a context manager that closes it."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the handle."""
        self.close()

    def close(self) -> None:
        """Close the connection; the handle cannot be used afterwards."""
        try:
            self._conn.close()
        except sqlite3.Error as error:
            raise StorageError(f"{self.path}: {error}") from error

    def close_interrupted(self, wall: datetime) -> list[SessionRow]:
        """Close every journal row left open (safety rule 8) and return the rows as closed.

        The actual time is an estimate: from the start until ``wall``, capped at the planned
        length, since the plug's failsafe or the next OFF ended the session at some point.
        """
        wall_iso, wall_epoch = _iso(wall, "wall"), _epoch(wall, "wall")
        closed: list[SessionRow] = []
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                raws = self._conn.execute(_SELECT_OPEN).fetchall()
                for raw in raws:
                    row = _row(raw)
                    elapsed = (wall - row.started_at).total_seconds()
                    actual = min(row.planned_s, max(0.0, elapsed))
                    dose = _dose(actual, row.irradiance_mw_cm2)
                    self._conn.execute(
                        "UPDATE sessions SET ended_at = ?, ended_epoch = ?, actual_s = ?,"
                        " reason = 'interrupted', dose_j_cm2 = ? WHERE id = ?",
                        (wall_iso, wall_epoch, actual, dose, row.id),
                    )
                    closed.append(
                        replace(
                            row,
                            ended_at=wall,
                            actual_s=actual,
                            reason="interrupted",
                            dose_j_cm2=dose,
                        )
                    )
                self._conn.execute("COMMIT")
            except BaseException:
                _rollback(self._conn)
                raise
        except sqlite3.Error as error:
            raise StorageError(f"{self.path}: {error}") from error
        return closed

    def seconds_between(self, panel: str, start: datetime, end: datetime) -> float:
        """Seconds ``panel`` was on in sessions that started in ``[start, end)``."""
        row = self._fetchone(
            "SELECT COALESCE(SUM(actual_s), 0) FROM sessions"
            " WHERE panel = ? AND started_epoch >= ? AND started_epoch < ?",
            (panel, _epoch(start, "start"), _epoch(end, "end")),
        )
        return float(row[0]) if row is not None else 0.0

    def day_sessions(self, day: date) -> dict[str, dict[str, float]]:
        """Every panel's closed sessions that started on local ``day``: id -> seconds on.

        "Local" is the offset each row was recorded with (the date in ``started_at``), which is
        how the core dates a session; the epoch bounds only let the index narrow the search.
        """
        midnight = datetime.combine(day, time(0), UTC).timestamp()
        try:
            raws = self._conn.execute(
                "SELECT panel, id, actual_s FROM sessions"
                " WHERE started_epoch >= ? AND started_epoch < ?"
                " AND substr(started_at, 1, 10) = ? AND actual_s IS NOT NULL",
                (midnight - _DAY_S, midnight + 2 * _DAY_S, day.isoformat()),
            ).fetchall()
        except sqlite3.Error as error:
            raise StorageError(f"{self.path}: {error}") from error
        found: dict[str, dict[str, float]] = {}
        for panel, session_id, actual_s in raws:
            found.setdefault(str(panel), {})[str(session_id)] = float(actual_s)
        return found

    def last_end(self, panel: str) -> datetime | None:
        """When the latest closed session of ``panel`` ended, or None if it never ran."""
        row = self._fetchone(
            "SELECT ended_at FROM sessions WHERE panel = ? AND ended_at IS NOT NULL"
            " ORDER BY ended_epoch DESC LIMIT 1",
            (panel,),
        )
        return None if row is None else _parse(row[0])

    def get_setting(self, key: str) -> str | None:
        """A stored setting, or None if it was never set."""
        row = self._fetchone("SELECT value FROM settings WHERE key = ?", (key,))
        return None if row is None else str(row[0])

    def sessions(self, since: datetime | None = None, panel: str | None = None) -> list[SessionRow]:
        """Sessions started since ``since``, of ``panel`` (None: no filter), oldest first."""
        params = {
            "since": None if since is None else _epoch(since, "since"),
            "panel": panel,
        }
        try:
            raws = self._conn.execute(_SELECT_SESSIONS, params).fetchall()
        except sqlite3.Error as error:
            raise StorageError(f"{self.path}: {error}") from error
        return [_row(raw) for raw in raws]

    def _fetchone(self, sql: str, params: Sequence[object]) -> Any:
        try:
            row = self._conn.execute(sql, params).fetchone()
        except sqlite3.Error as error:
            raise StorageError(f"{self.path}: {error}") from error
        return row


# ------------------------------------------------------------------------------- writer


@dataclass(frozen=True, slots=True)
class _Job:
    """One unit of work for the writer thread; ``done`` is set when it succeeded or failed."""

    operation: str
    run: Callable[[sqlite3.Connection], None] | None
    done: threading.Event | None = None


class HistoryWriter:
    """Writes the history on its own daemon thread; never blocks for long and never raises.

    Safety rule 12: the event loop only enqueues. Every failure is logged as ``storage_error``
    and counted in :attr:`errors`; the next write tries again (re-opening the database if
    needed), so a database that recovers is written to again.
    """

    def __init__(self, path: Path) -> None:
        """Start the writer thread; the database is opened lazily by the first write."""
        self.path = path
        #: How many operations failed so far (for tests and status).
        self.errors = 0
        self._queue: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._closed = False
        self._conn: sqlite3.Connection | None = None
        self._thread = threading.Thread(target=self._serve, name="redlight-history", daemon=True)
        self._thread.start()

    def session_opened(self, row: SessionRow) -> None:
        """Write a session's journal row, waiting at most :data:`JOURNAL_WAIT_S` for it."""
        done = threading.Event()
        if not self._put(_Job("session_opened", lambda conn: _insert_session(conn, row), done)):
            return
        if not done.wait(JOURNAL_WAIT_S):
            log.warning(
                "storage_slow",
                operation="session_opened",
                path=str(self.path),
                waited_s=JOURNAL_WAIT_S,
                session=row.id,
            )

    def session_closed(
        self,
        id: str,  # the name mirrors SessionRow.id and the runtime's call
        ended_at: datetime,
        actual_s: float,
        reason: str,
        dose_j_cm2: float | None,
    ) -> None:
        """Complete a session's row (enqueued; returns at once)."""
        self._put(
            _Job(
                "session_closed",
                lambda conn: _close_session(conn, id, ended_at, actual_s, reason, dose_j_cm2),
            )
        )

    def set_setting(self, key: str, value: str) -> None:
        """Store a setting (enqueued; returns at once)."""
        self._put(_Job("set_setting", lambda conn: _set_setting(conn, key, value)))

    def flush(self, timeout: float) -> bool:
        """Wait until everything queued so far was written or failed; False on timeout."""
        if self._closed:
            return not self._thread.is_alive()
        done = threading.Event()
        if not self._put(_Job("flush", None, done)):
            return False
        return done.wait(timeout)

    def close(self, timeout: float = 2.0) -> None:
        """Write what can be written within ``timeout``, then stop the thread and return."""
        if not self._closed:
            self._queue.put(_Job("close", None))
            self._closed = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            # The thread is a daemon thread: it cannot keep the process alive, but the writes
            # still queued will be lost, which must not pass quietly.
            log.error(
                "storage_error",
                operation="close",
                path=str(self.path),
                error=f"writes still pending after {timeout} s",
            )

    def _put(self, job: _Job) -> bool:
        if self._closed:
            log.error(
                "storage_error",
                operation=job.operation,
                path=str(self.path),
                error="history writer is closed",
            )
            self.errors += 1
            return False
        self._queue.put(job)
        return True

    # Everything below runs on the writer thread only.

    def _serve(self) -> None:
        while True:
            job = self._queue.get()
            if job.operation == "close":
                self._disconnect()
                return
            try:
                if job.run is not None:
                    self._write(job.operation, job.run)
            finally:
                if job.done is not None:
                    job.done.set()

    def _write(self, operation: str, run: Callable[[sqlite3.Connection], None]) -> None:
        try:
            if self._conn is None:
                self._conn = _connect(self.path)
            # One statement per job in autocommit mode: each write is its own transaction.
            run(self._conn)
        except Exception as error:  # rule 12: the writer thread must outlive any failure
            self.errors += 1
            log.error(
                "storage_error",
                operation=operation,
                path=str(self.path),
                error=str(error) or type(error).__name__,
            )
            # Whatever went wrong (lock, full disk, file replaced or corrupted), start from a
            # fresh connection on the next write.
            self._disconnect()

    def _disconnect(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except sqlite3.Error as error:
                log.error("storage_error", operation="close", path=str(self.path), error=str(error))
            self._conn = None


__all__ = [
    "BUSY_TIMEOUT_S",
    "JOURNAL_WAIT_S",
    "SCHEMA_VERSION",
    "History",
    "HistoryWriter",
    "SessionRow",
    "StorageError",
]
