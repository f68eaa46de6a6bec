"""Home Assistant discovery: the payloads, their contract, and the bridge's lifecycle."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.client import topic_matches_sub

from redlight.broker import Message
from redlight.config import Config
from redlight.core import Now
from redlight.hass import (
    PANEL_EVENT_TYPES,
    HassBridge,
    discovery_messages,
    discovery_payloads,
    length_bounds,
)
from redlight.membroker import MemoryBroker
from redlight.messages import Topics, dumps, status_message
from redlight.runtime import Runtime
from redlight.simplug import SimulatedPlug
from tests.unit.corekit import START_WALL, Kit, make_config, payloads
from tests.unit.test_runtime import RecordingNotifier

#: Keys each platform must have (Home Assistant's MQTT schemas).
REQUIRED: dict[str, set[str]] = {
    "switch": {"command_topic"},
    "number": {"command_topic"},
    "button": {"command_topic"},
    "sensor": {"state_topic"},
    "binary_sensor": {"state_topic"},
    "event": {"state_topic", "event_types"},
}
#: Keys Home Assistant deprecated or never had in device discovery components.
FORBIDDEN = {"object_id", "obj_id", "availability_topic"}


def full_config(**overrides: Any) -> Config:
    """Two panels, a routine and a schedule."""
    raw: dict[str, Any] = {
        "routines": {
            "post_run": {
                "name": "Post-run hips",
                "steps": [
                    {"panels": ["hip_left"], "duration": "5m"},
                    {"pause": "30s", "prompt": "Turn over"},
                    {"panels": ["sauna"], "duration": "5m"},
                ],
            }
        },
        "schedules": {
            "rest_days": {"routine": "post_run", "cron": "0 19 * * tue,thu", "timezone": "UTC"}
        },
    }
    return make_config(**(raw | overrides))


def components(payloads: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every component of every device."""
    return [c for p in payloads.values() for c in p["components"].values()]


def test_one_device_per_panel_via_the_redlight_device() -> None:
    """redlight is one device; each panel is a device behind it, on a plug of its preset's
    kind, in its area. Nothing claims a maker or firmware version of the plug: redlight's
    version is the origin's (and the redlight device's own)."""
    payloads = discovery_payloads(full_config())
    assert list(payloads) == [
        "homeassistant/device/redlight_redlight/config",
        "homeassistant/device/redlight_redlight__hip_left/config",
        "homeassistant/device/redlight_redlight__sauna/config",
    ]
    left = payloads["homeassistant/device/redlight_redlight__hip_left/config"]
    assert left["device"] == {
        "identifiers": ["redlight_redlight__hip_left"],
        "name": "Left hip panel",
        "model": "Panel on a Tasmota plug",
        "suggested_area": "left hip",
        "via_device": "redlight_redlight",
    }
    sauna = payloads["homeassistant/device/redlight_redlight__sauna/config"]["device"]
    assert "suggested_area" not in sauna  # no area configured
    assert left["origin"]["name"] == "redlight"
    own = payloads["homeassistant/device/redlight_redlight/config"]["device"]
    assert own["sw_version"] == left["origin"]["sw_version"]
    assert left["availability"] == [
        {
            "topic": "redlight/status",
            "payload_available": "online",
            "payload_not_available": "offline",
        }
    ]


def test_panel_entities_are_exactly_the_specs() -> None:
    """Session, Session length, Session ends, State, Today, Plug, Session events (SPEC §4),
    and the session controls, Remaining and This week (issue 14)."""
    left = discovery_payloads(full_config())[
        "homeassistant/device/redlight_redlight__hip_left/config"
    ]
    named = {c["name"]: c["platform"] for c in left["components"].values()}
    assert named == {
        "Session": "switch",
        "Session length": "number",
        "Extend 2 min": "button",
        "Pause": "button",
        "Resume": "button",
        "Session ends": "sensor",
        "Remaining": "sensor",
        "State": "sensor",
        "Today": "sensor",
        "This week": "sensor",
        "Plug": "binary_sensor",
        "Session events": "event",
    }
    parts = left["components"]
    assert parts["session"]["command_topic"] == "redlight/panel/hip_left/set"
    assert (parts["length"]["min"], parts["length"]["max"]) == (1.0, 15.0)
    assert parts["ends"]["device_class"] == "timestamp"
    assert parts["state"]["options"] == ["idle", "running", "paused", "cooldown", "fault"]
    assert parts["plug"]["device_class"] == "connectivity"
    assert parts["plug"]["entity_category"] == "diagnostic"
    assert parts["length"]["entity_category"] == "config"
    # Only what the panel's event topic carries: no power verification, so no relay_stuck.
    assert parts["events"]["event_types"] == [t for t in PANEL_EVENT_TYPES if t != "relay_stuck"]
    assert not {"routine_step", "schedule_offer"} & set(parts["events"]["event_types"])
    assert parts["session"]["default_entity_id"] == "switch.redlight_hip_left_session"
    assert parts["length"]["default_entity_id"] == "number.redlight_hip_left_session_length"


def test_the_session_controls_are_buttons_available_while_they_apply() -> None:
    """Extend, Pause and Resume press the panel's JSON commands; each is available only
    while redlight is online and the panel's state says it applies (never for an ON redlight
    did not start). Remaining reads the state's remaining_s in minutes."""
    parts = discovery_payloads(full_config())[
        "homeassistant/device/redlight_redlight__hip_left/config"
    ]["components"]
    presses = {key: parts[key]["payload_press"] for key in ("extend", "pause", "resume")}
    assert presses == {
        "extend": '{"action":"extend","by":"2m"}',
        "pause": '{"action":"pause"}',
        "resume": '{"action":"resume"}',
    }
    own = "value_json.session and value_json.session.source != 'external'"
    assert parts["pause"]["availability_mode"] == "all"
    assert parts["pause"]["availability"][1] == {
        "topic": "redlight/panel/hip_left/state",
        "value_template": f"{{{{ 'yes' if {own} and value_json.state == 'running' else 'no' }}}}",
        "payload_available": "yes",
        "payload_not_available": "no",
    }
    assert "'paused'" in parts["resume"]["availability"][1]["value_template"]
    assert "('running', 'paused')" in parts["extend"]["availability"][1]["value_template"]
    assert parts["extend"]["command_topic"] == "redlight/panel/hip_left/set"
    assert parts["extend"]["default_entity_id"] == "button.redlight_hip_left_extend_2_min"
    assert parts["remaining"]["unit_of_measurement"] == "min"
    assert "remaining_s / 60" in parts["remaining"]["value_template"]


def with_goal(goal: str = "1h") -> Config:
    """``full_config`` with a weekly goal on ``hip_left``; ``sauna`` has none."""
    panels = {key: p.model_dump(exclude_unset=True) for key, p in make_config().panels.items()}
    panels["hip_left"]["weekly_goal"] = goal
    return full_config(panels=panels)


def test_this_week_is_a_duration_total_that_resets_on_monday() -> None:
    """Every panel has ``This week``: minutes from ``week_s``, a ``total_increasing`` like
    ``Today`` (a week starting again is a new cycle to Home Assistant's statistics)."""
    payloads = discovery_payloads(with_goal())
    sauna = payloads["homeassistant/device/redlight_redlight__sauna/config"]["components"]
    assert sauna["week"] == {
        "platform": "sensor",
        "unique_id": "redlight_redlight__sauna_week",
        "name": "This week",
        "default_entity_id": "sensor.redlight_sauna_this_week",
        "icon": "mdi:calendar-week",
        "device_class": "duration",
        "unit_of_measurement": "min",
        "state_class": "total_increasing",
        "suggested_display_precision": 1,
        "state_topic": "redlight/panel/sauna/state",
        "value_template": "{{ (value_json.week_s / 60) | round(2) }}",
    }
    assert "weekly_goal" not in sauna  # no goal configured


def test_a_weekly_goal_is_a_percent_sensor_with_the_goal_as_attribute() -> None:
    """With ``weekly_goal``, ``Weekly goal`` shows the share reached this week in percent
    (100 and more: met), and the goal in minutes as its attribute ``goal_min``."""
    left = discovery_payloads(with_goal())[
        "homeassistant/device/redlight_redlight__hip_left/config"
    ]["components"]
    assert left["weekly_goal"] == {
        "platform": "sensor",
        "unique_id": "redlight_redlight__hip_left_weekly_goal",
        "name": "Weekly goal",
        "default_entity_id": "sensor.redlight_hip_left_weekly_goal",
        "icon": "mdi:target",
        "unit_of_measurement": "%",
        "state_class": "measurement",
        "suggested_display_precision": 0,
        "state_topic": "redlight/panel/hip_left/state",
        "value_template": "{{ (100 * value_json.week_s / value_json.weekly_goal_s) | round(1) }}",
        "json_attributes_topic": "redlight/panel/hip_left/state",
        "json_attributes_template": "{{ {'goal_min': value_json.weekly_goal_s / 60} | tojson }}",
    }


def test_each_area_is_a_week_sensor_on_the_redlight_device() -> None:
    """One sensor per area (two panels aimed at it make one), reading the area's retained
    state; its ids come from the area's slug and include the base topic."""
    panels = {key: p.model_dump(exclude_unset=True) for key, p in make_config().panels.items()}
    panels["sauna"]["area"] = "Left-Hip"
    config = full_config(panels=panels, mqtt={"base_topic": "clinic"})
    own = discovery_payloads(config)["homeassistant/device/redlight_clinic/config"]["components"]
    areas = {key: value for key, value in own.items() if key.startswith("area_")}
    assert areas == {
        "area_left_hip": {
            "platform": "sensor",
            "unique_id": "redlight_clinic_area_left_hip",
            "name": "Left hip area this week",
            "default_entity_id": "sensor.redlight_clinic_left_hip_area_this_week",
            "icon": "mdi:human",
            "state_topic": "clinic/area/left_hip/state",
            "device_class": "duration",
            "unit_of_measurement": "min",
            "state_class": "total_increasing",
            "suggested_display_precision": 1,
            "value_template": "{{ (value_json.week_s / 60) | round(2) }}",
        }
    }


def test_areas_without_ascii_letters_still_get_distinct_legal_ids() -> None:
    """Areas written in another script ("腰", "膝") make two sensors whose ids differ and are
    legal component keys and entity ids."""
    panels = {key: p.model_dump(exclude_unset=True) for key, p in make_config().panels.items()}
    panels["hip_left"]["area"] = "腰"
    panels["sauna"]["area"] = "膝"
    own = discovery_payloads(full_config(panels=panels))[
        "homeassistant/device/redlight_redlight/config"
    ]["components"]
    areas = [value for key, value in own.items() if key.startswith("area_")]
    ids = [a["default_entity_id"] for a in areas]
    assert len(set(ids)) == 2
    assert all(re.fullmatch(r"sensor\.redlight_area_[0-9a-f]{8}_area_this_week", i) for i in ids)
    assert [a["name"] for a in areas] == ["腰 area this week", "膝 area this week"]


def test_length_is_bounded_by_a_lower_max_on() -> None:
    """With max_on = 8m the number entity offers 1 to 8 minutes."""
    left = make_config().panels["hip_left"].model_dump(exclude_unset=True)
    left["default_duration"] = "5m"
    config = full_config(
        safety={"max_on": "8m"}, routines={}, schedules={}, panels={"hip_left": left}
    )
    left = discovery_payloads(config)["homeassistant/device/redlight_redlight__hip_left/config"]
    assert left["components"]["length"]["max"] == 8.0


def test_length_reaches_down_to_a_default_under_a_minute() -> None:
    """A 5-second default shows as 0.08 min, so the number goes down to it in 0.01 steps.

    Home Assistant drops a number state outside [min, max] with an error, which left the
    entity unknown (seen with the real core, tests/integration/test_homeassistant.py).
    """
    left = make_config().panels["hip_left"].model_dump(exclude_unset=True)
    left["default_duration"] = "5s"
    config = full_config(routines={}, schedules={}, panels={"hip_left": left})
    topic = "homeassistant/device/redlight_redlight__hip_left/config"
    length = discovery_payloads(config)[topic]["components"]["length"]
    assert (length["min"], length["max"], length["step"]) == (0.08, 15.0, 0.01)


def shown(seconds: float) -> float:
    """The number's state for a default of ``seconds``, as its value_template renders it."""
    return round(seconds / 60, 2)


@given(
    max_on_s=st.integers(min_value=1, max_value=900),
    default_fraction=st.floats(min_value=0, max_value=1),
    set_fraction=st.floats(min_value=0, max_value=1),
)
def test_length_bounds_hold_every_default_the_panel_can_have(
    max_on_s: int, default_fraction: float, set_fraction: float
) -> None:
    """The configured default and anything duration/set accepts both show within [min, max]."""
    default_s = max(1, round(default_fraction * max_on_s))
    left = make_config().panels["hip_left"].model_dump(exclude_unset=True)
    left["default_duration"] = default_s
    config = full_config(
        safety={"max_on": max_on_s}, routines={}, schedules={}, panels={"hip_left": left}
    )
    lowest, highest, step = length_bounds(config, "hip_left")
    accepted_lowest_s = min(60.0, max_on_s)  # commands.parse_duration_minutes
    set_s = accepted_lowest_s + set_fraction * (max_on_s - accepted_lowest_s)
    for seconds in (default_s, set_s, accepted_lowest_s, max_on_s):
        assert lowest <= shown(seconds) <= highest
    assert step >= 0.001  # Home Assistant's lower bound for step
    if max_on_s >= 60 and default_s >= 60:
        assert (lowest, step) == (1, 1)


def test_redlight_device_has_stop_all_active_routines_and_schedules() -> None:
    """Stop all, Active sessions, a start button per routine, enable + next run per schedule."""
    own = discovery_payloads(full_config())["homeassistant/device/redlight_redlight/config"]
    named = {c["name"]: c["platform"] for c in own["components"].values()}
    assert named == {
        "Stop all sessions": "button",
        "Active sessions": "sensor",
        "Start Post-run hips": "button",
        "rest_days enabled": "switch",
        "rest_days next run": "sensor",
        "Events": "event",
        "Left hip area this week": "sensor",
    }
    parts = own["components"]
    assert parts["stop_all"]["payload_press"] == '{"action":"stop_all"}'
    assert parts["routine_post_run"]["command_topic"] == "redlight/routine/post_run/set"
    assert parts["stop_all"]["default_entity_id"] == "button.redlight_stop_all_sessions"
    assert parts["routine_post_run"]["default_entity_id"] == "button.redlight_start_post_run_hips"
    # No schedule offers here: neither the offer event type nor an Accept button.
    assert parts["events"]["event_types"] == [
        "routine_started",
        "routine_step",
        "routine_finished",
        "command_rejected",
    ]
    assert parts["events"]["state_topic"] == "redlight/event"


def test_an_offer_schedule_gets_the_offer_event_and_an_accept_button() -> None:
    """Offers have a home on the redlight device: the Events entity lists schedule_offer, and
    "Accept offer" accepts the newest open one, available only while ``<b>/offer`` has one."""
    schedules = {"evening": {"panels": ["hip_left"], "cron": "0 19 * * *", "mode": "offer"}}
    own = discovery_payloads(full_config(routines={}, schedules=schedules))[
        "homeassistant/device/redlight_redlight/config"
    ]
    parts = own["components"]
    assert parts["events"]["event_types"] == ["schedule_offer", "command_rejected"]
    accept = parts["accept_offer"]
    assert (accept["platform"], accept["name"]) == ("button", "Accept offer")
    assert json.loads(accept["payload_press"]) == {"action": "accept_offer"}
    assert accept["availability_mode"] == "all"
    assert [a["topic"] for a in accept["availability"]] == ["redlight/status", "redlight/offer"]


def test_the_daemon_events_entity_takes_only_events_of_no_panel() -> None:
    """``<b>/event`` carries every panel event too; the Events entity's template renders those
    empty (Home Assistant ignores an empty rendering) and passes the others whole."""
    template = discovery_payloads(full_config())["homeassistant/device/redlight_redlight/config"][
        "components"
    ]["events"]["value_template"]
    assert template == "{{ value if value_json.panel is none else '' }}"


def test_every_entity_id_starts_with_redlight_and_the_instance() -> None:
    """A search for "redlight" finds every entity; another base topic is in the id too."""
    for base, prefix in (("redlight", "redlight_"), ("Clinic/Room2", "redlight_clinic_room2_")):
        config = full_config(mqtt={"base_topic": base})
        ids = [c["default_entity_id"] for c in components(discovery_payloads(config))]
        assert all(i.split(".", 1)[1].startswith(prefix) for i in ids), ids
        assert all(re.fullmatch(r"[a-z_]+\.[a-z0-9_]+", i) for i in ids), ids
        assert len(ids) == len(set(ids))


def test_discovery_contract_for_a_whole_config() -> None:
    """Unique ids, legal topics, required keys, no deprecated keys, commands redlight hears."""
    config = full_config()
    payloads = discovery_payloads(config)
    topics = Topics("redlight")
    everything = components(payloads)
    unique_ids = [c["unique_id"] for c in everything]
    assert len(unique_ids) == len(set(unique_ids))
    for topic, payload in payloads.items():
        assert re.fullmatch(r"homeassistant/device/[a-zA-Z0-9_-]+/config", topic)
        assert {"device", "origin", "components", "availability"} <= set(payload)
        for key in payload["components"]:
            assert re.fullmatch(r"[a-zA-Z0-9_-]+", key)
    for component in everything:
        assert REQUIRED[component["platform"]] <= set(component), component
        assert not FORBIDDEN & set(component)
        command = component.get("command_topic")
        if command is not None:
            assert any(topic_matches_sub(f, command) for f in topics.command_filters()), command
            assert component.get("retain") is False
        state = component.get("state_topic")
        if state is not None:
            assert state.startswith("redlight/")
    for message in discovery_messages(config):
        assert message.retain
        assert message.qos == 1


def test_instances_on_one_broker_never_collide() -> None:
    """Two base topics give disjoint discovery topics and unique ids."""
    one = discovery_payloads(full_config())
    two = discovery_payloads(full_config(mqtt={"base_topic": "clinic/room2"}))
    assert not set(one) & set(two)
    ids_one = {c["unique_id"] for c in components(one)}
    ids_two = {c["unique_id"] for c in components(two)}
    assert not ids_one & ids_two
    assert "homeassistant/device/redlight_clinic_room2__hip_left/config" in two


def test_disabled_home_assistant_sends_nothing() -> None:
    """With homeassistant.enabled = false there is no discovery and no subscription."""
    bridge = HassBridge(full_config(homeassistant={"enabled": False}))
    assert bridge.announce() == []
    assert bridge.subscriptions() == []


def test_a_removed_panel_is_cleared() -> None:
    """A retained discovery config for a panel no longer configured gets an empty payload."""
    old = discovery_payloads(full_config())
    left = make_config().panels["hip_left"].model_dump(exclude_unset=True)
    new_config = full_config(panels={"hip_left": left}, routines={}, schedules={})
    bridge = HassBridge(new_config)
    topic = "homeassistant/device/redlight_redlight__sauna/config"
    [removal] = bridge.leftover(topic, dumps(old[topic]).encode(), retain=True)
    assert (removal.topic, removal.payload, removal.retain) == (topic, b"", True)


def test_a_removed_routine_is_removed_the_documented_way() -> None:
    """A routine that left: its component as {"platform": ...}, then the config without it."""
    old = discovery_payloads(full_config())
    bridge = HassBridge(full_config(routines={}, schedules={}))
    topic = "homeassistant/device/redlight_redlight/config"
    reduced, final = bridge.leftover(topic, dumps(old[topic]).encode(), retain=True)
    assert json.loads(reduced.payload)["components"]["routine_post_run"] == {"platform": "button"}
    assert "routine_post_run" not in json.loads(final.payload)["components"]
    assert reduced.retain
    assert final.retain


def test_other_devices_and_live_messages_are_left_alone() -> None:
    """Somebody else's device, our own live echo, and garbage are never touched."""
    bridge = HassBridge(full_config())
    foreign = {"device": {"identifiers": ["zigbee2mqtt_0x1"]}, "components": {}}
    topic = "homeassistant/device/zigbee2mqtt_0x1/config"
    assert bridge.leftover(topic, dumps(foreign).encode(), retain=True) == []
    ours = discovery_payloads(full_config())
    own = "homeassistant/device/redlight_redlight/config"
    assert bridge.leftover(own, dumps(ours[own]).encode(), retain=False) == []
    assert bridge.leftover(own, dumps(ours[own]).encode(), retain=True) == []
    assert bridge.leftover(own, b"{not json", retain=True) == []


# ---------------------------------------------------------------- lifecycle on the memory broker


def clock() -> Now:
    """Virtual time."""
    loop = asyncio.get_running_loop()
    return Now(loop.time(), START_WALL + timedelta(seconds=loop.time()))


@pytest.mark.looptime
async def test_discovery_on_connect_again_after_birth_and_removal_of_leftovers() -> None:
    """Discovery and states on connect; again 2-5 s after HA's birth; stale devices removed."""
    config = make_config(
        panels={"hip_left": make_config().panels["hip_left"].model_dump(exclude_unset=True)}
    )
    broker = MemoryBroker()
    # A panel that was configured before: its retained discovery config is still on the broker.
    stale_topic = "homeassistant/device/redlight_redlight__sauna/config"
    broker.retained[stale_topic] = dumps(discovery_payloads(make_config())[stale_topic]).encode()
    runtime = Runtime(
        config,
        broker.client("redlight", will=status_message(Topics("redlight"), online=False)),
        clock=clock,
        notifier=RecordingNotifier(),
    )
    plug_config = config.panels["hip_left"].plug
    plug = SimulatedPlug("hip_left", plug_config, client=broker.client("plug"))
    await plug.start()
    ha = broker.client("homeassistant")
    ha.start(lambda event: None)
    announced = broker.next("homeassistant/device/redlight_redlight__hip_left/config")
    removed = broker.next(stale_topic, lambda m: m.payload_bytes() == b"")
    task = asyncio.create_task(runtime.run())
    first = await announced
    assert first.retain
    await removed
    assert stale_topic not in broker.retained

    loop = asyncio.get_running_loop()
    again = broker.next("homeassistant/device/redlight_redlight__hip_left/config")
    state_again = broker.next("redlight/panel/hip_left/state")
    born = loop.time()
    assert ha.publish(Message("homeassistant/status", "online"))
    await again
    assert 2.0 <= loop.time() - born <= 5.0
    await state_again

    # The Session switch turned on in Home Assistant: a default session on the real plug.
    started = broker.next("redlight/event", lambda m: b"session_started" in m.payload_bytes())
    # <b>/state was sent with the states just now: the next one follows within a second.
    counted = broker.next("redlight/state", lambda m: b'"active_sessions":1' in m.payload_bytes())
    assert ha.publish(Message("redlight/panel/hip_left/set", "ON"))
    event = json.loads((await started).payload)
    assert (event["source"], event["duration_s"]) == ("homeassistant", 600)
    sent = loop.time()
    active = json.loads((await counted).payload)
    assert active == {"active_sessions": 1, "running": ["hip_left"]}
    assert loop.time() - sent <= 1.0 + 1e-3  # a second (and the runtime's 10 µs of timer slack)
    runtime.request_shutdown()
    assert await task == 0
    await plug.stop()


def test_active_sessions_are_published_at_most_once_a_second_and_end_up_right() -> None:
    """Sessions starting together update <b>/state at once, then once more with the outcome."""
    kit = Kit.create().ready()
    kit.advance(2)  # a second after the start-up states
    got = kit.start("hip_left", 60) + kit.start("sauna", 60)
    assert [json.loads(p)["running"] for p in payloads(got, "redlight/state")] == [["hip_left"]]
    kit.report("hip_left", on=True)
    kit.report("sauna", on=True)
    later = kit.advance(1)
    assert [json.loads(p)["running"] for p in payloads(later, "redlight/state")] == [
        ["hip_left", "sauna"]
    ]
