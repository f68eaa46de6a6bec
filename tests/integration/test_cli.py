"""The command line against the real daemon on a private mosquitto (SPEC §5)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from dataclasses import dataclass

import pytest

from tests.integration.harness import WAIT_S, System, is_off, is_on, until
from tests.mosquitto import free_port

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Ran:
    """What a finished ``redlight`` command printed and returned."""

    code: int
    out: str
    err: str


async def redlight(system: System, *args: str) -> Ran:
    """Run ``redlight ARGS --config <the test's config>`` as a user would, off the loop."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDLIGHT_")}
    command = [sys.executable, "-m", "redlight", *args, "--config", str(system.tmp / "config.toml")]

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            command, capture_output=True, text=True, env=env, timeout=WAIT_S * 2, check=False
        )

    done = await asyncio.to_thread(run)
    return Ran(done.returncode, done.stdout, done.stderr)


async def test_start_prints_the_outcome_and_stop_waits_for_off(system: System) -> None:
    """``start`` answers with the session; ``stop`` returns once the plug reports off."""
    await system.up(["tasmota"])
    plug = system.plugs["tasmota"]
    started = await redlight(system, "start", "tasmota", "--duration", "2m")
    assert started.code == 0, started.err
    assert started.out.startswith("started tasmota for 2m, until ")
    await until(plug, is_on)
    status = await redlight(system, "status")
    assert status.code == 0
    assert "running" in status.out
    assert "plug on" in status.out
    stopped = await redlight(system, "stop", "tasmota")
    assert stopped.code == 0, stopped.err
    assert stopped.out.strip() == "stopped: tasmota"
    assert not plug.is_on
    assert plug.on_commands == 1


async def test_stop_says_what_happened_to_each_panel(system: System) -> None:
    """Issue 14 item 2: ``stop`` reports what happened, not what it asked for. A session on a
    plug that confirms: "stopped"; a panel with nothing running: "not running"; a plug that
    never confirms the OFF: named on stderr with the topic redlight waited on, exit 1."""
    await system.up(["tasmota", "esphome"])
    deaf = system.plugs["esphome"]
    for name in ("tasmota", "esphome"):
        assert (await redlight(system, "start", name, "--duration", "2m")).code == 0
        await until(system.plugs[name], is_on)
    deaf.set_responsive(False)

    stopped = await redlight(system, "stop", "tasmota")
    assert (stopped.code, stopped.out, stopped.err) == (0, "stopped: tasmota\n", "")
    again = await redlight(system, "stop", "tasmota")
    assert (again.code, again.out) == (0, "not running: tasmota (plug off)\n")

    unconfirmed = await redlight(system, "stop", "esphome")
    assert unconfirmed.code == 1
    assert unconfirmed.out == ""
    [line] = unconfirmed.err.splitlines()
    assert line.startswith("not confirmed off: esphome (redlight calls it unresponsive; ")
    assert "a report on sim-esphome/" in line
    assert deaf.is_on  # as it says: the plug did not obey (its own timer ends it)


ROUTINE = """
[routines.post_run]
name = "Post-run"
steps = [{ panels = ["tasmota"], duration = "3s" }, { panels = ["esphome"], duration = "3s" }]
"""


async def test_start_routine_waits_for_its_first_step(system: System) -> None:
    """Issue 14 item 1: a routine whose first panel is cooling down is refused, with why and
    exit 1; once the panel may run, the routine starts and says so only when it has."""
    await system.up(["tasmota", "esphome"], safety='cooldown = "8s"', extra=ROUTINE)
    mark = system.command("tasmota", {"action": "start", "duration": 1})
    await system.observer.event("session_finished", since=mark, panel="tasmota", within=10)
    refused = await redlight(system, "start", "--routine", "post_run")
    assert refused.code == 1
    assert refused.out == ""
    assert refused.err.startswith("routine Post-run did not start: aborted (tasmota: ")
    assert "cooldown" in refused.err
    assert system.plugs["tasmota"].on_commands == 1  # the one session before
    await asyncio.sleep(8)  # the cooldown is over
    mark = system.observer.mark()
    started = await redlight(system, "start", "--routine", "post_run")
    assert (started.code, started.out) == (0, "started routine Post-run (2 steps)\n")
    await until(system.plugs["tasmota"], is_on)
    # Issue 14 item 10: the command line's routine is the command line's, not Home Assistant's.
    assert (await system.observer.event("routine_started", since=mark))["source"] == "cli"


async def test_interrupted_follow_says_the_session_goes_on(system: System) -> None:
    """Issue 14 item 7: Ctrl-C on ``start --follow`` ends the countdown, not the session,
    and says so, with how to stop it."""
    await system.up(["tasmota"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDLIGHT_")}
    config = str(system.tmp / "config.toml")
    args = ["start", "tasmota", "--duration", "1m", "--follow", "--config", config]
    follow = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "redlight",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        await until(system.plugs["tasmota"], is_on)
        await asyncio.sleep(1.5)  # a countdown line or two
        follow.send_signal(signal.SIGINT)
        raw_out, raw_err = await asyncio.wait_for(follow.communicate(), WAIT_S)
    finally:
        if follow.returncode is None:
            follow.kill()
            await follow.wait()
    out, err = raw_out.decode(), raw_err.decode()
    assert follow.returncode == 130
    assert out.startswith("started tasmota for 1m")
    assert "stopped following; the session on tasmota goes on until " in err
    assert "'redlight stop tasmota' ends it" in err
    assert "Traceback" not in err
    assert system.plugs["tasmota"].is_on


async def test_a_wrong_broker_port_fails_at_once_with_the_reason(system: System) -> None:
    """Issue 14 item 5: nothing listens on the port: one line with why, at the first attempt
    (every command waited 11 s for its timeout before)."""
    await system.up(["tasmota"], start=False)
    config = system.tmp / "config.toml"
    port = free_port()
    config.write_text(
        config.read_text().replace(f"127.0.0.1:{system.broker.port}", f"127.0.0.1:{port}")
    )
    began = asyncio.get_running_loop().time()
    ran = await redlight(system, "status")
    took_s = asyncio.get_running_loop().time() - began
    assert ran.code == 1
    assert ran.err == (
        f"redlight: cannot connect to the broker at mqtt://127.0.0.1:{port}: "
        "[Errno 111] Connection refused\n"
    )
    assert took_s < 5  # a Python start-up and one attempt; the timeout is 10 s


async def test_an_unknown_host_fails_at_once_with_the_reason(system: System) -> None:
    """Issue 14 item 5: a broker host that does not exist: one line with the resolver's
    reason, at the first attempt. ``.invalid`` never resolves (RFC 6761), and resolvers
    answer so at once (a made-up name under a real domain could wait for DNS timeouts)."""
    await system.up(["tasmota"], start=False)
    config = system.tmp / "config.toml"
    config.write_text(
        config.read_text().replace(f"127.0.0.1:{system.broker.port}", "nonexistent.invalid:1883")
    )
    began = asyncio.get_running_loop().time()
    ran = await redlight(system, "status")
    took_s = asyncio.get_running_loop().time() - began
    assert ran.code == 1
    assert ran.err.startswith(
        "redlight: cannot connect to the broker at mqtt://nonexistent.invalid:1883: [Errno "
    )
    assert "Name or service not known" in ran.err or "not known" in ran.err
    assert len(ran.err.splitlines()) == 1
    assert took_s < 5  # a Python start-up and one attempt; the timeout is 10 s


async def test_check_connect_asks_every_plug_and_switches_nothing(system: System) -> None:
    """Issue 14 item 5: ``check --connect`` says the broker took the connection, then one line
    per panel: the plug that answered the state question (with its state and topic), and the
    one that did not (with the topic waited on), exit 1. The plug that is on stays on."""
    await system.up(["tasmota", "shelly_gen2"], start=False)
    answering, silent = system.plugs["tasmota"], system.plugs["shelly_gen2"]
    answering.press_button()
    silent.set_responsive(False)
    mark = system.observer.mark()
    ran = await redlight(system, "check", "--connect")
    assert ran.code == 1, ran.err
    lines = ran.out.splitlines()
    assert lines[1] == f"broker: connected to mqtt://127.0.0.1:{system.broker.port} (MQTT 5)"
    assert lines[2] == "redlight: not running (fine for a check), by redlight/status"
    assert lines[3].startswith("tasmota: answered, on (tasmota on stat/sim_tasmota/")
    assert ran.err == (
        "shelly_gen2: no answer on shellyplusplugs-sim2/status/switch:0 within 2s "
        "(shellyplusplugs-sim2/online says online)\n"
    )
    assert answering.is_on
    assert answering.on_commands == 0
    sent = {m.topic for m in system.observer.seen[mark:]}
    assert "cmnd/sim_tasmota/POWER" in sent  # the question: an empty POWER, as the daemon asks
    assert not [m for m in system.observer.seen[mark:] if m.topic.startswith("cmnd/") and m.payload]


async def test_check_connect_without_a_broker_says_why(system: System) -> None:
    """Issue 14 item 5: the config is fine but nothing listens: ``check --connect`` names the
    broker's refusal, exit 1 (plain ``check`` still says OK: it only reads the file)."""
    await system.up(["tasmota"], start=False)
    config = system.tmp / "config.toml"
    port = free_port()
    config.write_text(
        config.read_text().replace(f"127.0.0.1:{system.broker.port}", f"127.0.0.1:{port}")
    )
    ran = await redlight(system, "check", "--connect")
    assert ran.code == 1
    assert ran.out.endswith(": OK (1 panel, 0 routines, 0 schedules; max_on 15m)\n")
    assert ran.err == (
        f"broker: cannot connect to the broker at mqtt://127.0.0.1:{port}: "
        "[Errno 111] Connection refused\n"
    )


async def test_a_plug_never_heard_from_is_not_online(system: System) -> None:
    """Issue 14 item 6: a topic typo: ``status`` says the plug was never heard from (not
    "online"), and a start is refused naming the topic redlight waited on."""
    await system.up(["tasmota"], start=False)
    config = system.tmp / "config.toml"
    config.write_text(config.read_text().replace('"sim_tasmota"', '"sim_tasmotta"'))
    await system.start_daemon(off=[])
    status = await redlight(system, "status")
    [line] = [row for row in status.out.splitlines() if row.lstrip().startswith("tasmota ")]
    assert "plug unknown not heard from" in line
    assert "online" not in line
    refused = await redlight(system, "start", "tasmota")
    assert refused.code == 1
    # Not heard from since start-up; after confirm_timeout (2 s here), also unresponsive.
    assert "(plug_state_unknown)" in refused.err or "(plug_unresponsive)" in refused.err
    assert "no report " in refused.err
    assert " on stat/sim_tasmotta/" in refused.err
    assert system.plugs["tasmota"].on_commands == 0


async def test_rejected_start_exits_1_with_the_reason(system: System) -> None:
    """A request over the ceiling: exit 1, the daemon's reason on stderr, the plug stays off."""
    await system.up(["esphome"])
    ran = await redlight(system, "start", "esphome", "--duration", "16m")
    assert ran.code == 1
    assert ran.err.startswith("rejected: ")
    assert "(over_max_on)" in ran.err
    assert "Traceback" not in ran.err
    assert system.plugs["esphome"].on_commands == 0


async def test_start_without_a_daemon_says_so_in_one_sentence(system: System) -> None:
    """With no daemon running, ``start`` fails with one sentence and exit 1."""
    await system.up(["generic"], start=False)
    ran = await redlight(system, "start", "generic")
    assert ran.code == 1
    assert ran.err.startswith("redlight: redlight is not running")
    assert len(ran.err.strip().splitlines()) == 1


async def test_off_all_switches_plugs_off_without_the_daemon(system: System) -> None:
    """Rule 9 for ExecStopPost: ``off --all`` switches every plug off straight, and says so."""
    await system.up(["tasmota", "shelly_gen2", "zigbee2mqtt"], start=False)
    for plug in system.plugs.values():
        plug.press_button()
    ran = await redlight(system, "off", "--all")
    assert ran.code == 0, ran.err
    assert "confirmed off: shelly_gen2, tasmota, zigbee2mqtt" in ran.out
    for plug in system.plugs.values():
        await until(plug, is_off)


async def test_off_switches_only_the_panels_named(system: System) -> None:
    """Issue 14 item 10: ``off PANEL`` (it was a usage error without ``--all``) switches that
    plug off straight, and leaves the others as they are."""
    await system.up(["tasmota", "esphome"], start=False)
    for plug in system.plugs.values():
        plug.press_button()
    ran = await redlight(system, "off", "tasmota")
    assert (ran.code, ran.out, ran.err) == (0, "OFF sent to 1 plug; confirmed off: tasmota\n", "")
    assert not system.plugs["tasmota"].is_on
    assert system.plugs["esphome"].is_on


async def test_off_all_reports_plugs_that_do_not_confirm(system: System) -> None:
    """A plug that ignores the OFF is named on stderr and the exit code is 1."""
    await system.up(["tasmota", "esphome"], start=False)
    system.plugs["esphome"].set_responsive(False)
    ran = await redlight(system, "off", "--all")
    assert ran.code == 1
    assert "not confirmed (check them): esphome" in ran.err


async def test_extend_pause_and_resume_say_what_happened(system: System) -> None:
    """Issue 14's session controls against the real daemon: ``extend`` says the new length
    and re-arms the plug's own timer; ``pause`` returns once the plug is off; ``resume``
    lights it again; a refusal exits 1 with the reason."""
    await system.up(["tasmota"])
    plug = system.plugs["tasmota"]
    assert (await redlight(system, "start", "tasmota", "--duration", "2m")).code == 0
    await until(plug, is_on)
    extended = await redlight(system, "extend", "tasmota", "1m")
    assert extended.code == 0, extended.err
    assert extended.out.startswith("extended tasmota by 1m: 3m in all, until ")
    assert "the plug's own timer is re-armed for" in extended.out
    armed = plug.failsafe_armed_s
    assert armed is not None
    assert 180 < armed <= 180 + 30  # what is left of 3m, plus failsafe_margin
    too_long = await redlight(system, "extend", "tasmota", "13m")
    assert too_long.code == 1
    assert "(over_max_on)" in too_long.err
    paused = await redlight(system, "pause", "tasmota")
    assert paused.code == 0, paused.err
    assert paused.out.startswith("paused tasmota: off, ")
    assert not plug.is_on
    resumed = await redlight(system, "resume", "tasmota")
    assert resumed.code == 0, resumed.err
    assert resumed.out.startswith("resumed tasmota: ")
    await until(plug, is_on)
    again = await redlight(system, "resume", "tasmota")
    assert again.code == 1
    assert "(not_paused)" in again.err
    assert (await redlight(system, "stop", "tasmota")).out == "stopped: tasmota\n"
