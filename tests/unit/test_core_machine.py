"""The safety promise as a hypothesis state machine over the pure core and simulated plugs.

Three panels on three firmwares (Tasmota with PulseTime, Zigbee2MQTT with ``on_time``, a generic
plug with a retained state topic) are driven through every interleaving hypothesis finds of
commands, garbage, hand switching, telemetry, availability, retained messages, broker
disconnects, unresponsive plugs, clock advances with wall-clock steps of hours, and shutdown.

The plugs are the shared firmware models of ``redlight.firmware`` (the ones the simulated plugs
of the integration tests and the demo run): they act on the messages the core actually
returned and report back in the firmware's own format through a first-in-first-out broker (so
reports are stale when they cross a command, and may be duplicated). Nothing is dropped while
redlight is connected; everything in flight is lost when it disconnects, except retained
messages. The plugs' own off-timers are armed in the models but never fire here, so the bound
below is the core's alone.

The bound proven (``CoreMachine.bound``), for every panel whose relay is on:

    now - max(relay on since, panel controllable since) <= max_on + confirm_timeout

"Controllable" means redlight is connected to the broker and the plug acts on commands; before
that nothing redlight does can reach the relay, so the clock starts when it can. Why it holds:

* an ON redlight sent ends at its session's deadline (<= max_on), or earlier at
  ``confirm_timeout`` if unconfirmed, and the OFF reaches a controllable plug at once;
* an ON redlight did not send (a hand, a retained command) is reported within the broker's
  latency, here at most ``confirm_timeout`` (``CoreMachine.latency``), and cut off ``max_on``
  after it is seen (safety rule 2);
* when the panel becomes controllable again: a reconnect ends an overdue session and repeats a
  pending OFF at once, and asks every plug its state (the generic plug's retained state arrives
  on subscribing), so an unknown ON is seen within the latency; a plug that recovers
  re-announces itself (availability and state, as firmwares do on reconnecting) and gets the
  pending OFF at the next retry, at most ``MAX_OFF_RETRY_S`` (10 s <= max_on) later.

No OFF retry grace is needed on top: a retry only waits for a plug that was not controllable,
and that wait starts the window again. Measuring ON time summed over controllable intervals
instead would not be bounded: a plug that goes deaf exactly at every OFF retry keeps the relay
on with up to 10 s of controllable time per retry.
"""

from __future__ import annotations

import json
import math
from collections import deque
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final

from hypothesis import HealthCheck, event, settings, target
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from paho.mqtt.client import topic_matches_sub

from redlight import commands as cmd
from redlight.broker import Message
from redlight.controller import Controller
from redlight.core import MAX_OFF_RETRY_S, Core, Effect, Now, Resubscribe, SessionOpened
from redlight.firmware import Firmware, Generic, firmware_for
from redlight.messages import Event
from redlight.panel import Panel, Relay
from redlight.presets import PlugConfig
from redlight.routines import Routines
from redlight.schedules import Schedules
from redlight.timers import TimerKind
from tests.unit.corekit import START_WALL, make_config

BASE: Final = "redlight"
PANELS: Final = ("left", "right", "sauna")
#: Ids that are not configured, to hit the unknown-id paths.
STRANGERS: Final = ("nope", "Left", "")


def machine_firmware(config: PlugConfig) -> Firmware:
    """The shared model of a panel's firmware, relay off; the generic plug retains its state."""
    if config.preset == "generic":
        return Generic(config, retained=True)
    return firmware_for(config)


@dataclass
class SimPlug:
    """A relay behind a firmware; ``on_since`` is when the relay last went on."""

    panel: str
    firmware: Firmware
    on_since: float | None
    responsive: bool = True
    controllable_since: float | None = None
    #: Off the broker: it neither gets commands nor gets its reports through.
    away: bool = False
    #: It came back from being away while on and announced nothing: only a poll finds it.
    unannounced: bool = False
    #: The exposure: ON intervals with less than ``MIN_OFF_S`` of OFF between. Its finished
    #: on-time, how many intervals, when the last ended, and whether redlight could control
    #: the relay throughout (the bound holds only then).
    exposure_s: float = 0.0
    exposure_count: int = 0
    exposure_end: float = -math.inf
    exposure_clean: bool = True
    #: redlight knew of the current ON interval (a session, or an OFF pending) at some step.
    interval_seen: bool = False

    @property
    def on(self) -> bool:
        """The relay is on (the firmware model's relay)."""
        return self.firmware.on


@dataclass(frozen=True, slots=True)
class InFlight:
    """A message on its way from the broker to redlight."""

    sent_at: float
    topic: str
    payload: bytes
    retain: bool


def machine_config(max_on: int, cooldown: int, daily_max: int | None, confirm: float) -> Any:
    """Three panels, three firmwares, small limits so that limits and timeouts interleave."""
    safety: dict[str, Any] = {
        "max_on": f"{max_on}s",
        "cooldown": f"{cooldown}s",
        "confirm_timeout": f"{confirm}s",
        "failsafe_margin": "5s",
        "min_off": f"{MIN_OFF_S:g}s",
        "poll_interval": f"{POLL_S}s",
        "max_pause": f"{MAX_PAUSE_S:g}s",
    }
    if daily_max is not None:
        safety["daily_max"] = f"{daily_max}s"
    panels = {
        "left": {
            "default_duration": f"{max_on // 2}s",
            "irradiance_mw_cm2": 50,
            "plug": {"preset": "tasmota", "topic": "panel_left"},
        },
        "right": {
            "irradiance_mw_cm2": 40,
            "plug": {"preset": "zigbee2mqtt", "device": "Panel plug right", "failsafe": True},
        },
        "sauna": {
            "plug": {
                "preset": "generic",
                "command_topic": "sauna/panel/set",
                "state_topic": "sauna/panel/state",
                "availability_topic": "sauna/panel/status",
                "state_request_topic": "sauna/panel/get",
            },
        },
    }
    return make_config(safety=safety, panels=panels)


# ---------------------------------------------------------------- payload strategies

DURATIONS: Final = st.one_of(
    st.sampled_from(["10s", "30s", "1m", "90s", "15m", "15m1s", "0.5s", "0", "1h", "", "-5"]),
    st.integers(min_value=-5, max_value=1000),
    st.floats(min_value=0, max_value=200, allow_nan=False),
)
START_PAYLOADS: Final = st.one_of(
    st.sampled_from(["ON", "on", " On \n"]),
    st.builds(
        lambda body, rid, src: json.dumps(body | rid | src),
        st.one_of(
            st.just({"action": "start"}),
            st.builds(lambda d: {"action": "start", "duration": d}, DURATIONS),
            st.builds(
                lambda d: {"action": "start", "dose_j_cm2": d},
                st.one_of(st.floats(0.01, 10), st.sampled_from([0, -1, 1e300])),
            ),
        ),
        st.sampled_from([{}, {"request_id": "r1"}, {"request_id": ""}]),
        st.sampled_from([{}, {"source": "cli"}, {"source": "homeassistant"}, {"source": "x"}]),
    ),
)
STOP_PAYLOADS: Final = st.sampled_from(
    ["OFF", "off", '{"action": "stop"}', '{"action": "stop", "request_id": "r2"}']
)
#: Session controls, a few of them too long for max_on or malformed.
CONTROL_PAYLOADS: Final = st.one_of(
    st.sampled_from(["PAUSE", "resume", '{"action": "pause"}', '{"action": "resume"}']),
    st.builds(
        lambda by: json.dumps({"action": "extend", "by": by}),
        st.one_of(DURATIONS, st.sampled_from(["5s", "20s"])),
    ),
)
GARBAGE: Final = st.one_of(
    st.binary(max_size=24),
    st.text(max_size=24),
    st.sampled_from(["", "START", "{}", "[]", "null", '{"action": "explode"}', "ONN", "\x00"]),
)
COMMANDS: Final = st.one_of(
    st.tuples(st.sampled_from([f"{BASE}/panel/{p}/set" for p in PANELS]), START_PAYLOADS),
    st.tuples(st.sampled_from([f"{BASE}/panel/{p}/set" for p in PANELS]), START_PAYLOADS),
    st.tuples(st.sampled_from([f"{BASE}/panel/{p}/set" for p in PANELS]), START_PAYLOADS),
    st.tuples(st.sampled_from([f"{BASE}/panel/{p}/set" for p in PANELS]), STOP_PAYLOADS),
    st.tuples(st.sampled_from([f"{BASE}/panel/{p}/set" for p in PANELS]), CONTROL_PAYLOADS),
    st.tuples(st.sampled_from([f"{BASE}/panel/{p}/set" for p in PANELS]), CONTROL_PAYLOADS),
    st.tuples(
        st.sampled_from(
            [f"{BASE}/panel/{p}/set" for p in STRANGERS]
            + [f"{BASE}/panel/{p}/duration/set" for p in PANELS + STRANGERS]
            + [f"{BASE}/set", f"{BASE}/routine/x/set", f"{BASE}/schedule/x/set"]
            + [f"{BASE}/panel/left/state", f"{BASE}/nope/set", f"{BASE}/panel/left/set"]
        ),
        GARBAGE,
    ),
    st.tuples(
        st.sampled_from([f"{BASE}/panel/{p}/duration/set" for p in PANELS]),
        st.one_of(
            st.floats(min_value=-1, max_value=20, allow_nan=False).map(str),
            st.sampled_from(["0.5", "1", "nan", "inf", "", "ten"]),
        ),
    ),
    st.tuples(
        st.just(f"{BASE}/set"),
        st.sampled_from(
            [
                '{"action": "stop_all"}',
                '{"action": "stop_all", "request_id": "r3"}',
                '{"action": "accept_offer", "offer": "o1"}',
            ]
        ),
    ),
)
ADVANCES: Final = st.one_of(
    st.sampled_from([0.0, 0.1, 0.5, 1.0, 2.0, 5.0, 9.9, 10.0, 30.0, 60.0, 90.0]),
    st.floats(min_value=0.0, max_value=120.0),
)
#: ``safety.min_off``: ON time with less OFF than this between is one exposure.
MIN_OFF_S: Final = 60.0
#: ``safety.poll_interval`` in the machine: short, so polls interleave with everything else.
POLL_S: Final = 10.0
#: ``safety.max_pause``: short, so pauses that run out interleave too.
MAX_PAUSE_S: Final = 30.0
#: Guard against a core that asks to be woken at the same instant forever.
MAX_TICKS_PER_ADVANCE: Final = 10_000


class CoreMachine(RuleBasedStateMachine):
    """The pure core, three simulated plugs and a broker, under hypothesis' control."""

    core: Core

    def __init__(self) -> None:
        """Empty state; :meth:`boot` builds the core from drawn limits."""
        super().__init__()
        self.mono = 1000.0
        self.wall = START_WALL
        self.connected = False
        self.shut_down = False
        self.plugs: dict[str, SimPlug] = {}
        self.inflight: deque[InFlight] = deque()
        self.retained: dict[str, bytes] = {}
        self.on_commands: dict[str, int] = {}
        #: Journal rows the history has not acknowledged yet, oldest first (their ONs wait).
        self.journal: list[str] = []
        #: When redlight last published OFF to each panel's plug.
        self.last_off: dict[str, float] = {}
        self.bound = 0.0
        self.max_on = 0.0
        self.found = 0.0
        #: The longest relay window seen, as a fraction of the bound (hypothesis pushes it up).
        self.worst = 0.0
        self.latency = 0.0
        self.subscriptions: list[str] = []

    # ------------------------------------------------------------ set-up

    @initialize(
        max_on=st.sampled_from([20, 60]),
        cooldown=st.sampled_from([0, 5]),
        daily_max=st.sampled_from([None, 100]),
        confirm=st.sampled_from([1.0, 2.0]),
        relays=st.lists(st.booleans(), min_size=3, max_size=3),
    )
    def boot(
        self, max_on: int, cooldown: int, daily_max: int | None, confirm: float, relays: list[bool]
    ) -> None:
        """Plugs in any state (one may have come back ON after a power cut), then connect."""
        counter = iter(range(1, 1_000_000))
        config = machine_config(max_on, cooldown, daily_max, confirm)
        self.core = Core(config, new_id=lambda: f"s{next(counter)}")
        routines = Routines(config, self.core)
        # Commands reach the core through the controller, as in the daemon.
        self.controller = Controller(
            config, self.core, routines, Schedules(config, self.core, routines)
        )
        self.subscriptions = self.core.subscriptions()
        # Reports reach redlight at most confirm_timeout after the plug sent them, so an ON
        # report can arrive on either side of the confirmation deadline.
        self.latency = confirm
        # The bound proven (see the module docstring): max_on + the report latency, which is
        # confirm_timeout. A pending OFF retry waits at most MAX_OFF_RETRY_S, within max_on.
        assert max_on >= MAX_OFF_RETRY_S
        self.bound = max_on + self.latency
        self.max_on = float(max_on)
        # An ON found after an outage is off within a round trip of the plug's return (its
        # announcement, the question it prompts, the answer), at the next poll if it announced
        # nothing but had been seen to go, or at the next OFF retry if it ignored OFFs.
        self.found = max(POLL_S, MAX_OFF_RETRY_S) + 2 * self.latency
        for panel, on in zip(PANELS, relays, strict=True):
            firmware = machine_firmware(config.panels[panel].plug)
            firmware.set_relay(on, self.mono)  # its power-on state; nobody hears of it
            self.plugs[panel] = SimPlug(panel, firmware, self.mono if on else None)
        self._connect()

    # ------------------------------------------------------------ the clock

    @property
    def now(self) -> Now:
        """Both clocks."""
        return Now(self.mono, self.wall)

    def _move_to(self, mono: float) -> None:
        assert mono >= self.mono
        self.wall += timedelta(seconds=mono - self.mono)
        self.mono = mono
        self.check_relays()
        self.check_off_retries()

    def _tick(self) -> None:
        self._apply(self.core.tick(self.now))
        wake = self.core.next_wakeup()
        # No lost deadline: after a tick, nothing the core waits for is already due.
        assert wake is None or wake > self.mono, (wake, self.mono)

    # ------------------------------------------------------------ the broker

    def _matches(self, topic: str) -> bool:
        return any(topic_matches_sub(sub, topic) for sub in self.subscriptions)

    def _publish(self, topic: str, payload: str | bytes, retain: bool) -> None:
        """Someone other than redlight publishes: plugs, Home Assistant, a stray client."""
        data = payload.encode() if isinstance(payload, str) else payload
        if retain:
            if data:
                self.retained[topic] = data
            else:
                self.retained.pop(topic, None)
        if self.connected and self._matches(topic):
            # MQTT 3.1.1 (what redlight speaks): live deliveries carry retain = 0.
            self.inflight.append(InFlight(self.mono, topic, data, retain=False))
        for plug in self.plugs.values():
            if plug.firmware.hears(topic):
                self._plug_receives(plug, topic, data)

    def _connect(self) -> None:
        self.connected = True
        self._health()
        # The runtime subscribes first, so retained messages queue before the connect effects.
        for topic, data in self.retained.items():
            if self._matches(topic):
                self.inflight.append(InFlight(self.mono, topic, data, retain=True))
        self._apply(self.core.connect(self.now))
        self._tick()

    def _deliver(self, *, duplicate: bool = False) -> None:
        message = self.inflight.popleft()
        for _ in range(2 if duplicate else 1):
            effects = self._apply(
                self.controller.receive(message.topic, message.payload, message.retain, self.now)
            )
            if message.retain:
                # Safety rule 7: nothing retained turns anything on (a retained plug state
                # that says ON is watched as an external session, which is fine).
                assert not any(
                    isinstance(e, SessionOpened) and e.source != "external" for e in effects
                )
            self._tick()

    def _deliver_due(self) -> None:
        while self.inflight and self.inflight[0].sent_at + self.latency <= self.mono:
            self._deliver()

    # ------------------------------------------------------------ the plugs

    def _health(self) -> None:
        for plug in self.plugs.values():
            controllable = self.connected and plug.responsive and not plug.away
            if not controllable:
                plug.controllable_since = None
            elif plug.controllable_since is None:
                plug.controllable_since = self.mono

    def _set_relay(self, plug: SimPlug, on: bool) -> None:
        """Switch the relay by hand or by a power cut; the caller reports what the plug says."""
        self._relay_moved(plug, plug.on, on)
        plug.firmware.set_relay(on, self.mono)

    def _relay_moved(self, plug: SimPlug, was_on: bool, on: bool) -> None:
        """Bookkeeping of the ON intervals and exposures, as the relay goes from was_on to on."""
        if on and not was_on:
            plug.on_since = self.mono
            # redlight's gaps are measured between its own ends and starts, which lag the
            # relay's by up to the latency each: a shorter gap here is the same exposure there.
            if self.mono - plug.exposure_end >= MIN_OFF_S - self.latency:
                plug.exposure_s, plug.exposure_count, plug.exposure_clean = 0.0, 0, True
            plug.exposure_count += 1
            plug.interval_seen = False
            if plug.controllable_since is None:
                plug.exposure_clean = False
        elif not on and was_on and plug.on_since is not None:
            plug.exposure_s += self.mono - plug.on_since
            plug.exposure_end = self.mono
            if plug.controllable_since is None or plug.controllable_since > plug.on_since:
                plug.exposure_clean = False  # out of redlight's reach for part of it
            if not plug.interval_seen:
                # A blip whose reports were lost (or an instant between two steps): redlight
                # cannot count light it never heard of; the single-ON bounds cover it.
                plug.exposure_clean = False
        if not on:
            plug.on_since = None
            plug.unannounced = False

    def _plug_receives(self, plug: SimPlug, topic: str, payload: bytes) -> None:
        if not plug.responsive or plug.away:
            return
        outcome = plug.firmware.receive(topic, payload, self.mono)
        self._relay_moved(plug, outcome.was_on, outcome.on)
        self._report(plug, list(outcome.reports))

    def _report(self, plug: SimPlug, publications: list[Message]) -> None:
        if plug.away:
            return  # nothing queues it: lost
        for message in publications:
            self._publish(message.topic, message.payload, message.retain)

    def _retained_commands(self, plug: SimPlug) -> list[str]:
        """Retained topics the plug subscribes to: the broker sends them when it is back."""
        return [topic for topic in self.retained if plug.firmware.hears(topic)]

    def _plug_of_command(self, topic: str) -> SimPlug | None:
        for plug in self.plugs.values():
            if plug.firmware.hears(topic):
                return plug
        return None

    # ------------------------------------------------------------ what the core returned

    def _apply(self, effects: list[Effect]) -> list[Effect]:
        """Check the effect list, then carry out its messages as the runtime would."""
        check_plug_commands_first(effects)
        for effect in effects:
            if isinstance(effect, Event) and (
                effect.event_type == "session_resumed"
                or (effect.event_type == "session_extended" and "failsafe_s" in effect.fields)
            ):
                # A resume lights the next stretch with one ON; an extension re-arms the plug's
                # timer with one timed ON: each for one command, never a keepalive.
                self.on_commands[effect.fields["session"]] -= 1
        for effect in effects:
            if isinstance(effect, SessionOpened) and effect.source != "external":
                # Safety rule 6: a session starts only while connected.
                assert self.connected, "a session opened while disconnected"
                self.on_commands[effect.id] = 0
                self.journal.append(effect.id)
            if isinstance(effect, Event):
                event(effect.event_type)
            if isinstance(effect, Resubscribe) and self.connected:
                # Subscribing again: the broker re-sends what is retained there.
                for topic, data in list(self.retained.items()):
                    if any(topic_matches_sub(f, topic) for f in effect.topics):
                        self.inflight.append(InFlight(self.mono, topic, data, retain=True))
            if not isinstance(effect, Message):
                continue
            data = effect.payload_bytes()
            # Safety rule 7: a retained message is redlight's own state, or a clearing.
            assert not effect.retain or not data or is_own_state_topic(effect.topic), effect
            plug = self._plug_of_command(effect.topic)
            if plug is not None and plug.firmware.action(effect.topic, data) == "on":
                # Safety rule 6: every ON belongs to a session opened with it, one ON each (and
                # one more for each resume or extension, counted above).
                assert self.connected, "an ON while disconnected"
                # Safety rule 8: it is the panel's current session, and its journal row went
                # out before it (acknowledged, or waited for as long as the core waits).
                current = self.core.panels[plug.panel].session
                assert current is not None, f"an ON without a session: {effect}"
                assert current.id in self.on_commands, f"an ON without a new session: {effect}"
                self.on_commands[current.id] += 1
                assert self.on_commands[current.id] <= 1
            if not self.connected:
                continue  # the adapter drops what cannot be published (QoS 0, never late)
            if plug is not None and plug.firmware.action(effect.topic, data) == "off":
                self.last_off[plug.panel] = self.mono
            if effect.retain:
                if data:
                    self.retained[effect.topic] = data
                else:
                    self.retained.pop(effect.topic, None)
            if plug is not None:
                self._plug_receives(plug, effect.topic, data)
        return effects

    # ------------------------------------------------------------ invariants

    @invariant()
    def check_relays(self) -> None:
        """No relay is on longer than the bound since it turned on or became controllable.

        And counted from the real ON, not from when it became controllable: at most the bound,
        unless it was out of reach longer, and then it is off within ``found`` of coming back
        (an ON hidden by an outage ends at once). A plug that came back from being away while
        on and announced nothing at all is found only by a poll: ``POLL_S`` more.
        """
        for plug in self.plugs.values():
            if not plug.on or plug.controllable_since is None:
                continue
            assert plug.on_since is not None
            since = max(plug.on_since, plug.controllable_since)
            bound = self.bound + (POLL_S + self.latency if plug.unannounced else 0.0)
            self.worst = max(self.worst, (self.mono - since) / bound)
            assert self.mono - since <= bound + 1e-9, (
                f"{plug.panel} on for {self.mono - since:.3f}s > {bound}s "
                f"(on since {plug.on_since}, controllable since {plug.controllable_since})"
            )
            if plug.unannounced:
                continue
            self.check_exposure(plug)
            on_for = self.mono - plug.on_since
            back_for = self.mono - plug.controllable_since
            assert on_for <= self.bound + 1e-9 or back_for <= self.found + 1e-9, (
                f"{plug.panel} on for {on_for:.3f}s > {self.bound}s, and reachable again "
                f"for {back_for:.3f}s > {self.found}s"
            )

    def check_exposure(self, plug: SimPlug) -> None:
        """Safety rule 1 on light: an exposure lasts at most max_on, plus the latency by which
        each of its ON intervals can precede what redlight counts (a report on its way)."""
        assert plug.on_since is not None
        panel = self.core.panels[plug.panel]
        if panel.session is not None or panel.exposure.stray_at is not None:
            plug.interval_seen = True
        if plug.controllable_since is None or plug.controllable_since > plug.on_since:
            plug.exposure_clean = False
        if not plug.exposure_clean:
            return
        total = plug.exposure_s + self.mono - plug.on_since
        bound = self.max_on + plug.exposure_count * self.latency
        assert total <= bound + 1e-9, (
            f"{plug.panel}: an exposure of {total:.3f}s in {plug.exposure_count} ON intervals "
            f"> {bound:.3f}s"
        )

    @invariant()
    def check_session_on_time(self) -> None:
        """Safety rule 1 through extensions and pauses: a session's on-time in all, pauses not
        counted, is planned within max_on and never runs past its plan."""
        if not hasattr(self, "core"):
            return
        for panel in self.core.panels.values():
            for session in (panel.session, panel.paused):
                if session is not None:
                    assert session.duration_s <= self.max_on + 1e-9, session
                    assert session.elapsed(self.mono) <= session.duration_s + 1e-9, session

    @invariant()
    def check_off_retries(self) -> None:
        """Safety rule 4: while an OFF is unconfirmed it is re-sent at least every 10 s."""
        if not self.connected:
            return  # nothing can be sent; connect() repeats it at once
        for panel_id, panel in self.core.panels.items():
            if panel.off_pending:
                waited = self.mono - self.last_off.get(panel_id, -math.inf)
                assert waited <= MAX_OFF_RETRY_S + 1e-9, f"{panel_id}: no OFF for {waited:.3f}s"

    @invariant()
    def check_timers(self) -> None:
        """The core's heap of due times agrees with a scan of every panel, after every step."""
        if not hasattr(self, "core"):
            return
        panels = self.core.panels.values()
        scanned: list[float] = []
        for panel in panels:
            armed = self.core.armed(panel.id)
            scanned.extend(armed.values())
            check_state_and_timers(panel, armed, connected=self.connected)
        if self.core.board.daemon_state_due is not None:  # a rate-limited <b>/state
            scanned.append(self.core.board.daemon_state_due)
        assert self.core.next_wakeup() == min(scanned, default=None)
        overdue = any(
            self.mono >= self.core.armed(p.id).get(TimerKind.CONFIRM_ON, math.inf) for p in panels
        )
        assert self.core.confirmation_due(self.now) == overdue
        running = [p.id for p in panels if p.session is not None or p.paused is not None]
        assert self.core.running() == running
        if self.connected and self.core.board.daemon_state_due is None:
            # Rate-limited, never lost: Home Assistant's count is right once nothing is pending.
            published = json.loads(self.retained[f"{BASE}/state"])
            assert published["running"] == self.core.running()

    def teardown(self) -> None:
        """Steer the search towards runs where a relay stays on for long."""
        target(self.worst, label="longest relay window / bound")

    # ------------------------------------------------------------ rules: commands

    def _command(self, topic: str, payload: str | bytes) -> None:
        data = payload.encode() if isinstance(payload, str) else payload
        self._apply(self.controller.receive(topic, data, False, self.now))
        self._tick()

    @precondition(lambda self: self.connected)
    @rule(message=COMMANDS)
    def command(self, message: tuple[str, str | bytes]) -> None:
        """A command arrives: mostly starts (valid, over the ceiling, doses), stops, garbage."""
        topic, payload = message
        data = payload.encode() if isinstance(payload, str) else payload
        self._apply(self.controller.receive(topic, data, False, self.now))
        self._tick()

    @rule(
        panel=st.sampled_from(PANELS),
        seconds=st.one_of(st.none(), st.floats(min_value=0, max_value=120)),
        source=st.sampled_from(["schedule", "routine", None]),
    )
    def scheduler(self, panel: str, seconds: float | None, source: Any) -> None:
        """A schedule or routine starts (or stops) a session through the API, even offline."""
        if source is None:
            self._apply(self.core.stop(panel, self.now))
        else:
            request = cmd.Start(duration_s=seconds)
            self._apply(self.controller.start(panel, request, source, self.now))
        self._tick()

    @rule(
        panel=st.sampled_from(PANELS),
        seconds=st.sampled_from([5.0, 10.0, 15.0]),
        times=st.integers(min_value=2, max_value=4),
        hand=st.booleans(),
    )
    def back_to_back(self, panel: str, seconds: float, times: int, hand: bool) -> None:
        """Sessions one right after another, or the plug's button right after one: with no
        OFF time between, it is all one exposure (the ceiling is on light, not sessions)."""
        for _ in range(times):
            if hand:
                self.hand_switch(panel, on=True)
            else:
                request = cmd.Start(duration_s=seconds)
                self._apply(self.controller.start(panel, request, "cli", self.now))
                self._tick()
            self.advance(seconds + 2 * self.latency, 0, ticks_first=False)

    @rule(
        topic=st.sampled_from(
            [f"{BASE}/panel/{p}/set" for p in PANELS]
            + [f"{BASE}/set", "cmnd/panel_left/POWER", "zigbee2mqtt/Panel plug right/set"]
            + ["sauna/panel/set"]
        ),
        payload=st.sampled_from(["ON", "OFF", '{"action": "start"}', '{"state": "ON"}', "1"]),
        retain=st.booleans(),
    )
    def stray_publish(self, topic: str, payload: str, retain: bool) -> None:
        """Another client publishes a command, retained or not, on redlight's or a plug's topic.

        On a plug's own topic this is Home Assistant switching the plug entity directly.
        """
        self._publish(topic, payload, retain=retain)

    # ------------------------------------------------------------ rules: the plugs

    @precondition(lambda self: self.connected)
    @rule(
        data=st.data(),
        actions=st.lists(
            st.tuples(
                st.sampled_from(["extend", "pause", "resume"]),
                st.integers(min_value=1, max_value=30),
                st.sampled_from([0.0, 0.5, 2.0, 10.0, 31.0]),
            ),
            min_size=1,
            max_size=4,
        ),
    )
    def control(self, data: st.DataObject, actions: list[tuple[str, int, float]]) -> None:
        """A session redlight started (one is started if there is none) is extended, paused
        or resumed a few times, with time passing and plugs answering between (a command to
        a random panel seldom meets a session)."""
        panels = self.own_sessions()
        if panels:
            panel = data.draw(st.sampled_from(panels))
        else:
            panel = data.draw(st.sampled_from(PANELS))
            self._apply(self.controller.start(panel, cmd.Start(duration_s=20.0), "cli", self.now))
            if self.journal:
                self.journal_written()
        for action, by, wait in actions:
            body: dict[str, Any] = {"action": action} | ({"by": by} if action == "extend" else {})
            self._command(f"{BASE}/panel/{panel}/set", json.dumps(body))
            self.advance(wait, wall_jump_h=0, ticks_first=False)

    def own_sessions(self) -> list[str]:
        """The panels with a session redlight started, running or paused."""
        panels = self.core.panels.values()
        return [
            p.id
            for p in panels
            if p.paused is not None or (p.session is not None and p.session.source != "external")
        ]

    @rule(panel=st.sampled_from(PANELS), on=st.booleans())
    def hand_switch(self, panel: str, on: bool) -> None:
        """The plug's button (works even when the plug ignores MQTT commands); it reports."""
        plug = self.plugs[panel]
        self._set_relay(plug, on)
        self._report(plug, plug.firmware.telemetry() + plug.firmware.report())

    @rule(panel=st.sampled_from(PANELS))
    def telemetry(self, panel: str) -> None:
        """Periodic telemetry: the current state, stale if a command crosses it."""
        plug = self.plugs[panel]
        self._report(plug, plug.firmware.telemetry())

    @rule(data=st.data(), panel=st.sampled_from(PANELS), online=st.booleans())
    def availability(self, data: st.DataObject, panel: str, online: bool) -> None:
        """An availability topic (plug LWT, Zigbee bridge) says online or offline."""
        plug = self.plugs[panel]
        topic, ups, downs = data.draw(st.sampled_from(plug.firmware.availability))
        self._publish(topic, data.draw(st.sampled_from(ups if online else downs)), True)

    @rule(panel=st.sampled_from(PANELS))
    def plug_goes_deaf(self, panel: str) -> None:
        """The plug stops acting on commands (hung, Wi-Fi half down)."""
        self.plugs[panel].responsive = False
        self._health()

    @precondition(lambda self: any(not p.responsive for p in self.plugs.values()))
    @rule(data=st.data())
    def plug_recovers(self, data: st.DataObject) -> None:
        """The plug is back: it re-announces itself and gets retained commands again."""
        plug = data.draw(st.sampled_from([p for p in self.plugs.values() if not p.responsive]))
        plug.responsive = True
        self._health()
        for topic, ups, _ in plug.firmware.availability[:1]:
            self._publish(topic, ups[0], True)
        self._report(plug, plug.firmware.telemetry())
        for topic in self._retained_commands(plug):
            if topic in self.retained:
                self._plug_receives(plug, topic, self.retained[topic])

    @rule(
        panel=st.sampled_from(PANELS),
        seconds=st.sampled_from([1.0, 5.0, 15.0, 30.0, 90.0]),
        switched=st.sampled_from([True, True, False, None]),
        will=st.booleans(),
        broker_too=st.booleans(),
        announce=st.sampled_from(["nothing", "availability", "availability", "state"]),
    )
    def outage(
        self,
        panel: str,
        seconds: float,
        switched: bool | None,
        will: bool,
        broker_too: bool,
        announce: str,
    ) -> None:
        """The plug drops off the broker (Wi-Fi, a reboot, the broker restarting, then redlight
        is back first and its question is lost); meanwhile its button may switch it (nobody
        hears of it); then it comes back saying ``online`` (Tasmota, Zigbee2MQTT), its state too
        (ESPHome, Shelly Gen1), or nothing at all (the least helpful firmware)."""
        plug = self.plugs[panel]
        plug.away = True
        self._health()
        if will:  # the broker publishes the plug's will (not when it is the one restarting)
            topic, _, downs = plug.firmware.availability[0]
            self._publish(topic, downs[0], True)
        if broker_too and self.connected:
            self.disconnect()
        self.advance(seconds / 2, 0, ticks_first=False)
        if switched is not None:
            self._set_relay(plug, switched)
        if broker_too and not self.connected:
            self.reconnect()
        self.advance(seconds / 2, 0, ticks_first=True)
        plug.away = False
        plug.unannounced = announce == "nothing" and plug.on
        self._health()
        if announce != "nothing":
            for topic, ups, _ in plug.firmware.availability[:1]:
                self._publish(topic, ups[0], True)
        if announce == "state":
            self._report(plug, plug.firmware.telemetry())
        for topic in self._retained_commands(plug):
            if topic in self.retained:
                self._plug_receives(plug, topic, self.retained[topic])

    # ------------------------------------------------------------ rules: broker and time

    @precondition(lambda self: self.inflight)
    @rule(count=st.integers(min_value=1, max_value=4), duplicate=st.booleans())
    def deliver(self, count: int, duplicate: bool) -> None:
        """The broker delivers the oldest messages in flight (QoS 1 may deliver one twice)."""
        for _ in range(min(count, len(self.inflight))):
            self._deliver(duplicate=duplicate)
            duplicate = False

    @precondition(lambda self: bool(self.journal))
    @rule()
    def journal_written(self) -> None:
        """The history acknowledges the oldest journal row (or never does: the core's bounded
        wait sends the ON all the same)."""
        self._apply(self.controller.journaled(self.journal.pop(0), self.now))
        self._tick()

    @precondition(lambda self: self.connected)
    @rule()
    def disconnect(self) -> None:
        """redlight loses the broker; what was in flight to it is lost."""
        self.connected = False
        self.inflight.clear()
        self._health()
        self._apply(self.core.disconnect(self.now))
        self._tick()

    @precondition(lambda self: not self.connected)
    @rule()
    def reconnect(self) -> None:
        """redlight is back: it re-subscribes (retained messages arrive) and re-asks."""
        self._connect()

    @rule(
        seconds=ADVANCES,
        wall_jump_h=st.sampled_from([0, 0, 0, 3, -3]),
        ticks_first=st.booleans(),
    )
    def advance(self, seconds: float, wall_jump_h: int, ticks_first: bool) -> None:
        """Time passes (the wall clock may step by hours); the core is woken when it asks."""
        self.wall += timedelta(hours=wall_jump_h)
        target = self.mono + seconds
        for _ in range(MAX_TICKS_PER_ADVANCE):
            wake = self.core.next_wakeup()
            due = self.inflight[0].sent_at + self.latency if self.inflight else None
            moments = [t for t in (wake, due) if t is not None and t <= target]
            if not moments:
                break
            self._move_to(max(min(moments), self.mono))
            if ticks_first:
                self._tick()
                self._deliver_due()
            else:
                self._deliver_due()
                self._tick()
        else:
            raise AssertionError("the core asks to be woken again and again at one instant")
        self._move_to(target)
        self._tick()

    @precondition(lambda self: not self.shut_down)
    @rule()
    def shutdown(self) -> None:
        """SIGTERM: every session ends and every panel is switched off."""
        self.shut_down = True
        self._apply(self.core.shutdown(self.now))


def check_state_and_timers(panel: Panel, armed: dict[TimerKind, float], *, connected: bool) -> None:
    """A panel's named state, its session and its timers agree: each timer exists exactly
    while the state it belongs to lasts."""
    with_session = {Relay.JOURNALING, Relay.ON_REQUESTED, Relay.ON}
    assert (panel.session is not None) == (panel.relay in with_session), panel.relay
    assert (TimerKind.DEADLINE in armed) == (panel.session is not None), (panel.relay, armed)
    assert (TimerKind.JOURNAL in armed) == (panel.relay is Relay.JOURNALING), (panel.relay, armed)
    assert (TimerKind.CONFIRM_ON in armed) == (panel.relay is Relay.ON_REQUESTED), armed
    if connected and panel.off_pending:
        assert TimerKind.OFF_RETRY in armed, (panel.relay, armed)  # safety rule 4
    if panel.relay in (Relay.OFF, Relay.UNKNOWN):
        assert panel.watching == (panel.relay is Relay.OFF), (panel.relay, panel.watching)
    if panel.relay is Relay.UNKNOWN or panel.relay is Relay.OFF:
        assert TimerKind.OFF_RETRY not in armed, armed
    # A paused session waits beside the relay machine, its panel off, for max_pause at most.
    assert (TimerKind.PAUSE_END in armed) == (panel.paused is not None), armed
    if panel.paused is not None:
        assert panel.paused.paused_at is not None
        assert panel.paused.source != "external"


def is_own_state_topic(topic: str) -> bool:
    """redlight's retained state topics: under ``<b>/``, and not a command topic."""
    return topic.startswith(BASE + "/") and not topic.endswith("/set")


def check_plug_commands_first(effects: list[Effect]) -> None:
    """Plug commands (and the journal entry of an ON) come before anything else."""
    seen_other: Effect | None = None
    for effect in effects:
        to_plug = (
            isinstance(effect, Message) and not effect.retain and not effect.topic.startswith(BASE)
        )
        # Priority is the message's own property: everything sent to a plug is urgent.
        assert not to_plug or (isinstance(effect, Message) and effect.urgent), effect
        plug_command = isinstance(effect, Message) and effect.urgent
        if plug_command:
            assert seen_other is None, f"{effect} comes after {seen_other}"
        elif not isinstance(effect, SessionOpened):
            seen_other = effect
        if isinstance(effect, Event) and effect.event_type == "command_rejected":
            assert effect.fields["message"]
            assert effect.fields["reason"]


def test_no_panel_stays_on_past_the_bound_in_any_interleaving() -> None:
    """Whatever happens, a relay is off within max_on + confirm_timeout of being controllable."""
    run_state_machine_as_test(
        CoreMachine,
        settings=settings(
            max_examples=150,
            stateful_step_count=60,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
