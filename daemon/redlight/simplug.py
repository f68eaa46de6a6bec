"""Simulated smart plugs on a broker connection, for tests and ``redlight demo``.

The firmware itself is :mod:`redlight.firmware`'s sans-I/O model (topics, payloads, off-timers,
what it re-sends on reconnecting); this module is its shell: it runs the model on any
:class:`~redlight.broker.BrokerClient` (the in-memory broker or paho), arms the model's off-timer
on the event loop, and keeps a record of every interval the relay was on and every command
that reached it, timed on the loop's clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from redlight.broker import BrokerClient, BrokerEvent, Connected, Message, Received
from redlight.firmware import Firmware, Outcome, Tasmota, firmware_for
from redlight.presets import PlugConfig


@dataclass(frozen=True, slots=True)
class Command:
    """A command the simulated plug received, with the loop time it arrived."""

    at: float
    topic: str
    payload: bytes
    retain: bool


class SimulatedPlug:
    """One plug: a firmware model on a broker connection, its off-timer on the event loop."""

    def __init__(
        self,
        panel_id: str,
        config: PlugConfig,
        *,
        base_topic: str = "redlight",
        client: BrokerClient,
        timer_supported: bool = True,
    ) -> None:
        """Simulate the plug ``config`` describes; ``client`` must carry :meth:`last_will`.

        ``timer_supported=False`` simulates a plug that ignores the off-timer it is asked for
        (Zigbee plugs that ignore ``on_time`` exist).
        """
        self.panel_id = panel_id
        self.config = config
        self.client = client
        self.base_topic = base_topic
        self.firmware: Firmware = firmware_for(config, timer_supported=timer_supported)
        #: ``False`` simulates a plug that no longer acts on commands (but stays connected).
        self.responsive = True
        self.commands: list[Command] = []
        self.on_intervals: list[tuple[float, float | None]] = []
        self.timer_fired = 0
        #: ON commands received (safety rule 6: one per session).
        self.on_commands = 0
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connected = asyncio.Event()
        self._changed = asyncio.Event()

    # ------------------------------------------------------------------ lifecycle

    @staticmethod
    def last_will(config: PlugConfig) -> Message | None:
        """The will the plug's MQTT client must be created with (its availability offline).

        Zigbee2MQTT's is the bridge's state: the devices behind it are not MQTT clients.
        """
        return firmware_for(config).last_will()

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
            self.client.subscribe(self.firmware.subscriptions)
            for message in self.firmware.connect():
                self.client.publish(message)
            self._connected.set()
        elif isinstance(event, Received):
            # Retained commands are acted on too: that is the firmware's real (and risky) habit.
            self.commands.append(Command(self._now(), event.topic, event.payload, event.retain))
            self._changed.set()
            if self.responsive:
                self._carry_out(self.firmware.receive(event.topic, event.payload, self._now()))

    # ------------------------------------------------------------------ the relay

    def set_relay(self, on: bool, *, timer_s: float | None = None, report: bool = True) -> None:
        """Switch the relay (by command, button or power-on state) and report it."""
        outcome = self.firmware.set_relay(on, self._now(), timer_s=timer_s)
        self._carry_out(outcome, report=report)

    @property
    def on(self) -> bool:
        """The relay is on."""
        return self.firmware.on

    @property
    def is_on(self) -> bool:
        """The relay is on."""
        return self.firmware.on

    @property
    def failsafe_armed_s(self) -> float | None:
        """The off-timer the last ON armed, in seconds (``None``: no timer running)."""
        return self.firmware.armed_s

    @property
    def pulsetime(self) -> int:
        """Tasmota's stored ``PulseTime`` setting (0 for every other firmware)."""
        return self.firmware.pulsetime if isinstance(self.firmware, Tasmota) else 0

    @property
    def load_w(self) -> float:
        """What the panel draws when the relay is on (0: its own switch is off)."""
        return self.firmware.load_w

    @load_w.setter
    def load_w(self, watts: float) -> None:
        self.firmware.load_w = watts

    @property
    def stuck(self) -> bool:
        """A welded relay: reports what it is told, but keeps passing power."""
        return self.firmware.stuck

    @stuck.setter
    def stuck(self, stuck: bool) -> None:
        self.firmware.stuck = stuck

    @property
    def power_w(self) -> float:
        """The power the plug passes now."""
        return self.firmware.power_w

    def set_responsive(self, responsive: bool) -> None:
        """Stop (or resume) acting on commands, as a hung or half-connected plug does."""
        self.responsive = responsive

    def press_button(self) -> None:
        """Someone toggles the plug by hand (its button, or its own app)."""
        self._carry_out(self.firmware.press_button(self._now()))

    def on_seconds(self, now: float | None = None) -> list[float]:
        """How long each on-interval lasted (an open one up to ``now``)."""
        end_now = self._now() if now is None else now
        return [(end if end is not None else end_now) - start for start, end in self.on_intervals]

    def publish(self, topic: str, payload: str, *, retain: bool = False) -> None:
        """Publish as the firmware does (QoS 0 for state, like most plugs)."""
        self.client.publish(Message(topic, payload, retain=retain, qos=0))

    def _carry_out(self, outcome: Outcome, *, report: bool = True) -> None:
        """Record what the model did, publish what it reports, and arm its off-timer."""
        now = self._now()
        if outcome.on and not outcome.was_on:
            self.on_intervals.append((now, None))
        elif outcome.was_on and not outcome.on:
            start, _ = self.on_intervals[-1]
            self.on_intervals[-1] = (start, now)
        self.on_commands += outcome.commanded_on
        if report:
            for message in outcome.reports:
                self.client.publish(message)
        self._cancel_timer()
        if self.firmware.off_at is not None:
            self._timer = self._get_loop().call_at(self.firmware.off_at, self._timer_expired)
        self._changed.set()

    def _timer_expired(self) -> None:
        self._timer = None
        # The loop may run a timer a clock tick early: it fires at its due time, not before.
        due = self.firmware.off_at
        outcome = self.firmware.expire(max(self._now(), due or 0.0))
        if outcome is not None:
            self.timer_fired += 1
            self._carry_out(outcome)

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
