"""The fault x phase matrix: every fault redlight must survive, in each phase where it means
something, on a real mosquitto with simulated plugs of all six firmwares.

Each case asserts THE INVARIANT — every on-interval redlight could control lasted at most
``max_on + GRACE_S`` and ended no later than ``GRACE_S`` after its session's deadline — and
holds the intervals it could not control (redlight, the broker or the plug's link gone) to the
bound that applies instead: the plug's own failsafe where the preset has one, else the moment
redlight could reach the plug again. Then it checks that the history says what happened (or,
where the fault is the database itself, that the OFF was on time and ``storage_error`` logged).

Each case records a row; ``make reliability`` turns the rows into RELIABILITY.md. The rig the
cases are written with (settings, steps, checks, the faults themselves) is
``tests/integration/faultkit.py``.

Why some combinations are not cases (the phases are startup, idle, session, routine_pause,
shutdown):

- ``kill9`` x startup: a daemon killed before it is online has switched nothing on; the restart
  is then the idle case (a panel switched on while no daemon ran).
- ``sigterm`` x startup: before the signal handlers exist nothing redlight started is on, and a
  stop while the broker is away is ``broker_restart`` x shutdown.
- ``broker_restart`` x startup is the ``broker_down_at_start`` fault; ``broker_down_at_start`` has
  no other phase (in every other phase the daemon is already up: ``broker_restart``).
- ``partition`` x shutdown: for the plug that is ``broker_restart`` x shutdown (the OFF cannot
  arrive; only the plug's own timer ends the session).
- ``unresponsive`` x idle and x startup: a deaf plug gets no command to ignore while idle; a
  start then is test_daemon's unresponsive case, and start-up OFF retries are the session case's
  mechanism. x routine_pause: the same as a session step's plug going deaf.
- ``reboot_on`` x startup is ``partition`` x startup with the relay ON; x routine_pause and
  x shutdown are, for the rebooting panel, the idle and session cases.
- ``retained_*`` x session/routine_pause/shutdown: a replayed command is recognised by its retain
  flag, whatever the phase; startup (left before redlight starts) and idle (published while it
  runs, so delivered live without the flag, then replayed after a broker restart) are the two
  ways it can arrive.
- ``dup_reorder`` x idle: a late ON while idle cannot be told from a hand-switched ON and is cut
  off like one (``reboot_on`` x idle); only a session has a state a stale report can corrupt.
- ``concurrent`` x startup/shutdown: commands are not accepted then (the lines above cover it).
- ``db_unwritable`` x session/shutdown: a directory cannot become unwritable for root while the
  daemon runs; the start-up case drives the same writer-failure path.
- ``db_corrupt`` x shutdown: the writer's failure path is the locked x shutdown case's.
- ``db_deleted`` and ``db_write_fails`` x startup/shutdown: before the first write there is
  nothing to lose (startup is ``db_unwritable``), and at shutdown the writer's retries end at
  its bounded close (``db_locked`` x shutdown); the session case drives both paths.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import pytest

from redlight.storage import History
from tests.brokerkit import paho_client
from tests.integration import reliability
from tests.integration.faultkit import (
    CONFIRM_S,
    GRACE_S,
    MARGIN_S,
    MAX_ON_S,
    NOTES,
    POLL_S,
    SAFETY,
    assert_invariant,
    assert_on_time,
    barrier,
    cleared,
    closed,
    corrupt,
    history,
    ignored,
    late,
    locked,
    now,
    offline,
    online_at,
    power_up_on,
    reboot,
    reconnect_bound,
    routine,
    session_despite_storage,
    start_session,
    stopped,
    storage_errors,
    to_pause,
    up,
    written_again,
)
from tests.integration.harness import (
    DAEMON_CLIENT_ID,
    WAIT_S,
    Observer,
    System,
    is_off,
    is_on,
    until,
)
from tests.integration.reliability import ROW, Recorder, Row

pytestmark = pytest.mark.integration


# ---------------------------------------------------------------------------- the cases

Scenario = Callable[[System, Row], Awaitable[None]]


@dataclass(frozen=True)
class Case:
    """One cell of the matrix."""

    fault: str
    phase: str
    preset: str
    scenario: Scenario

    @property
    def id(self) -> str:
        """The pytest id."""
        return f"{self.fault}-{self.phase}"


CASES: list[Case] = []


def case(fault: str, phase: str, preset: str) -> Callable[[Scenario], Scenario]:
    """Register a scenario as a cell of the matrix."""

    def register(scenario: Scenario) -> Scenario:
        CASES.append(Case(fault, phase, preset, scenario))
        return scenario

    return register


# -- daemon kill -9, then a restart


@case("kill9", "idle", "esphome")
async def kill9_idle(system: System, row: Row) -> None:
    """A panel switched on by hand while the daemon is dead is switched off by the restart."""
    daemon = await up(system, ["esphome"])
    plug = system.plugs["esphome"]
    mark = system.observer.mark()
    daemon.signal(signal.SIGKILL)
    assert await stopped(daemon) == -signal.SIGKILL
    await offline(system, mark)
    plug.press_button()
    mark = system.observer.mark()
    await system.start_daemon()
    back = await online_at(system, mark)
    await until(plug, is_off)
    start, end = closed(plug)
    assert end <= back + GRACE_S  # rule 8: OFF before (or as) it says online
    row.happened = f"ON by hand while dead; restart switched it off {end - back:+.2f} s from online"
    assert_invariant(system, {("esphome", 0): (end - start, "no daemon ran: bounded by restart")})
    assert await history(system, 0) == []


@case("kill9", "session", "shelly_gen2")
async def kill9_session(system: System, row: Row) -> None:
    """Killed mid-session: the plug's toggle_after ends it; the restart records interrupted."""
    daemon = await up(system, ["shelly_gen2"])
    plug = system.plugs["shelly_gen2"]
    await start_session(system, "shelly_gen2", 2)
    daemon.signal(signal.SIGKILL)
    assert await stopped(daemon) == -signal.SIGKILL
    await until(plug, is_off)  # nobody but the plug's own timer can do it now
    assert plug.timer_fired == 1
    mark = system.observer.mark()
    await system.start_daemon()
    await system.observer.event("session_finished", since=mark, reason="interrupted")
    row.deadline_to_off_s = late(plug, 2)
    row.happened = "daemon dead at the deadline; the plug's own timer switched it off"
    failsafe = 2 + MARGIN_S + GRACE_S
    assert_invariant(system, {("shelly_gen2", 0): (failsafe, "plug failsafe")})
    assert await history(system, 1) == ["interrupted"]


@case("kill9", "routine_pause", "tasmota+esphome")
async def kill9_routine_pause(system: System, row: Row) -> None:
    """Killed in a routine's pause: the restart resumes nothing; the next panel stays off."""
    daemon = await up(system, ["tasmota", "esphome"], extra=routine("tasmota", "esphome"))
    paused = await to_pause(system)
    daemon.signal(signal.SIGKILL)
    assert await stopped(daemon) == -signal.SIGKILL
    await system.start_daemon()
    # The scenario itself: real time passes beyond the moment the pause would have ended.
    await asyncio.sleep(max(0.0, paused + 3 + 1 - now()))
    await barrier(system, "esphome")
    assert system.plugs["esphome"].on_commands == 0
    row.deadline_to_off_s = late(system.plugs["tasmota"], 2)
    assert_on_time(row.deadline_to_off_s)
    row.happened = "step 1 completed; after the restart the routine did not resume"
    assert_invariant(system)
    assert system.plugs["tasmota"].timer_fired == 0
    assert await history(system, 1) == ["completed"]


@case("kill9", "shutdown", "zigbee2mqtt")
async def kill9_shutdown(system: System, row: Row) -> None:
    """Killed while handling SIGTERM: the restart switches the plug off (if it was not yet)."""
    daemon = await up(system, ["zigbee2mqtt"])
    plug = system.plugs["zigbee2mqtt"]
    on_at = await start_session(system, "zigbee2mqtt", 4)
    daemon.signal(signal.SIGTERM)
    daemon.signal(signal.SIGKILL)
    assert await stopped(daemon) in (0, -signal.SIGKILL)
    await system.start_daemon()
    await until(plug, is_off)
    _, end = closed(plug)
    row.deadline_to_off_s = end - (on_at + 4)
    reasons = await history(system, 1)
    row.happened = f"SIGTERM then kill -9; off after restart, history {reasons[0]}"
    assert_invariant(system)
    assert plug.timer_fired == 0
    assert reasons in (["shutdown"], ["interrupted"])


# -- SIGTERM


@case("sigterm", "idle", "generic")
async def sigterm_idle(system: System, row: Row) -> None:
    """SIGTERM while idle: every plug sent OFF, offline, exit 0, nothing in the history."""
    daemon = await up(system, ["generic"])
    mark = system.observer.mark()
    daemon.signal(signal.SIGTERM)
    assert await stopped(daemon) == 0
    await offline(system, mark)
    assert system.plugs["generic"].on_commands == 0
    row.happened = "exit 0, offline, nothing switched on"
    assert_invariant(system)
    assert await history(system, 0) == []


@case("sigterm", "session", "shelly_gen1")
async def sigterm_session(system: System, row: Row) -> None:
    """SIGTERM mid-session: OFF confirmed before exit 0; the history says shutdown."""
    daemon = await up(system, ["shelly_gen1"])
    plug = system.plugs["shelly_gen1"]
    on_at = await start_session(system, "shelly_gen1", 4)
    asked = now()
    daemon.signal(signal.SIGTERM)
    assert await stopped(daemon) == 0
    assert not plug.is_on
    _, end = closed(plug)
    assert end - asked <= GRACE_S
    row.deadline_to_off_s = end - (on_at + 4)
    row.happened = f"OFF {end - asked:.2f} s after SIGTERM, confirmed before exit 0"
    assert_invariant(system)
    assert await history(system, 1) == ["shutdown"]


@case("sigterm", "routine_pause", "shelly_gen2+generic")
async def sigterm_routine_pause(system: System, row: Row) -> None:
    """SIGTERM in a routine's pause: the routine stops, the next panel never goes on, exit 0."""
    daemon = await up(system, ["shelly_gen2", "generic"], extra=routine("shelly_gen2", "generic"))
    await to_pause(system)
    daemon.signal(signal.SIGTERM)
    assert await stopped(daemon) == 0
    assert system.plugs["generic"].on_commands == 0
    finished = daemon.logged("routine_finished")
    assert [line["reason"] for line in finished] == ["stopped"]
    row.deadline_to_off_s = late(system.plugs["shelly_gen2"], 2)
    assert_on_time(row.deadline_to_off_s)
    row.happened = "routine stopped in its pause; step 2 never started; exit 0"
    assert_invariant(system)
    assert system.plugs["shelly_gen2"].timer_fired == 0
    assert await history(system, 1) == ["completed"]


@case("sigterm", "shutdown", "shelly_gen2")
async def sigterm_shutdown(system: System, row: Row) -> None:
    """A second SIGTERM while shutdown waits for the OFF's confirmation does not cut it short."""
    daemon = await up(system, ["shelly_gen2"])
    plug = system.plugs["shelly_gen2"]
    on_at = await start_session(system, "shelly_gen2", 4)
    plug.set_responsive(False)  # holds the shutdown in its wait for the OFF's confirmation
    count = len(plug.commands)
    daemon.signal(signal.SIGTERM)
    await ignored(plug, count)
    daemon.signal(signal.SIGTERM)
    plug.set_responsive(True)
    back = now()
    assert await stopped(daemon) == 0
    _, end = closed(plug)
    assert end - back <= CONFIRM_S + GRACE_S  # the next re-send, confirm_timeout later
    assert plug.timer_fired == 0
    assert len(daemon.logged("stopped")) == 1
    row.deadline_to_off_s = end - (on_at + 4)
    row.happened = "second SIGTERM mid-shutdown: one shutdown, OFF re-sent and confirmed, exit 0"
    assert_invariant(system)
    assert await history(system, 1) == ["shutdown"]


# -- the broker stopped and restarted


@case("broker_restart", "session", "generic")
async def broker_restart_session(system: System, row: Row) -> None:
    """The deadline passes while the broker is down: OFF as soon as it is back (rule 10)."""
    await up(system, ["generic"])
    plug = system.plugs["generic"]
    on_at = await start_session(system, "generic", 2)
    system.broker.stop()
    down_at = now()
    # The scenario itself: real time passes so the deadline falls while the broker is down.
    await asyncio.sleep(max(0.0, on_at + 3 - now()))
    assert plug.is_on  # nothing could reach it
    system.broker.start()
    back = now()
    await until(plug, is_off, within=30)
    start, end = closed(plug)
    # Both the daemon and the plug must reconnect (each at most reconnect_bound away), then the
    # OFF goes at once or with the next re-send, which follows the plug's return within grace.
    bound = back + 2 * reconnect_bound(back - down_at) + GRACE_S
    assert end <= bound
    row.deadline_to_off_s = end - (on_at + 2)
    row.happened = f"deadline passed with the broker down; OFF {end - back:.2f} s after it was back"
    assert_invariant(system, {("generic", 0): (bound - start, "broker down: reconnect bound")})
    assert await history(system, 1) == ["completed"]
    assert plug.on_commands == 1


@case("broker_restart", "idle", "shelly_gen1")
async def broker_restart_idle(system: System, row: Row) -> None:
    """After a broker restart redlight resubscribes: a new session runs and completes on time."""
    await up(system, ["shelly_gen1"])
    plug = system.plugs["shelly_gen1"]
    mark = system.observer.mark()
    system.broker.restart()
    await online_at(system, mark, within=30)
    await system.observer.wait(
        "shellies/shellyplug-s-SIM1/online", lambda m: m.payload == b"true", since=mark, within=30
    )
    mark = system.observer.mark()
    await start_session(system, "shelly_gen1", 2)
    await system.observer.event("session_finished", since=mark, reason="completed")
    await until(plug, is_off)
    row.deadline_to_off_s = late(plug, 2)
    assert_on_time(row.deadline_to_off_s)
    row.happened = "reconnected and resubscribed; a 2 s session completed on time"
    assert_invariant(system)
    assert await history(system, 1) == ["completed"]


@case("broker_restart", "routine_pause", "tasmota+esphome")
async def broker_restart_routine_pause(system: System, row: Row) -> None:
    """The pause ends while the broker is down: the next step is refused, the routine aborts."""
    daemon = await up(system, ["tasmota", "esphome"], extra=routine("tasmota", "esphome"))
    paused = await to_pause(system)
    system.broker.stop()
    # The scenario itself: real time passes so the pause ends while the broker is down.
    await asyncio.sleep(max(0.0, paused + 3 + 0.5 - now()))
    mark = system.observer.mark()
    system.broker.start()
    await online_at(system, mark, within=30)
    await barrier(system, "esphome")
    assert system.plugs["esphome"].on_commands == 0
    finished = daemon.logged("routine_finished")
    assert [line["reason"] for line in finished] == ["aborted"]
    row.deadline_to_off_s = late(system.plugs["tasmota"], 2)
    assert_on_time(row.deadline_to_off_s)
    row.happened = "step 2 refused while disconnected (rule 6); routine aborted, nothing late"
    assert_invariant(system)
    assert await history(system, 1) == ["completed"]


@case("broker_restart", "shutdown", "tasmota")
async def broker_restart_shutdown(system: System, row: Row) -> None:
    """SIGTERM with the broker down: exit 0 at once; the plug's PulseTime ends the session."""
    daemon = await up(system, ["tasmota"])
    plug = system.plugs["tasmota"]
    await start_session(system, "tasmota", 2)
    system.broker.stop()
    daemon.signal(signal.SIGTERM)
    assert await stopped(daemon) == 0
    await until(plug, is_off)
    assert plug.timer_fired == 1
    row.deadline_to_off_s = late(plug, 2)
    row.happened = "OFF could not be sent; exit 0; the plug's PulseTime switched it off"
    assert_invariant(system, {("tasmota", 0): (2 + MARGIN_S + GRACE_S, "plug failsafe")})
    assert await history(system, 1) == ["shutdown"]


@case("broker_restart", "idle", "tasmota+shelly_gen2+generic_asked")
async def broker_restart_on_unseen(system: System, row: Row) -> None:
    """The broker restarts; while it is down each plug's button is pressed; redlight is back
    first, so its questions are lost; then the plugs return, saying only ``online`` (Tasmota,
    Shelly Gen2) or nothing (the generic plug). Every ON is found and, hidden longer than
    max_on, switched off at once (an announcement) or at the next poll."""
    presets = ["tasmota", "shelly_gen2", "generic_asked"]
    safety = SAFETY + f'\npoll_interval = "{POLL_S:g}s"'
    await system.up(presets, safety=safety, links=presets)
    for name in presets:
        system.links[name].cut()
    system.broker.stop()
    for name in presets:
        system.plugs[name].press_button()  # nobody hears of it: no connection
    pressed = now()
    mark = system.observer.mark()
    system.broker.start()
    await online_at(system, mark, within=30)
    # The scenario itself: the plugs stay away past max_on, so their ONs are older than it.
    await asyncio.sleep(max(0.0, pressed + MAX_ON_S + 1 - now()))
    assert all(system.plugs[name].is_on for name in presets)
    for name in presets:
        system.links[name].restore()
    back = now()
    for name in presets:
        await until(system.plugs[name], is_off, within=2 * POLL_S + WAIT_S)
    offs = {name: closed(system.plugs[name])[1] - back for name in presets}
    # Announced: off within a question's round trip; silent: within one poll.
    assert offs["tasmota"] <= GRACE_S
    assert offs["shelly_gen2"] <= GRACE_S
    assert offs["generic_asked"] <= POLL_S + GRACE_S
    row.happened = "ONs hidden by the outage, found after the plugs came back: " + ", ".join(
        f"{name} off {off:.2f} s after" for name, off in offs.items()
    )
    bounds = {
        (name, 0): (closed(system.plugs[name])[1] - closed(system.plugs[name])[0], "out of reach")
        for name in presets
    }
    assert_invariant(system, bounds)
    for name in presets:
        await system.observer.event("cutoff_enforced", since=mark, panel=name)
    assert await history(system, 3) == ["cutoff"] * 3


# -- another client with redlight's client id (a second `redlight run`, a copied config)


@case("client_id_fight", "session", "tasmota")
async def client_id_fight_session(system: System, row: Row) -> None:
    """Another client keeps taking redlight's connection mid-session: the log names the
    conflict, and the OFF still goes out at the deadline (or the plug's PulseTime ends it)."""
    daemon = await up(system, ["tasmota"])
    plug = system.plugs["tasmota"]
    await start_session(system, "tasmota", 4)
    intruder = paho_client(system.broker.port, DAEMON_CLIENT_ID)
    intruder.start(lambda event: None)
    try:
        conflict = await daemon.wait_logged("client_id_conflict", within=2 * WAIT_S)
        await until(plug, is_off, within=WAIT_S)
    finally:
        await intruder.stop()
    assert conflict["client_id"] == DAEMON_CLIENT_ID
    row.deadline_to_off_s = late(plug, 4)
    by = "its PulseTime" if plug.timer_fired else "redlight's OFF"
    row.happened = f"client_id_conflict logged; switched off by {by} despite the fight"
    assert_invariant(system, {("tasmota", 0): (4 + MARGIN_S + GRACE_S, "plug failsafe")})
    assert await history(system, 1) == ["completed"]


# -- the broker down when the daemon starts


@case("broker_down_at_start", "startup", "zigbee2mqtt")
async def broker_down_at_start(system: System, row: Row) -> None:
    """Started with no broker, redlight waits; when the broker comes, it switches plugs off."""
    daemon = await up(system, ["zigbee2mqtt"], start=False)
    plug = system.plugs["zigbee2mqtt"]
    plug.press_button()
    system.broker.stop()
    down_at = now()
    daemon.start()
    await daemon.wait_logged("mqtt_connect_failed")
    mark = system.observer.mark()
    system.broker.start()
    back = now()
    await online_at(system, mark, within=30)
    await until(plug, is_off)
    start, end = closed(plug)
    bound = back + 2 * reconnect_bound(back - down_at) + GRACE_S
    assert end <= bound
    row.happened = f"waited for the broker; ON plug switched off {end - back:.2f} s after it came"
    assert_invariant(system, {("zigbee2mqtt", 0): (bound - start, "no broker: reconnect bound")})
    assert await history(system, 0) == []


# -- the plug's link partitioned (its will says offline; its own timer keeps running)


@case("partition", "idle", "tasmota")
async def partition_idle(system: System, row: Row) -> None:
    """A cut-off plug is offline: a start is refused; once back, a session completes."""
    await up(system, ["tasmota"], links=["tasmota"])
    plug = system.plugs["tasmota"]
    mark = system.observer.mark()
    system.links["tasmota"].cut()
    await system.observer.wait(
        "tele/sim_tasmota/LWT", lambda m: m.payload == b"Offline", since=mark
    )
    await system.observer.wait(
        "redlight/panel/tasmota/state", lambda m: m.json()["plug_online"] is False, since=mark
    )
    mark = system.command("tasmota", {"action": "start", "duration": 2})
    refused = await system.observer.event("command_rejected", since=mark, panel="tasmota")
    assert refused["reason"] == "plug_offline"
    mark = system.observer.mark()
    system.links["tasmota"].restore()
    await system.observer.wait(
        "redlight/panel/tasmota/state", lambda m: m.json()["plug_online"], since=mark
    )
    mark = system.observer.mark()
    await start_session(system, "tasmota", 2)
    await system.observer.event("session_finished", since=mark, reason="completed")
    await until(plug, is_off)
    row.deadline_to_off_s = late(plug, 2)
    assert_on_time(row.deadline_to_off_s)
    row.happened = "start refused as plug_offline; after the link healed a session completed"
    assert_invariant(system)
    assert plug.timer_fired == 0
    assert plug.on_commands == 1
    assert await history(system, 1) == ["completed"]


@case("partition", "session", "zigbee2mqtt")
async def partition_session(system: System, row: Row) -> None:
    """The deadline passes while the plug is cut off: OFF the moment it is back online."""
    await up(system, ["zigbee2mqtt"], links=["zigbee2mqtt"])
    plug = system.plugs["zigbee2mqtt"]
    on_at = await start_session(system, "zigbee2mqtt", 3)
    mark = system.observer.mark()
    system.links["zigbee2mqtt"].cut()
    await system.observer.wait(
        "redlight/panel/zigbee2mqtt/state", lambda m: m.json()["plug_online"] is False, since=mark
    )
    await system.observer.event("session_finished", since=mark, reason="completed")
    # The scenario itself: the plug stays cut off a while past the deadline (but less than
    # its own on_time, 3 s + margin, so that redlight's OFF is what ends it).
    await asyncio.sleep(max(0.0, on_at + 3 + 1.5 - now()))
    assert plug.is_on
    system.links["zigbee2mqtt"].restore()
    back = now()
    await until(plug, is_off)
    _, end = closed(plug)
    assert end - back <= GRACE_S
    assert plug.timer_fired == 0
    row.deadline_to_off_s = late(plug, 3)
    row.happened = f"cut off over the deadline; OFF {end - back:.2f} s after the link healed"
    assert_invariant(system)
    assert await history(system, 1) == ["completed"]


@case("partition", "startup", "shelly_gen2")
async def partition_startup(system: System, row: Row) -> None:
    """A plug ON and cut off while redlight starts is switched off once it is reachable."""
    await up(system, ["shelly_gen2"], links=["shelly_gen2"], start=False)
    plug = system.plugs["shelly_gen2"]
    plug.press_button()
    mark = system.observer.mark()
    system.links["shelly_gen2"].cut()
    await system.observer.wait(
        "shellyplusplugs-sim2/online", lambda m: m.payload == b"false", since=mark
    )
    mark = system.observer.mark()
    await system.start_daemon(off=[])
    await system.observer.wait(
        "redlight/panel/shelly_gen2/state", lambda m: m.json()["plug_online"] is False, since=mark
    )
    assert plug.is_on
    system.links["shelly_gen2"].restore()
    back = now()
    await until(plug, is_off)
    start, end = closed(plug)
    assert end - back <= GRACE_S
    row.happened = f"unreachable at start-up; OFF {end - back:.2f} s after the link healed"
    assert_invariant(system, {("shelly_gen2", 0): (end - start, "unreachable until healed")})
    assert await history(system, 0) == []


@case("partition", "routine_pause", "tasmota+shelly_gen1")
async def partition_routine_pause(system: System, row: Row) -> None:
    """The next step's plug is cut off in the pause: the step is refused, the routine aborts."""
    await up(
        system,
        ["tasmota", "shelly_gen1"],
        extra=routine("tasmota", "shelly_gen1"),
        links=["shelly_gen1"],
    )
    mark = system.observer.mark()
    await to_pause(system)
    system.links["shelly_gen1"].cut()
    finished = await system.observer.event("routine_finished", since=mark)
    assert finished["reason"] == "aborted"
    assert "offline" in finished["message"]
    system.links["shelly_gen1"].restore()
    await system.observer.wait(
        "redlight/panel/shelly_gen1/state", lambda m: m.json()["plug_online"], since=mark
    )
    await barrier(system, "shelly_gen1")
    assert system.plugs["shelly_gen1"].on_commands == 0
    row.deadline_to_off_s = late(system.plugs["tasmota"], 2)
    assert_on_time(row.deadline_to_off_s)
    row.happened = "step 2 refused (plug_offline); routine aborted; nothing on when it healed"
    assert_invariant(system)
    assert await history(system, 1) == ["completed"]


# -- the plug unresponsive, then back


@case("unresponsive", "session", "tasmota")
async def unresponsive_session(system: System, row: Row) -> None:
    """A plug deaf at the deadline: OFF re-sent until it listens (rule 4), then recovered."""
    await up(system, ["tasmota"])
    plug = system.plugs["tasmota"]
    await start_session(system, "tasmota", 3)
    plug.set_responsive(False)
    count = len(plug.commands)
    mark = system.observer.mark()
    await ignored(plug, count)  # the deadline's OFF
    assert plug.is_on
    plug.set_responsive(True)
    back = now()
    await system.observer.event("plug_unresponsive", since=mark, panel="tasmota", command="off")
    await system.observer.event("plug_recovered", since=mark, panel="tasmota")
    await until(plug, is_off)
    _, end = closed(plug)
    assert end - back <= CONFIRM_S + GRACE_S  # the next re-send, confirm_timeout later
    assert plug.timer_fired == 0
    row.deadline_to_off_s = late(plug, 3)
    row.happened = "deadline's OFF ignored; the re-sent OFF worked; unresponsive then recovered"
    assert_invariant(system)
    assert await history(system, 1) == ["completed"]


@case("unresponsive", "shutdown", "esphome")
async def unresponsive_shutdown(system: System, row: Row) -> None:
    """A plug deaf at SIGTERM that listens again within the shutdown wait is switched off."""
    daemon = await up(system, ["esphome"])
    plug = system.plugs["esphome"]
    on_at = await start_session(system, "esphome", 4)
    plug.set_responsive(False)
    count = len(plug.commands)
    daemon.signal(signal.SIGTERM)
    await ignored(plug, count)  # the shutdown's OFF
    plug.set_responsive(True)
    back = now()
    code = await stopped(daemon)
    assert not plug.is_on, "the daemon exited with the plug on although it listened again"
    _, end = closed(plug)
    assert end - back <= CONFIRM_S + GRACE_S
    assert code == 0
    row.deadline_to_off_s = end - (on_at + 4)
    row.happened = "shutdown OFF ignored; re-sent within the wait, confirmed; exit 0"
    assert_invariant(system)
    assert await history(system, 1) == ["shutdown"]


# -- the plug reboots and comes back ON (power-on state misconfigured)


@case("reboot_on", "idle", "shelly_gen1")
async def reboot_on_idle(system: System, row: Row) -> None:
    """A plug that reboots into ON is cut off max_on after redlight first sees it (rule 2)."""
    await up(system, ["shelly_gen1"], links=["shelly_gen1"])
    plug = system.plugs["shelly_gen1"]
    mark = await reboot(system, "shelly_gen1")
    await system.observer.wait(
        "shellies/shellyplug-s-SIM1/online", lambda m: m.payload == b"false", since=mark
    )
    seen = await power_up_on(system, "shelly_gen1", "shellies/shellyplug-s-SIM1/relay/0", mark)
    cutoff = await system.observer.event("cutoff_enforced", since=mark, within=MAX_ON_S + WAIT_S)
    assert cutoff["max_on_s"] == MAX_ON_S
    await until(plug, is_off)
    _, end = closed(plug)
    row.deadline_to_off_s = end - (seen + MAX_ON_S)
    assert_on_time(row.deadline_to_off_s)
    row.happened = "came back ON after a power cut; cut off at max_on (cutoff_enforced)"
    assert_invariant(system)
    assert await history(system, 1) == ["cutoff"]


@case("reboot_on", "session", "esphome")
async def reboot_on_session(system: System, row: Row) -> None:
    """A plug rebooting across the deadline comes back ON and is switched off at once."""
    await up(system, ["esphome"], links=["esphome"])
    plug = system.plugs["esphome"]
    on_at = await start_session(system, "esphome", 3)
    mark = await reboot(system, "esphome")
    await system.observer.event("session_finished", since=mark, reason="completed")
    seen = await power_up_on(system, "esphome", "sim-esphome/switch/relay/state", mark)
    await until(plug, is_off)
    _, end = closed(plug)
    assert end - seen <= GRACE_S
    row.deadline_to_off_s = end - (on_at + 3)
    row.happened = f"rebooted over the deadline, back ON; OFF {end - seen:.2f} s after seen"
    assert_invariant(system)
    assert await history(system, 1) == ["completed"]


# -- a retained ON replayed by the broker


@case("retained_plug_cmd", "startup", "tasmota")
async def retained_plug_command_startup(system: System, row: Row) -> None:
    """A retained ON on the plug's command topic is cleared at start-up and never replayed."""
    daemon = await up(system, ["tasmota"], links=["tasmota"], start=False)
    plug = system.plugs["tasmota"]
    system.observer.publish("cmnd/sim_tasmota/POWER", "ON", retain=True)
    await until(plug, is_on)  # the firmware obeys retained commands: its real, risky habit
    mark = system.observer.mark()
    await system.start_daemon()
    back = await online_at(system, mark)
    await system.observer.wait("cmnd/sim_tasmota/POWER", lambda m: m.payload == b"", since=mark)
    # A reconnecting plug is where the broker would replay it: nothing is left to replay.
    mark = system.observer.mark()
    system.links["tasmota"].cut()
    system.links["tasmota"].restore()
    await system.observer.wait("tele/sim_tasmota/LWT", lambda m: m.payload == b"Online", since=mark)
    system.observer.publish("cmnd/sim_tasmota/POWER", "")  # a query; its answer is the barrier
    await system.observer.wait("stat/sim_tasmota/POWER", since=mark)
    assert plug.on_commands == 1
    start, end = closed(plug)
    assert end <= back + GRACE_S
    row.happened = "retained ON obeyed before start; OFF and cleared at start-up; no replay"
    assert_invariant(system, {("tasmota", 0): (end - start, "before redlight ran")})
    assert len(daemon.logged("retained_command_cleared")) == 1
    assert await history(system, 0) == []


@case("retained_plug_cmd", "idle", "shelly_gen1")
async def retained_plug_command_idle(system: System, row: Row) -> None:
    """A retained ON sent to a plug while redlight runs is cut off at max_on; the broker's
    replay of it on redlight's next subscription is cleared, so the plug's return finds none."""
    daemon = await up(system, ["shelly_gen1"], links=["shelly_gen1"])
    plug = system.plugs["shelly_gen1"]
    command = "shellies/shellyplug-s-SIM1/relay/0/command"
    mark = system.observer.mark()
    system.observer.publish(command, "on", retain=True)
    seen = await system.observer.wait(
        "shellies/shellyplug-s-SIM1/relay/0", lambda m: m.payload == b"on", since=mark
    )
    # Delivered live, the message carries no retain flag (MQTT 3.1.1): to redlight it is a
    # plug command like any other, and the ON it caused is cut off at max_on (rule 2).
    await system.observer.event("cutoff_enforced", since=mark, within=MAX_ON_S + WAIT_S)
    await until(plug, is_off)
    _, end = closed(plug)
    row.deadline_to_off_s = end - (seen.at + MAX_ON_S)
    assert_on_time(row.deadline_to_off_s)
    # The broker replays it with the flag to redlight after a broker restart (the plug stays
    # away meanwhile, as after a power cut): redlight clears it before the plug is back.
    system.links["shelly_gen1"].cut()
    mark = system.observer.mark()
    system.broker.restart()
    await online_at(system, mark, within=30)
    await cleared(system, daemon, command)
    system.links["shelly_gen1"].restore()
    await system.observer.wait(
        "shellies/shellyplug-s-SIM1/online", lambda m: m.payload == b"true", since=mark
    )
    reported = system.observer.mark()  # barrier: the plug answers "update" after any replay
    system.observer.publish("shellies/shellyplug-s-SIM1/command", "update")
    await system.observer.wait("shellies/shellyplug-s-SIM1/relay/0", since=reported)
    assert plug.on_commands == 1
    assert len(daemon.logged("retained_command_cleared")) == 1
    row.happened = "live: plug obeyed, cut off at max_on; replay: cleared before the plug returned"
    assert_invariant(system)
    assert await history(system, 1) == ["cutoff"]


@case("retained_own_cmd", "startup", "generic")
async def retained_own_command_startup(system: System, row: Row) -> None:
    """A retained start on redlight's command topic before start-up starts nothing."""
    await up(system, ["generic"], start=False)
    system.observer.publish(
        "redlight/panel/generic/set", '{"action": "start", "duration": 2}', retain=True
    )
    await system.observer.wait("redlight/panel/generic/set")
    mark = system.observer.mark()
    await system.start_daemon()
    await system.observer.wait("redlight/panel/generic/set", lambda m: m.payload == b"", since=mark)
    await barrier(system, "generic")
    assert system.plugs["generic"].on_commands == 0
    row.happened = "ignored, cleared with a warning; nothing switched on"
    assert_invariant(system)
    assert await history(system, 0) == []


@case("retained_own_cmd", "idle", "zigbee2mqtt")
async def retained_own_command_idle(system: System, row: Row) -> None:
    """A retained start sent to redlight while it runs: on MQTT 5 it arrives flagged (Retain
    As Published), so it is cleared and never run; on 3.1.1 it arrives unflagged and runs once
    as a command, and the broker's replay after a restart is ignored and cleared."""
    daemon = await up(system, ["zigbee2mqtt"])
    plug = system.plugs["zigbee2mqtt"]
    topic = "redlight/panel/zigbee2mqtt/set"
    mark = system.observer.mark()
    system.observer.publish(topic, '{"action": "start", "duration": 2}', retain=True)
    if system.protocol == "5":
        await cleared(system, daemon, topic)
        await barrier(system, "zigbee2mqtt")
        assert plug.on_commands == 0
        assert system.observer.events("session_started", since=mark) == []
        live = "live: flagged (MQTT 5), ignored and cleared"
    else:
        # Delivered live, it carries no retain flag: an ordinary command, and it runs.
        await system.observer.event("session_finished", since=mark, reason="completed")
        await until(plug, is_off)
        row.deadline_to_off_s = late(plug, 2)
        assert_on_time(row.deadline_to_off_s)
        live = "live: unflagged (MQTT 3.1.1), ran once as a command"
    ran = plug.on_commands
    # After a restart the broker replays what it still holds, flagged (on 5 nothing: it was
    # cleared at once): ignored and cleared, never run.
    mark = system.observer.mark()
    system.broker.restart()
    await online_at(system, mark, within=30)
    if system.protocol == "3.1.1":
        await cleared(system, daemon, topic)
    await barrier(system, "zigbee2mqtt")
    assert plug.on_commands == ran
    assert len(daemon.logged("retained_command_cleared")) == 1
    row.happened = f"{live}; after a broker restart: nothing run, the topic clear"
    assert_invariant(system)
    assert await history(system, ran) == ["completed"] * ran


# -- duplicate and reordered state reports


@case("dup_reorder", "session", "generic")
async def duplicate_and_reordered_reports(system: System, row: Row) -> None:
    """Duplicate ON reports change nothing; a stale OFF mid-session never leaves a panel on."""
    await up(system, ["generic"])
    plug = system.plugs["generic"]
    on_at = await start_session(system, "generic", 4)
    mark = system.observer.mark()
    for _ in range(3):  # duplicates, as a QoS 1 redelivery or a second report topic gives
        system.observer.publish("sim/generic/state", "ON")
    await barrier(system, "generic")
    assert system.observer.events("session_started", since=mark) == []
    # A stale OFF (an older report delivered late) while the relay is in fact still on.
    system.observer.publish("sim/generic/state", "OFF")
    await until(plug, is_off, within=MAX_ON_S + WAIT_S)
    _, end = closed(plug)
    row.deadline_to_off_s = end - (on_at + 4)
    for _ in range(3):
        system.observer.publish("sim/generic/state", "OFF")
    await barrier(system, "generic")
    reasons = await history(system, 1)
    row.happened = f"duplicates ignored; a stale OFF ended the session ({reasons[0]}), plug off"
    assert_on_time(row.deadline_to_off_s)
    assert_invariant(system)
    assert plug.on_commands == 1
    assert reasons == ["external_off"]


# -- two commands for the same panel at once


@case("concurrent", "idle", "shelly_gen2")
async def concurrent_starts(system: System, row: Row) -> None:
    """Two starts for one panel at once from two clients: one session, one ON, one refusal."""
    await up(system, ["shelly_gen2"])
    plug = system.plugs["shelly_gen2"]
    other = Observer(system.broker.port, client_id="second-client")
    await other.start()
    try:
        mark = system.observer.mark()
        other.publish("redlight/panel/shelly_gen2/set", '{"action": "start", "duration": 3}')
        system.observer.publish(
            "redlight/panel/shelly_gen2/set", '{"action": "start", "duration": 2}'
        )
        refused = await system.observer.event("command_rejected", since=mark, panel="shelly_gen2")
        assert refused["reason"] == "already_running"
        [started] = system.observer.events("session_started", since=mark)
        await system.observer.event("session_finished", since=mark, reason="completed")
    finally:
        await other.stop()
    await until(plug, is_off)
    row.deadline_to_off_s = late(plug, started["duration_s"])
    assert_on_time(row.deadline_to_off_s)
    row.happened = f"one session ({started['duration_s']} s), one already_running, one ON"
    assert_invariant(system)
    assert plug.on_commands == 1
    assert plug.timer_fired == 0
    assert await history(system, 1) == ["completed"]


@case("concurrent", "session", "generic")
async def concurrent_stop_and_start(system: System, row: Row) -> None:
    """OFF and a new start at once mid-session: the history matches what the events said."""
    await up(system, ["generic"])
    plug = system.plugs["generic"]
    other = Observer(system.broker.port, client_id="second-client")
    await other.start()
    await start_session(system, "generic", 4)
    try:
        mark = system.observer.mark()
        other.publish("redlight/panel/generic/set", "OFF")
        system.observer.publish("redlight/panel/generic/set", '{"action": "start", "duration": 2}')
        await system.observer.event("session_finished", since=mark, reason="stopped")
        await barrier(system, "generic")
        started = system.observer.events("session_started", since=mark)
        if started:  # the start came second: it runs to its end
            await system.observer.event("session_finished", since=mark, reason="completed")
    finally:
        await other.stop()
    await until(plug, is_off)
    reasons = [e["reason"] for e in system.observer.events("session_finished")]
    assert plug.on_commands == 1 + len(started)
    row.deadline_to_off_s = late(plug, 2) if started else None
    if started:
        assert_on_time(row.deadline_to_off_s or 0.0)
    row.happened = f"sessions ended {', '.join(reasons)}; one ON per session"
    assert_invariant(system)
    assert await history(system, len(reasons)) == reasons


# -- the history database: locked, corrupt, unwritable


@case("db_locked", "startup", "esphome")
async def db_locked_startup(system: System, row: Row) -> None:
    """A database locked by another connection at start-up: the daemon runs, OFFs on time."""
    History.open(system.db).close()
    with locked(system):
        daemon = await up(system, ["esphome"])
        await session_despite_storage(system, "esphome", 2, row)
        await daemon.wait_logged("storage_error")
    row.happened = "started and switched on time; storage_error logged"
    assert_invariant(system)


@case("db_locked", "session", "tasmota")
async def db_locked_session(system: System, row: Row) -> None:
    """The database locked mid-session: the OFF is on time; the failed write is logged."""
    daemon = await up(system, ["tasmota"])
    plug = system.plugs["tasmota"]
    await start_session(system, "tasmota", 2)
    with locked(system):
        await until(plug, is_off)
        await daemon.wait_logged("storage_error")
    row.deadline_to_off_s = late(plug, 2)
    assert_on_time(row.deadline_to_off_s)
    assert plug.timer_fired == 0
    row.happened = "OFF on time while the close could not be written; storage_error logged"
    assert_invariant(system)


@case("db_locked", "shutdown", "shelly_gen2")
async def db_locked_shutdown(system: System, row: Row) -> None:
    """SIGTERM with the database locked: OFF at once, exit 0 (bounded), storage_error logged."""
    daemon = await up(system, ["shelly_gen2"])
    plug = system.plugs["shelly_gen2"]
    on_at = await start_session(system, "shelly_gen2", 4)
    with locked(system):
        asked = now()
        daemon.signal(signal.SIGTERM)
        assert await stopped(daemon) == 0
    _, end = closed(plug)
    assert end - asked <= GRACE_S
    assert storage_errors(daemon) >= 1
    row.deadline_to_off_s = end - (on_at + 4)
    row.happened = f"OFF {end - asked:.2f} s after SIGTERM; exit 0; storage_error logged"
    assert_invariant(system)


@case("db_corrupt", "startup", "shelly_gen1")
async def db_corrupt_startup(system: System, row: Row) -> None:
    """A corrupt database at start-up: reported loudly, and sessions still end on time."""
    system.db.parent.mkdir(parents=True, exist_ok=True)
    corrupt(system)
    daemon = await up(system, ["shelly_gen1"])
    await session_despite_storage(system, "shelly_gen1", 2, row)
    await daemon.wait_logged("storage_error")
    assert daemon.logged("storage_unavailable")
    row.happened = "storage_unavailable at start, storage_error per write; OFF on time"
    assert_invariant(system)


@case("db_corrupt", "session", "zigbee2mqtt")
async def db_corrupt_session(system: System, row: Row) -> None:
    """The database corrupted mid-session: the OFF is on time; the failed write is logged."""
    daemon = await up(system, ["zigbee2mqtt"])
    plug = system.plugs["zigbee2mqtt"]
    await start_session(system, "zigbee2mqtt", 2)
    corrupt(system)
    await until(plug, is_off)
    await daemon.wait_logged("storage_error")
    row.deadline_to_off_s = late(plug, 2)
    assert_on_time(row.deadline_to_off_s)
    assert plug.timer_fired == 0
    row.happened = "garbage written over the file; OFF on time; storage_error logged"
    assert_invariant(system)


@case("db_unwritable", "startup", "generic")
async def db_unwritable_startup(system: System, row: Row) -> None:
    """A database path that cannot be created (under a regular file, so even for root)."""
    blocker = system.tmp / "afile"
    blocker.write_text("a regular file where a directory should be\n")
    daemon = await up(system, ["generic"], db=blocker / "redlight.db")
    await session_despite_storage(system, "generic", 2, row)
    await daemon.wait_logged("storage_error")
    row.happened = "no database at all; sessions run, OFF on time, storage_error logged"
    assert_invariant(system)


@case("db_deleted", "session", "shelly_gen2")
async def db_deleted_session(system: System, row: Row) -> None:
    """The database deleted mid-session: the OFF is on time; the next write notices, says so
    (storage_replaced) and creates a new file, in which the session ends up complete."""
    daemon = await up(system, ["shelly_gen2"])
    plug = system.plugs["shelly_gen2"]
    await start_session(system, "shelly_gen2", 2)
    system.db.unlink()
    await until(plug, is_off)
    replaced = await daemon.wait_logged("storage_replaced")
    assert (replaced["level"], replaced["path"]) == ("error", str(system.db))
    await written_again(system)
    assert await history(system, 1) == ["completed"]
    row.deadline_to_off_s = late(plug, 2)
    assert_on_time(row.deadline_to_off_s)
    assert plug.timer_fired == 0
    row.happened = "OFF on time; storage_replaced, new file; the session in it, completed"
    assert_invariant(system)


@case("db_write_fails", "session", "esphome")
async def db_write_fails_session(system: System, row: Row) -> None:
    """Writes fail mid-session (the database locked past the session's end) and then recover:
    the OFF is on time, and the close, kept and retried, lands once the lock is gone."""
    daemon = await up(system, ["esphome"])
    plug = system.plugs["esphome"]
    await start_session(system, "esphome", 2)
    with locked(system):
        await until(plug, is_off)
        await daemon.wait_logged("storage_error")
    recovered = await daemon.wait_logged("storage_recovered")
    assert recovered["replayed"] >= 1
    assert await history(system, 1) == ["completed"]
    row.deadline_to_off_s = late(plug, 2)
    assert_on_time(row.deadline_to_off_s)
    assert plug.timer_fired == 0
    row.happened = (
        f"OFF on time; close retried, landed after the lock ({recovered['replayed']} replayed)"
    )
    assert_invariant(system)


# ---------------------------------------------------------------------------- the test


#: The faults whose handling the daemon's protocol can change: its broker session (clean start),
#: Retain As Published and No Local on its command filters, the expiry of a plug ON, and
#: reason codes. ``make test`` runs these on MQTT 3.1.1 as well as 5; ``make reliability``
#: runs every case on both.
PROTOCOL_FAULTS: Final = frozenset(
    {
        "broker_restart",
        "client_id_fight",
        "broker_down_at_start",
        "partition",
        "retained_plug_cmd",
        "retained_own_cmd",
    }
)


def matrix() -> list[Any]:
    """Each case on MQTT 5, and on 3.1.1 where :data:`PROTOCOL_FAULTS` (or the report) asks."""
    every = reliability.wanted()
    return [
        pytest.param(case, protocol, id=f"{case.id}-{protocol}")
        for protocol in ("5", "3.1.1")
        for case in CASES
        if protocol == "5" or every or case.fault in PROTOCOL_FAULTS
    ]


@pytest.fixture
def row(
    case: Case, system: System, request: pytest.FixtureRequest, reliability_recorder: Recorder
) -> Row:
    """This case's row in the report; the conftest marks it passed or failed."""
    reliability_recorder.notes = NOTES
    record = reliability_recorder.add(Row(case.fault, case.phase, case.preset, system.protocol))
    request.node.stash[ROW] = record
    return record


@pytest.mark.parametrize(("case", "system"), matrix(), indirect=["system"])
async def test_fault_in_phase(system: System, case: Case, row: Row) -> None:
    """Under each fault, in each phase where it means something, no panel stays on longer than
    max_on + grace (or its own failsafe, where redlight cannot reach it), OFFs come on time, and
    the history says what happened (the scenario's docstring says how)."""
    await case.scenario(system, row)
