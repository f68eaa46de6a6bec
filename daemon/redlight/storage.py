"""Session history in SQLite: a synchronous reader and a writer on its own thread.

Every session gets a row when it opens (``ended_at`` NULL: the journal) and the row is completed
when it closes; rows left open by a crash are closed as ``interrupted`` at the next start
(safety rule 8). The daemon writes through :class:`HistoryWriter`, whose thread is the only one
that waits for the disk, so a locked, corrupt or full database is reported loudly but never
delays an OFF (safety rule 12); the writes it could not make are kept and retried, and a file
deleted or replaced under it is noticed and created again.
"""

from __future__ import annotations

import contextlib
import os
import queue
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from datetime import time as clock_time
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Final, Self

import structlog

log = structlog.get_logger("redlight.storage")

#: How long a statement waits for another connection's lock before failing. Short, because the
#: writer thread would rather report a locked database than fall behind the sessions it records.
BUSY_TIMEOUT_S: Final = 0.2

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


def unusable(path: Path) -> tuple[str, bool] | None:
    """Why the history cannot be kept at ``path``, and whether that holds for every user
    (``False``: only for this one; the daemon may run as another), or ``None``.

    An existing path must be a file; what is missing must be creatable under the nearest
    existing directory. Root passes every permission test, so for it only the first kind is
    left: a directory or a file where the other must be.
    """
    if path.exists():
        if not path.is_file():
            return f"{path} is not a file", True
        if not os.access(path, os.R_OK | os.W_OK):
            return f"{path} is not readable and writable by this user", False
        return None
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return f"cannot create {path}: {parent} is not a directory", True
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot create {path}: {parent} is not writable by this user", False
    return None


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
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        # Idempotent, because the writer retries and re-inserts: a journal row never overwrites
        # a row already there, and a complete row completes it.
        " ON CONFLICT (id) DO UPDATE SET ended_at = excluded.ended_at,"
        " ended_epoch = excluded.ended_epoch, actual_s = excluded.actual_s,"
        " reason = excluded.reason, dose_j_cm2 = excluded.dose_j_cm2"
        " WHERE excluded.ended_at IS NOT NULL",
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
) -> bool:
    """Complete a journal row; False if there is none."""
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
    return cursor.rowcount > 0


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
        midnight = datetime.combine(day, clock_time(0), UTC).timestamp()
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

    def has_sessions(self) -> bool:
        """Whether the history holds any session at all (``redlight history``: none yet?)."""
        return self._fetchone("SELECT 1 FROM sessions LIMIT 1", ()) is not None

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

#: How many writes the writer keeps while the database cannot take them. A write is a few
#: hundred bytes, so the buffer stays under ~5 MB; and since a session's close is merged into
#: its journal row while both wait, 10,000 is ten thousand sessions: more than a day of a
#: hundred panels running back to back (a panel has at most 96 sessions a day at max_on).
CAPACITY: Final = 10_000

#: The first retry after a failed write, doubled per failure up to :data:`RETRY_MAX_S`: a lock
#: held for a moment is retried almost at once, a full disk costs one attempt every 10 s.
RETRY_MIN_S: Final = 0.1
RETRY_MAX_S: Final = 10.0

#: While the same error repeats, ``storage_error`` is logged at most this often.
STILL_FAILING_LOG_S: Final = 60.0


class _Ack:
    """Tells whoever waits for a journal row, once, that it is committed or will not be soon.

    Set on the writer thread, or in the caller's when the writer is closed (the row never
    reaches the thread); the runtime's callback hands it to the event loop. Set again (a row
    released as the writer falls behind, then written) it does nothing: one ON per session.
    """

    __slots__ = ("_callback", "_session")

    def __init__(self, callback: Callable[[], None], session: str) -> None:
        self._callback: Callable[[], None] | None = callback
        self._session = session

    def set(self) -> None:
        callback, self._callback = self._callback, None
        if callback is None:
            return
        try:
            callback()
        except Exception as error:  # rule 12: a broken waiter must not stop the writer thread
            log.exception(
                "storage_error",
                operation="acknowledge",
                session=self._session,
                error=str(error) or type(error).__name__,
            )


@dataclass(frozen=True, slots=True)
class _Open:
    """A session's journal row, or (``ended_at`` set) the whole session once its close merged in."""

    row: SessionRow
    done: _Ack | None = None

    @property
    def operation(self) -> str:
        return "session_opened" if self.row.ended_at is None else "session_closed"


@dataclass(frozen=True, slots=True)
class _Close:
    id: str
    ended_at: datetime
    actual_s: float
    reason: str
    dose_j_cm2: float | None
    operation: ClassVar[str] = "session_closed"


@dataclass(frozen=True, slots=True)
class _Setting:
    key: str
    value: str
    operation: ClassVar[str] = "set_setting"


@dataclass(frozen=True, slots=True)
class _Flush:
    done: threading.Event


@dataclass(frozen=True, slots=True)
class _Stop:
    deadline: float  # monotonic; what is not written by then is given up


_Write = _Open | _Close | _Setting


class _Slot:
    """A place in the writer's buffer; its write may be replaced (merged, coalesced) in place."""

    __slots__ = ("item",)

    def __init__(self, item: _Write | _Flush) -> None:
        self.item = item


def _drop_rank(item: _Write) -> int:
    """Which write an overflow drops first: the lowest rank, the oldest of it.

    A finished session (0) is history only, and the oldest go first, so today's stay for the
    limits a restart restores; a lost close (1) leaves its row to be closed as ``interrupted``;
    settings (2) are one per key; the journal rows of open sessions (3) go last (rule 8).
    """
    if isinstance(item, _Open):
        return 0 if item.row.ended_at is not None else 3
    return 1 if isinstance(item, _Close) else 2


class _GiveUp(Exception):
    """A write that can never succeed (not a disk or lock problem): logged and dropped."""


def _retryable(error: Exception) -> bool:
    # Locked, full, read-only, unopenable (OperationalError), not a database or malformed
    # (plain DatabaseError), or the directory (OSError): an operator can fix these, so the
    # write waits. Anything else is a bug or bad data and would block the queue for good.
    if isinstance(error, sqlite3.OperationalError | OSError | StorageError):
        return True
    return type(error) is sqlite3.DatabaseError


_FileId = tuple[int, int]


def _file_id(path: Path) -> _FileId | None:
    """(st_dev, st_ino) of the file at ``path``, or None if there is none."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_dev, stat.st_ino


def _sidecars(path: Path) -> tuple[Path, Path]:
    return path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")


@dataclass(slots=True)
class _Episode:
    """From the first failed (or dropped) write until the buffer is empty again."""

    started: float
    attempts: int = 0  # failed attempts
    written: int = 0  # writes that landed since it started: the replay
    dropped: int = 0  # writes the full buffer dropped
    backoff_s: float = 0.0
    retry_at: float = 0.0
    error: str = ""
    logged_at: float = 0.0


class HistoryWriter:
    """Writes the history on its own daemon thread; never blocks for long and never raises.

    Safety rule 12: the event loop only enqueues. A write that fails (locked, full disk,
    read-only, directory gone) is logged as ``storage_error``, counted in :attr:`errors`, kept
    and retried in order with backoff; ``storage_recovered`` says when they landed. At most
    ``capacity`` writes wait; beyond that ``storage_overflow`` is logged once and the least
    needed write is dropped (see :func:`_drop_rank`). A database file deleted or replaced
    under the writer is noticed before the next write (``storage_replaced``) and a new one
    opened, into which the open sessions' journal rows and the settings written so far are
    written again.
    """

    def __init__(
        self,
        path: Path,
        *,
        capacity: int = CAPACITY,
        retry_s: tuple[float, float] = (RETRY_MIN_S, RETRY_MAX_S),
        fault: Callable[[str], None] | None = None,
    ) -> None:
        """Start the writer thread, which opens the database at once (see :meth:`_warm_up`).

        ``fault`` (for tests) is called on the writer thread with the operation's name at the
        start of each write attempt; what it raises is that attempt's failure.
        """
        self.path = path
        #: How many write attempts failed, and writes were given up, so far.
        self.errors = 0
        #: How many writes were dropped unwritten (buffer full, or still failing at close).
        self.dropped = 0
        self._capacity = capacity
        self._retry_min_s, self._retry_max_s = retry_s
        self._fault = fault
        self._queue: queue.SimpleQueue[_Write | _Flush | _Stop] = queue.SimpleQueue()
        self._closed = False
        # Everything below belongs to the writer thread.
        self._conn: sqlite3.Connection | None = None
        self._identity: tuple[_FileId, _FileId | None, _FileId | None] | None = None
        with contextlib.suppress(OSError):
            # The file the daemon read at start-up: one deleted before the first write is
            # noticed too (its WAL files are not this writer's, so they are left alone).
            if (found := _file_id(path)) is not None:
                self._identity = (found, None, None)
        self._pending: deque[_Slot] = deque()
        self._writes = 0  # writes in _pending (flush markers do not count)
        self._opens: dict[str, _Slot] = {}  # session id -> its journal row, still pending
        self._settings: dict[str, _Slot] = {}  # key -> its pending write
        self._journal: dict[str, SessionRow] = {}  # journal rows written, not closed yet
        self._written_settings: dict[str, str] = {}
        self._episode: _Episode | None = None
        self._deadline: float | None = None
        self._thread = threading.Thread(target=self._serve, name="redlight-history", daemon=True)
        self._thread.start()

    def session_opened(
        self, row: SessionRow, acknowledged: Callable[[], None] | None = None
    ) -> None:
        """Write a session's journal row (enqueued; returns at once).

        ``acknowledged`` is called exactly once, on the writer thread, after the row is
        committed; or as soon as it will not be soon (writes are failing or behind, the buffer
        dropped it, the write was given up), since the session's ON waits for it (rule 8) and
        must not wait on a sick disk (rule 12). On a closed writer it is called at once, in the
        caller's thread. What it raises is logged as ``storage_error``, never passed on.
        """
        done = _Ack(acknowledged, row.id) if acknowledged is not None else None
        if not self._put(_Open(row, done)) and done is not None:
            done.set()

    def session_closed(
        self,
        id: str,  # the name mirrors SessionRow.id and the runtime's call
        ended_at: datetime,
        actual_s: float,
        reason: str,
        dose_j_cm2: float | None,
    ) -> None:
        """Complete a session's row (enqueued; returns at once)."""
        self._put(_Close(id, ended_at, actual_s, reason, dose_j_cm2))

    def set_setting(self, key: str, value: str) -> None:
        """Store a setting (enqueued; returns at once)."""
        self._put(_Setting(key, value))

    def flush(self, timeout: float) -> bool:
        """Wait until everything queued so far was written (or given up); False on timeout."""
        if self._closed:
            return not self._thread.is_alive()
        done = threading.Event()
        if not self._put(_Flush(done)):
            return False
        return done.wait(timeout)

    def close(self, timeout: float = 2.0) -> None:
        """Write what can be written within ``timeout``, then stop the thread and return."""
        if not self._closed:
            # Stop retrying a little early, so an attempt under way (a lock waits up to
            # BUSY_TIMEOUT_S) still ends within the timeout.
            self._queue.put(_Stop(time.monotonic() + max(0.0, timeout - BUSY_TIMEOUT_S)))
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

    def _put(self, item: _Write | _Flush) -> bool:
        if self._closed:
            log.error(
                "storage_error",
                operation=getattr(item, "operation", "flush"),
                path=str(self.path),
                error="history writer is closed",
            )
            self.errors += 1
            return False
        self._queue.put(item)
        return True

    # Everything below runs on the writer thread only.

    def _serve(self) -> None:
        self._warm_up()
        while True:
            self._take(self._wait_s())
            episode = self._episode
            if self._pending and (episode is None or time.monotonic() >= episode.retry_at):
                self._drain()
            if self._deadline is not None and (
                self._writes == 0 or time.monotonic() >= self._deadline
            ):
                self._stop()
                return

    def _warm_up(self) -> None:
        """Open the database and start its WAL before the first write asks for it.

        The first frame written to an empty WAL (a new file, or one a checkpoint emptied)
        syncs its header, and a new file its directory too: two syncs, which would otherwise
        land on the first journal row, whose ON waits for them (rule 8). Measured with every
        sync 200 ms slower: the first acknowledgement after start-up took 403 ms; after this
        it costs what any other does. Rewriting the schema version is that first frame. A
        failure here is the first write's to report and retry.
        """
        with contextlib.suppress(StorageError, sqlite3.Error, OSError):
            conn = self._connection()
            conn.execute(f"PRAGMA user_version = {int(SCHEMA_VERSION)}")

    def _wait_s(self) -> float | None:
        """How long to wait for new work: until the next retry is due, or the stop's deadline."""
        now = time.monotonic()
        wait: float | None = None
        if self._pending:
            wait = 0.0 if self._episode is None else max(0.0, self._episode.retry_at - now)
        if self._deadline is not None:
            left = max(0.0, self._deadline - now)
            wait = left if wait is None else min(wait, left)
        return wait

    def _take(self, wait: float | None) -> None:
        """Move what was enqueued into the buffer, waiting up to ``wait`` s for the first item."""
        try:
            item = self._queue.get(timeout=wait)
            while True:
                self._accept(item)
                item = self._queue.get_nowait()
        except queue.Empty:
            return

    def _accept(self, item: _Write | _Flush | _Stop) -> None:
        if isinstance(item, _Stop):
            self._deadline = item.deadline
            if self._episode is not None:
                self._episode.retry_at = 0.0  # one more try now, not after a long backoff
            return
        if isinstance(item, _Close) and item.id in self._opens:
            # Its journal row is still waiting: write the whole session as one row instead.
            slot = self._opens.pop(item.id)
            assert isinstance(slot.item, _Open)
            row = replace(
                slot.item.row,
                ended_at=item.ended_at,
                actual_s=item.actual_s,
                reason=item.reason,
                dose_j_cm2=item.dose_j_cm2,
            )
            slot.item = _Open(row, slot.item.done)
            return
        if isinstance(item, _Setting) and item.key in self._settings:
            self._settings[item.key].item = item  # only the last value counts
            return
        slot = _Slot(item)
        self._pending.append(slot)
        if isinstance(item, _Flush):
            return
        if isinstance(item, _Open):
            self._opens[item.row.id] = slot
            if self._episode is not None and item.done is not None:
                item.done.set()  # the writer is behind: waiting would only delay the ON
        elif isinstance(item, _Setting):
            self._settings[item.key] = slot
        self._writes += 1
        if self._writes > self._capacity:
            self._drop_one()

    def _drop_one(self) -> None:
        victim, rank = 0, 4
        for index, slot in enumerate(self._pending):
            if not isinstance(slot.item, _Flush) and _drop_rank(slot.item) < rank:
                victim, rank = index, _drop_rank(slot.item)
                if rank == 0:
                    break
        slot = self._pending[victim]
        del self._pending[victim]
        self._forget(slot)
        assert not isinstance(slot.item, _Flush)
        self._writes -= 1
        self.dropped += 1
        episode = self._begin_episode()
        episode.dropped += 1
        if episode.dropped == 1:
            log.error(
                "storage_overflow",
                path=str(self.path),
                capacity=self._capacity,
                dropped=episode.dropped,
                operation=slot.item.operation,
                detail="more writes waiting than the buffer holds; storage_recovered counts them",
            )

    def _forget(self, slot: _Slot) -> None:
        """Take a slot that leaves the buffer out of the indexes, and release its waiter."""
        item = slot.item
        if isinstance(item, _Open):
            if self._opens.get(item.row.id) is slot:
                del self._opens[item.row.id]
            if item.done is not None:
                item.done.set()
        elif isinstance(item, _Setting) and self._settings.get(item.key) is slot:
            del self._settings[item.key]

    def _begin_episode(self) -> _Episode:
        if self._episode is None:
            self._episode = _Episode(started=time.monotonic())
            # Nobody needs to wait for a journal row that is not coming soon.
            for slot in self._pending:
                if isinstance(slot.item, _Open) and slot.item.done is not None:
                    slot.item.done.set()
        return self._episode

    def _drain(self) -> None:
        """Write the buffer in order until it is empty or a write fails."""
        while self._pending:
            slot = self._pending[0]
            item = slot.item
            if isinstance(item, _Flush):
                self._pending.popleft()
                item.done.set()
                continue
            try:
                self._write(item)
            except Exception as error:  # rule 12: the writer thread must outlive any failure
                if _retryable(error):
                    self._failed(item, error)
                    return
                self.errors += 1
                log.error(
                    "storage_error",
                    operation=item.operation,
                    path=str(self.path),
                    error=str(error) or type(error).__name__,
                    retrying=False,
                )
            else:
                if self._episode is not None:
                    self._episode.written += 1
            self._pending.popleft()
            self._writes -= 1
            self._forget(slot)
            self._take(0.0)  # new work joins the buffer (merged, counted) while it drains
            if self._deadline is not None and time.monotonic() >= self._deadline:
                return
        if self._episode is not None:
            self._recovered()

    def _write(self, item: _Write) -> None:
        if self._fault is not None:
            self._fault(item.operation)
        conn = self._connection()
        # One statement per write in autocommit mode: each write is its own transaction.
        if isinstance(item, _Open):
            _insert_session(conn, item.row)
            if item.row.ended_at is None:
                self._journal[item.row.id] = item.row
        elif isinstance(item, _Setting):
            _set_setting(conn, item.key, item.value)
            self._written_settings[item.key] = item.value
        else:
            if not _close_session(
                conn, item.id, item.ended_at, item.actual_s, item.reason, item.dose_j_cm2
            ):
                journal = self._journal.get(item.id)
                if journal is None:
                    # Its journal row was never written (dropped, or an earlier writer's):
                    # say so rather than let the history silently miss a session.
                    raise _GiveUp(f"session {item.id} has no journal row to close")
                # The row vanished from under us: write the whole session.
                _insert_session(
                    conn,
                    replace(
                        journal,
                        ended_at=item.ended_at,
                        actual_s=item.actual_s,
                        reason=item.reason,
                        dose_j_cm2=item.dose_j_cm2,
                    ),
                )
            self._journal.pop(item.id, None)

    def _connection(self) -> sqlite3.Connection:
        self._check_file()
        if self._conn is None:
            conn = _connect(self.path)
            try:
                # After a failure, and above all in a new file: the open sessions' journal rows
                # (rule 8) and the settings must be there again (all idempotent).
                for row in self._journal.values():
                    _insert_session(conn, row)
                for key, value in self._written_settings.items():
                    _set_setting(conn, key, value)
                wal, shm = _sidecars(self.path)
                main = _file_id(self.path)
                if main is None:
                    raise StorageError(f"{self.path} vanished while it was opened")
                self._identity = (main, _file_id(wal), _file_id(shm))
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _check_file(self) -> None:
        """Notice a database file deleted or replaced under the writer; start a new one.

        SQLite goes on writing into a deleted file without an error, and a replaced one keeps
        its old WAL file next to it, which SQLite would apply to the new file: so the old
        connection is closed and its WAL and shared-memory files removed (only while they are
        still the ones it had open) before the next connection opens whatever is at the path.
        """
        if self._identity is None:
            return
        main, *sidecars = self._identity
        found = _file_id(self.path)
        if found == main:
            return
        stale: list[Path] = []
        if self._conn is not None:  # its open files keep their inodes: a match is ours
            stale = [
                side
                for side, known in zip(_sidecars(self.path), sidecars, strict=True)
                if known is not None and _file_id(side) == known
            ]
        self._disconnect()
        for side in stale:
            side.unlink(missing_ok=True)
        self._identity = None
        log.error(
            "storage_replaced",
            path=str(self.path),
            found="no file" if found is None else "another file",
            detail="the rows in the old file are gone from here; writing to a new one",
            journal_rows=len(self._journal),
        )

    def _failed(self, item: _Write, error: Exception) -> None:
        self.errors += 1
        now = time.monotonic()
        text = str(error) or type(error).__name__
        episode = self._begin_episode()
        episode.attempts += 1
        episode.backoff_s = min(self._retry_max_s, max(self._retry_min_s, episode.backoff_s * 2))
        episode.retry_at = now + episode.backoff_s
        if (
            episode.attempts == 1
            or text != episode.error
            or now - episode.logged_at >= STILL_FAILING_LOG_S
        ):
            episode.logged_at = now
            log.error(
                "storage_error",
                operation=item.operation,
                path=str(self.path),
                error=text,
                retrying=True,
                attempts=episode.attempts,
                pending=self._writes,
                retry_in_s=round(episode.backoff_s, 3),
            )
        episode.error = text
        # A file deleted or replaced is best noticed now, while this connection still holds
        # its WAL files; then whatever went wrong, start from a fresh connection.
        with contextlib.suppress(OSError):
            self._check_file()
        self._disconnect()

    def _recovered(self) -> None:
        assert self._episode is not None
        episode, self._episode = self._episode, None
        (log.warning if episode.dropped else log.info)(
            "storage_recovered",
            path=str(self.path),
            replayed=episode.written,
            failed_attempts=episode.attempts,
            dropped=episode.dropped,
            after_s=round(time.monotonic() - episode.started, 3),
        )

    def _stop(self) -> None:
        if self._writes:
            lost = self._writes
            self.dropped += lost
            log.error(
                "storage_error",
                operation="close",
                path=str(self.path),
                error=f"{lost} writes could not be written before the writer stopped",
                lost=lost,
                overflow_dropped=0 if self._episode is None else self._episode.dropped,
            )
        for slot in self._pending:
            self._forget(slot)
        self._pending.clear()
        self._writes = 0
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
    "CAPACITY",
    "RETRY_MAX_S",
    "RETRY_MIN_S",
    "SCHEMA_VERSION",
    "History",
    "HistoryWriter",
    "SessionRow",
    "StorageError",
]
