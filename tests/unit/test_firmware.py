"""Each preset against its firmware's model: what redlight sends is what the firmware obeys, and
what the firmware reports is what redlight reads.

The round trip: the preset's messages go to the model (``redlight.firmware``, written from the
firmware's side), the model's reports go back to the preset's ``read``. Every preset is
covered; one added without a model (or without a table here) fails.
"""

from __future__ import annotations

from typing import Any, Final, get_args

import pytest

from redlight.broker import Message
from redlight.firmware import MODELS, Firmware, firmware_for
from redlight.presets import (
    Plug,
    PlugAvailability,
    PlugConfig,
    PlugReport,
    PlugState,
    PresetName,
    build_plug,
)

#: Plug tables per preset: the plain one first, then variants (relay index, JSON state, ...).
TABLES: Final[dict[str, list[dict[str, Any]]]] = {
    "tasmota": [
        {"topic": "panel_left"},
        {"topic": "strip", "index": 2},
        {"topic": "single", "index": 1},
        {"topic": "bare", "failsafe": False},
    ],
    "shelly_gen1": [{"id": "shellyplug-s-ABC123"}, {"id": "shelly25-D1", "relay": 1}],
    "shelly_gen2": [{"prefix": "shellyplugsg3-aabbcc"}, {"prefix": "pro2", "switch": 1}],
    "zigbee2mqtt": [
        {"device": "Panel plug", "failsafe": True},
        {"device": "Panel plug"},
        {"device": "Hip", "base": "z2m/home", "failsafe": True},
    ],
    "esphome": [{"node": "panel1", "switch": "relay"}],
    "generic": [
        {
            "command_topic": "home/panel1/set",
            "state_topic": "home/panel1/state",
            "state_request_topic": "home/panel1/get",
            "availability_topic": "home/panel1/status",
        },
        {
            "command_topic": "home/panel2/cmd",
            "payload_on": "1",
            "payload_off": "0",
            "state_topic": "home/panel2/tele",
            "state_json_path": "relay.state",
            "state_request_topic": "home/panel2/cmd",
            "state_request_payload": "?",
        },
    ],
}
CASES: Final = [
    pytest.param(preset, table, id=f"{preset}-{i}")
    for preset in get_args(PresetName)
    for i, table in enumerate(TABLES.get(preset, [{}]))
]
#: The loop time the round trips run at.
T0: Final = 1000.0
#: The off-timer asked for, in seconds.
FAILSAFE_S: Final = 30.0


def pair(preset: str, table: dict[str, Any]) -> tuple[Plug, Firmware]:
    """The preset's plug for panel ``p1`` and the model of its firmware, both from one table."""
    config = PlugConfig(preset=preset, **table)
    return build_plug("p1", config, base_topic="redlight"), firmware_for(config)


def deliver(model: Firmware, messages: list[Message], now: float = T0) -> list[Message]:
    """Hand the preset's messages to the firmware (each must reach it); what it published."""
    reports: list[Message] = []
    for message in messages:
        assert model.hears(message.topic), f"the firmware does not listen on {message.topic}"
        assert not message.retain
        reports += model.receive(message.topic, message.payload_bytes(), now).reports
    return reports


def read(plug: Plug, reports: list[Message]) -> list[PlugReport]:
    """What the preset makes of each report it subscribes to (``None``s left out)."""
    readings = [plug.read(m.topic, m.payload_bytes()) for m in reports]
    return [r for r in readings if r is not None]


def states(plug: Plug, reports: list[Message]) -> set[PlugState]:
    """The relay states the preset reads in the reports."""
    return {r for r in read(plug, reports) if isinstance(r, PlugState)}


def test_every_preset_has_a_model_and_a_table() -> None:
    """A new preset needs a firmware model and a round trip here."""
    assert set(MODELS) == set(get_args(PresetName))
    assert set(TABLES) == set(get_args(PresetName))


@pytest.mark.parametrize(("preset", "table"), CASES)
@pytest.mark.parametrize("failsafe_s", [None, FAILSAFE_S])
def test_turn_on_reaches_the_relay_and_reads_back_as_on(
    preset: str, table: dict[str, Any], failsafe_s: float | None
) -> None:
    """The preset's ON switches the model's relay on; every state it reports reads as on."""
    plug, model = pair(preset, table)
    reports = deliver(model, plug.turn_on(failsafe_s))
    assert model.on
    assert states(plug, reports) == {PlugState(on=True)}


@pytest.mark.parametrize(("preset", "table"), CASES)
def test_turn_off_reaches_the_relay_and_reads_back_as_off(
    preset: str, table: dict[str, Any]
) -> None:
    """After an ON, the preset's OFF switches the relay off, and its reports read as off."""
    plug, model = pair(preset, table)
    deliver(model, plug.turn_on(FAILSAFE_S))
    reports = deliver(model, plug.turn_off(), T0 + 1)
    assert not model.on
    assert model.off_at is None  # an OFF ends the firmware's own timer too
    assert states(plug, reports) == {PlugState(on=False)}


@pytest.mark.parametrize(("preset", "table"), CASES)
@pytest.mark.parametrize("on", [True, False])
def test_asking_the_state_is_answered_with_the_relay(
    preset: str, table: dict[str, Any], on: bool
) -> None:
    """The preset's state request gets an answer that reads as the relay; where it has none,
    the firmware retains its state, so subscribing is asking."""
    plug, model = pair(preset, table)
    model.set_relay(on, T0)
    if plug.ask_state():
        reports = deliver(model, plug.ask_state())
    else:
        reports = model.report()
        assert all(m.retain for m in reports)
    assert model.on is on
    assert states(plug, reports) == {PlugState(on=on)}


@pytest.mark.parametrize(("preset", "table"), CASES)
def test_the_armed_failsafe_switches_the_relay_off_by_itself(
    preset: str, table: dict[str, Any]
) -> None:
    """The off-timer the preset arms with its ON runs at least as long as asked (at most a
    second more) and then switches the relay off, reported as off; a preset that cannot arm
    one leaves the firmware without a timer."""
    plug, model = pair(preset, table)
    deliver(model, plug.turn_on(FAILSAFE_S))
    if not plug.has_failsafe:
        assert model.off_at is None
        return
    assert model.off_at is not None
    assert FAILSAFE_S <= model.off_at - T0 < FAILSAFE_S + 1
    assert model.expire(T0 + FAILSAFE_S - 0.1) is None
    assert model.on
    fired = model.expire(model.off_at)
    assert fired is not None
    assert fired.switched
    assert not model.on
    assert states(plug, list(fired.reports)) == {PlugState(on=False)}


@pytest.mark.parametrize(("preset", "table"), CASES)
def test_availability_birth_and_will_read_as_online_and_offline(
    preset: str, table: dict[str, Any]
) -> None:
    """What the firmware says on connecting reads as online (and its relay as it is); its will,
    in every version's wording, reads as offline."""
    plug, model = pair(preset, table)
    birth = model.connect()
    assert {a.topic for a in model.availability} <= set(plug.availability_topics)
    online = [r for r in read(plug, birth) if isinstance(r, PlugAvailability)]
    assert [r.online for r in online] == [True] * len(online)
    assert bool(online) == bool(plug.availability)
    assert states(plug, birth) == {PlugState(on=False)}
    will = model.last_will()
    if not plug.availability:
        assert will is None
        return
    assert will is not None
    assert will.retain
    assert plug.read(will.topic, will.payload_bytes()) == PlugAvailability(will.topic, False)
    for topic, ups, downs in model.availability:
        for word in ups:
            assert plug.read(topic, word.encode()) == PlugAvailability(topic, online=True)
        for word in downs:
            assert plug.read(topic, word.encode()) == PlugAvailability(topic, online=False)


@pytest.mark.parametrize(("preset", "table"), CASES)
def test_asking_the_power_is_answered_with_what_the_panel_draws(
    preset: str, table: dict[str, Any]
) -> None:
    """Where the preset reads power, its request gets the watts the firmware passes."""
    plug, model = pair(preset, table)
    if not plug.has_power:
        assert plug.ask_power() == []
        return
    deliver(model, plug.turn_on(None))
    model.load_w = 48.5
    reports = deliver(model, plug.ask_power())
    watts = {plug.power(m.topic, m.payload_bytes()) for m in reports} - {None}
    assert watts == {48.5}
