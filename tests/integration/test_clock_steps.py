"""Wall-clock steps against the real ``redlight run``, its clock moved by libfaketime.

The daemon runs under ``LD_PRELOAD=libfaketime`` with the monotonic clock left real
(``FAKETIME_DONT_FAKE_MONOTONIC=1``); its wall clock is an offset read from a file on every
call (``FAKETIME_TIMESTAMP_FILE`` with ``FAKETIME_NO_CACHE=1``), so a test steps it while the
process runs, as NTP does on a board without a real-time clock. The test process, mosquitto and
the simulated plugs keep the real clock, so the plugs' on-times are measured truthfully.
"""

from __future__ import annotations

import asyncio
import glob
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.integration.harness import System, is_off, is_on, until

pytestmark = pytest.mark.integration

#: Where Debian's ``faketime`` package puts the library (``.ci/run`` installs it).
LIBFAKETIME_GLOB = "/usr/lib/*/faketime/libfaketime.so.1"
#: A fixed day, so dates in assertions do not depend on when the test runs.
DAY = datetime(2030, 6, 15, tzinfo=UTC)


class FakeClock:
    """The daemon's wall clock: an offset from the real one, in a file libfaketime re-reads."""

    def __init__(self, path: Path) -> None:
        """Use ``path`` as libfaketime's timestamp file."""
        self.path = path
        self.offset_s = 0.0

    def set(self, moment: datetime) -> None:
        """From now on the daemon's wall clock reads ``moment`` (then runs on)."""
        self._write((moment - datetime.now(UTC)).total_seconds())

    def step(self, seconds: float) -> None:
        """The daemon's wall clock jumps by ``seconds`` (negative: back)."""
        self._write(self.offset_s + seconds)

    def _write(self, offset_s: float) -> None:
        self.offset_s = offset_s
        # Written whole and renamed: a half-written file must never be read as "no offset".
        scratch = self.path.with_suffix(".new")
        scratch.write_text(f"{offset_s:+.3f}\n")
        scratch.replace(self.path)


@pytest.fixture
def clock(system: System, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """libfaketime for every process started from here on (the daemon), in UTC.

    It needs ``system``, so that mosquitto is already running on the real clock.
    """
    found = sorted(glob.glob(LIBFAKETIME_GLOB))
    if not found:
        pytest.skip("libfaketime is not installed (apt-get install faketime; .ci/run does)")
    fake = FakeClock(tmp_path / "faketime")
    fake.set(datetime.now(UTC))
    monkeypatch.setenv("LD_PRELOAD", found[0])
    monkeypatch.setenv("FAKETIME_TIMESTAMP_FILE", str(fake.path))
    monkeypatch.setenv("FAKETIME_NO_CACHE", "1")
    monkeypatch.setenv("FAKETIME_DONT_FAKE_MONOTONIC", "1")
    monkeypatch.setenv("TZ", "UTC")
    return fake


def at(event: dict[str, object]) -> datetime:
    """An event's wall-clock time, as the daemon saw it."""
    value = event["at"]
    assert isinstance(value, str)
    return datetime.fromisoformat(value)


@pytest.mark.parametrize("step_h", [3, -3])
async def test_a_step_mid_session_ends_it_on_time(
    system: System, clock: FakeClock, step_h: int
) -> None:
    """Rule 3: a step of ±3 hours 2 s into a 6 s session; it ends after 6 s of real time,
    as `completed`, neither early nor late (while the daemon's wall clock moved by the step)."""
    clock.set(DAY.replace(hour=12))
    await system.up(["tasmota"], safety='max_on = "6s"')
    plug = system.plugs["tasmota"]
    mark = system.command("tasmota", {"action": "start", "duration": 6})
    started = await system.observer.event("session_started", since=mark, panel="tasmota")
    await until(plug, is_on)
    await asyncio.sleep(2)  # a moment inside the session, on the real clock
    clock.step(step_h * 3600)
    finished = await system.observer.event("session_finished", since=mark, panel="tasmota")
    await until(plug, is_off)
    assert finished["reason"] == "completed"
    assert finished["duration_s"] == pytest.approx(6, abs=0.5)
    [on_for] = plug.on_seconds()
    assert on_for == pytest.approx(6, abs=0.7)
    assert plug.on_commands == 1
    wall_s = (at(finished) - at(started)).total_seconds()
    assert wall_s == pytest.approx(6 + step_h * 3600, abs=2)


async def test_restart_a_day_behind_then_the_clock_syncs_keeps_daily_max(
    system: System, clock: FakeClock
) -> None:
    """Item 5: 5 s of a 10 s daily_max used; restart with the clock a day behind (no RTC,
    after a power cut); the clock syncs: today_s reads 5 again and a 6 s session is refused."""
    noon = DAY.replace(hour=12)
    clock.set(noon)
    # max_on 15 s: the 5 s and the 6 s fit in one exposure, so daily_max is what refuses.
    daemon = await system.up(["tasmota"], safety='max_on = "15s"\ndaily_max = "10s"')
    mark = system.command("tasmota", {"action": "start", "duration": 5})
    started = await system.observer.event("session_started", since=mark, panel="tasmota")
    assert at(started).date() == DAY.date()  # libfaketime is in effect
    finished = await system.observer.event("session_finished", since=mark, panel="tasmota")
    assert finished["reason"] == "completed"
    daemon.signal(signal.SIGTERM)
    assert await daemon.wait_exit() == 0

    clock.set(noon - timedelta(days=1) + timedelta(seconds=10))
    await system.start_daemon()
    mark = system.observer.mark()
    clock.set(noon + timedelta(seconds=11))
    state = await system.observer.wait(
        "redlight/panel/tasmota/state",
        lambda m: m.json()["today_s"] == 5,
        since=mark,
        within=5,
    )
    assert state.json()["today_s"] == 5
    mark = system.command("tasmota", {"action": "start", "duration": 6})
    refused = await system.observer.event("command_rejected", since=mark, panel="tasmota")
    assert refused["reason"] == "daily_max"
    assert system.plugs["tasmota"].on_commands == 1


SCHEDULE = """
[schedules.evening]
panels = ["tasmota"]
duration = "3s"
cron = "0 19 * * *"
timezone = "UTC"
"""


@pytest.mark.parametrize("lands_s", [-3, 2])
async def test_a_forward_step_just_before_a_schedule_still_runs_it(
    system: System, clock: FakeClock, lands_s: int
) -> None:
    """Item 6: cron `0 19 * * *`; the clock steps from 18:30 to 18:59:57 (or to 19:00:02,
    past the run): the schedule runs within seconds, once, and next_run becomes tomorrow's."""
    clock.set(DAY.replace(hour=18, minute=30))
    await system.up(["tasmota"], safety='max_on = "6s"', extra=SCHEDULE)
    await system.observer.wait(
        "redlight/schedule/evening/state", lambda m: m.json()["next_run"] is not None
    )
    mark = system.observer.mark()
    seven = DAY.replace(hour=19)
    stepped_at = time.monotonic()
    clock.set(seven + timedelta(seconds=lands_s))
    started = await system.observer.event(
        "session_started", since=mark, panel="tasmota", source="schedule", within=8
    )
    assert time.monotonic() - stepped_at < max(0, -lands_s) + 4
    assert seven <= at(started) < seven + timedelta(seconds=5)
    state = await system.observer.wait(
        "redlight/schedule/evening/state",
        lambda m: (m.json()["next_run"] or "").startswith("2030-06-16T19:00"),
        since=mark,
    )
    assert state.json()["enabled"] is True
    await system.observer.event("session_finished", since=mark, panel="tasmota")
    assert len(system.observer.events("session_started", since=mark)) == 1
    assert system.plugs["tasmota"].on_commands == 1
