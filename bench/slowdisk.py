"""A slow disk for the daemon alone, and a WAL checkpoint made to land when the benchmark says.

The disk: :file:`slowsync.c`, an ``LD_PRELOAD`` shim built here with gcc into the benchmark's
working directory, delays every ``fsync``/``fdatasync``/``sync_file_range`` of the process it
is loaded into (the daemon only, through its environment), as an SD card's slow flush would.

The checkpoint: SQLite checkpoints a WAL database on its own in the connection whose commit
leaves the WAL at ``wal_autocheckpoint`` (1,000) frames or more, inside that commit, and a
checkpoint is where ``synchronous = NORMAL`` syncs (the WAL, then the database file). So the
benchmark empties the WAL (a truncating checkpoint from its own connection, without the shim)
and pads it with 1,000 frames of a table of its own, with its automatic checkpoints off: the
daemon's next commit, whatever it is, checkpoints.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Final

from .clients import BenchError

SHIM_SOURCE: Final = Path(__file__).with_name("slowsync.c")
#: The shim's setting: milliseconds each sync is delayed.
DELAY_ENV: Final = "BENCH_SYNC_DELAY_MS"
#: SQLite's default ``wal_autocheckpoint``, in frames.
AUTOCHECKPOINT_FRAMES: Final = 1000
#: The WAL file's header, and each frame's header, in bytes (SQLite's file format).
_WAL_HEADER: Final = 32
_FRAME_HEADER: Final = 24
#: How many syncs the check times (the median is reported).
_CHECK_SYNCS: Final = 3

#: Run in a child interpreter: the median time of a few fsyncs of a one-byte file, in ms.
_FSYNC_CHECK: Final = f"""
import os, statistics, sys, tempfile, time
with tempfile.NamedTemporaryFile(dir=sys.argv[1]) as f:
    times = []
    for _ in range({_CHECK_SYNCS}):
        f.write(b"x")
        f.flush()
        at = time.perf_counter()
        os.fsync(f.fileno())
        times.append(time.perf_counter() - at)
print(statistics.median(times) * 1000)
"""


def build_shim(directory: Path) -> Path:
    """Compile :file:`slowsync.c` into ``directory``; the shared object's path."""
    gcc = shutil.which("gcc")
    if gcc is None:
        raise BenchError("--slow-disk needs gcc to build its LD_PRELOAD shim")
    directory.mkdir(parents=True, exist_ok=True)
    lib = directory / "slowsync.so"
    done = subprocess.run(  # noqa: S603 - fixed argument list
        [gcc, "-O2", "-shared", "-fPIC", "-o", str(lib), str(SHIM_SOURCE), "-ldl"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"gcc could not build the shim: {done.stderr.strip()}")
    return lib


def shim_env(lib: Path, delay_ms: int) -> dict[str, str]:
    """The environment that makes a process's syncs take ``delay_ms`` longer."""
    return {"LD_PRELOAD": str(lib), DELAY_ENV: str(delay_ms)}


def fsync_ms(directory: Path, env: dict[str, str] | None = None) -> float:
    """One fsync in a child process (median of a few), with ``env`` added: the shim's proof."""
    done = subprocess.run(  # noqa: S603 - fixed argument list
        [sys.executable, "-c", _FSYNC_CHECK, str(directory)],
        capture_output=True,
        text=True,
        env=None if env is None else dict(os.environ) | env,
        check=False,
        timeout=60,
    )
    if done.returncode != 0:
        raise BenchError(f"the fsync check failed: {done.stderr.strip()}")
    return float(done.stdout)


def wal_frames(db: Path, page_size: int) -> int:
    """Frames in ``db``'s WAL, from its size (exact only after a truncating checkpoint)."""
    wal = db.with_name(db.name + "-wal")
    size = wal.stat().st_size if wal.exists() else 0
    return max(0, (size - _WAL_HEADER) // (page_size + _FRAME_HEADER))


def pad_wal(db: Path, frames: int = AUTOCHECKPOINT_FRAMES) -> int:
    """Empty ``db``'s WAL, then fill it to at least ``frames`` frames; the frames it holds.

    Called while the daemon's writer is idle; the daemon's next commit then checkpoints.
    """
    conn = sqlite3.connect(db, timeout=5.0, isolation_level=None)
    try:
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        (page_size,) = conn.execute("PRAGMA page_size").fetchone()
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:
            raise BenchError(f"{db}: the WAL could not be emptied (busy)")
        conn.execute("CREATE TABLE IF NOT EXISTS bench_padding (b BLOB)")
        # About one page per row, in one transaction: one frame per page written.
        blob = page_size - 200
        while (held := wal_frames(db, page_size)) < frames:
            rows = max(1, frames - held)
            conn.execute("BEGIN")
            conn.executemany("INSERT INTO bench_padding (b) VALUES (zeroblob(?))", [(blob,)] * rows)
            conn.execute("COMMIT")
        return held
    finally:
        conn.close()
