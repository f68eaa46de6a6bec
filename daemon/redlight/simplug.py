"""Simulated smart plugs that behave like their firmwares, for tests and ``redlight demo``.

Each simulation follows the firmware's documented MQTT behaviour (``shared/reference/plugs.md``),
written from the firmware's side and independently of :mod:`redlight.presets`, so a test of a
preset against a simulated plug checks the preset against the firmware, not against itself:
Tasmota's ``PulseTime`` encoding and restart-on-ON, Shelly Gen2's RPC replies on ``<src>/rpc``
and ``toggle_after``, Zigbee2MQTT's ``on_time`` and JSON availability, ESPHome's retained state.

A simulation runs on any :class:`~redlight.broker.BrokerClient` (the in-memory broker or paho)
and keeps a record of every interval its relay was on, timed on the event loop's clock.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from redlight.broker import BrokerClient, BrokerEvent, Connected, Message, Received
from redlight.presets import PlugConfig, pulsetime_seconds

#: Payloads firmwares accept for ON, OFF and TOGGLE (Tasmota, Shelly Gen1, ESPHome: any case).
_ON: Final = frozenset({"on", "1", "true"})
_OFF: Final = frozenset({"off", "0", "false"})
_TOGGLE: Final = frozenset({"toggle", "2"})


@dataclass(frozen=True, slots=True)
class Command:
    """A command the simulated plug received, with the loop time it arrived."""

    at: float
    topic: str
    payload: bytes
    retain: bool


class SimulatedPlug:
    """One plug: a relay, its firmware's MQTT dialect, and its own off-timer where it has one."""

    def __init__(
        self,
        panel_id: str,
        config: PlugConfig,
        *,
        base_topic: str = "redlight",
        client: BrokerClient,
        timer_supported: bool = True,
    ) -> None:
        """Simulate the plug ``config`` describes; ``client`` must carry :meth:`last_will`."""
        self.panel_id = panel_id
        self.config = config
        self.client = client
        self.base_topic = base_topic
        #: Zigbee plugs that ignore ``on_time`` exist; ``False`` simulates one.
        self.timer_supported = timer_supported
        #: ``False`` simulates a plug that no longer acts on commands (but stays connected).
        self.responsive = True
        self.on = False
        self.commands: list[Command] = []
        self.on_intervals: list[tuple[float, float | None]] = []
        self.timer_fired = 0
        #: ON commands received (safety rule 6: one per session).
        self.on_commands = 0
        #: The off-timer the last ON armed, in seconds (``None``: no timer running).
        self.failsafe_armed_s: float | None = None
        self.pulsetime = 0
        #: What the panel draws when the relay is on (0: its own switch is off).
        self.load_w = 60.0
        #: A welded relay: reports what it is told, but keeps passing power.
        self.stuck = False
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connected = asyncio.Event()
        self._changed = asyncio.Event()
        #: Connected since it (last) booted: a reconnect reports only what the firmware does.
        self._booted = False
        self._dialect = _DIALECTS[config.preset](self)

    # ------------------------------------------------------------------ lifecycle

    @staticmethod
    def last_will(config: PlugConfig) -> Message | None:
        """The will the plug's MQTT client must be created with (its availability offline).

        Zigbee2MQTT's is the bridge's state: the devices behind it are not MQTT clients.
        """
        if config.preset == "zigbee2mqtt":
            return Message(f"{config.base}/bridge/state", '{"state":"offline"}', retain=True, qos=1)
        availability = _availability(config)
        if availability is None:
            return None
        topic, _, offline = availability
        return Message(topic, offline, retain=True, qos=1)

    async def start(self) -> None:
        """Connect, announce itself online and report its relay; returns once connected."""
        self._loop = asyncio.get_running_loop()
        self.client.start(self._on_event)
        await self._connected.wait()

    async def wait_for(self, predicate: Callable[[SimulatedPlug], bool]) -> None:
        """Return once ``predicate(self)`` holds (callers bound it with ``asyncio.timeout``)."""
        while not predicate(self):
            self._changed.clear()
            await self._changed.wait()

    async def stop(self) -> None:
        """Disconnect cleanly (the relay keeps its state, as a real plug would)."""
        self._cancel_timer()
        await self.client.stop()

    def _on_event(self, event: BrokerEvent) -> None:
        if isinstance(event, Connected):
            booting = not self._booted
            self._booted = True
            self.client.subscribe(self._dialect.subscriptions())
            availability = _availability(self.config)
            if availability is not None and (booting or self._dialect.announces_on_reconnect):
                topic, online, _ = availability
                self.client.publish(Message(topic, online, retain=True, qos=1))
            self._dialect.every_connect()
            if booting or self._dialect.reports_on_reconnect:
                self._dialect.extra_birth()
                self._dialect.report()
            self._connected.set()
        elif isinstance(event, Received):
            # Retained commands are acted on too: that is the firmware's real (and risky) habit.
            self.commands.append(Command(self._now(), event.topic, event.payload, event.retain))
            self._changed.set()
            if self.responsive:
                self._dialect.handle(event.topic, event.payload)

    # ------------------------------------------------------------------ the relay

    def set_relay(self, on: bool, *, timer_s: float | None = None, report: bool = True) -> None:
        """Switch the relay (by command, button or power-on state) and report it."""
        now = self._now()
        if on and not self.on:
            self.on_intervals.append((now, None))
        elif not on and self.on:
            start, _ = self.on_intervals[-1]
            self.on_intervals[-1] = (start, now)
        self.on = on
        self._cancel_timer()
        self.failsafe_armed_s = None
        if on and timer_s is not None and timer_s > 0:
            self._timer = self._get_loop().call_later(timer_s, self._timer_expired)
            self.failsafe_armed_s = timer_s
        if report:
            self._dialect.report()
        self._changed.set()

    @property
    def power_w(self) -> float:
        """The power the plug passes now."""
        return self.load_w if (self.on or self.stuck) else 0.0

    @property
    def is_on(self) -> bool:
        """The relay is on."""
        return self.on

    def set_responsive(self, responsive: bool) -> None:
        """Stop (or resume) acting on commands, as a hung or half-connected plug does."""
        self.responsive = responsive

    def press_button(self) -> None:
        """Someone toggles the plug by hand (its button, or its own app)."""
        self.set_relay(not self.on, timer_s=self._dialect.button_timer())

    def on_seconds(self, now: float | None = None) -> list[float]:
        """How long each on-interval lasted (an open one up to ``now``)."""
        end_now = self._now() if now is None else now
        return [(end if end is not None else end_now) - start for start, end in self.on_intervals]

    def _timer_expired(self) -> None:
        self._timer = None
        self.timer_fired += 1
        self.set_relay(False)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _now(self) -> float:
        return self._get_loop().time()

    def _get_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def publish(self, topic: str, payload: str, *, retain: bool = False) -> None:
        """Publish as the firmware does (QoS 0 for state, like most plugs)."""
        self.client.publish(Message(topic, payload, retain=retain, qos=0))


def _availability(config: PlugConfig) -> tuple[str, str, str] | None:
    """The firmware's availability topic and its online and offline payloads."""
    match config.preset:
        case "tasmota":
            return f"tele/{config.topic}/LWT", "Online", "Offline"
        case "shelly_gen1":
            return f"shellies/{config.id}/online", "true", "false"
        case "shelly_gen2":
            return f"{config.prefix}/online", "true", "false"
        case "zigbee2mqtt":
            # Zigbee2MQTT 2.x: JSON availability (the bridge publishes it for the device).
            return (
                f"{config.base}/{config.device}/availability",
                '{"state":"online"}',
                ('{"state":"offline"}'),
            )
        case "esphome":
            return f"{config.node}/status", "online", "offline"
        case _:
            if config.availability_topic is None:
                return None
            return (
                config.availability_topic,
                config.payload_available or "online",
                config.payload_not_available or "offline",
            )


def _word(payload: bytes) -> str:
    return payload.decode("utf-8", errors="replace").strip().casefold()


def _json(payload: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(payload)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


class _Dialect:
    """One firmware's topics and payloads."""

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

    def __init__(self, plug: SimulatedPlug) -> None:
        self.plug = plug
        self.config = plug.config

    def subscriptions(self) -> list[str]:
        raise NotImplementedError

    def handle(self, topic: str, payload: bytes) -> None:
        raise NotImplementedError

    def report(self) -> None:
        raise NotImplementedError

    def extra_birth(self) -> None:
        """Anything else the firmware publishes when it connects after booting."""

    def every_connect(self) -> None:
        """What the firmware publishes on every connect, before anything else."""

    def button_timer(self) -> float | None:
        """The off-timer a hand-switched ON starts (Tasmota's stored PulseTime)."""
        return None

    def switch(self, word: str, timer_s: float | None = None) -> bool:
        """Apply an on/off/toggle word; ``False`` if the firmware would not understand it."""
        if word in _ON:
            self.plug.on_commands += 1
            self.plug.set_relay(True, timer_s=timer_s)
        elif word in _OFF:
            self.plug.set_relay(False)
        elif word in _TOGGLE:
            self.plug.on_commands += 0 if self.plug.on else 1
            self.plug.set_relay(not self.plug.on, timer_s=timer_s)
        else:
            return False
        return True


class _Tasmota(_Dialect):
    """``cmnd/<t>/POWER<i>``, ``stat/<t>/RESULT`` + ``stat/<t>/POWER<i>``, PulseTime."""

    def __init__(self, plug: SimulatedPlug) -> None:
        super().__init__(plug)
        self.t = self.config.topic
        self.i = "" if self.config.index is None else str(self.config.index)

    def subscriptions(self) -> list[str]:
        return [f"cmnd/{self.t}/+"]

    def handle(self, topic: str, payload: bytes) -> None:
        command = topic.rsplit("/", 1)[-1].casefold()
        word = _word(payload)
        relay = self.config.index or 1
        if command in {f"power{self.i}", f"power{relay}"} or (self.i == "" and command == "power"):
            if word in {"", "?"}:
                self.report()  # a query; it does not touch a running PulseTime
            else:
                # Every ON restarts PulseTime, whatever its source (ExecuteCommandPower).
                self.switch(word, timer_s=self.button_timer())
        elif command == "status" and word == "10":
            sensors = {"StatusSNS": {"ENERGY": {"Power": self.plug.power_w}}}
            self.plug.publish(f"stat/{self.t}/STATUS10", json.dumps(sensors))
        elif command == f"pulsetime{relay}":
            if word not in {"", "?"}:
                try:
                    self.plug.pulsetime = max(0, min(65535, int(word)))
                except ValueError:
                    return
            remaining = 0
            body = {f"PulseTime{relay}": {"Set": self.plug.pulsetime, "Remaining": remaining}}
            self.plug.publish(f"stat/{self.t}/RESULT", json.dumps(body))

    def button_timer(self) -> float | None:
        return pulsetime_seconds(self.plug.pulsetime) or None

    def report(self) -> None:
        state = "ON" if self.plug.on else "OFF"
        key = f"POWER{self.i}"
        self.plug.publish(f"stat/{self.t}/RESULT", json.dumps({key: state}))
        self.plug.publish(f"stat/{self.t}/{key}", state)

    def extra_birth(self) -> None:
        state = "ON" if self.plug.on else "OFF"
        self.plug.publish(f"tele/{self.t}/STATE", json.dumps({f"POWER{self.i}": state}))


class _ShellyGen1(_Dialect):
    """``shellies/<id>/relay/<r>/command`` on/off; ``update`` on ``shellies/<id>/command``."""

    reports_on_reconnect = True

    def subscriptions(self) -> list[str]:
        device = self.config.id
        return [
            f"shellies/{device}/relay/{self.config.relay}/command",
            f"shellies/{device}/command",
        ]

    def handle(self, topic: str, payload: bytes) -> None:
        if topic.endswith("/relay/" + str(self.config.relay) + "/command"):
            self.switch(_word(payload))
        elif _word(payload) == "update":
            self.report()

    def report(self) -> None:
        relay = f"shellies/{self.config.id}/relay/{self.config.relay}"
        self.plug.publish(relay, "on" if self.plug.on else "off")


class _ShellyGen2(_Dialect):
    """RPC on ``<prefix>/rpc`` (replies on ``<src>/rpc``), status and NotifyStatus reports."""

    def __init__(self, plug: SimulatedPlug) -> None:
        super().__init__(plug)
        self.prefix = self.config.prefix
        self.switch_id = self.config.switch if isinstance(self.config.switch, int) else 0

    def subscriptions(self) -> list[str]:
        return [f"{self.prefix}/rpc"]

    def handle(self, topic: str, payload: bytes) -> None:
        call = _json(payload)
        if call is None or not isinstance(call.get("src"), str):
            return
        params = call.get("params") or {}
        if not isinstance(params, dict) or params.get("id") != self.switch_id:
            self._reply(call, error={"code": -103, "message": "Invalid argument 'id'"})
            return
        if call.get("method") == "Switch.Set" and isinstance(params.get("on"), bool):
            was_on = self.plug.on
            toggle_after = params.get("toggle_after")
            timer = float(toggle_after) if isinstance(toggle_after, int | float) else None
            self._reply(call, result={"was_on": was_on})
            self.plug.on_commands += 1 if params["on"] else 0
            self.plug.set_relay(params["on"], timer_s=timer)
        elif call.get("method") == "Switch.GetStatus":
            result = {"id": self.switch_id, "output": self.plug.on, "apower": self.plug.power_w}
            self._reply(call, result=result)
        else:
            self._reply(call, error={"code": -114, "message": "Method not found"})

    def _reply(self, call: dict[str, Any], **body: Any) -> None:
        reply = {"id": call.get("id"), "src": self.prefix, "dst": call["src"], **body}
        self.plug.publish(f"{call['src']}/rpc", json.dumps(reply))

    def report(self) -> None:
        key = f"switch:{self.switch_id}"
        status = {
            "id": self.switch_id,
            "source": "mqtt",
            "output": self.plug.on,
            "apower": self.plug.power_w,
        }
        self.plug.publish(f"{self.prefix}/status/{key}", json.dumps(status))
        notify = {
            "src": self.prefix,
            "method": "NotifyStatus",
            "params": {key: {"id": self.switch_id, "output": self.plug.on}},
        }
        self.plug.publish(f"{self.prefix}/events/rpc", json.dumps(notify))


class _Zigbee2Mqtt(_Dialect):
    """``<base>/<device>/set`` JSON with optional ``on_time``; state JSON on ``<base>/<device>``."""

    announces_on_reconnect = False

    def __init__(self, plug: SimulatedPlug) -> None:
        super().__init__(plug)
        self.topic = f"{self.config.base}/{self.config.device}"

    def subscriptions(self) -> list[str]:
        return [f"{self.topic}/set", f"{self.topic}/get"]

    def every_connect(self) -> None:
        self.plug.publish(f"{self.config.base}/bridge/state", '{"state":"online"}', retain=True)

    def handle(self, topic: str, payload: bytes) -> None:
        body = _json(payload)
        if body is None:
            return
        if topic.endswith("/get"):
            self.report()
            return
        state = body.get("state")
        if not isinstance(state, str):
            return
        on_time = body.get("on_time")
        timer = None
        if isinstance(on_time, int | float) and self.plug.timer_supported:
            timer = float(on_time)
        self.switch(state.casefold(), timer_s=timer)

    def report(self) -> None:
        state = "ON" if self.plug.on else "OFF"
        body = {"state": state, "power": self.plug.power_w, "linkquality": 120}
        self.plug.publish(self.topic, json.dumps(body))


class _EspHome(_Dialect):
    """``<node>/switch/<s>/command`` ON/OFF; state retained on ``.../state``."""

    reports_on_reconnect = True

    def __init__(self, plug: SimulatedPlug) -> None:
        super().__init__(plug)
        self.topic = f"{self.config.node}/switch/{self.config.switch}"

    def subscriptions(self) -> list[str]:
        return [f"{self.topic}/command"]

    def handle(self, topic: str, payload: bytes) -> None:
        self.switch(_word(payload))

    def report(self) -> None:
        self.plug.publish(f"{self.topic}/state", "ON" if self.plug.on else "OFF", retain=True)


class _Generic(_Dialect):
    """Whatever the panel's config says: plain payloads, or a JSON field at ``state_json_path``."""

    def subscriptions(self) -> list[str]:
        assert self.config.command_topic is not None
        topics = [self.config.command_topic, self.config.state_request_topic]
        return list(dict.fromkeys(t for t in topics if t is not None))

    def handle(self, topic: str, payload: bytes) -> None:
        text = payload.decode("utf-8", errors="replace").strip()
        if text == (self.config.payload_on or "ON"):
            self.plug.on_commands += 1
            self.plug.set_relay(True)
        elif text == (self.config.payload_off or "OFF"):
            self.plug.set_relay(False)
        elif text == (self.config.state_request_payload or "") and (
            self.config.state_request_topic in (None, topic)
        ):
            self.report()

    def report(self) -> None:
        assert self.config.state_topic is not None
        on_word = self.config.state_on or self.config.payload_on or "ON"
        off_word = self.config.state_off or self.config.payload_off or "OFF"
        value: Any = on_word if self.plug.on else off_word
        if self.config.state_json_path:
            for key in reversed(self.config.state_json_path.split(".")):
                value = {key: value}
            value = json.dumps(value)
        self.plug.publish(self.config.state_topic, value)


_DIALECTS: Final[dict[str, Callable[[SimulatedPlug], _Dialect]]] = {
    "tasmota": _Tasmota,
    "shelly_gen1": _ShellyGen1,
    "shelly_gen2": _ShellyGen2,
    "zigbee2mqtt": _Zigbee2Mqtt,
    "esphome": _EspHome,
    "generic": _Generic,
}
