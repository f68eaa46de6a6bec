"""One sans-I/O model per plug firmware: what it does with a message, and what it reports.

Each model is a relay with the firmware's MQTT dialect and its own off-timer, written from the
firmware's side (``shared/reference/plugs.md``) and independently of :mod:`redlight.presets`, so
that a preset tested against a model is checked against the firmware, not against itself:
Tasmota's ``PulseTime`` (decoded here as its ``SetPulseTimer`` does, restarted by every ON),
Shelly Gen2's RPC replies on ``<src>/rpc`` and ``toggle_after``, Zigbee2MQTT's ``on_time`` and
JSON availability, ESPHome's retained state.

A model holds no clock and no client: every input carries the time, every output is a
:class:`~redlight.broker.Message` value. :mod:`redlight.simplug` runs the models on a broker
connection; the hypothesis core machine (``tests/unit/test_core_machine.py``) drives them
directly.
"""

from __future__ import annotations

import abc
import functools
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Final, Literal, NamedTuple

from paho.mqtt.client import topic_matches_sub

from redlight.broker import Message
from redlight.presets import PlugConfig

#: What a firmware makes of a message: switch, report its relay, or change a setting.
Action = Literal["on", "off", "toggle", "query", "setting"]

#: Tasmota's ``Power`` payloads (any case; ``CmndPower``); anything else is a query.
_TASMOTA_WORDS: Final[Mapping[str, Action]] = {
    **dict.fromkeys(("on", "1", "true"), "on"),
    **dict.fromkeys(("off", "0", "false"), "off"),
    **dict.fromkeys(("toggle", "2"), "toggle"),
}
#: Shelly Gen1, ESPHome (``parse_on_off``) and Zigbee2MQTT: on, off, toggle, any case.
_WORDS: Final[Mapping[str, Action]] = {"on": "on", "off": "off", "toggle": "toggle"}
#: Tasmota's PulseTime: 1..111 count tenths of a second, 112 and up seconds + 100.
_PULSETIME_TENTHS_MAX: Final = 111


class Availability(NamedTuple):
    """An availability topic and its online and offline payloads.

    The first payload of each is what the model publishes; any others are what other versions
    of the firmware say (Zigbee2MQTT 1.x's plain ``online`` where 2.x sends JSON).
    """

    topic: str
    online: tuple[str, ...]
    offline: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the firmware did with one input: what it understood, its relay, what it published."""

    action: Action | None
    was_on: bool
    on: bool
    reports: tuple[Message, ...] = ()

    @property
    def switched(self) -> bool:
        """The relay changed."""
        return self.was_on != self.on

    @property
    def commanded_on(self) -> bool:
        """It was told to switch on (what safety rule 6 counts: one ON per session)."""
        return self.action == "on" or (self.action == "toggle" and not self.was_on)


class Firmware(abc.ABC):
    """A relay behind one firmware's MQTT dialect, with the off-timer the firmware keeps."""

    #: Whether it reports its relay unprompted each time it reconnects to the broker (not only
    #: after booting). Tasmota does not (its state goes out on the first connect after boot
    #: only, ``MqttConnected``), nor Zigbee2MQTT (only ``bridge/state``); ESPHome does
    #: (``schedule_resend_state`` on every connect) and Shelly Gen1 does ("complete current
    #: state" on every connect). Nobody documents Shelly Gen2's or a generic plug's: the least
    #: helpful, nothing.
    reports_on_reconnect: ClassVar[bool] = False
    #: Whether its availability says ``online`` again at each reconnect (Zigbee2MQTT re-sends
    #: only ``bridge/state``; the devices' availability only when it starts).
    announces_on_reconnect: ClassVar[bool] = True
    #: The words its switch command takes.
    words: ClassVar[Mapping[str, Action]] = _WORDS

    def __init__(self, config: PlugConfig, *, timer_supported: bool = True) -> None:
        """The firmware ``config`` describes, relay off, not yet connected since it booted."""
        self.config = config
        #: ``False``: it ignores the off-timer it is asked for (some Zigbee plugs' ``on_time``).
        self.timer_supported = timer_supported
        self.on = False
        #: When its own off-timer switches the relay off (``None``: no timer running).
        self.off_at: float | None = None
        #: The off-timer the last ON armed, in seconds.
        self.armed_s: float | None = None
        #: What the panel draws when the relay is on (0: its own switch is off).
        self.load_w = 60.0
        #: A welded relay: reports what it is told, but keeps passing power.
        self.stuck = False
        self._booted = False

    # ------------------------------------------------------------------ its topics

    @property
    @abc.abstractmethod
    def subscriptions(self) -> tuple[str, ...]:
        """The topic filters it subscribes to (its commands)."""

    @property
    def availability(self) -> tuple[Availability, ...]:
        """Its availability topics; the first is the one it announces itself on."""
        return ()

    def hears(self, topic: str) -> bool:
        """A message on ``topic`` reaches it."""
        return _matches(self.subscriptions, topic)

    def last_will(self) -> Message | None:
        """The will its MQTT client is created with: its availability, offline."""
        if not self.availability:
            return None
        topic, _, offline = self.availability[0]
        return Message(topic, offline[0], retain=True, qos=1)

    def connect(self) -> list[Message]:
        """What it publishes on connecting: everything after booting, on a reconnect only what
        the firmware re-sends."""
        booting = not self._booted
        self._booted = True
        out: list[Message] = []
        if self.availability and (booting or self.announces_on_reconnect):
            topic, online, _ = self.availability[0]
            out.append(Message(topic, online[0], retain=True, qos=1))
        out += self._every_connect()
        if booting or self.reports_on_reconnect:
            out += self._birth()
        return out

    # ------------------------------------------------------------------ what it does

    @abc.abstractmethod
    def action(self, topic: str, payload: bytes) -> Action | None:
        """What it would make of a message on one of its topics (nothing changes)."""

    def receive(self, topic: str, payload: bytes, now: float) -> Outcome:
        """Act on a message on one of its topics, at loop time ``now``."""
        action = self.action(topic, payload)
        if action in ("on", "off", "toggle"):
            return self._switch(action, now)
        if action == "query":
            return self._unchanged(action, self.report())
        return self._unchanged(None)

    def set_relay(self, on: bool, now: float, *, timer_s: float | None = None) -> Outcome:
        """Switch the relay (by command, button or power-on state), arming ``timer_s``."""
        was_on = self.on
        self.on = on
        # Every switch replaces the running timer (Tasmota: "Restart PulseTime if powered On").
        self.off_at = self.armed_s = None
        if on and timer_s is not None and timer_s > 0 and self.timer_supported:
            self.off_at = now + timer_s
            self.armed_s = timer_s
        return Outcome(None, was_on, on, tuple(self.report()))

    def press_button(self, now: float) -> Outcome:
        """Someone toggles it by hand (its button, or its own app)."""
        return self.set_relay(not self.on, now, timer_s=self._button_timer())

    def expire(self, now: float) -> Outcome | None:
        """Its off-timer: once ``off_at`` has come the relay goes off by itself and reports."""
        if self.off_at is None or now < self.off_at:
            return None
        return self.set_relay(False, now)

    @property
    def power_w(self) -> float:
        """The power it passes now."""
        return self.load_w if (self.on or self.stuck) else 0.0

    # ------------------------------------------------------------------ what it reports

    @abc.abstractmethod
    def report(self) -> list[Message]:
        """What it publishes after a command or a query."""

    def telemetry(self) -> list[Message]:
        """What it publishes unprompted (periodic telemetry)."""
        return self.report()

    def _birth(self) -> list[Message]:
        """Its state as it reports it on connecting."""
        return self.report()

    def _every_connect(self) -> list[Message]:
        """What it publishes on every connect, before anything else."""
        return []

    def _button_timer(self) -> float | None:
        """The off-timer a hand-switched ON starts (Tasmota's stored PulseTime)."""
        return None

    def _switch(self, action: Action, now: float, timer_s: float | None = None) -> Outcome:
        on = action == "on" or (action == "toggle" and not self.on)
        return replace(self.set_relay(on, now, timer_s=timer_s), action=action)

    def _unchanged(self, action: Action | None, reports: list[Message] | None = None) -> Outcome:
        return Outcome(action, self.on, self.on, tuple(reports or ()))

    @staticmethod
    def _state(topic: str, payload: str, *, retain: bool = False) -> Message:
        # State goes out at QoS 0, as most plugs send it.
        return Message(topic, payload, retain=retain, qos=0)


class Tasmota(Firmware):
    """``cmnd/<t>/POWER<i>`` (anything but on/off/toggle asks), ``PulseTime<r>``,
    ``Status 10``; reports on ``stat/<t>/RESULT`` and ``stat/<t>/POWER<i>``."""

    words = _TASMOTA_WORDS

    def __init__(self, config: PlugConfig, *, timer_supported: bool = True) -> None:
        """Tasmota with topic ``config.topic`` and relay ``config.index``; PulseTime 0."""
        super().__init__(config, timer_supported=timer_supported)
        self.topic = config.topic
        self.index = "" if config.index is None else str(config.index)
        self.relay = config.index or 1
        #: The stored ``PulseTime<r>`` setting (0: none).
        self.pulsetime = 0

    @property
    def subscriptions(self) -> tuple[str, ...]:
        """Every command under ``cmnd/<t>/``."""
        return (f"cmnd/{self.topic}/+",)

    @property
    def availability(self) -> tuple[Availability, ...]:
        """``tele/<t>/LWT``: ``Online`` (retained on connect), ``Offline`` (its will)."""
        return (Availability(f"tele/{self.topic}/LWT", ("Online",), ("Offline",)),)

    def action(self, topic: str, payload: bytes) -> Action | None:
        """Tasmota's command names are case-insensitive; POWER without a known word asks."""
        command = topic.rsplit("/", 1)[-1].casefold()
        if command in {f"power{self.index}", f"power{self.relay}"} or (
            self.index == "" and command == "power"
        ):
            # CmndPower: an empty or unknown payload is POWER_SHOW_STATE.
            return self.words.get(_word(payload), "query")
        if command == f"pulsetime{self.relay}" or (command == "status" and _word(payload) == "10"):
            return "setting"
        return None

    def receive(self, topic: str, payload: bytes, now: float) -> Outcome:
        """A POWER command (every ON restarts PulseTime), a PulseTime setting or Status 10."""
        action = self.action(topic, payload)
        if action in ("on", "off", "toggle"):
            # ExecuteCommandPower restarts PulseTime on every ON, whatever its source.
            return self._switch(action, now, self._button_timer())
        if action == "setting" and topic.rsplit("/", 1)[-1].casefold() == "status":
            sensors = {"StatusSNS": {"ENERGY": {"Power": self.power_w}}}
            return self._unchanged(action, [self._stat("STATUS10", json.dumps(sensors))])
        if action == "setting":
            return self._unchanged(action, [self._set_pulsetime(_word(payload))])
        return super().receive(topic, payload, now)

    def _set_pulsetime(self, word: str) -> Message:
        # An empty payload or a non-number asks: Tasmota answers with the setting it keeps.
        if word.isdecimal():
            self.pulsetime = min(65535, int(word))
        body = {f"PulseTime{self.relay}": {"Set": self.pulsetime, "Remaining": 0}}
        return self._stat("RESULT", json.dumps(body))

    def _button_timer(self) -> float | None:
        # SetPulseTimer's decoding, written here from Tasmota's source, not taken from presets.
        if self.pulsetime <= 0:
            return None
        if self.pulsetime <= _PULSETIME_TENTHS_MAX:
            return self.pulsetime / 10
        return float(self.pulsetime - 100)

    def report(self) -> list[Message]:
        """``stat/<t>/RESULT`` (JSON) and ``stat/<t>/POWER<i>`` (plain), after every POWER."""
        state = "ON" if self.on else "OFF"
        key = f"POWER{self.index}"
        return [self._stat("RESULT", json.dumps({key: state})), self._stat(key, state)]

    def telemetry(self) -> list[Message]:
        """``tele/<t>/STATE`` every TelePeriod, the relay among other fields."""
        body = {"POWER" + self.index: "ON" if self.on else "OFF", "Wifi": {"RSSI": 80}}
        return [self._state(f"tele/{self.topic}/STATE", json.dumps(body))]

    def _birth(self) -> list[Message]:
        return self.telemetry() + self.report()

    def _stat(self, name: str, payload: str) -> Message:
        return self._state(f"stat/{self.topic}/{name}", payload)


class ShellyGen1(Firmware):
    """``shellies/<id>/relay/<r>/command`` on/off/toggle; ``shellies/<id>/command`` ``update``."""

    reports_on_reconnect = True

    def __init__(self, config: PlugConfig, *, timer_supported: bool = True) -> None:
        """Shelly Gen1 device ``config.id``, relay ``config.relay``."""
        super().__init__(config, timer_supported=timer_supported)
        self.device = f"shellies/{config.id}"
        self.relay = f"{self.device}/relay/{config.relay}"

    @property
    def subscriptions(self) -> tuple[str, ...]:
        """Its relay's command topic and the device's."""
        return (f"{self.relay}/command", f"{self.device}/command")

    @property
    def availability(self) -> tuple[Availability, ...]:
        """``shellies/<id>/online``: ``true`` / ``false``."""
        return (Availability(f"{self.device}/online", ("true",), ("false",)),)

    def action(self, topic: str, payload: bytes) -> Action | None:
        """A relay command, or ``update`` (report everything) to the device."""
        if topic == f"{self.relay}/command":
            return self.words.get(_word(payload))
        return "query" if _word(payload) == "update" else None

    def report(self) -> list[Message]:
        """``shellies/<id>/relay/<r>``: ``on`` / ``off``."""
        return [self._state(self.relay, "on" if self.on else "off")]


class ShellyGen2(Firmware):
    """RPC on ``<prefix>/rpc`` (replies on ``<src>/rpc``), status and NotifyStatus reports."""

    def __init__(self, config: PlugConfig, *, timer_supported: bool = True) -> None:
        """Shelly Gen2+ with topic prefix ``config.prefix``, switch ``config.switch``."""
        super().__init__(config, timer_supported=timer_supported)
        self.prefix = config.prefix
        self.switch_id = config.switch if isinstance(config.switch, int) else 0

    @property
    def subscriptions(self) -> tuple[str, ...]:
        """Its RPC channel."""
        return (f"{self.prefix}/rpc",)

    @property
    def availability(self) -> tuple[Availability, ...]:
        """``<prefix>/online``: ``true`` / ``false``."""
        return (Availability(f"{self.prefix}/online", ("true",), ("false",)),)

    def action(self, topic: str, payload: bytes) -> Action | None:
        """``Switch.Set`` with ``on`` switches, ``Switch.GetStatus`` asks."""
        call = self._call(payload)
        if call is None or call["params"].get("id") != self.switch_id:
            return None
        params = call["params"]
        if call.get("method") == "Switch.Set" and isinstance(params.get("on"), bool):
            return "on" if params["on"] else "off"
        return "query" if call.get("method") == "Switch.GetStatus" else None

    def receive(self, topic: str, payload: bytes, now: float) -> Outcome:
        """Every call is answered on ``<src>/rpc``; ``toggle_after`` arms the off-timer."""
        call = self._call(payload)
        if call is None:
            return self._unchanged(None)  # no ``src``: nowhere to answer
        action = self.action(topic, payload)
        if action in ("on", "off"):
            toggle_after = call["params"].get("toggle_after")
            timer = float(toggle_after) if isinstance(toggle_after, int | float) else None
            reply = self._reply(call, result={"was_on": self.on})
            outcome = self._switch(action, now, timer)
            return replace(outcome, reports=(reply, *outcome.reports))
        if action == "query":
            result = {"id": self.switch_id, "output": self.on, "apower": self.power_w}
            return self._unchanged(action, [self._reply(call, result=result)])
        if call["params"].get("id") != self.switch_id:
            error = {"code": -103, "message": "Invalid argument 'id'"}
        else:
            error = {"code": -114, "message": "Method not found"}
        return self._unchanged(None, [self._reply(call, error=error)])

    @staticmethod
    def _call(payload: bytes) -> dict[str, Any] | None:
        """The RPC call, with ``params`` always an object; ``None`` without a ``src``."""
        call = _json(payload)
        if call is None or not isinstance(call.get("src"), str):
            return None
        if not isinstance(call.get("params"), dict):
            call["params"] = {}
        return call

    def _reply(self, call: dict[str, Any], **body: Any) -> Message:
        reply = {"id": call.get("id"), "src": self.prefix, "dst": call["src"], **body}
        return self._state(f"{call['src']}/rpc", json.dumps(reply))

    def report(self) -> list[Message]:
        """``<prefix>/status/switch:<n>`` and a NotifyStatus on ``<prefix>/events/rpc``."""
        key = f"switch:{self.switch_id}"
        status = {"id": self.switch_id, "source": "mqtt", "output": self.on, "apower": self.power_w}
        notify = {
            "src": self.prefix,
            "method": "NotifyStatus",
            "params": {key: {"id": self.switch_id, "output": self.on}},
        }
        return [
            self._state(f"{self.prefix}/status/{key}", json.dumps(status)),
            self._state(f"{self.prefix}/events/rpc", json.dumps(notify)),
        ]


class Zigbee2Mqtt(Firmware):
    """``<base>/<device>/set`` JSON, optional ``on_time``; ``/get``; state on ``<base>/<device>``.

    The bridge speaks for the device: it is the MQTT client, its will is ``bridge/state``.
    """

    announces_on_reconnect = False

    def __init__(self, config: PlugConfig, *, timer_supported: bool = True) -> None:
        """Device ``config.device`` behind the bridge at ``config.base``."""
        super().__init__(config, timer_supported=timer_supported)
        self.base = config.base
        self.topic = f"{config.base}/{config.device}"

    @property
    def subscriptions(self) -> tuple[str, ...]:
        """The device's ``set`` and ``get``."""
        return (f"{self.topic}/set", f"{self.topic}/get")

    @property
    def availability(self) -> tuple[Availability, ...]:
        """The device's availability and the bridge's state: JSON (2.x) or plain (1.x)."""
        online, offline = ('{"state":"online"}', "online"), ('{"state":"offline"}', "offline")
        return (
            Availability(f"{self.topic}/availability", online, offline),
            Availability(f"{self.base}/bridge/state", online, offline),
        )

    def last_will(self) -> Message | None:
        """The bridge's: its state offline (the devices behind it are not MQTT clients)."""
        topic, _, offline = self.availability[1]
        return Message(topic, offline[0], retain=True, qos=1)

    def action(self, topic: str, payload: bytes) -> Action | None:
        """Any JSON object on ``get`` asks; ``{"state": ...}`` on ``set`` switches."""
        body = _json(payload)
        if body is None:
            return None
        if topic.endswith("/get"):
            return "query"
        state = body.get("state")
        return self.words.get(state.casefold()) if isinstance(state, str) else None

    def receive(self, topic: str, payload: bytes, now: float) -> Outcome:
        """``on_time`` arms the device's onWithTimedOff, and then nothing is reported."""
        action = self.action(topic, payload)
        if action in ("on", "off", "toggle"):
            body = _json(payload) or {}
            on_time = body.get("on_time")
            timer = float(on_time) if isinstance(on_time, int | float) else None
            outcome = self._switch(action, now, timer)
            timed = "on_time" in body or "off_wait_time" in body
            if action == "on" and timed:
                # The converter's timed branch returns no optimistic state: only a /get tells.
                return replace(outcome, reports=())
            return outcome
        return super().receive(topic, payload, now)

    def _every_connect(self) -> list[Message]:
        topic, online, _ = self.availability[1]
        return [self._state(topic, online[0], retain=True)]

    def report(self) -> list[Message]:
        """The device's state object on ``<base>/<device>``."""
        body = {"state": "ON" if self.on else "OFF", "power": self.power_w, "linkquality": 120}
        return [self._state(self.topic, json.dumps(body))]


class EspHome(Firmware):
    """``<node>/switch/<s>/command`` ON/OFF/TOGGLE; state retained on ``.../state``."""

    reports_on_reconnect = True

    def __init__(self, config: PlugConfig, *, timer_supported: bool = True) -> None:
        """Switch ``config.switch`` of node ``config.node``."""
        super().__init__(config, timer_supported=timer_supported)
        self.node = config.node
        self.topic = f"{config.node}/switch/{config.switch}"

    @property
    def subscriptions(self) -> tuple[str, ...]:
        """The switch's command topic."""
        return (f"{self.topic}/command",)

    @property
    def availability(self) -> tuple[Availability, ...]:
        """``<node>/status``: ``online`` (retained birth) / ``offline`` (will)."""
        return (Availability(f"{self.node}/status", ("online",), ("offline",)),)

    def action(self, topic: str, payload: bytes) -> Action | None:
        """``parse_on_off``; there is no query (its state is retained)."""
        return self.words.get(_word(payload))

    def report(self) -> list[Message]:
        """``.../state`` retained: subscribing is asking."""
        return [self._state(f"{self.topic}/state", "ON" if self.on else "OFF", retain=True)]


class Generic(Firmware):
    """Whatever the panel's config says: exact payloads, plain or JSON state, an optional query.

    ``retained``: whether it retains its state (then subscribing is asking).
    """

    def __init__(
        self, config: PlugConfig, *, timer_supported: bool = True, retained: bool = False
    ) -> None:
        """The plug a generic ``plug`` table describes."""
        super().__init__(config, timer_supported=timer_supported)
        self.retained = retained
        if config.command_topic is None or config.state_topic is None:
            raise ValueError("a generic plug needs plug.command_topic and plug.state_topic")
        self.command_topic = config.command_topic
        self.state_topic = config.state_topic
        self.payload_on = config.payload_on or "ON"
        self.payload_off = config.payload_off or "OFF"

    @property
    def subscriptions(self) -> tuple[str, ...]:
        """Its command topic and, if it has one, its state query topic."""
        topics = (self.command_topic, self.config.state_request_topic)
        return tuple(dict.fromkeys(t for t in topics if t is not None))

    @property
    def availability(self) -> tuple[Availability, ...]:
        """The configured availability topic, if any."""
        if self.config.availability_topic is None:
            return ()
        online = self.config.payload_available or "online"
        offline = self.config.payload_not_available or "offline"
        return (Availability(self.config.availability_topic, (online,), (offline,)),)

    def action(self, topic: str, payload: bytes) -> Action | None:
        """Only the exact configured payloads switch it, or ask it."""
        text = payload.decode("utf-8", errors="replace").strip()
        if topic == self.command_topic and text in (self.payload_on, self.payload_off):
            return "on" if text == self.payload_on else "off"
        asks = self.config.state_request_payload or ""
        return "query" if topic == self.config.state_request_topic and text == asks else None

    def report(self) -> list[Message]:
        """Its state words, wrapped in JSON at ``state_json_path`` if there is one."""
        on_word = self.config.state_on or self.payload_on
        off_word = self.config.state_off or self.payload_off
        value: Any = on_word if self.on else off_word
        if self.config.state_json_path:
            for key in reversed(self.config.state_json_path.split(".")):
                value = {key: value}
            value = json.dumps(value)
        return [self._state(self.state_topic, value, retain=self.retained)]


#: The model of each preset's firmware.
MODELS: Final[Mapping[str, Callable[..., Firmware]]] = {
    "tasmota": Tasmota,
    "shelly_gen1": ShellyGen1,
    "shelly_gen2": ShellyGen2,
    "zigbee2mqtt": Zigbee2Mqtt,
    "esphome": EspHome,
    "generic": Generic,
}


def firmware_for(config: PlugConfig, *, timer_supported: bool = True) -> Firmware:
    """The model of the firmware a panel's ``plug`` table names, relay off."""
    return MODELS[config.preset](config, timer_supported=timer_supported)


@functools.lru_cache(maxsize=4096)
def _matches(filters: tuple[str, ...], topic: str) -> bool:
    # Cached: the hypothesis core machine asks about the same few topics a million times.
    return any(topic_matches_sub(f, topic) for f in filters)


def _word(payload: bytes) -> str:
    return payload.decode("utf-8", errors="replace").strip().casefold()


def _json(payload: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None
