"""The fault matrix's rig: its settings and the notes RELIABILITY.md explains them with, the
steps a case is written in, the checks of THE INVARIANT, and the faults the cases inject.

``tests/integration/test_faults.py`` holds the matrix itself (each case a scenario built from
these); ``tests/integration/reliability.py`` turns its rows into the report.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Iterator, Mapping
from typing import Any, Final

from redlight.mqtt import RECONNECT_MIN_DELAY
from redlight.simplug import SimulatedPlug
from tests.integration.harness import WAIT_S, Daemon, System, is_off, until
from tests.integration.reliability import Row

# ---------------------------------------------------------------------------- settings

MAX_ON_S: Final = 6.0
CONFIRM_S: Final = 1.0
MARGIN_S: Final = 3.0
SAFETY: Final = (
    f'max_on = "{MAX_ON_S:g}s"\n'
    f'confirm_timeout = "{CONFIRM_S:g}s"\n'
    f'failsafe_margin = "{MARGIN_S:g}s"'
)
#: ``safety.poll_interval`` in the cases that need a poll (the shortest allowed).
POLL_S: Final = 5.0
#: How late an OFF redlight controls may be. CONFIRM_S covers one lost OFF (it is re-sent
#: after confirm_timeout, safety rule 4); 1.5 s more is scheduling slack for a Python daemon, a
#: broker and this test sharing two cores with the rest of CI (OFFs measured here take ~0.05 s).
GRACE_S: Final = CONFIRM_S + 1.5
#: What the failsafe_margin must exceed so that a plug-side timer never hides a late OFF:
#: in cases redlight controls, each test also checks that the plug's own timer did not fire.
assert MARGIN_S > GRACE_S

NOTES: Final = f"""\
Settings of every case: `max_on` {MAX_ON_S:g} s, `confirm_timeout` {CONFIRM_S:g} s,
`failsafe_margin` {MARGIN_S:g} s, sessions of 2-4 s. **Grace {GRACE_S:g} s** = one
`confirm_timeout` (a lost OFF is re-sent after it) + 1.5 s of scheduling slack on a small
shared machine. The invariant: every on-interval redlight could control lasted at most
`max_on` + grace and ended at most grace after its session's deadline; intervals while the
daemon, the broker or the plug's link was gone are held to the plug's own failsafe
(session + margin) or to the moment redlight could reach the plug again + grace. *Deadline →
OFF* is measured on the test's loop clock from the plug's on-intervals, the deadline being the
plug's ON + the session length (redlight times it from just before the ON, which waits for the
journal row, so an OFF exactly on time reads a few hundredths negative); it is negative when
the session was stopped early, about +{MARGIN_S:g} s where the plug's own timer ended it, and
"-" where no session had a deadline. For ONs redlight did not start, the deadline is max_on
after redlight could first see the ON.

**The bound on what redlight cannot see** (README, "What redlight cannot see"): an ON redlight
did not cause counts from the plug's last OFF report once there was a gap in redlight's view
(an outage, an availability message, an unanswered poll), so an ON hidden longer than `max_on`
is switched off within a round trip of the plug saying `online` again, or at the next
`poll_interval` if it says nothing; `max_on` + `poll_interval` where a report was lost without
any gap. The `broker_restart`/idle case with three plugs below shows it on a real broker, with
each firmware publishing on its return what its real firmware does (Tasmota and Shelly Gen2
only `online`, the generic plug nothing).
"""


# ---------------------------------------------------------------------------- steps and checks


def now() -> float:
    """The loop clock the simulated plugs and the observer time everything with."""
    return asyncio.get_running_loop().time()


def routine(first: str, second: str) -> str:
    """A routine whose pause step (3 s) is long enough to put a fault in."""
    return f"""
[routines.sides]
name = "Both sides"
steps = [
  {{ panels = ["{first}"], duration = "2s" }},
  {{ pause = "3s", prompt = "Turn over" }},
  {{ panels = ["{second}"], duration = "2s" }},
]
"""


async def up(system: System, presets: list[str], **options: Any) -> Daemon:
    """Plugs and the daemon with the matrix's safety settings."""
    return await system.up(presets, safety=SAFETY, **options)


async def start_session(system: System, name: str, seconds: float) -> float:
    """Start a session and wait until the plug confirmed ON; when the relay went on.

    Right after an outage the start may be refused as ``plug_state_unknown`` (redlight has not
    heard from the plug since): then, as the refusal says, again once the plug has answered.
    """
    mark = system.command(name, {"action": "start", "duration": seconds})
    answer = await system.observer.wait(
        "redlight/event",
        lambda m: (
            m.json().get("panel") == name
            and m.json().get("event_type") in ("session_started", "command_rejected")
        ),
        since=mark,
    )
    if answer.json()["event_type"] == "command_rejected":
        assert answer.json()["reason"] == "plug_state_unknown", answer.json()
        await system.observer.wait(
            f"redlight/panel/{name}/state", lambda m: m.json()["plug"] == "off", since=mark
        )
        mark = system.command(name, {"action": "start", "duration": seconds})
        await system.observer.event("session_started", since=mark, panel=name)
    await system.observer.wait(
        f"redlight/panel/{name}/state",
        lambda m: m.json()["plug"] == "on" and m.json()["state"] == "running",
        since=mark,
    )
    return system.plugs[name].on_intervals[-1][0]


async def to_pause(system: System) -> float:
    """Start the routine and return when its pause step begins (its loop time)."""
    mark = system.observer.mark()
    system.observer.publish("redlight/routine/sides/set", "START")
    await system.observer.event("routine_step", since=mark, within=WAIT_S, step=2)
    return now()


def closed(plug: SimulatedPlug, index: int = -1) -> tuple[float, float]:
    """An on-interval that has ended."""
    start, end = plug.on_intervals[index]
    assert end is not None, f"{plug.panel_id} is still on"
    return start, end


def late(plug: SimulatedPlug, seconds: float, index: int = -1) -> float:
    """Seconds from a session's deadline (``seconds`` after the ON) to the plug's OFF."""
    start, end = closed(plug, index)
    return end - (start + seconds)


def assert_invariant(
    system: System, uncontrolled: Mapping[tuple[str, int], tuple[float, str]] | None = None
) -> None:
    """THE INVARIANT: no plug is on, and each on-interval redlight could control lasted at most
    max_on + grace; ``uncontrolled`` gives the other intervals' bounds (as on-time in seconds).
    """
    bounds = uncontrolled or {}
    for name, plug in system.plugs.items():
        assert not plug.is_on, f"{name} is still on"
        for index, (start, end) in enumerate(plug.on_intervals):
            assert end is not None
            bound, why = bounds.get((name, index), (MAX_ON_S + GRACE_S, "max_on + grace"))
            assert end - start <= bound, (
                f"{name} was on {end - start:.2f} s > {bound:.2f} s ({why})"
            )


def assert_on_time(seconds: float) -> None:
    """Safety rule 2: OFF at the end of its own session, give or take the grace."""
    assert seconds <= GRACE_S, f"OFF came {seconds:.2f} s after the deadline (grace {GRACE_S} s)"


async def history(system: System, count: int) -> list[str]:
    """The end reasons in the history once ``count`` sessions are closed (or what is there)."""
    reasons: list[str] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(WAIT_S):
            while True:  # the writer thread commits shortly after the event: poll, bounded
                rows = system.history()
                reasons = [row["reason"] or "open" for row in rows]
                if len(rows) >= count and "open" not in reasons:
                    break
                await asyncio.sleep(0.05)
    return reasons


async def stopped(daemon: Daemon, within: float = WAIT_S) -> int:
    """Wait for the daemon to exit; its exit code."""
    return await daemon.wait_exit(within)


async def offline(system: System, since: int) -> None:
    """Wait for redlight's will (or its own goodbye) to say offline."""
    await system.observer.wait("redlight/status", lambda m: m.payload == b"offline", since=since)


async def online_at(system: System, since: int, within: float = WAIT_S) -> float:
    """Wait for redlight to say online (after a start or a reconnect); when it did."""
    seen = await system.observer.wait(
        "redlight/status", lambda m: m.payload == b"online", since=since, within=within
    )
    return seen.at


async def cleared(system: System, daemon: Daemon, topic: str) -> None:
    """redlight cleared the retained message on ``topic``, and the broker holds none.

    Not only by waiting for the empty message: after a broker restart the observer may
    subscribe again after redlight cleared it. A new subscription to the topic brings a
    retained message back before the observer's own barrier message; if one still comes, the
    clearing was on its way (the log line can be written before paho's thread sends it), and
    the observer, subscribed now, sees it go by.
    """
    await daemon.wait_logged("retained_command_cleared")
    mark = system.observer.mark()
    system.observer.subscribe(topic)
    system.observer.publish("test/barrier", "")
    await system.observer.wait("test/barrier", since=mark)
    if any(m.retain and m.payload for m in system.observer.matching(topic, since=mark)):
        await system.observer.wait(topic, lambda m: m.payload == b"", since=mark)


async def barrier(system: System, panel: str) -> None:
    """Once a malformed command's rejection is out, every earlier message was handled."""
    mark = system.command(panel, "not a command")
    await system.observer.event("command_rejected", since=mark, panel=panel)


def storage_errors(daemon: Daemon) -> int:
    """How many storage failures the daemon logged."""
    return len(daemon.logged("storage_error")) + len(daemon.logged("storage_unavailable"))


def reconnect_bound(outage_s: float) -> float:
    """The longest a client may take to reconnect after an outage of ``outage_s``.

    paho's backoff doubles from RECONNECT_MIN_DELAY, so the attempt pending when the broker
    returns is at most the outage + RECONNECT_MIN_DELAY away.
    """
    return outage_s + RECONNECT_MIN_DELAY


async def ignored(plug: SimulatedPlug, count: int) -> None:
    """Wait until a deaf plug has received (and ignored) a command after the first ``count``."""
    await plug.wait_for(lambda p: len(p.commands) > count)


# ---------------------------------------------------------------------------- faults


async def reboot(system: System, name: str) -> int:
    """A plug loses power: its link drops without a goodbye and its relay goes off.

    Returns the observer mark from just before.
    """
    plug = system.plugs[name]
    link = system.links[name]
    mark = system.observer.mark()
    link.cut()
    plug.set_relay(False, report=False)  # the power is gone
    return mark


async def power_up_on(system: System, name: str, report_topic: str, since: int) -> float:
    """The rebooted plug comes back with its relay ON and reports it; when it was seen."""
    plug = system.plugs[name]
    plug.set_relay(True, report=False)  # power-on state ON: no timer, nobody asked
    system.links[name].restore()
    seen = await system.observer.wait(
        report_topic, lambda m: m.payload.lower() == b"on", since=since
    )
    return seen.at


@contextlib.contextmanager
def locked(system: System) -> Iterator[sqlite3.Connection]:
    """Another connection holding the database's write lock (a write transaction left open)."""
    conn = sqlite3.connect(system.db, isolation_level=None)
    try:
        conn.execute("BEGIN EXCLUSIVE")
        conn.execute("INSERT OR REPLACE INTO settings (key, value) VALUES ('lock', 'held')")
        yield conn
    finally:
        conn.close()  # rolls the open transaction back


def corrupt(system: System) -> None:
    """Overwrite the database (and its WAL) with garbage bytes."""
    for suffix in ("", "-wal", "-shm"):
        path = system.db.with_name(system.db.name + suffix)
        if path.exists() or not suffix:
            path.write_bytes(b"\xde\xad\xbe\xef not a database " * 256)


async def session_despite_storage(system: System, name: str, seconds: float, row: Row) -> None:
    """A session runs and ends on time although the history cannot be written (rule 12)."""
    plug = system.plugs[name]
    mark = system.observer.mark()
    await start_session(system, name, seconds)
    await system.observer.event("session_finished", since=mark, reason="completed")
    await until(plug, is_off)
    row.deadline_to_off_s = late(plug, seconds)
    assert_on_time(row.deadline_to_off_s)
    assert plug.timer_fired == 0


async def written_again(system: System) -> None:
    """Wait (bounded) until the daemon has created the database again, schema and all."""
    async with asyncio.timeout(WAIT_S):
        while True:  # the writer thread creates it on its next write: poll, bounded
            if system.db.exists():
                with contextlib.suppress(sqlite3.Error):  # created, not migrated yet
                    system.history()
                    return
            await asyncio.sleep(0.05)
