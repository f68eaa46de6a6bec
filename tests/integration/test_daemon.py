"""The real ``redlight run`` against a private mosquitto and simulated plugs of every firmware.

Black-box: the daemon is a separate process; the tests only speak MQTT to it and look at the
simulated plugs, the broker, the exit code and the history database.
"""

from __future__ import annotations

import asyncio
import signal

import pytest

from tests.integration.harness import PRESETS, System, is_off, is_on, until

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("preset", list(PRESETS))
async def test_start_and_stop_on_every_preset(system: System, preset: str) -> None:
    """A start switches the simulated plug on once; a stop switches it off; the history says so."""
    await system.up([preset])
    plug = system.plugs[preset]
    mark = system.command(preset, {"action": "start", "duration": "60s"})
    started = await system.observer.event("session_started", since=mark, panel=preset)
    assert started["duration_s"] == 60
    await until(plug, is_on)
    mark = system.command(preset, "OFF")
    finished = await system.observer.event("session_finished", since=mark, panel=preset)
    assert finished["reason"] == "stopped"
    await until(plug, is_off)
    assert plug.on_commands == 1
    await system.observer.wait(
        f"redlight/panel/{preset}/state", lambda m: m.json()["state"] == "idle", since=mark
    )


async def test_natural_end_switches_off_on_time(system: System) -> None:
    """A 2-second session ends by itself as `completed`, and the plug is off."""
    await system.up(["esphome"])
    plug = system.plugs["esphome"]
    mark = system.command("esphome", {"action": "start", "duration": 2})
    finished = await system.observer.event("session_finished", since=mark, panel="esphome")
    assert finished["reason"] == "completed"
    await until(plug, is_off)
    [row] = system.history()
    assert (row["reason"], row["source"]) == ("completed", "homeassistant")
    assert row["actual_s"] == pytest.approx(2, abs=0.5)


async def test_over_ceiling_request_is_rejected(system: System) -> None:
    """A 16-minute request is rejected with over_max_on and the plug never switches on."""
    await system.up(["tasmota"])
    mark = system.command("tasmota", {"action": "start", "duration": "16m"})
    rejected = await system.observer.event("command_rejected", since=mark, panel="tasmota")
    assert rejected["reason"] == "over_max_on"
    assert system.plugs["tasmota"].on_commands == 0


async def test_hand_switched_plug_is_cut_off(system: System) -> None:
    """A plug switched on at its button is switched off at max_on, with cutoff_enforced."""
    await system.up(["shelly_gen1"], safety='max_on = "3s"')
    plug = system.plugs["shelly_gen1"]
    mark = system.observer.mark()
    plug.press_button()
    cutoff = await system.observer.event("cutoff_enforced", since=mark, panel="shelly_gen1")
    assert cutoff["max_on_s"] == 3
    await until(plug, is_off)
    # The event follows the OFF (plug commands go first): wait for it, then count them all.
    await system.observer.event("session_finished", since=mark, panel="shelly_gen1")
    finished = system.observer.events("session_finished", since=mark)
    assert [e["reason"] for e in finished] == ["cutoff"]


@pytest.mark.parametrize(
    ("preset", "expected"),
    [("tasmota", 90.0), ("shelly_gen2", 90.0), ("zigbee2mqtt", 90.0)],
)
async def test_plug_side_failsafe_is_armed(system: System, preset: str, expected: float) -> None:
    """The plug's own off-timer is armed with the ON for the session length + margin."""
    await system.up([preset])
    plug = system.plugs[preset]
    system.command(preset, {"action": "start", "duration": "60s"})
    await until(plug, is_on)
    assert plug.failsafe_armed_s == pytest.approx(expected, abs=1.0)
    assert plug.on_commands == 1


async def test_kill_9_then_restart_switches_off_and_records_interrupted(system: System) -> None:
    """After kill -9 mid-session the will says offline; a restart switches the plug off."""
    await system.up(["esphome"])
    daemon = system.daemon
    assert daemon is not None
    plug = system.plugs["esphome"]
    mark = system.command("esphome", {"action": "start", "duration": "10m"})
    await system.observer.event("session_started", since=mark)
    await until(plug, is_on)
    mark = system.observer.mark()
    daemon.signal(signal.SIGKILL)
    assert await daemon.wait_exit() == -signal.SIGKILL
    await system.observer.wait("redlight/status", lambda m: m.payload == b"offline", since=mark)
    assert plug.is_on  # esphome has no plug-side timer: only the restart can save it
    mark = system.observer.mark()
    await system.start_daemon()
    await until(plug, is_off)
    interrupted = await system.observer.event("session_finished", since=mark, reason="interrupted")
    assert interrupted["panel"] == "esphome"
    assert [row["reason"] for row in system.history()] == ["interrupted"]


async def test_sigterm_switches_everything_off_and_exits_zero(system: System) -> None:
    """SIGTERM mid-session: plug off and confirmed, status offline, exit code 0."""
    await system.up(["tasmota", "generic"])
    daemon = system.daemon
    assert daemon is not None
    system.command("tasmota", {"action": "start", "duration": "5m"})
    await until(system.plugs["tasmota"], is_on)
    mark = system.observer.mark()
    daemon.signal(signal.SIGTERM)
    assert await daemon.wait_exit() == 0
    assert not system.plugs["tasmota"].is_on
    assert not system.plugs["generic"].is_on
    status = system.observer.matching("redlight/status", mark)
    assert [m.payload for m in status][-1] == b"offline"
    assert [row["reason"] for row in system.history()] == ["shutdown"]


async def test_broker_restart_with_deadline_passing_while_down(system: System) -> None:
    """The broker dies mid-session and the end passes while it is down: OFF on reconnect."""
    await system.up(["generic"])
    plug = system.plugs["generic"]
    system.command("generic", {"action": "start", "duration": 3})
    await until(plug, is_on)
    system.broker.stop()
    # The scenario itself: real time passes so the deadline falls while the broker is down.
    await asyncio.sleep(5)
    assert plug.is_on  # nothing could reach the plug
    system.broker.start()
    await until(plug, is_off, within=30)
    assert plug.on_commands == 1


async def test_unresponsive_plug_is_reported_then_recovers(system: System) -> None:
    """A plug that ignores commands raises plug_unresponsive; when it answers, plug_recovered."""
    await system.up(["tasmota"])
    plug = system.plugs["tasmota"]
    plug.set_responsive(False)
    mark = system.command("tasmota", {"action": "start", "duration": "60s"})
    unresponsive = await system.observer.event("plug_unresponsive", since=mark, panel="tasmota")
    assert unresponsive["command"] == "on"
    state = await system.observer.wait(
        "redlight/panel/tasmota/state", lambda m: m.json()["state"] == "fault", since=mark
    )
    assert state.json()["session"] is None
    plug.set_responsive(True)
    await system.observer.event("plug_recovered", since=mark, panel="tasmota", within=30)
    assert not plug.is_on


async def test_retained_on_on_a_command_topic_is_ignored_and_cleared(system: System) -> None:
    """A retained ON left on <b>/panel/<id>/set before start-up turns nothing on and is cleared."""
    await system.up(["esphome"], start=False)
    system.observer.publish("redlight/panel/esphome/set", "ON", retain=True)
    await system.observer.wait("redlight/panel/esphome/set", lambda m: m.payload == b"ON")
    await system.start_daemon()
    await system.observer.wait("redlight/panel/esphome/set", lambda m: m.payload == b"")
    # Barrier: the daemon handles messages in order, so once this answer is out, a wrong ON
    # caused by the retained message would already have been published.
    mark = system.command("esphome", "not a command")
    await system.observer.event("command_rejected", since=mark, panel="esphome")
    assert system.plugs["esphome"].on_commands == 0
    assert not system.plugs["esphome"].is_on


async def test_on_5_a_live_retained_on_is_cleared_not_obeyed(system: System) -> None:
    """MQTT 5: a retained ON published while redlight is connected is cleared, never obeyed.

    Retain As Published keeps the flag on the command topic and on the watched plug command
    topic alike (the 3.1.1 limitation in the README is gone).
    """
    daemon = await system.up(["tasmota"], protocol="5")
    mark = system.observer.mark()
    system.observer.publish("redlight/panel/tasmota/set", "ON", retain=True)
    await system.observer.wait("redlight/panel/tasmota/set", lambda m: m.payload == b"", since=mark)
    # Barrier: the daemon handles messages in order, so once this answer is out, a wrong ON
    # caused by the retained message would already have been published.
    barrier = system.command("tasmota", "not a command")
    await system.observer.event("command_rejected", since=barrier, panel="tasmota")
    assert system.plugs["tasmota"].on_commands == 0

    system.observer.publish("cmnd/sim_tasmota/POWER", "ON", retain=True)
    await system.observer.wait("cmnd/sim_tasmota/POWER", lambda m: m.payload == b"", since=mark)
    barrier = system.command("tasmota", "not a command")  # its log lines are written by now
    await system.observer.event("command_rejected", since=barrier, panel="tasmota")
    cleared = [e["topic"] for e in daemon.logged("retained_command_cleared")]
    assert cleared == ["redlight/panel/tasmota/set", "cmnd/sim_tasmota/POWER"]


async def test_barrage_of_malformed_payloads(system: System) -> None:
    """Hundreds of malformed commands are all rejected (counted in coalesced command_rejected
    events: the first at once, then ``suppressed`` once a second); the daemon keeps working."""
    await system.up(["tasmota"])
    bad = [
        " ",
        "ONN",
        "{",
        "[]",
        "null",
        '{"action": 5}',
        '{"action": "start", "duration": "soon"}',
        '{"action": "start", "duration": 1e309}',
        '{"action": "start", "dose_j_cm2": -1}',
        "\u0000\u0001",
        "x" * 10_000,
    ]
    mark = system.observer.mark()
    for _ in range(20):
        for payload in bad:
            system.observer.publish("redlight/panel/tasmota/set", payload)
        system.observer.publish("redlight/set", "garbage")
        system.observer.publish("redlight/panel/tasmota/duration/set", "-3")
    total = 20 * (len(bad) + 2)

    def rejections() -> int:
        return sum(e.get("suppressed", 1) for e in system.observer.events("command_rejected", mark))

    await system.observer.wait("redlight/event", lambda m: rejections() >= total, since=mark)
    assert rejections() == total
    assert system.plugs["tasmota"].on_commands == 0
    mark = system.command("tasmota", {"action": "start", "duration": 5})
    await system.observer.event("session_started", since=mark, panel="tasmota")
