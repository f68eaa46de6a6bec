"""A wall clock for tests that follows the loop's virtual time and can be stepped like NTP does."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, tzinfo
from typing import Any

import pytest

import redlight.schedules as schedules_module


class FakeWall:
    """A wall clock that follows the loop's (virtual) time, and can be stepped."""

    def __init__(self, start: datetime) -> None:
        """Start at ``start`` now."""
        self.start = start
        self.mono0 = asyncio.get_running_loop().time()
        self.offset = timedelta(0)

    def now(self, tz: tzinfo | None = None) -> datetime:
        """What ``datetime.now(tz)`` returns."""
        elapsed = asyncio.get_running_loop().time() - self.mono0
        moment = self.start + timedelta(seconds=elapsed) + self.offset
        return moment.astimezone(tz) if tz else moment.replace(tzinfo=None)

    def step(self, seconds: float) -> None:
        """The clock jumps by ``seconds`` (negative: back), as an NTP step does."""
        self.offset += timedelta(seconds=seconds)


def patch_wall(monkeypatch: pytest.MonkeyPatch) -> list[FakeWall]:
    """Make APScheduler and redlight.schedules read the wall clock put in the returned list."""
    holder: list[FakeWall] = []

    class FakeDatetime(datetime):
        @classmethod
        def now(cls, tz: tzinfo | None = None) -> Any:
            return holder[0].now(tz)

    import apscheduler.executors.base as executors
    import apscheduler.schedulers.base as base

    monkeypatch.setattr(base, "datetime", FakeDatetime)
    monkeypatch.setattr(executors, "datetime", FakeDatetime)
    monkeypatch.setattr(schedules_module, "datetime", FakeDatetime)
    return holder
