"""The journal as a state of the session, end to end (safety rules 8 and 12): the real daemon,
its history locked by another connection, still switches a session on, after JOURNAL_WAIT_S.

The locked database's write fails only after SQLite's busy timeout (``BUSY_TIMEOUT_S``, 0.2 s),
so the journal row cannot be acknowledged before JOURNAL_WAIT_S (0.1 s) has passed: the ON
is held that long, and goes out on the wait's end, with ``storage_slow``.
"""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from redlight.core import JOURNAL_WAIT_S
from redlight.storage import BUSY_TIMEOUT_S
from tests.integration.harness import System, is_off, is_on, until

pytestmark = pytest.mark.integration

#: Past the wait: the command's way to the daemon and the ON's way to the plug, on a busy
#: 2-core machine. Far below the seconds a daemon that waited for the disk would need.
SLACK_S = 0.5


async def rows_landed(system: System, count: int) -> list[sqlite3.Row]:
    """The history's sessions once there are ``count`` complete ones (bounded)."""
    async with asyncio.timeout(15):
        while True:
            rows = [row for row in system.history() if row["ended_at"] is not None]
            if len(rows) >= count:
                return rows
            await asyncio.sleep(0.1)  # polling a file for a condition, with a deadline


async def test_a_locked_history_holds_the_on_for_journal_wait_s(system: System) -> None:
    """With the database locked mid-run, a start's ON goes out JOURNAL_WAIT_S after the
    command (not sooner: the row could not be acknowledged; not much later: nothing waits for
    the disk), storage_slow says so, the OFF is on time, and the row lands after the lock."""
    assert BUSY_TIMEOUT_S > JOURNAL_WAIT_S  # what makes the wait's end come first
    daemon = await system.up(["tasmota"])
    plug = system.plugs["tasmota"]
    loop = asyncio.get_running_loop()
    locker = sqlite3.connect(system.db, isolation_level=None)
    try:
        locker.execute("BEGIN EXCLUSIVE")
        asked = loop.time()
        system.command("tasmota", {"action": "start", "duration": 2})
        await until(plug, is_on)
        on_after_s = loop.time() - asked
        slow = await daemon.wait_logged("storage_slow")
        await until(plug, is_off)
        [(on_at, off_at)] = plug.on_intervals
        await daemon.wait_logged("storage_error")
    finally:
        locker.close()  # rolls the open transaction back: the writer's retry lands
    [row] = await rows_landed(system, 1)
    assert JOURNAL_WAIT_S <= on_after_s < JOURNAL_WAIT_S + SLACK_S
    assert (slow["operation"], slow["waited_s"], slow["session"]) == (
        "session_opened",
        JOURNAL_WAIT_S,
        row["id"],
    )
    assert off_at is not None
    # Rule 12: the deadline counts from the start, and the OFF is not late for the disk.
    assert on_at < off_at < asked + 2 + SLACK_S
    assert (row["reason"], plug.on_commands) == ("completed", 1)
