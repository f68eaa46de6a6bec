"""A quarter of one core for the daemon: a cgroup v1 ``cpu`` controller with a CFS quota.

``cpu.cfs_quota_us`` = 25,000 per ``cpu.cfs_period_us`` = 100,000: in every 100 ms the
daemon's threads together may run 25 ms, then they wait (are throttled) until the next period
begins. That is a stand-in for a slower board (a Raspberry Pi is roughly 3-5x slower per core),
with one difference worth knowing: a slow CPU spreads the work out, a quota runs it at full
speed and then stops it for up to 75 ms, so the worst case is a stall, not a slow step.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType
from typing import Final

from .clients import BenchError

#: Where this machine mounts the v1 ``cpu`` controller.
CPU_ROOT: Final = Path("/sys/fs/cgroup/cpu")
PERIOD_US: Final = 100_000
QUOTA_US: Final = 25_000


def unavailable() -> str | None:
    """Why a CPU quota cannot be set here, or ``None`` when it can."""
    if not (CPU_ROOT / "cpu.cfs_quota_us").exists():
        return f"no cgroup v1 cpu controller at {CPU_ROOT}"
    if not os.access(CPU_ROOT, os.W_OK):
        return f"{CPU_ROOT} is not writable (the benchmark must run as root for --quarter-core)"
    return None


class CpuQuota:
    """A cgroup of its own under :data:`CPU_ROOT` with the quota set, removed on leaving."""

    def __init__(self, name: str, quota_us: int = QUOTA_US, period_us: int = PERIOD_US) -> None:
        """Prepare (not create) ``<CPU_ROOT>/<name>-<our pid>``."""
        self.path = CPU_ROOT / f"{name}-{os.getpid()}"
        self.quota_us = quota_us
        self.period_us = period_us

    @property
    def share(self) -> float:
        """The fraction of one core the quota allows."""
        return self.quota_us / self.period_us

    def throttled(self) -> tuple[int, float]:
        """Periods in which the group was throttled, and for how long in all (s), so far."""
        stats = dict(
            line.split() for line in (self.path / "cpu.stat").read_text().splitlines() if line
        )
        return int(stats.get("nr_throttled", 0)), int(stats.get("throttled_time", 0)) / 1e9

    def __enter__(self) -> CpuQuota:
        """Create the group and set its period and quota."""
        reason = unavailable()
        if reason is not None:
            raise BenchError(reason)
        self.path.mkdir(exist_ok=True)
        (self.path / "cpu.cfs_period_us").write_text(str(self.period_us))
        (self.path / "cpu.cfs_quota_us").write_text(str(self.quota_us))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Remove the group (the daemon in it has exited by now)."""
        try:
            self.path.rmdir()
        except OSError:
            # Still a process in it (a daemon that would not die): leave it rather than hide
            # the failure that caused it; an empty group costs nothing.
            return
