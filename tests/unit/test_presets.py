"""Plug presets: topics, payloads, state parsing and failsafes, as each firmware documents them."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from redlight.broker import Message
from redlight.presets import (
    ON_EXPIRY_S,
    Plug,
    PlugAvailability,
    PlugConfig,
    PlugState,
    build_plug,
    pulsetime_seconds,
    tasmota_pulsetime,
)


def plug(**table: Any) -> Plug:
    """Build the plug for a panel ``p1`` under base topic ``redlight``."""
    return build_plug("p1", PlugConfig(**table), base_topic="redlight")


def topics(messages: list[Message]) -> list[tuple[str, str]]:
    """(topic, payload) pairs, for exact and ordered assertions."""
    return [
        (m.topic, m.payload if isinstance(m.payload, str) else m.payload.decode()) for m in messages
    ]


# ---------------------------------------------------------------- Tasmota PulseTime encoding


@pytest.mark.parametrize(
    ("seconds", "encoded"),
    [
        (0.1, 1),
        (5.5, 55),
        (11.1, 111),
        (11.15, 112),  # 11.2 s cannot be said in tenths above 111: the next whole second, 12 s
        (12, 112),
        (13, 113),
        (360, 460),  # Tasmota's docs: "PulseTime 460 = 6 min"
        (630, 730),
        (900, 1000),  # 15 minutes
        (930, 1030),  # 15 minutes + the default 30 s margin
    ],
)
def test_pulsetime_uses_tasmotas_encoding(seconds: float, encoded: int) -> None:
    """Tenths of a second up to 111, then seconds + 100, as Tasmota's Commands.md documents."""
    assert tasmota_pulsetime(seconds) == encoded


@given(st.floats(min_value=0.05, max_value=64800))
def test_pulsetime_is_never_shorter_than_asked_and_at_most_a_second_longer(seconds: float) -> None:
    """Decoding the encoded PulseTime (as Tasmota's SetPulseTimer does) gives >= the request."""
    decoded = pulsetime_seconds(tasmota_pulsetime(seconds))
    assert seconds - 1e-6 <= decoded < seconds + 1.0


def test_pulsetime_refuses_what_tasmota_cannot_count() -> None:
    """Zero, negative and over-64,800-second timers are programming errors, not silent clamps."""
    for bad in (0, -1, 64801):
        with pytest.raises(ValueError, match="PulseTime"):
            tasmota_pulsetime(bad)


# ---------------------------------------------------------------- each preset


def test_tasmota_topics_and_pulsetime_before_on() -> None:
    """Tasmota: PulseTime is armed, then POWER ON, on cmnd/<t>/; never retained, QoS 0."""
    p = plug(preset="tasmota", topic="panel_left")
    on = p.turn_on(630)
    assert topics(on) == [("cmnd/panel_left/PulseTime1", "730"), ("cmnd/panel_left/POWER", "ON")]
    assert all(not m.retain and m.qos == 0 for m in on)
    assert topics(p.turn_off()) == [("cmnd/panel_left/POWER", "OFF")]
    assert topics(p.ask_state()) == [("cmnd/panel_left/POWER", "")]
    assert set(p.subscriptions) == {
        "stat/panel_left/POWER",
        "stat/panel_left/RESULT",
        "tele/panel_left/STATE",
        "tele/panel_left/LWT",
        "tele/panel_left/SENSOR",  # power, for panels with min_power_w
        "stat/panel_left/STATUS10",
    }


def test_tasmota_reads_plain_result_and_telemetry() -> None:
    """stat POWER (plain), stat RESULT and tele STATE (JSON POWER) all give the relay state."""
    p = plug(preset="tasmota", topic="t")
    assert p.read("stat/t/POWER", b"ON") == PlugState(on=True)
    assert p.read("stat/t/RESULT", b'{"POWER":"OFF"}') == PlugState(on=False)
    assert p.read("tele/t/STATE", b'{"Time":"x","POWER":"ON","Wifi":{}}') == PlugState(on=True)
    assert p.read("stat/t/RESULT", b'{"PulseTime1":{"Set":730,"Remaining":0}}') is None
    assert p.read("tele/t/LWT", b"Offline") == PlugAvailability("tele/t/LWT", online=False)
    assert p.read("tele/t/LWT", b"Online") == PlugAvailability("tele/t/LWT", online=True)


def test_tasmota_relay_index() -> None:
    """With ``index = 2`` the command, the state key and PulseTime all name relay 2."""
    p = plug(preset="tasmota", topic="strip", index=2)
    assert topics(p.turn_on(100)) == [("cmnd/strip/PulseTime2", "200"), ("cmnd/strip/POWER2", "ON")]
    assert p.read("stat/strip/RESULT", b'{"POWER2":"ON"}') == PlugState(on=True)
    assert p.read("stat/strip/RESULT", b'{"POWER1":"ON"}') is None


def test_shelly_gen1() -> None:
    """Shelly Gen1: lower-case on/off, ``overpower`` counts as off, ``update`` asks for state."""
    p = plug(preset="shelly_gen1", id="shellyplug-s-ABC123")
    assert not p.has_failsafe
    assert topics(p.turn_on(None)) == [("shellies/shellyplug-s-ABC123/relay/0/command", "on")]
    assert topics(p.ask_state()) == [("shellies/shellyplug-s-ABC123/command", "update")]
    relay = "shellies/shellyplug-s-ABC123/relay/0"
    assert p.read(relay, b"on") == PlugState(on=True)
    assert p.read(relay, b"overpower") == PlugState(on=False)
    online = "shellies/shellyplug-s-ABC123/online"
    assert p.read(online, b"false") == PlugAvailability(online, online=False)


def test_shelly_gen2_rpc_with_toggle_after() -> None:
    """Shelly Gen2: Switch.Set over RPC with ``toggle_after``; replies on ``<src>/rpc``."""
    p = plug(preset="shelly_gen2", prefix="shellyplugsg3-aabb")
    [on] = p.turn_on(630)
    assert on.topic == "shellyplugsg3-aabb/rpc"
    body = json.loads(on.payload)
    assert body["method"] == "Switch.Set"
    assert body["params"] == {"id": 0, "on": True, "toggle_after": 630}
    assert body["src"] == "redlight-p1"
    [off] = p.turn_off()
    assert json.loads(off.payload)["params"] == {"id": 0, "on": False}
    [ask] = p.ask_state()
    assert json.loads(ask.payload)["method"] == "Switch.GetStatus"
    assert "redlight-p1/rpc" in p.subscriptions
    assert p.read("redlight-p1/rpc", b'{"id":3,"result":{"id":0,"output":true}}') == PlugState(True)
    assert p.read("redlight-p1/rpc", b'{"id":1,"result":{"was_on":false}}') is None
    status = b'{"id":0,"source":"timer","output":false,"apower":0}'
    assert p.read("shellyplugsg3-aabb/status/switch:0", status) == PlugState(on=False)
    notify = b'{"method":"NotifyStatus","params":{"switch:0":{"output":true}}}'
    assert p.read("shellyplugsg3-aabb/events/rpc", notify) == PlugState(on=True)
    delta = b'{"method":"NotifyStatus","params":{"switch:0":{"apower":3.2}}}'
    assert p.read("shellyplugsg3-aabb/events/rpc", delta) is None


def test_zigbee2mqtt_on_time_is_opt_in() -> None:
    """Zigbee2MQTT: plain ``{"state":"ON"}`` unless ``failsafe = true`` adds ``on_time``."""
    plain = plug(preset="zigbee2mqtt", device="Panel plug right")
    assert not plain.has_failsafe
    assert topics(plain.turn_on(None)) == [("zigbee2mqtt/Panel plug right/set", '{"state": "ON"}')]
    timed = plug(preset="zigbee2mqtt", device="Panel plug right", failsafe=True)
    on = timed.turn_on(630)
    assert json.loads(on[0].payload) == {"state": "ON", "on_time": 630}
    # A timed ON gets no optimistic state from Zigbee2MQTT: ask for it.
    assert on[1].topic == "zigbee2mqtt/Panel plug right/get"


EVERY_PRESET = [
    {"preset": "tasmota", "topic": "t"},
    {"preset": "shelly_gen1", "id": "shellyplug-s-1"},
    {"preset": "shelly_gen2", "prefix": "shellyplusplugs-2"},
    {"preset": "zigbee2mqtt", "device": "d", "failsafe": True},
    {"preset": "esphome", "node": "n", "switch": "relay"},
]


@pytest.mark.parametrize("table", EVERY_PRESET, ids=lambda t: t["preset"])
@pytest.mark.parametrize("failsafe_s", [None, 630])
def test_every_on_and_its_arming_expire_and_no_off_does(
    table: dict[str, Any], failsafe_s: float | None
) -> None:
    """Rule 6 at an MQTT 5 broker: an ON and its off-timer expire; an OFF and queries never do."""
    p = plug(**table)
    commands = {p.command_topic} | ({p.failsafe_topic} if p.failsafe_topic else set())
    on = p.turn_on(failsafe_s)
    expected = [(m.topic, ON_EXPIRY_S if m.topic in commands else None) for m in on]
    assert [(m.topic, m.expiry_s) for m in on] == expected
    assert (p.command_topic, ON_EXPIRY_S) in expected
    assert {m.expiry_s for m in p.turn_off() + p.ask_state()} == {None}


def test_zigbee2mqtt_availability_both_forms_and_the_bridge() -> None:
    """Plain ``online`` (1.x) and ``{"state":"online"}`` (2.x) both count; the bridge too."""
    p = plug(preset="zigbee2mqtt", device="d", base="z2m")
    assert p.read("z2m/d", b'{"state":"ON","power":60}') == PlugState(on=True)
    assert p.read("z2m/d/availability", b"offline") == PlugAvailability("z2m/d/availability", False)
    got = p.read("z2m/d/availability", b'{"state":"online"}')
    assert got == PlugAvailability("z2m/d/availability", online=True)
    bridge = p.read("z2m/bridge/state", b'{"state":"offline"}')
    assert bridge == PlugAvailability("z2m/bridge/state", online=False)


def test_esphome_has_no_query_and_no_failsafe() -> None:
    """ESPHome: ON/OFF on ``.../command``; its state is retained, so there is nothing to ask."""
    p = plug(preset="esphome", node="panel-feet", switch="relay")
    assert topics(p.turn_on(None)) == [("panel-feet/switch/relay/command", "ON")]
    assert p.ask_state() == []
    assert not p.has_failsafe
    assert p.read("panel-feet/switch/relay/state", b"OFF") == PlugState(on=False)
    assert p.read("panel-feet/status", b"offline") == PlugAvailability("panel-feet/status", False)


def test_generic_with_json_state_and_availability() -> None:
    """generic: every field explicit; a JSON path reads the state; availability when given."""
    p = plug(
        preset="generic",
        command_topic="sauna/panel/set",
        state_topic="sauna/panel/state",
        state_json_path="relay.state",
        payload_on="1",
        payload_off="0",
        availability_topic="sauna/panel/lwt",
    )
    assert topics(p.turn_on(None)) == [("sauna/panel/set", "1")]
    assert p.read("sauna/panel/state", b'{"relay":{"state":1}}') == PlugState(on=True)
    assert p.read("sauna/panel/state", b'{"relay":{"state":0}}') == PlugState(on=False)
    assert p.read("sauna/panel/state", b"not json") is None
    assert p.read("sauna/panel/lwt", b"offline") == PlugAvailability("sauna/panel/lwt", False)


def test_overrides_replace_preset_fields() -> None:
    """Any preset field can be overridden per panel: here Tasmota with renamed StateText."""
    p = plug(preset="tasmota", topic="t", state_on="AN", state_off="AUS")
    assert p.read("stat/t/POWER", b"AN") == PlugState(on=True)
    assert p.read("stat/t/POWER", b"ON") is None
    moved = plug(preset="tasmota", topic="t", command_topic="custom/t/POWER")
    assert topics(moved.turn_off()) == [("custom/t/POWER", "OFF")]


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        ({"preset": "tasmota"}, "plug.topic: the tasmota preset needs it"),
        ({"preset": "tasmota", "topic": "a/b"}, "plug.topic: must not contain '/', '+' or '#'"),
        ({"preset": "tasmota", "topic": "t", "device": "x"}, "plug.device: not a parameter"),
        ({"preset": "esphome", "node": "n", "switch": "s", "failsafe": True}, "plug.failsafe:"),
        ({"preset": "generic", "command_topic": "a/set"}, "plug.state_topic: the generic preset"),
        (
            {"preset": "generic", "command_topic": "a/#", "state_topic": "a"},
            "plug.command_topic: must not contain MQTT wildcards",
        ),
        ({"preset": "shelly_gen2", "prefix": "p", "switch": "x"}, "plug.switch:"),
    ],
)
def test_bad_plug_tables_name_the_field(table: dict[str, Any], problem: str) -> None:
    """A plug table that cannot work is refused with the field and the reason."""
    with pytest.raises(ValueError, match="^" + problem.replace("(", r"\(").replace("+", r"\+")):
        plug(**table)
