"""Phases on a constrained machine: a slow disk during a checkpoint, and a quarter of one core.

``--slow-disk``: :data:`DUE` sessions whose deadlines fall while :data:`NEW` other sessions
start and a WAL checkpoint runs (see :mod:`bench.slowdisk`), with every fsync of the daemon
delayed by :data:`SYNC_DELAY_MS`; the same on the normal disk is the floor. The new starts
are sent :data:`LEAD_S` before the first deadline, so the first of their journal rows is the
commit that checkpoints. One short session before all that warms the daemon's history writer:
its first write after start-up creates the WAL again (two syncs), which would hold the due
sessions' own ONs and blur their lateness; that cost is the start-up's, not the checkpoint's.
Figures: how late each due OFF reached its plug, how long each new session's ON took from its
start command, and start-up to ``online`` with a fresh database.

``--quarter-core``: the 1,000-panel daemon in a cgroup limited to a quarter of one core (see
:mod:`bench.cpuquota`), a wave of :data:`QUARTER_SESSIONS` concurrent sessions; unlimited is
the floor. Figures: start-up to ``online`` and the wave's cutoff lateness.

Each scenario alternates floor and constrained runs, :data:`REPEATS` of each, each on a fresh
rig (a fresh database), with the 1-minute load average noted per run: this machine is shared.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from .clients import BenchError
from .cpuquota import CpuQuota
from .report import percentile
from .scenarios import WAIT_S, Rig, WaveResult, cutoff_wave, progress, rig, wait_quiet
from .slowdisk import build_shim, fsync_ms, pad_wal, shim_env

REPEATS: Final = 3
#: The issue's slow SD card: every sync of the daemon takes this much longer.
SYNC_DELAY_MS: Final = 200
DUE: Final = 20
NEW: Final = 20
DUE_S: Final = 5
NEW_S: Final = 2
#: The new starts go out this long before the first due deadline.
LEAD_S: Final = 0.03
#: How often the database file's size (or its rows) is looked at, to see when it was written.
_SIZE_POLL_S: Final = 0.001
#: The warm-up session's length, in seconds.
WARM_S: Final = 1
QUARTER_PANELS: Final = 1000
QUARTER_SESSIONS: Final = 100
QUARTER_SESSION_S: Final = 5


@dataclass(frozen=True, slots=True)
class CheckpointRun:
    """One run of the checkpoint scenario on one disk."""

    slow: bool
    load: float
    startup_s: float
    late_ms: list[float]
    on_ms: list[float]
    #: When the checkpoint wrote the database file, in ms after the first due deadline
    #: (``None``: it did not, so the run does not show what it should).
    checkpoint_ms: float | None
    finished: dict[str, int]


@dataclass(frozen=True, slots=True)
class QuarterRun:
    """One run of the quarter-core scenario, limited or not."""

    limited: bool
    load: float
    startup_s: float
    cpu_online_s: float
    wave: WaveResult
    throttled: tuple[int, float] = (0, 0.0)


@dataclass(slots=True)
class SlowDiskResult:
    """The shim's proof and every run."""

    fsync_ms: float
    fsync_slow_ms: float
    runs: list[CheckpointRun] = field(default_factory=list)


def _grown(path: Path, before: int, seen: list[float], stop: threading.Event) -> None:
    """Note when ``path`` first grows past ``before`` bytes (the checkpoint copying pages)."""
    while not stop.is_set():
        if path.stat().st_size > before:
            seen.append(time.perf_counter())
            return
        time.sleep(_SIZE_POLL_S)


@dataclass(frozen=True, slots=True)
class _Wave:
    """What :func:`checkpoint_wave` measured, in ms."""

    late: list[float]
    on: list[float]
    checkpoint: float | None
    finished: dict[str, int]


def _open_rows(db: Path) -> int:
    """Journal rows not closed yet in ``db``, read from a connection of the benchmark's own."""
    conn = sqlite3.connect(db, timeout=5.0)
    try:
        (count,) = conn.execute("SELECT count(*) FROM sessions WHERE ended_at IS NULL").fetchone()
        return int(count)
    finally:
        conn.close()


def _poll(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Look every :data:`_SIZE_POLL_S` until ``predicate()`` holds (nothing notifies of it)."""
    give_up = time.perf_counter() + timeout
    while not predicate():
        if time.perf_counter() > give_up:
            raise BenchError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(_SIZE_POLL_S)


def _warm_up(setup: Rig) -> None:
    """One short session, ended and journaled: the writer's connection and WAL exist."""
    rec, panel = setup.record, setup.panels[0]
    warm = rec.start_wave([panel])
    setup.observer.publish(
        f"redlight/panel/{panel}/set", json.dumps({"action": "start", "duration": f"{WARM_S}s"})
    )
    try:
        rec.wait(lambda: panel in warm.reasons, WARM_S + WAIT_S, "the warm-up session's end")
        rec.wait(lambda: rec.idle_count == len(setup.panels), WAIT_S, "every panel idle")
    finally:
        rec.end_wave()


def checkpoint_wave(setup: Rig) -> _Wave:
    """The scenario on a running rig: due lateness, new ONs, checkpoint moment."""
    rec = setup.record
    due, new = setup.panels[:DUE], setup.panels[DUE : DUE + NEW]
    _warm_up(setup)
    finished_before, _ = rec.event_counts()
    wave = rec.start_wave(due + new)
    due_body = json.dumps({"action": "start", "duration": f"{DUE_S}s"})
    for panel in due:
        setup.observer.publish(f"redlight/panel/{panel}/set", due_body)
    rec.wait(lambda: all(p in wave.on for p in due), WAIT_S, f"{DUE} ONs")
    # An ON waits for its journal row at most JOURNAL_WAIT_S: look for the rows themselves,
    # so that nothing is writing when the WAL is padded.
    _poll(lambda: _open_rows(setup.history) == DUE, WAIT_S, f"{DUE} journal rows")
    wait_quiet(setup.daemon.pid)
    pad_wal(setup.history)
    first_deadline = min(wave.on[p] for p in due) + DUE_S
    if time.perf_counter() > first_deadline - LEAD_S:
        raise BenchError("the WAL was padded too late for the deadlines (machine too busy)")
    stop = threading.Event()
    seen: list[float] = []
    watcher = threading.Thread(
        target=_grown, args=(setup.history, setup.history.stat().st_size, seen, stop), daemon=True
    )
    watcher.start()
    time.sleep(max(0.0, first_deadline - LEAD_S - time.perf_counter()))
    body = json.dumps({"action": "start", "duration": f"{NEW_S}s"})
    sent = {panel: setup.observer.publish(f"redlight/panel/{panel}/set", body) for panel in new}
    try:
        rec.wait(lambda: all(p in wave.on for p in new), WAIT_S, f"{NEW} new ONs")
        rec.wait(lambda: len(wave.off) == DUE + NEW, DUE_S + WAIT_S, "every OFF")
        rec.wait(lambda: rec.idle_count == len(setup.panels), WAIT_S, "every panel idle")
        rec.wait(lambda: len(wave.reasons) == DUE + NEW, WAIT_S, "every session_finished")
    finally:
        stop.set()
        watcher.join()
    rec.end_wave()
    completed = [p for p in due if wave.reasons.get(p) == "completed"]
    finished_after, _ = rec.event_counts()
    finished = {k: v - finished_before.get(k, 0) for k, v in finished_after.items()}
    wait_quiet(setup.daemon.pid)
    return _Wave(
        late=[(wave.off[p] - wave.on[p] - DUE_S) * 1000 for p in completed],
        on=[(wave.on[p] - sent[p]) * 1000 for p in new],
        checkpoint=(seen[0] - first_deadline) * 1000 if seen else None,
        finished={k: v for k, v in finished.items() if v},
    )


def run_slow_disk(root: Path) -> SlowDiskResult:
    """Build the shim, prove it on one fsync, then alternate normal and slow runs."""
    lib = build_shim(root / "shim")
    slow_env = shim_env(lib, SYNC_DELAY_MS)
    result = SlowDiskResult(fsync_ms=fsync_ms(root), fsync_slow_ms=fsync_ms(root, slow_env))
    progress(
        f"slow disk: fsync {result.fsync_ms:.1f} ms, with the shim {result.fsync_slow_ms:.1f} ms"
    )
    for repeat in range(REPEATS):
        for slow in (False, True):
            name = f"{'slow' if slow else 'normal'}-disk-{repeat + 1}"
            progress(f"slow disk: {name} ({DUE} OFFs due while {NEW} start, a checkpoint runs)")
            load = os.getloadavg()[0]
            with rig(root, name, DUE + NEW, env=slow_env if slow else None) as setup:
                startup = setup.start_daemon()
                wave = checkpoint_wave(setup)
                setup.daemon.stop()
            result.runs.append(
                CheckpointRun(
                    slow,
                    load,
                    startup.online_s,
                    wave.late,
                    wave.on,
                    wave.checkpoint,
                    wave.finished,
                )
            )
    return result


def run_quarter_core(root: Path) -> list[QuarterRun]:
    """Alternate unlimited and quarter-core runs of start-up and one wave of sessions."""
    runs: list[QuarterRun] = []
    for repeat in range(REPEATS):
        for limited in (False, True):
            name = f"{'quarter' if limited else 'unlimited'}-core-{repeat + 1}"
            progress(f"quarter core: {name} ({QUARTER_PANELS} panels, {QUARTER_SESSIONS} sessions)")
            load = os.getloadavg()[0]
            quota = CpuQuota("redlight-bench") if limited else None
            with (
                quota or contextlib.nullcontext(),
                rig(root, name, QUARTER_PANELS, cgroup=quota.path if quota else None) as setup,
            ):
                startup = setup.start_daemon()
                wave = cutoff_wave(setup, QUARTER_SESSIONS, QUARTER_SESSION_S)
                throttled = quota.throttled() if quota else (0, 0.0)
                setup.daemon.stop()
            runs.append(
                QuarterRun(limited, load, startup.online_s, startup.cpu_online_s, wave, throttled)
            )
    return runs


# ------------------------------------------------------------------------------ the report


def _r(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def _stats(samples: list[float]) -> dict[str, float | None]:
    if not samples:
        return {"p50": None, "p99": None, "max": None}
    return {
        "p50": _r(percentile(samples, 50)),
        "p99": _r(percentile(samples, 99)),
        "max": _r(max(samples)),
    }


def _median(values: list[float]) -> float:
    return percentile(values, 50)


def slow_disk_figures(result: SlowDiskResult) -> dict[str, Any]:
    """The JSON figures of ``--slow-disk``."""
    out: dict[str, Any] = {
        "fsync_ms": round(result.fsync_ms, 2),
        "fsync_ms_with_shim": round(result.fsync_slow_ms, 2),
    }
    for slow, key in ((False, "normal"), (True, "slow")):
        runs = [run for run in result.runs if run.slow is slow]
        late = [ms for run in runs for ms in run.late_ms]
        on = [ms for run in runs for ms in run.on_ms]
        out[f"ckpt_late_ms_{key}"] = _stats(late)
        out[f"ckpt_late_ms_max_per_run_{key}"] = [_r(max(r.late_ms, default=None)) for r in runs]
        out[f"ckpt_new_on_ms_{key}"] = _stats(on)
        out[f"ckpt_new_on_ms_max_per_run_{key}"] = [_r(max(r.on_ms, default=None)) for r in runs]
        out[f"ckpt_at_ms_per_run_{key}"] = [_r(r.checkpoint_ms) for r in runs]
        out[f"startup_s_fresh_db_{key}"] = [round(r.startup_s, 3) for r in runs]
        out[f"ckpt_completed_{key}"] = len(late)
        out[f"load_per_run_{key}"] = [round(r.load, 2) for r in runs]
    normal, slow = out["ckpt_late_ms_normal"]["max"], out["ckpt_late_ms_slow"]["max"]
    out["ckpt_late_ms_max_over_normal"] = _r(slow - normal) if None not in (normal, slow) else None
    normal_on, slow_on = out["ckpt_new_on_ms_normal"]["max"], out["ckpt_new_on_ms_slow"]["max"]
    if normal_on and slow_on is not None:
        out["ckpt_new_on_max_ratio"] = round(slow_on / normal_on, 2)
    starts = {k: _median(out[f"startup_s_fresh_db_{k}"]) for k in ("normal", "slow")}
    out["startup_fresh_db_ratio"] = round(starts["slow"] / starts["normal"], 2)
    out["startup_fresh_db_added_s"] = round(starts["slow"] - starts["normal"], 3)
    return out


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+g}"


def _per_run(values: list[float | None], unit: str) -> str:
    return " / ".join("n/a" if v is None else f"{v:g}" for v in values) + f" {unit}"


def slow_disk_rows(figs: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """The table rows of ``--slow-disk``: normal disk (the floor), then slow disk."""

    def stats(key: str) -> str:
        s = figs[key]
        return f"p50 {s['p50']} / p99 {s['p99']} / max {s['max']} ms"

    rows = [
        (
            f"fsync of one byte (median of 3), without / with the shim (+{SYNC_DELAY_MS} ms)",
            f"{figs['fsync_ms']:.1f} ms",
            f"{figs['fsync_ms_with_shim']:.1f} ms",
        )
    ]
    for key, disk in (("normal", "normal disk (floor)"), ("slow", f"fsync +{SYNC_DELAY_MS} ms")):
        rows += [
            (
                f"cutoff lateness, {DUE} OFFs due as {NEW} start and a checkpoint runs, {disk}",
                stats(f"ckpt_late_ms_{key}"),
                f"max per run {_per_run(figs[f'ckpt_late_ms_max_per_run_{key}'], 'ms')}",
            ),
            (
                f"  start -> ON of the {NEW} new sessions, {disk}",
                stats(f"ckpt_new_on_ms_{key}"),
                f"max per run {_per_run(figs[f'ckpt_new_on_ms_max_per_run_{key}'], 'ms')}",
            ),
            (
                f"  checkpoint wrote the database, ms after the first deadline, {disk}",
                _per_run(figs[f"ckpt_at_ms_per_run_{key}"], "ms"),
                f"load {_per_run(figs[f'load_per_run_{key}'], '')}".rstrip(),
            ),
            (
                f"  start-up to 'online', fresh database, {DUE + NEW} panels, {disk}",
                _per_run(figs[f"startup_s_fresh_db_{key}"], "s"),
                "",
            ),
        ]
    rows += [
        (
            "slow disk against the floor: cutoff max / new ON max / start-up (median)",
            f"{_signed(figs['ckpt_late_ms_max_over_normal'])} ms (goal +0)",
            f"{figs.get('ckpt_new_on_max_ratio', 'n/a')}x / {figs['startup_fresh_db_ratio']}x "
            f"(+{figs['startup_fresh_db_added_s']} s)",
        )
    ]
    return rows


def quarter_core_figures(runs: list[QuarterRun]) -> dict[str, Any]:
    """The JSON figures of ``--quarter-core``."""
    out: dict[str, Any] = {}
    for limited, key in ((False, "unlimited"), (True, "quarter")):
        mine = [run for run in runs if run.limited is limited]
        late = [ms for run in mine for ms in run.wave.late_ms]
        out[f"q_late_ms_{key}"] = _stats(late)
        out[f"q_late_ms_max_per_run_{key}"] = [_r(max(r.wave.late_ms, default=None)) for r in mine]
        out[f"q_late_ms_p99_per_run_{key}"] = [
            _r(percentile(r.wave.late_ms, 99)) if r.wave.late_ms else None for r in mine
        ]
        out[f"q_startup_s_{key}"] = [round(r.startup_s, 3) for r in mine]
        out[f"q_cpu_to_online_s_{key}"] = [round(r.cpu_online_s, 3) for r in mine]
        out[f"q_completed_{key}"] = len(late)
        out[f"q_load_per_run_{key}"] = [round(r.load, 2) for r in mine]
        if limited:
            out["q_throttled_periods_per_run"] = [r.throttled[0] for r in mine]
            out["q_throttled_s_per_run"] = [round(r.throttled[1], 2) for r in mine]
    starts = {k: _median(out[f"q_startup_s_{k}"]) for k in ("unlimited", "quarter")}
    out["q_startup_ratio"] = round(starts["quarter"] / starts["unlimited"], 2)
    maxes = {k: out[f"q_late_ms_{k}"]["max"] for k in ("unlimited", "quarter")}
    if None not in maxes.values():
        out["q_late_ms_max_over_unlimited"] = _r(maxes["quarter"] - maxes["unlimited"])
    return out


def quarter_core_rows(figs: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """The table rows of ``--quarter-core``: unlimited (the floor), then a quarter core."""
    rows = []
    for key, label in (("unlimited", "unlimited (floor)"), ("quarter", "a quarter of one core")):
        s = figs[f"q_late_ms_{key}"]
        rows += [
            (
                f"cutoff lateness, {QUARTER_SESSIONS} concurrent sessions, {label}",
                f"p50 {s['p50']} / p99 {s['p99']} / max {s['max']} ms",
                f"max per run {_per_run(figs[f'q_late_ms_max_per_run_{key}'], 'ms')}",
            ),
            (
                f"  start-up to 'online', {QUARTER_PANELS} panels, {label}",
                _per_run(figs[f"q_startup_s_{key}"], "s"),
                f"CPU {_per_run(figs[f'q_cpu_to_online_s_{key}'], 's')}; "
                f"load {_per_run(figs[f'q_load_per_run_{key}'], '')}".rstrip(),
            ),
        ]
    rows += [
        (
            "  periods throttled / time throttled per run, a quarter of one core",
            _per_run(figs["q_throttled_periods_per_run"], ""),
            _per_run(figs["q_throttled_s_per_run"], "s"),
        ),
        (
            "quarter core against the floor: cutoff max (goal < 20 ms) / start-up (median)",
            f"+{figs.get('q_late_ms_max_over_unlimited', 'n/a')} ms "
            f"(max {figs['q_late_ms_quarter']['max']} ms: "
            f"{'met' if (figs['q_late_ms_quarter']['max'] or 1e9) < 20 else 'MISSED'})",
            f"{figs['q_startup_ratio']}x",
        ),
    ]
    return rows
