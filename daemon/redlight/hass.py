"""Home Assistant MQTT discovery: every panel, routine and schedule as devices and entities.

Device-based discovery (``<prefix>/device/<id>/config``, Home Assistant 2024.11+), built by pure
functions that return messages; :class:`HassBridge` decides when to send them (on every connect,
and again shortly after Home Assistant's birth message) and removes what left the config the
documented way. Facts and pitfalls: ``shared/reference/ha.md``.

Every entity reads redlight's own retained topics (SPEC §4), so Home Assistant shows exactly
what any other client sees, and every command it sends goes through the same validation.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, Final

from redlight import __version__
from redlight.broker import STATE_QOS, Message
from redlight.config import Config
from redlight.messages import Topics, clear_retained, dumps, loads_object
from redlight.presets import build_plug

#: Every event type redlight publishes on a panel's event topic (SPEC §4); ``relay_stuck``
#: only where the panel's power is verified (``min_power_w``).
PANEL_EVENT_TYPES: Final = (
    "session_started",
    "session_finished",
    "cutoff_enforced",
    "command_rejected",
    "plug_unresponsive",
    "plug_recovered",
    "ending_soon",
    "session_extended",
    "session_paused",
    "session_resumed",
    "relay_stuck",
    "off_not_obeyed",
)
#: The event types of no panel, which only ``<b>/event`` carries: routines, offers, refusals.
DAEMON_EVENT_TYPES: Final = (
    "routine_started",
    "routine_step",
    "routine_finished",
    "schedule_offer",
    "command_rejected",
)
#: ``<b>/event`` also carries a copy of every panel event: the redlight device's event entity
#: renders those empty, which Home Assistant ignores (at debug level), and takes only its own.
_DAEMON_EVENTS_ONLY: Final = "{{ value if value_json.panel is none else '' }}"
#: The values of the ``State`` enum sensor.
PANEL_STATES: Final = ("idle", "running", "paused", "cooldown", "fault")
#: What the ``Extend`` button adds to a session (within ``max_on`` of on-time in all).
EXTEND_STEP: Final = "2m"

_UNSAFE: Final = re.compile(r"[^a-zA-Z0-9_-]")


def device_id(base_topic: str) -> str:
    """redlight's own device id: includes the base topic, so instances never collide."""
    return "redlight_" + _UNSAFE.sub("_", base_topic)


def panel_device_id(base_topic: str, panel: str) -> str:
    """A panel's device id (``via_device`` the redlight device)."""
    return f"{device_id(base_topic)}__{panel}"


def _origin() -> dict[str, Any]:
    # No support_url: redlight has no public address yet, and a made-up one would mislead.
    return {"name": "redlight", "sw_version": __version__}


def entity_prefix(base_topic: str) -> str:
    """The start of every entity id: ``redlight``, and the base topic where it is another.

    A search for "redlight" in Home Assistant's entity list finds every entity, and two
    instances (one per base topic) never propose the same entity id.
    """
    slug = _slug(base_topic)
    return "redlight" if slug in ("", "redlight") else f"redlight_{slug}"


def _slug(text: str) -> str:
    """``text`` as Home Assistant's object ids spell it: lower case, ``_`` between words."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def _with_entity_ids(
    prefix: str, components: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Each component's ``default_entity_id``: ``<platform>.<prefix>_<its name>``, e.g.
    ``switch.redlight_hip_left_session``, ``button.redlight_stop_all_sessions``.

    Home Assistant uses it only when it first adds the entity; a user's rename stays.
    """
    return {
        key: component
        | {"default_entity_id": f"{component['platform']}.{prefix}_{_slug(component['name'])}"}
        for key, component in components.items()
    }


def _availability(topics: Topics) -> list[dict[str, str]]:
    return [
        {"topic": topics.status, "payload_available": "online", "payload_not_available": "offline"}
    ]


def _payload(
    device: dict[str, Any], topics: Topics, components: Mapping[str, dict[str, Any]]
) -> dict[str, Any]:
    return {
        "device": device,
        "origin": _origin(),
        "availability": _availability(topics),
        "components": dict(components),
    }


def length_bounds(config: Config, panel: str) -> tuple[float, float, float]:
    """``min``, ``max`` and ``step`` of a panel's ``Session length`` number, in minutes.

    Home Assistant drops a number state outside ``[min, max]`` with an error ("Invalid value
    for number..."), so the range holds every default the panel can have: 1 minute to
    ``max_on`` (what ``duration/set`` accepts), and a configured ``default_duration`` below a
    minute. The state is rounded to 2 decimals, so the bounds are rounded outwards.
    """
    max_minutes = config.safety.max_on.total_seconds() / 60
    default_minutes = config.default_duration(panel).total_seconds() / 60
    lowest = math.floor(min(1.0, max_minutes, default_minutes) * 100) / 100
    highest = math.ceil(max_minutes * 100) / 100
    # Whole minutes when they fit; the frontend counts steps from min.
    step = 1.0 if lowest == 1 else 0.01
    return lowest, highest, step


def panel_components(config: Config, panel: str) -> dict[str, dict[str, Any]]:
    """The entities of one panel (SPEC §4), keyed by component id."""
    topics = Topics(config.mqtt.base_topic)
    uid = panel_device_id(config.mqtt.base_topic, panel)
    state = topics.panel_state(panel)
    verified = config.panels[panel].min_power_w is not None
    event_types = [t for t in PANEL_EVENT_TYPES if verified or t != "relay_stuck"]
    components = {
        **_panel_controls(config, panel, uid, state),
        **_session_controls(topics, panel, uid, state),
        **_panel_readings(uid, state),
        "remaining": _remaining(uid, state),
        **_week_components(config, panel, uid, state),
        "plug": {
            "platform": "binary_sensor",
            "unique_id": f"{uid}_plug",
            "name": "Plug",
            "device_class": "connectivity",
            "entity_category": "diagnostic",
            "state_topic": state,
            # Unknown (None) until the plug has said anything, rather than "connected".
            "value_template": (
                "{{ 'None' if value_json.plug_online is none "
                "else ('ON' if value_json.plug_online else 'OFF') }}"
            ),
        },
        **_relay_component(config, panel, uid, state),
        "events": {
            "platform": "event",
            "unique_id": f"{uid}_events",
            "name": "Session events",
            "icon": "mdi:history",
            "event_types": event_types,
            "state_topic": topics.panel_event(panel),
        },
    }
    return _with_entity_ids(f"{entity_prefix(config.mqtt.base_topic)}_{_slug(panel)}", components)


def _panel_controls(config: Config, panel: str, uid: str, state: str) -> dict[str, dict[str, Any]]:
    """What Home Assistant commands a panel with: the session switch and its length."""
    topics = Topics(config.mqtt.base_topic)
    lowest, highest, step = length_bounds(config, panel)
    return {
        "session": {
            "platform": "switch",
            "unique_id": f"{uid}_session",
            "name": "Session",
            "icon": "mdi:lightbulb-on",
            "command_topic": topics.panel_set(panel),
            "payload_on": "ON",
            "payload_off": "OFF",
            "state_topic": state,
            "value_template": "{{ 'ON' if value_json.session else 'OFF' }}",
            "retain": False,
            "optimistic": False,
        },
        "length": {
            "platform": "number",
            "unique_id": f"{uid}_length",
            "name": "Session length",
            "icon": "mdi:timer-cog-outline",
            "device_class": "duration",
            "unit_of_measurement": "min",
            "entity_category": "config",
            "min": lowest,
            "max": highest,
            "step": step,
            "mode": "box",
            "command_topic": topics.panel_duration_set(panel),
            "state_topic": state,
            "value_template": "{{ (value_json.default_duration_s / 60) | round(2) }}",
            "retain": False,
        },
    }


#: When each session control makes sense, read off the panel's state: only for a session
#: redlight started (an ON from elsewhere is cut off at max_on, not paused or lengthened).
_OWN: Final = "value_json.session and value_json.session.source != 'external'"
_CONTROL_WHEN: Final = {
    "extend": f"{_OWN} and value_json.state in ('running', 'paused')",
    "pause": f"{_OWN} and value_json.state == 'running'",
    "resume": f"{_OWN} and value_json.state == 'paused'",
}


def _session_controls(
    topics: Topics, panel: str, uid: str, state: str
) -> dict[str, dict[str, Any]]:
    """Buttons for the session that runs: ``Extend 2 min``, ``Pause``, ``Resume``; each
    available only while it applies (a second availability entry on the panel's state)."""
    buttons = {
        "extend": ("Extend 2 min", "mdi:timer-plus-outline", {"by": EXTEND_STEP}),
        "pause": ("Pause", "mdi:pause-circle-outline", {}),
        "resume": ("Resume", "mdi:play-circle-outline", {}),
    }
    return {
        key: {
            "platform": "button",
            "unique_id": f"{uid}_{key}",
            "name": name,
            "icon": icon,
            "command_topic": topics.panel_set(panel),
            "payload_press": dumps({"action": key, **extra}),
            "retain": False,
            "availability_mode": "all",
            "availability": [
                *_availability(topics),
                {
                    "topic": state,
                    "value_template": f"{{{{ 'yes' if {_CONTROL_WHEN[key]} else 'no' }}}}",
                    "payload_available": "yes",
                    "payload_not_available": "no",
                },
            ],
        }
        for key, (name, icon, extra) in buttons.items()
    }


def _remaining(uid: str, state: str) -> dict[str, Any]:
    """``Remaining``: the on-time a session has left, paused or not."""
    # What is left, paused or not: published with the state (at least once a minute while a
    # session runs, TODAY_EVERY_S), so a countdown that never floods the broker; "Session
    # ends" is the exact one, and Home Assistant shows it counting down ("in 4 minutes").
    return {
        "platform": "sensor",
        "unique_id": f"{uid}_remaining",
        "name": "Remaining",
        "icon": "mdi:timer-sand",
        "device_class": "duration",
        "unit_of_measurement": "min",
        "suggested_display_precision": 1,
        "state_topic": state,
        "value_template": (
            "{{ (value_json.session.remaining_s / 60) | round(2) if value_json.session else None }}"
        ),
    }


def _panel_readings(uid: str, state: str) -> dict[str, dict[str, Any]]:
    """What a panel's state topic shows: when the session ends, its state, today's minutes."""
    return {
        "ends": {
            "platform": "sensor",
            "unique_id": f"{uid}_ends",
            "name": "Session ends",
            "device_class": "timestamp",
            "state_topic": state,
            # "None" makes the sensor unknown while no session runs.
            "value_template": "{{ value_json.session.ends_at if value_json.session else None }}",
        },
        "state": {
            "platform": "sensor",
            "unique_id": f"{uid}_state",
            "name": "State",
            "device_class": "enum",
            "options": list(PANEL_STATES),
            "state_topic": state,
            "value_template": "{{ value_json.state }}",
        },
        "today": {
            "platform": "sensor",
            "unique_id": f"{uid}_today",
            "name": "Today",
            "icon": "mdi:sun-clock",
            "device_class": "duration",
            "unit_of_measurement": "min",
            "state_class": "total_increasing",
            "suggested_display_precision": 1,
            "state_topic": state,
            "value_template": "{{ (value_json.today_s / 60) | round(2) }}",
        },
    }


# ------------------------------------------------------------------ this week (issue 14)

#: A week resets on Monday (:mod:`redlight.days`): a total that restarts from zero each cycle
#: is what Home Assistant calls ``total_increasing``; its statistics take the drop as a new
#: cycle, as they do for ``Today`` at midnight.
_WEEK_MINUTES: Final = {
    "device_class": "duration",
    "unit_of_measurement": "min",
    "state_class": "total_increasing",
    "suggested_display_precision": 1,
    "value_template": "{{ (value_json.week_s / 60) | round(2) }}",
}
_GOAL_PERCENT: Final = "{{ (100 * value_json.week_s / value_json.weekly_goal_s) | round(1) }}"
_GOAL_ATTRIBUTES: Final = "{{ {'goal_min': value_json.weekly_goal_s / 60} | tojson }}"


def _week_components(config: Config, panel: str, uid: str, state: str) -> dict[str, dict[str, Any]]:
    """``This week`` (minutes since Monday), and with a goal ``Weekly goal``: the share of it
    reached so far, in percent (above 100 once exceeded), the goal itself as an attribute."""
    components: dict[str, dict[str, Any]] = {
        "week": {
            "platform": "sensor",
            "unique_id": f"{uid}_week",
            "name": "This week",
            "icon": "mdi:calendar-week",
            "state_topic": state,
            **_WEEK_MINUTES,
        }
    }
    if config.panels[panel].weekly_goal is not None:
        components["weekly_goal"] = {
            "platform": "sensor",
            "unique_id": f"{uid}_weekly_goal",
            "name": "Weekly goal",
            "icon": "mdi:target",
            "unit_of_measurement": "%",
            "state_class": "measurement",
            "suggested_display_precision": 0,
            "state_topic": state,
            "value_template": _GOAL_PERCENT,
            "json_attributes_topic": state,
            "json_attributes_template": _GOAL_ATTRIBUTES,
        }
    return components


def _area_components(config: Config, uid: str) -> dict[str, dict[str, Any]]:
    """Per area, ``<Area> area this week`` on the redlight device (an area is no device: it
    is the sum of its panels, read from ``<b>/area/<slug>/state``). Its entity id is built from
    the area's slug, which stays unique where the area's text has no ASCII letters."""
    topics = Topics(config.mqtt.base_topic)
    prefix = entity_prefix(config.mqtt.base_topic)
    return {
        f"area_{area.slug}": {
            "platform": "sensor",
            "unique_id": f"{uid}_area_{area.slug}",
            "name": f"{area.name[:1].upper()}{area.name[1:]} area this week",
            "default_entity_id": f"sensor.{prefix}_{area.slug}_area_this_week",
            "icon": "mdi:human",
            "state_topic": topics.area_state(area.slug),
            **_WEEK_MINUTES,
        }
        for area in config.areas.values()
    }


def _relay_component(
    config: Config, panel: str, uid: str, state_topic: str
) -> dict[str, dict[str, Any]]:
    """A problem sensor for a stuck relay, where the panel's power is verified."""
    if config.panels[panel].min_power_w is None:
        return {}
    return {
        "relay": {
            "platform": "binary_sensor",
            "unique_id": f"{uid}_relay",
            "name": "Relay stuck",
            "device_class": "problem",
            "entity_category": "diagnostic",
            "state_topic": state_topic,
            "value_template": "{{ 'ON' if value_json.relay_stuck else 'OFF' }}",
        }
    }


def daemon_components(config: Config) -> dict[str, dict[str, Any]]:
    """redlight's own entities: stop all, active sessions, routines and schedules."""
    base = config.mqtt.base_topic
    topics = Topics(base)
    uid = device_id(base)
    components: dict[str, dict[str, Any]] = {
        "stop_all": {
            "platform": "button",
            "unique_id": f"{uid}_stop_all",
            "name": "Stop all sessions",
            "icon": "mdi:stop-circle",
            "command_topic": topics.daemon_set,
            "payload_press": dumps({"action": "stop_all"}),
            "retain": False,
        },
        "active": {
            "platform": "sensor",
            "unique_id": f"{uid}_active",
            "name": "Active sessions",
            "icon": "mdi:lightbulb-group",
            "state_class": "measurement",
            "state_topic": topics.daemon_state,
            "value_template": "{{ value_json.active_sessions }}",
        },
    }
    for routine_id, routine in config.routines.items():
        components[f"routine_{routine_id}"] = {
            "platform": "button",
            "unique_id": f"{uid}_routine_{routine_id}",
            "name": f"Start {routine.name or routine_id}",
            "icon": "mdi:play-circle",
            "command_topic": topics.routine_set(routine_id),
            "payload_press": "START",
            "retain": False,
        }
    for schedule_id, schedule in config.schedules.items():
        components |= _schedule_components(topics, uid, schedule_id, schedule.name or schedule_id)
    components |= _daemon_events(config, topics, uid)
    return _with_entity_ids(entity_prefix(base), components) | _area_components(config, uid)


def _daemon_events(config: Config, topics: Topics, uid: str) -> dict[str, dict[str, Any]]:
    """The events of no panel (routines, offers, refusals), and ``Accept offer`` where a
    schedule offers."""
    routines = bool(config.routines) or any(s.routine for s in config.schedules.values())
    offers = config.offers
    event_types = [
        t
        for t in DAEMON_EVENT_TYPES
        if (routines or not t.startswith("routine_")) and (offers or t != "schedule_offer")
    ]
    components: dict[str, dict[str, Any]] = {
        "events": {
            "platform": "event",
            "unique_id": f"{uid}_events",
            "name": "Events",
            "icon": "mdi:calendar-alert",
            "event_types": event_types,
            "state_topic": topics.daemon_event,
            "value_template": _DAEMON_EVENTS_ONLY,
        }
    }
    if offers:
        components["accept_offer"] = _accept_button(topics, uid)
    return components


def _schedule_components(
    topics: Topics, uid: str, schedule_id: str, label: str
) -> dict[str, dict[str, Any]]:
    """A schedule's enabled switch and its next-run sensor."""
    state = topics.schedule_state(schedule_id)
    return {
        f"schedule_{schedule_id}": {
            "platform": "switch",
            "unique_id": f"{uid}_schedule_{schedule_id}",
            "name": f"{label} enabled",
            "icon": "mdi:calendar-clock",
            "entity_category": "config",
            "command_topic": topics.schedule_set(schedule_id),
            "payload_on": "ON",
            "payload_off": "OFF",
            "state_topic": state,
            "value_template": "{{ 'ON' if value_json.enabled else 'OFF' }}",
            "retain": False,
            "optimistic": False,
        },
        f"schedule_{schedule_id}_next": {
            "platform": "sensor",
            "unique_id": f"{uid}_schedule_{schedule_id}_next",
            "name": f"{label} next run",
            "device_class": "timestamp",
            "state_topic": state,
            "value_template": "{{ value_json.next_run if value_json.next_run else None }}",
        },
    }


def _accept_button(topics: Topics, uid: str) -> dict[str, Any]:
    """``Accept offer``: the newest open offer. Available only while one is open: its second
    availability topic is ``<b>/offer``, retained, and both must say so (``all``)."""
    return {
        "platform": "button",
        "unique_id": f"{uid}_accept_offer",
        "name": "Accept offer",
        "icon": "mdi:check-circle",
        "command_topic": topics.daemon_set,
        "payload_press": dumps({"action": "accept_offer"}),
        "retain": False,
        "availability_mode": "all",
        "availability": [
            *_availability(topics),
            {
                "topic": topics.offer,
                "value_template": "{{ 'open' if value_json.offer else 'none' }}",
                "payload_available": "open",
                "payload_not_available": "none",
            },
        ],
    }


def discovery_topic(config: Config, device: str) -> str:
    """``<discovery_prefix>/device/<device>/config``."""
    return f"{config.homeassistant.discovery_prefix}/device/{device}/config"


def discovery_payloads(config: Config) -> dict[str, dict[str, Any]]:
    """Every device's discovery payload, by discovery topic: redlight first, then each panel."""
    base = config.mqtt.base_topic
    topics = Topics(base)
    uid = device_id(base)
    name = "redlight" if base == "redlight" else f"redlight ({base})"
    payloads = {
        discovery_topic(config, uid): _payload(
            {
                "identifiers": [uid],
                "name": name,
                "manufacturer": "redlight",
                "model": "Session controller",
                "sw_version": __version__,
            },
            topics,
            daemon_components(config),
        )
    }
    for panel_id, panel in config.panels.items():
        plug = build_plug(panel_id, panel.plug, base_topic=base)
        # What redlight knows is true: a panel on a plug of this kind. Not who made the plug,
        # nor its firmware's version (redlight's own version is in ``origin``).
        device: dict[str, Any] = {
            "identifiers": [panel_device_id(base, panel_id)],
            "name": config.panel_name(panel_id),
            "model": f"Panel on a {plug.model}",
            "via_device": uid,
        }
        if panel.area:
            device["suggested_area"] = panel.area
        payloads[discovery_topic(config, panel_device_id(base, panel_id))] = _payload(
            device, topics, panel_components(config, panel_id)
        )
    return payloads


def config_message(topic: str, payload: Mapping[str, Any]) -> Message:
    """One discovery message: retained, QoS 1."""
    return Message(topic, dumps(payload), retain=True, qos=STATE_QOS)


def discovery_messages(config: Config) -> list[Message]:
    """Every discovery message."""
    return [config_message(topic, payload) for topic, payload in discovery_payloads(config).items()]


class HassBridge:
    """When to announce redlight to Home Assistant, and what to remove; pure, like the core."""

    def __init__(self, config: Config) -> None:
        """Prepare the payloads for ``config``."""
        self.config = config
        self.uid = device_id(config.mqtt.base_topic)
        self.payloads = discovery_payloads(config)
        self._filter = f"{config.homeassistant.discovery_prefix}/device/+/config"

    @property
    def enabled(self) -> bool:
        """``homeassistant.enabled`` in the config."""
        return self.config.homeassistant.enabled

    def subscriptions(self) -> list[str]:
        """Home Assistant's birth topic, and the device discovery topics (to find leftovers)."""
        return [self.config.homeassistant.status_topic, self._filter] if self.enabled else []

    def announce(self) -> list[Message]:
        """The discovery messages (on every connect, and after Home Assistant's birth)."""
        if not self.enabled:
            return []
        return [config_message(topic, payload) for topic, payload in self.payloads.items()]

    def is_birth(self, topic: str, payload: bytes) -> bool:
        """Home Assistant says it (re)started: discovery and states must be sent again."""
        return (
            self.enabled
            and topic == self.config.homeassistant.status_topic
            and payload.strip() == b"online"
        )

    def handles(self, topic: str) -> bool:
        """A topic this bridge reads."""
        if not self.enabled:
            return False
        prefix = f"{self.config.homeassistant.discovery_prefix}/device/"
        return topic == self.config.homeassistant.status_topic or (
            topic.startswith(prefix) and topic.endswith("/config")
        )

    def leftover(self, topic: str, payload: bytes, retain: bool) -> list[Message]:
        """Clean up a retained discovery config of ours that the config no longer has.

        A panel that left the config gets an empty retained payload (Home Assistant removes the
        device); a routine or schedule that left is first published as ``{"platform": ...}`` and
        then omitted, as Home Assistant documents for removing one component of a device.
        """
        if not retain or not payload or not self.enabled:
            return []
        old = loads_object(payload)  # None: a retained config someone else wrote
        if old is None or not self._ours(old):
            return []
        current = self.payloads.get(topic)
        if current is None:
            return [clear_retained(topic)]
        gone = _gone_components(old, current)
        if not gone:
            return []
        reduced = dict(current, components=current["components"] | gone)
        return [config_message(topic, reduced), config_message(topic, current)]

    def _ours(self, payload: Mapping[str, Any]) -> bool:
        device = payload.get("device")
        if not isinstance(device, dict):
            return False
        identifiers = device.get("identifiers")
        if isinstance(identifiers, str):
            identifiers = [identifiers]
        return device.get("via_device") == self.uid or (
            isinstance(identifiers, list) and self.uid in identifiers
        )


def _gone_components(old: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, Any]:
    """The components of an old discovery payload that the current one no longer has."""
    old_components = old.get("components")
    if not isinstance(old_components, dict):
        return {}
    return {
        key: {"platform": value.get("platform")}
        for key, value in old_components.items()
        if key not in current["components"] and isinstance(value, dict)
    }
