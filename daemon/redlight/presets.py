"""Plug presets: how each firmware's on/off plug is switched, read and made safe over MQTT.

A preset turns a panel's ``plug = {...}`` table into a :class:`Plug`: the topics to subscribe
to, the messages that switch it, ask for its state and arm its own off-timer, and a parser for
what it reports. Facts and sources: ``shared/reference/plugs.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from redlight.broker import Message

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
