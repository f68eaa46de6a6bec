"""Plug presets: how each firmware's on/off plug is switched, read and made safe over MQTT.

A preset turns a panel's ``plug = {...}`` table into a :class:`Plug`: the topics to subscribe
to, the messages that switch it, ask for its state and arm its own off-timer, and a parser for
what it reports. Facts and sources: ``shared/reference/plugs.md``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from redlight.broker import COMMAND_QOS, Message

PresetName = Literal["tasmota", "shelly_gen1", "shelly_gen2", "zigbee2mqtt", "esphome", "generic"]


class PlugConfig(BaseModel):
    """A panel's ``plug`` table: a preset, its parameters, and per-field overrides."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    preset: PresetName
    # Preset parameters (which ones apply depends on the preset; see the SPEC §2 table).
    topic: str | None = None
    index: int | None = Field(default=None, ge=1, le=32)
    id: str | None = None
    relay: int = Field(default=0, ge=0, le=16)
    prefix: str | None = None
    switch: int | str | None = None
    device: str | None = None
    base: str = "zigbee2mqtt"
    node: str | None = None
    failsafe: bool | None = None
    # Overrides: each replaces what the preset would use (``generic`` needs them explicitly).
    command_topic: str | None = None
    payload_on: str | None = None
    payload_off: str | None = None
    state_topic: str | None = None
    state_on: str | None = None
    state_off: str | None = None
    state_json_path: str | None = None
    state_request_topic: str | None = None
    state_request_payload: str | None = None
    availability_topic: str | None = None
    payload_available: str | None = None
    payload_not_available: str | None = None


@dataclass(frozen=True, slots=True)
class PlugState:
    """The plug reported its relay on or off."""

    on: bool


@dataclass(frozen=True, slots=True)
class PlugAvailability:
    """An availability topic said the plug (or its bridge) is online or offline."""

    topic: str
    online: bool


PlugReport = PlugState | PlugAvailability


#: Seconds an MQTT 5 broker may hold a plug ON (and the off-timer sent with it) before it
#: discards it: the default ``safety.confirm_timeout``, after which redlight has given up on an
#: unconfirmed ON and switches the panel off. An OFF has no expiry: late is better than never.
ON_EXPIRY_S: Final = 5.0
#: Tasmota's PulseTime: 1..111 count tenths of a second, 112 and up count seconds + 100.
PULSETIME_TENTHS_MAX: Final = 111
PULSETIME_MAX: Final = 64900

FailsafeKind = Literal["none", "pulsetime", "toggle_after", "on_time"]

#: Which parameters each preset takes (the rest of the table are overrides, valid everywhere).
_PRESET_PARAMS: Final[Mapping[str, frozenset[str]]] = {
    "tasmota": frozenset({"topic", "index", "failsafe"}),
    "shelly_gen1": frozenset({"id", "relay"}),
    "shelly_gen2": frozenset({"prefix", "switch", "failsafe"}),
    "zigbee2mqtt": frozenset({"device", "base", "failsafe"}),
    "esphome": frozenset({"node", "switch"}),
    "generic": frozenset(),
}
_PARAMS: Final = frozenset().union(*_PRESET_PARAMS.values())


def tasmota_pulsetime(seconds: float) -> int:
    """Encode an off-timer for Tasmota's ``PulseTime`` (never shorter than asked).

    >>> tasmota_pulsetime(630)
    730
    >>> tasmota_pulsetime(5.5)
    55
    """
    if seconds <= 0:
        raise ValueError("a PulseTime must be positive")
    tenths = math.ceil(seconds * 10 - 1e-9)
    if tenths <= PULSETIME_TENTHS_MAX:
        return tenths
    encoded = math.ceil(seconds - 1e-9) + 100
    if encoded > PULSETIME_MAX:
        raise ValueError(f"{seconds:g} s is longer than Tasmota's PulseTime can count")
    return encoded


def pulsetime_seconds(value: int) -> float:
    """Decode a ``PulseTime`` value into seconds, as Tasmota's ``SetPulseTimer`` does."""
    if value <= 0:
        return 0.0
    return value / 10 if value <= PULSETIME_TENTHS_MAX else float(value - 100)


@dataclass(frozen=True, slots=True)
class StateSource:
    """A topic the plug reports its relay on; ``json_path`` picks a field out of JSON."""

    topic: str
    json_path: str | None = None


@dataclass(frozen=True, slots=True)
class AvailabilitySource:
    """A topic that says whether the plug (or the bridge it hangs off) is reachable."""

    topic: str
    online: str
    offline: str


@dataclass(frozen=True, slots=True)
class Plug:
    """Everything redlight sends to and reads from one panel's plug; built by :func:`build_plug`.

    Every method returns messages as values; only the broker adapter publishes them. Commands
    are never retained (safety rule 7) and use QoS 0, so none is ever delivered late.
    """

    preset: PresetName
    command_topic: str
    payload_on: str
    payload_off: str
    states: tuple[StateSource, ...]
    state_on: frozenset[str]
    state_off: frozenset[str]
    state_request: tuple[Message, ...]
    availability: tuple[AvailabilitySource, ...]
    failsafe: FailsafeKind = "none"
    failsafe_topic: str | None = None
    #: Shelly Gen2 answers RPC calls on ``<src>/rpc``; ``None`` for other presets.
    rpc_src: str | None = None
    rpc_switch: int = 0
    #: Zigbee2MQTT sends no optimistic state after a timed ON: ask for it.
    ask_after_on: bool = False
    #: Where the plug reports the power it passes, in watts (``()``: it does not).
    power_sources: tuple[StateSource, ...] = ()
    power_request: tuple[Message, ...] = ()

    @property
    def has_failsafe(self) -> bool:
        """The plug can be given its own off-timer with each ON (safety rule 5)."""
        return self.failsafe != "none"

    @property
    def has_power(self) -> bool:
        """The plug measures the power it passes (Tasmota, Shelly Gen2, Zigbee plugs)."""
        return bool(self.power_sources)

    def ask_power(self) -> list[Message]:
        """Messages that make the plug report its power now."""
        return list(self.power_request)

    def power(self, topic: str, payload: bytes) -> float | None:
        """Watts, if this message on one of :attr:`subscriptions` carries a power reading."""
        for source in self.power_sources:
            if source.topic == topic and source.json_path is not None:
                value = _json_field(payload, source.json_path)
                if isinstance(value, int | float) and not isinstance(value, bool):
                    watts = float(value)
                    if math.isfinite(watts) and watts >= 0:
                        return watts
        return None

    @property
    def model(self) -> str:
        """A human name of the firmware, for Home Assistant's device info."""
        return _MODELS[self.preset]

    @property
    def availability_topics(self) -> tuple[str, ...]:
        """Topics whose last word decides whether the plug is online."""
        return tuple(a.topic for a in self.availability)

    @property
    def report_topic(self) -> str:
        """The first topic the plug reports its relay on: what a message names as waited on."""
        return self.subscriptions[0]

    @property
    def subscriptions(self) -> tuple[str, ...]:
        """Every topic to subscribe to for this plug's reports."""
        topics = [s.topic for s in self.states] + list(self.availability_topics)
        topics += [s.topic for s in self.power_sources]
        return tuple(dict.fromkeys(topics))

    def turn_on(self, failsafe_s: float | None) -> list[Message]:
        """The messages that switch the plug ON, arming its off-timer when given (rule 5)."""
        messages: list[Message] = []
        payload = self.payload_on
        if failsafe_s is not None and self.failsafe == "pulsetime":
            assert self.failsafe_topic is not None
            # Sent before the ON: Tasmota starts PulseTime when the relay goes on.
            arming = _command(self.failsafe_topic, str(tasmota_pulsetime(failsafe_s)))
            messages.append(replace(arming, expiry_s=ON_EXPIRY_S))
        elif failsafe_s is not None and self.failsafe == "toggle_after":
            payload = _rpc(
                self.rpc_src,
                1,
                "Switch.Set",
                id=self.rpc_switch,
                on=True,
                toggle_after=_whole_seconds(failsafe_s),
            )
        elif failsafe_s is not None and self.failsafe == "on_time":
            payload = json.dumps({"state": "ON", "on_time": _whole_seconds(failsafe_s)})
        # Safety rule 6 at the broker: an ON (with its timer) that cannot land soon never does.
        messages.append(replace(_command(self.command_topic, payload), expiry_s=ON_EXPIRY_S))
        if self.ask_after_on and failsafe_s is not None:
            messages.extend(self.state_request)
        return messages

    def turn_off(self) -> list[Message]:
        """The message that switches the plug OFF."""
        return [_command(self.command_topic, self.payload_off)]

    def ask_state(self) -> list[Message]:
        """Messages that make the plug report its relay (none where its state is retained)."""
        return list(self.state_request)

    def read(self, topic: str, payload: bytes) -> PlugReport | None:
        """What a message on one of :attr:`subscriptions` says, or ``None`` if nothing useful."""
        for source in self.availability:
            if source.topic == topic:
                word = _availability_word(payload)
                if word == source.online.casefold():
                    return PlugAvailability(topic, online=True)
                if word == source.offline.casefold():
                    return PlugAvailability(topic, online=False)
                return None
        for state in self.states:
            if state.topic == topic:
                value = _state_value(payload, state.json_path)
                if value in self.state_on:
                    return PlugState(on=True)
                if value in self.state_off:
                    return PlugState(on=False)
        return None


_MODELS: Final[Mapping[str, str]] = {
    "tasmota": "Tasmota plug",
    "shelly_gen1": "Shelly Gen1 plug",
    "shelly_gen2": "Shelly Gen2+ plug",
    "zigbee2mqtt": "Zigbee plug (Zigbee2MQTT)",
    "esphome": "ESPHome plug",
    "generic": "MQTT plug",
}


def _command(topic: str, payload: str) -> Message:
    # Safety rules 6 and 7: never retained, QoS 0 (paho neither queues nor re-sends it).
    # Rule 12: urgent, so it goes out ahead of every event and state still waiting.
    return Message(topic, payload, retain=False, qos=COMMAND_QOS, urgent=True)


def _whole_seconds(seconds: float) -> int:
    return max(1, math.ceil(seconds - 1e-9))


def _rpc(src: str | None, request_id: int, method: str, **params: Any) -> str:
    body = {"id": request_id, "src": src, "method": method, "params": params}
    return json.dumps(body, separators=(",", ":"))


def _text(payload: bytes) -> str | None:
    try:
        return payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None


def _json_field(payload: bytes, path: str) -> object:
    text = _text(payload)
    if not text:
        return None
    try:
        value: object = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nested too deeply to be a report
        return None
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _normalise(value: object) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value.strip().casefold()
    if isinstance(value, int | float):
        return str(value)
    return None


def _state_value(payload: bytes, json_path: str | None) -> str | None:
    if json_path is None:
        text = _text(payload)
        return text.casefold() if text else None
    return _normalise(_json_field(payload, json_path))


def _availability_word(payload: bytes) -> str | None:
    """``online``, or Zigbee2MQTT 2.x's ``{"state": "online"}``, lower-cased."""
    text = _text(payload)
    if not text:
        return None
    if text.startswith("{"):
        return _normalise(_json_field(payload, "state"))
    return text.casefold()


def _folded(*values: str) -> frozenset[str]:
    return frozenset(v.casefold() for v in values)


def _check_topic(field: str, topic: str) -> str:
    if not topic or topic.startswith("/") or topic.endswith("/"):
        raise ValueError(f"plug.{field}: must be a topic without a leading or trailing '/'")
    if any(c in topic for c in "+#\0"):
        raise ValueError(f"plug.{field}: must not contain MQTT wildcards ('+', '#')")
    return topic


def _need(config: PlugConfig, name: str) -> str:
    value = getattr(config, name)
    if value is None or value == "":
        raise ValueError(f"plug.{name}: the {config.preset} preset needs it")
    text = str(value)
    if "/" in text or any(c in text for c in "+#\0"):
        raise ValueError(f"plug.{name}: must not contain '/', '+' or '#' (got {text!r})")
    return text


def _tasmota(config: PlugConfig, panel_id: str, base_topic: str) -> Plug:
    name = _need(config, "topic")
    index = "" if config.index is None else str(config.index)
    power_key = f"POWER{index}"
    states = [
        StateSource(f"stat/{name}/{power_key}"),
        StateSource(f"stat/{name}/RESULT", power_key),
        StateSource(f"tele/{name}/STATE", power_key),
    ]
    if config.index == 1:
        # A single-relay Tasmota reports ``POWER`` even when addressed as ``POWER1``.
        states += [
            StateSource(f"stat/{name}/RESULT", "POWER"),
            StateSource(f"tele/{name}/STATE", "POWER"),
        ]
    command = f"cmnd/{name}/{power_key}"
    return Plug(
        preset="tasmota",
        command_topic=command,
        payload_on="ON",
        payload_off="OFF",
        states=tuple(states),
        state_on=_folded("ON"),
        state_off=_folded("OFF"),
        # An empty payload to the command topic is Tasmota's query; it leaves PulseTime alone.
        state_request=(_command(command, ""),),
        availability=(AvailabilitySource(f"tele/{name}/LWT", "Online", "Offline"),),
        failsafe="none" if config.failsafe is False else "pulsetime",
        failsafe_topic=f"cmnd/{name}/PulseTime{config.index or 1}",
        # Energy-monitoring Tasmota: tele SENSOR every TelePeriod, and "Status 10" on request.
        power_sources=(
            StateSource(f"tele/{name}/SENSOR", "ENERGY.Power"),
            StateSource(f"stat/{name}/STATUS10", "StatusSNS.ENERGY.Power"),
        ),
        power_request=(_command(f"cmnd/{name}/Status", "10"),),
    )


def _shelly_gen1(config: PlugConfig, panel_id: str, base_topic: str) -> Plug:
    device = _need(config, "id")
    relay = f"shellies/{device}/relay/{config.relay}"
    return Plug(
        preset="shelly_gen1",
        command_topic=f"{relay}/command",
        payload_on="on",
        payload_off="off",
        states=(StateSource(relay),),
        state_on=_folded("on"),
        state_off=_folded("off", "overpower"),
        state_request=(_command(f"shellies/{device}/command", "update"),),
        availability=(AvailabilitySource(f"shellies/{device}/online", "true", "false"),),
    )


def _shelly_gen2(config: PlugConfig, panel_id: str, base_topic: str) -> Plug:
    prefix = _need(config, "prefix")
    switch = 0 if config.switch is None else config.switch
    if not isinstance(switch, int) or switch < 0:
        raise ValueError("plug.switch: the shelly_gen2 preset needs a switch number (0, 1, ...)")
    # The Shelly answers RPC calls on ``<src>/rpc``: one source per panel, outside <b>/.
    src = f"{base_topic.replace('/', '-')}-{panel_id}"
    key = f"switch:{switch}"
    return Plug(
        preset="shelly_gen2",
        command_topic=f"{prefix}/rpc",
        payload_on=_rpc(src, 1, "Switch.Set", id=switch, on=True),
        payload_off=_rpc(src, 2, "Switch.Set", id=switch, on=False),
        states=(
            StateSource(f"{prefix}/status/{key}", "output"),
            StateSource(f"{prefix}/events/rpc", f"params.{key}.output"),
            StateSource(f"{src}/rpc", "result.output"),
        ),
        state_on=_folded("true"),
        state_off=_folded("false"),
        state_request=(_command(f"{prefix}/rpc", _rpc(src, 3, "Switch.GetStatus", id=switch)),),
        availability=(AvailabilitySource(f"{prefix}/online", "true", "false"),),
        failsafe="none" if config.failsafe is False else "toggle_after",
        rpc_src=src,
        rpc_switch=switch,
        power_sources=(
            StateSource(f"{prefix}/status/{key}", "apower"),
            StateSource(f"{prefix}/events/rpc", f"params.{key}.apower"),
            StateSource(f"{src}/rpc", "result.apower"),
        ),
        power_request=(_command(f"{prefix}/rpc", _rpc(src, 3, "Switch.GetStatus", id=switch)),),
    )


def _zigbee2mqtt(config: PlugConfig, panel_id: str, base_topic: str) -> Plug:
    device = _need(config, "device")
    base = _check_topic("base", config.base)
    topic = f"{base}/{device}"
    return Plug(
        preset="zigbee2mqtt",
        command_topic=f"{topic}/set",
        payload_on=json.dumps({"state": "ON"}),
        payload_off=json.dumps({"state": "OFF"}),
        states=(StateSource(topic, "state"),),
        state_on=_folded("ON"),
        state_off=_folded("OFF"),
        state_request=(_command(f"{topic}/get", json.dumps({"state": ""})),),
        availability=(
            AvailabilitySource(f"{topic}/availability", "online", "offline"),
            # The bridge down means every Zigbee plug behind it is unreachable.
            AvailabilitySource(f"{base}/bridge/state", "online", "offline"),
        ),
        # Opt-in: many Zigbee plugs ignore on_time, and some do not switch on at all with it.
        failsafe="on_time" if config.failsafe else "none",
        ask_after_on=True,
        power_sources=(StateSource(topic, "power"),),
        power_request=(_command(f"{topic}/get", json.dumps({"power": ""})),),
    )


def _esphome(config: PlugConfig, panel_id: str, base_topic: str) -> Plug:
    node = _need(config, "node")
    switch = _need(config, "switch")
    topic = f"{node}/switch/{switch}"
    return Plug(
        preset="esphome",
        command_topic=f"{topic}/command",
        payload_on="ON",
        payload_off="OFF",
        states=(StateSource(f"{topic}/state"),),
        state_on=_folded("ON"),
        state_off=_folded("OFF"),
        # ESPHome retains its state and has no query: subscribing is asking.
        state_request=(),
        availability=(AvailabilitySource(f"{node}/status", "online", "offline"),),
    )


def _generic(config: PlugConfig, panel_id: str, base_topic: str) -> Plug:
    for name in ("command_topic", "state_topic"):
        if getattr(config, name) is None:
            raise ValueError(
                f"plug.{name}: the generic preset needs it (every command is confirmed by the "
                "plug's state report)"
            )
    return Plug(
        preset="generic",
        command_topic="",
        payload_on="ON",
        payload_off="OFF",
        states=(),
        state_on=frozenset(),
        state_off=frozenset(),
        state_request=(),
        availability=(),
    )


_BUILDERS: Final[Mapping[str, Callable[[PlugConfig, str, str], Plug]]] = {
    "tasmota": _tasmota,
    "shelly_gen1": _shelly_gen1,
    "shelly_gen2": _shelly_gen2,
    "zigbee2mqtt": _zigbee2mqtt,
    "esphome": _esphome,
    "generic": _generic,
}


def build_plug(panel_id: str, config: PlugConfig, *, base_topic: str) -> Plug:
    """Turn a panel's ``plug`` table into a :class:`Plug`; ``ValueError`` names the bad field."""
    allowed = _PRESET_PARAMS[config.preset]
    for name in sorted((config.model_fields_set & _PARAMS) - allowed):
        if name == "failsafe" and config.failsafe is False:
            continue
        if name == "failsafe":
            raise ValueError(
                f"plug.failsafe: the {config.preset} preset cannot arm a plug-side timer over "
                "MQTT (see the README for setting one on the device)"
            )
        raise ValueError(f"plug.{name}: not a parameter of the {config.preset} preset")
    plug = _BUILDERS[config.preset](config, panel_id, base_topic)
    return _overridden(plug, config)


def _overridden(plug: Plug, config: PlugConfig) -> Plug:
    """Apply the per-panel overrides on top of what the preset chose."""
    changes: dict[str, Any] = _command_overrides(plug, config)
    changes |= _state_overrides(
        plug,
        config,
        payload_on=changes.get("payload_on", plug.payload_on),
        payload_off=changes.get("payload_off", plug.payload_off),
    )
    changes |= _state_request_override(plug, config)
    changes |= _availability_override(plug, config)
    result = replace(plug, **changes)
    if result.state_on & result.state_off:
        raise ValueError("plug.state_on: must differ from plug.state_off")
    return result


def _command_overrides(plug: Plug, config: PlugConfig) -> dict[str, Any]:
    """The command topic and the ON and OFF payloads a panel's table replaces."""
    changes: dict[str, Any] = {}
    if config.command_topic is not None:
        changes["command_topic"] = _check_topic("command_topic", config.command_topic)
    if config.payload_on is not None:
        changes["payload_on"] = config.payload_on
        if plug.failsafe in ("toggle_after", "on_time"):
            # The timer lives in the preset's own ON payload, which this replaces.
            changes["failsafe"] = "none"
    if config.payload_off is not None:
        changes["payload_off"] = config.payload_off
    return changes


def _state_overrides(
    plug: Plug, config: PlugConfig, *, payload_on: str, payload_off: str
) -> dict[str, Any]:
    """Where the state is read and which readings mean on and off.

    A generic plug with no ``state_on``/``state_off`` reads its own ON and OFF payloads back.
    """
    changes: dict[str, Any] = {}
    if config.state_topic is not None:
        topic = _check_topic("state_topic", config.state_topic)
        changes["states"] = (StateSource(topic, config.state_json_path),)
    elif config.state_json_path is not None:
        changes["states"] = tuple(StateSource(s.topic, config.state_json_path) for s in plug.states)
    if config.state_on is not None:
        changes["state_on"] = _folded(config.state_on)
    elif plug.preset == "generic":
        changes["state_on"] = _folded(payload_on)
    if config.state_off is not None:
        changes["state_off"] = _folded(config.state_off)
    elif plug.preset == "generic":
        changes["state_off"] = _folded(payload_off)
    return changes


def _state_request_override(plug: Plug, config: PlugConfig) -> dict[str, Any]:
    """The query that asks the plug for its state, replaced whole or in its payload."""
    if config.state_request_topic is not None:
        topic = _check_topic("state_request_topic", config.state_request_topic)
        return {"state_request": (_command(topic, config.state_request_payload or ""),)}
    if config.state_request_payload is not None:
        if not plug.state_request:
            raise ValueError("plug.state_request_payload: needs plug.state_request_topic")
        return {
            "state_request": (_command(plug.state_request[0].topic, config.state_request_payload),)
        }
    return {}


def _availability_override(plug: Plug, config: PlugConfig) -> dict[str, Any]:
    """The plug's own availability topic and payloads; other sources (a bridge) are kept."""
    if config.availability_topic is not None:
        topic = _check_topic("availability_topic", config.availability_topic)
        source = AvailabilitySource(
            topic,
            config.payload_available or "online",
            config.payload_not_available or "offline",
        )
        return {"availability": (source,)}
    if config.payload_available is not None or config.payload_not_available is not None:
        if not plug.availability:
            raise ValueError("plug.payload_available: needs plug.availability_topic")
        first = plug.availability[0]
        source = AvailabilitySource(
            first.topic,
            config.payload_available or first.online,
            config.payload_not_available or first.offline,
        )
        return {"availability": (source, *plug.availability[1:])}
    return {}
