"""Bare paho clients: the observer (in Home Assistant's seat) and one responder for every plug.

Every receive time is taken with :func:`time.perf_counter` first thing in paho's callback, and
every send time right before ``publish``: one monotonic clock for all of the benchmark's
threads. The observer keeps only counters and per-panel lists that its callback updates, so a
waiter's predicate is O(1) and the benchmark stays light next to the daemon it measures.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

#: Each simulated panel's generic plug: commands on ``<prefix>/<panel>/set``, reports on
#: ``<prefix>/<panel>/state`` (plain ``ON``/``OFF``).
PLUG_PREFIX: Final = "bench/plug"
#: The floor's own topics: a command the responder answers with a state message.
FLOOR_CMD: Final = "bench/floor/cmd"
FLOOR_STATE: Final = "bench/floor/state"
BASE: Final = "redlight"
DISCOVERY_PREFIX: Final = "homeassistant/device/"
CONNECT_TIMEOUT_S: Final = 10.0


class BenchError(RuntimeError):
    """Something the benchmark waited for did not happen in time."""


def plug_command_topic(panel: str) -> str:
    """Where redlight sends ``panel``'s plug commands."""
    return f"{PLUG_PREFIX}/{panel}/set"


def plug_state_topic(panel: str) -> str:
    """Where ``panel``'s plug reports its relay."""
    return f"{PLUG_PREFIX}/{panel}/state"


def _connect(
    client_id: str,
    port: int,
    subscriptions: Sequence[str],
    on_message: Callable[[paho.Client, Any, paho.MQTTMessage], None],
) -> paho.Client:
    """A connected paho client (QoS 0 subscriptions acknowledged), its network thread running."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311)
    subscribed = threading.Event()

    def on_subscribe(
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        subscribed.set()

    client.on_message = on_message
    client.on_subscribe = on_subscribe
    client.connect("127.0.0.1", port, keepalive=60)
    # paho leaves Nagle's algorithm on. The benchmark's own clients turn it off, so that a
    # report sent unprompted is not held back waiting for the ACK of the one before it: the
    # figures are redlight's, not the benchmark's. (redlight's and mosquitto's are as shipped.)
    sock = client.socket()
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client.subscribe([(topic, 0) for topic in subscriptions])
    client.loop_start()
    if not subscribed.wait(CONNECT_TIMEOUT_S):
        client.loop_stop()
        raise BenchError(f"{client_id} could not subscribe on port {port}")
    return client


def _close(client: paho.Client) -> None:
    client.disconnect()
    client.loop_stop()


@dataclass(slots=True)
class PanelView:
    """What the observer saw of one panel: plug commands and redlight's state reports."""

    commands: list[tuple[float, bytes]] = field(default_factory=list)
    #: ``(seen at, plug, has a session)`` for each retained state redlight published.
    states: list[tuple[float, str, bool]] = field(default_factory=list)
    idle: bool = False


@dataclass(slots=True)
class Wave:
    """Concurrent sessions being timed: when each panel's ON and then its OFF were seen."""

    members: frozenset[str]
    on: dict[str, float] = field(default_factory=dict)
    off: dict[str, float] = field(default_factory=dict)
    #: Each member's ``session_finished`` reason (``completed`` when its deadline ended it).
    reasons: dict[str, str] = field(default_factory=dict)


class Record:
    """What the benchmark's clients saw, shared by them under one lock; waiters block on it."""

    def __init__(self, panels: Iterable[str]) -> None:
        """Empty views of ``panels``."""
        self._cond = threading.Condition()
        self.panels: dict[str, PanelView] = {panel: PanelView() for panel in panels}
        self.idle_count = 0
        self.status: list[tuple[float, bytes]] = []
        self.discovery_topics: set[str] = set()
        self.discovery_last = 0.0
        #: Every non-empty discovery config seen, repeats included.
        self.discovery_count = 0
        self.floor: dict[bytes, float] = {}
        self.finished: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.wave: Wave | None = None

    def wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        """Block until ``predicate()`` holds (evaluated under the lock)."""
        with self._cond:
            if not self._cond.wait_for(predicate, timeout):
                raise BenchError(f"timed out after {timeout:g} s waiting for {what}")

    def start_wave(self, panels: Iterable[str]) -> Wave:
        """Begin timing the ON and the following OFF of ``panels``."""
        with self._cond:
            self.wave = Wave(frozenset(panels))
            return self.wave

    def end_wave(self) -> None:
        """Stop timing the wave."""
        with self._cond:
            self.wave = None

    def event_counts(self) -> tuple[dict[str, int], dict[str, int]]:
        """``session_finished`` events by reason, ``command_rejected`` events by reason."""
        with self._cond:
            return dict(self.finished), dict(self.rejected)

    def observed(self, at: float, topic: str, payload: bytes) -> None:
        """A message the observer received at ``at``."""
        with self._cond:
            if topic.startswith(f"{BASE}/panel/"):
                self._panel_state(topic.split("/")[2], at, payload)
            elif topic == f"{BASE}/status":
                self.status.append((at, payload))
            elif topic == f"{BASE}/event":
                self._event(payload)
            elif topic.startswith(DISCOVERY_PREFIX):
                if payload:
                    self.discovery_topics.add(topic)
                    self.discovery_last = at
                    self.discovery_count += 1
            elif topic == FLOOR_STATE:
                self.floor[payload] = at
            self._cond.notify_all()

    def plug_command(self, at: float, panel: str, payload: bytes) -> None:
        """A command the plugs' responder received at ``at``."""
        with self._cond:
            view = self.panels.get(panel)
            if view is None:
                return
            view.commands.append((at, payload))
            wave = self.wave
            if wave is not None and panel in wave.members:
                if payload == b"ON" and panel not in wave.on:
                    wave.on[panel] = at
                elif payload == b"OFF" and panel in wave.on and panel not in wave.off:
                    wave.off[panel] = at
            self._cond.notify_all()

    def _event(self, payload: bytes) -> None:
        body = json.loads(payload)
        if body.get("event_type") == "session_finished":
            reason = str(body.get("reason"))
            self.finished[reason] += 1
            panel = str(body.get("panel"))
            if self.wave is not None and panel in self.wave.members:
                self.wave.reasons[panel] = reason
        elif body.get("event_type") == "command_rejected":
            self.rejected[str(body.get("reason"))] += 1

    def _panel_state(self, panel: str, at: float, payload: bytes) -> None:
        view = self.panels.get(panel)
        if view is None or not payload:
            return
        body = json.loads(payload)
        plug = str(body.get("plug"))
        session = body.get("session") is not None
        view.states.append((at, plug, session))
        idle = plug == "off" and not session
        if idle != view.idle:
            self.idle_count += 1 if idle else -1
            view.idle = idle


class Observer:
    """In Home Assistant's seat: publishes commands, watches redlight's states and events."""

    def __init__(self, port: int, record: Record) -> None:
        """Connect and subscribe to redlight's states, status and events, and discovery."""
        self.record = record
        self.client = _connect(
            "bench-observer",
            port,
            [
                f"{BASE}/panel/+/state",
                f"{BASE}/status",
                f"{BASE}/event",
                f"{DISCOVERY_PREFIX}+/config",
                FLOOR_STATE,
            ],
            self._on_message,
        )

    def close(self) -> None:
        """Disconnect."""
        _close(self.client)

    def publish(self, topic: str, payload: str | bytes) -> float:
        """Publish at QoS 0, as Home Assistant sends commands; the time just before."""
        at = time.perf_counter()
        self.client.publish(topic, payload, qos=0)
        return at

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        at = time.perf_counter()
        self.record.observed(at, message.topic, bytes(message.payload))


class Responder:
    """In every plug's seat at once (and in the floor's plug's), on one connection.

    A command ``ON``/``OFF`` on ``bench/plug/<panel>/set`` is recorded with its arrival time,
    then answered with the same word on ``bench/plug/<panel>/state``, as a generic plug does; a
    floor command is echoed back on :data:`FLOOR_STATE`. The plug commands are timed here,
    where a plug would receive them, on a connection that (like a real plug's) carries little
    besides commands. Much lighter than one simulated plug and connection per panel.
    """

    def __init__(self, port: int, record: Record) -> None:
        """Connect and subscribe to every plug command."""
        self.record = record
        self.client = _connect(
            "bench-plugs", port, [f"{PLUG_PREFIX}/+/set", FLOOR_CMD], self._on_message
        )

    def close(self) -> None:
        """Disconnect."""
        _close(self.client)

    def report(self, panel: str, word: str) -> float:
        """The plug reports its relay unasked (a button press); the time just before."""
        at = time.perf_counter()
        self.client.publish(plug_state_topic(panel), word, qos=0)
        return at

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        at = time.perf_counter()
        if message.retain:
            return  # a real plug would act on it; redlight clears such leftovers (rule 7)
        topic = message.topic
        if topic == FLOOR_CMD:
            client.publish(FLOOR_STATE, message.payload, qos=0)
            return
        panel = topic[len(PLUG_PREFIX) + 1 : -len("/set")]
        payload = bytes(message.payload)
        self.record.plug_command(at, panel, payload)
        word = payload.strip().upper()
        if word in (b"ON", b"OFF"):
            client.publish(f"{topic[:-4]}/state", word, qos=0)
