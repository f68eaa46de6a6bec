"""Panel power verification: a panel that draws nothing, and a relay that is stuck on."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from redlight.config import Config
from redlight.presets import PlugConfig, build_plug
from redlight.reports import STUCK_AFTER_S
from redlight.sessions import POWER_ASK_S, POWER_CHECK_S
from tests.unit.corekit import Kit, events, make_config, payloads, state

STATUS = "cmnd/panel_left/Status"


def powered(min_power_w: float = 20) -> Config:
    """The Tasmota panel with power verification."""
    left = make_config().panels["hip_left"].model_dump(exclude_unset=True)
    return make_config(panels={"hip_left": left | {"min_power_w": min_power_w}})


def power(kit: Kit, watts: float) -> list[Any]:
    """Tasmota's answer to ``Status 10``."""
    body = {"StatusSNS": {"ENERGY": {"Power": watts, "Voltage": 230}}}
    return kit.send("stat/panel_left/STATUS10", json.dumps(body))


def running_confirmed(kit: Kit) -> None:
    """A 10-minute session whose plug confirmed ON."""
    kit.start("hip_left", 600)
    kit.report("hip_left", on=True)


def test_a_panel_drawing_nothing_ends_as_no_power() -> None:
    """The plug is asked for its power; 0.4 W after ON ends the session as no_power, OFF sent."""
    kit = Kit.create(powered()).ready()
    running_confirmed(kit)
    asked = kit.advance(POWER_ASK_S)
    assert payloads(asked, STATUS) == ["10"]
    power(kit, 0.4)
    got = kit.advance(POWER_CHECK_S - POWER_ASK_S)
    [finished] = events(got, "session_finished")
    assert finished.fields["reason"] == "no_power"
    assert payloads(got, "cmnd/panel_left/POWER") == ["OFF"]


def test_a_panel_drawing_its_power_keeps_running() -> None:
    """55 W when checked: the session goes on to its end."""
    kit = Kit.create(powered()).ready()
    running_confirmed(kit)
    kit.advance(POWER_ASK_S)
    power(kit, 55)
    got = kit.advance(POWER_CHECK_S)
    assert events(got, "session_finished") == []
    assert kit.core.running() == ["hip_left"]


def test_no_reading_is_logged_not_guessed() -> None:
    """A plug that never reports power leaves the session running (and says so in the log)."""
    kit = Kit.create(powered()).ready()
    running_confirmed(kit)
    got = kit.advance(POWER_CHECK_S)
    assert events(got, "session_finished") == []
    assert any(getattr(e, "event", None) == "power_unknown" for e in got)


def test_power_after_a_confirmed_off_means_a_stuck_relay() -> None:
    """The plug says OFF but passes 48 W a while later: relay_stuck, and the state says so."""
    kit = Kit.create(powered()).ready()
    kit.advance(STUCK_AFTER_S)
    got = kit.send("tele/panel_left/SENSOR", json.dumps({"ENERGY": {"Power": 48}}))
    [stuck] = events(got, "relay_stuck")
    assert stuck.fields["power_w"] == 48
    assert state(kit, "hip_left")["relay_stuck"] is True
    kit.send("tele/panel_left/SENSOR", json.dumps({"ENERGY": {"Power": 0}}))
    assert state(kit, "hip_left")["relay_stuck"] is False


def test_power_right_after_off_is_not_yet_a_stuck_relay() -> None:
    """A reading taken as the relay opened (plugs average) is not a fault."""
    kit = Kit.create(powered()).ready()
    got = kit.send("tele/panel_left/SENSOR", json.dumps({"ENERGY": {"Power": 48}}))
    assert events(got, "relay_stuck") == []


@pytest.mark.parametrize(
    ("table", "topic", "payload", "watts"),
    [
        (
            {"preset": "shelly_gen2", "prefix": "p"},
            "p/status/switch:0",
            b'{"output":true,"apower":61.5}',
            61.5,
        ),
        (
            {"preset": "zigbee2mqtt", "device": "d"},
            "zigbee2mqtt/d",
            b'{"state":"ON","power":12}',
            12.0,
        ),
        ({"preset": "tasmota", "topic": "t"}, "tele/t/SENSOR", b'{"ENERGY":{"Power":7}}', 7.0),
        ({"preset": "tasmota", "topic": "t"}, "tele/t/SENSOR", b'{"ENERGY":{"Power":"x"}}', None),
    ],
)
def test_each_power_format(
    table: dict[str, Any], topic: str, payload: bytes, watts: float | None
) -> None:
    """Shelly apower, Zigbee2MQTT power and Tasmota ENERGY.Power are read as watts."""
    plug = build_plug("p1", PlugConfig(**table), base_topic="redlight")
    assert plug.power(topic, payload) == watts


def test_min_power_needs_a_plug_that_measures_it() -> None:
    """min_power_w on an ESPHome plug is a config error naming the field."""
    with pytest.raises(ValidationError, match=r"panels.feet.min_power_w: the esphome preset"):
        make_config(
            panels={
                "feet": {
                    "min_power_w": 10,
                    "plug": {"preset": "esphome", "node": "n", "switch": "s"},
                }
            }
        )


@pytest.mark.looptime
async def test_the_panel_switch_left_off_ends_the_session_end_to_end() -> None:
    """A simulated Tasmota whose panel draws nothing: the runtime ends the session, plug off."""
    from redlight.broker import Message
    from tests.unit.test_runtime import make_rig

    rig = await make_rig(powered())
    rig.plug.load_w = 0.0
    finished = rig.event("session_finished", panel="hip_left")
    assert rig.user.publish(
        Message("redlight/panel/hip_left/set", '{"action":"start","duration":"5m"}')
    )
    assert json.loads((await finished).payload)["reason"] == "no_power"
    await rig.plug.wait_for(lambda plug: not plug.is_on)
    assert rig.plug.on_seconds()[0] <= POWER_CHECK_S + 1e-3, rig.plug.on_seconds()
    await rig.stop()
