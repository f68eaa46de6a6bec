"""The broker port: what redlight needs from an MQTT connection, and the events it delivers.

Two adapters implement it: :mod:`redlight.mqtt` (paho-mqtt, a real broker) and
:mod:`redlight.membroker` (an in-memory broker for tests and the demo). Everything above this
port sees only these values, never a library's types or exceptions.
"""

from __future__ import annotations

import abc
import itertools
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, TypeAlias


@dataclass(frozen=True, slots=True)
class Message:
    """One MQTT message to publish: built by pure functions, published only by an adapter.

    ``urgent`` marks a plug command (safety rule 12): an adapter hands it to the connection at
    once, ahead of every normal message still waiting, however many there are. ``expiry_s``
    asks an MQTT 5 broker to discard the message if it could not deliver it within that many
    seconds (whole seconds on the wire, rounded up; ignored on 3.1.1): how a plug ON is kept
    from arriving late (safety rule 6). Both say how the message is sent, not what it says, so
    they take no part in equality.
    """

    topic: str
    payload: str | bytes
    retain: bool = False
    qos: int = 0
    urgent: bool = field(default=False, compare=False)
    expiry_s: float | None = field(default=None, compare=False)

    def payload_bytes(self) -> bytes:
        """The payload as bytes (text is UTF-8)."""
        return self.payload.encode() if isinstance(self.payload, str) else self.payload


@dataclass(frozen=True, slots=True)
class Connected:
    """The client is connected (again): subscriptions are gone and must be made anew."""


@dataclass(frozen=True, slots=True)
class Disconnected:
    """The connection is lost; the adapter keeps trying to reconnect with backoff."""

    reason: str = ""


@dataclass(frozen=True, slots=True)
class ConnectFailed:
    """A connection attempt failed (refused, unknown host, TLS, credentials), with why; the
    adapter keeps trying with backoff. The daemon waits on; a command-line client gives up."""

    reason: str


@dataclass(frozen=True, slots=True)
class Received:
    """A message arrived on a subscribed topic."""

    topic: str
    payload: bytes
    retain: bool = False


BrokerEvent: TypeAlias = Connected | Disconnected | ConnectFailed | Received
EventSink: TypeAlias = Callable[[BrokerEvent], None]

#: QoS for plug commands. QoS 0 is never queued by paho while disconnected and never
#: re-sent after a reconnect, so an ON can never arrive late (safety rule 6); delivery is
#: confirmed end to end by the plug's state report instead (safety rule 4).
COMMAND_QOS: Final = 0
#: QoS for redlight's own retained state and for subscriptions.
STATE_QOS: Final = 1
#: Normal messages an adapter has on their way at once (handed to the connection and not yet
#: written out, or for QoS 1 not yet acknowledged): an urgent message waits behind at most
#: this many, whatever else is queued. paho itself keeps at most 20 QoS 1 messages in flight.
UNWRITTEN_LIMIT: Final = 20
#: Events (messages not retained) an outbox holds at most; a flood beyond is dropped, counted.
#: Far above a burst's worth (1,000 sessions ending at once are 2,000 event messages), and
#: about 10 MB at most.
OUTBOX_EVENTS: Final = 20_000
#: Retained topics an outbox holds at most (one message each: the last published).
OUTBOX_RETAINED: Final = 10_000


class Outbox:
    """Normal messages waiting for the connection, oldest first; urgent ones never wait here.

    Bounded in memory however fast messages are published. Only the last retained message on a
    topic matters (it is all a subscriber gets when it subscribes later), so a retained message
    replaces one still waiting on its topic and takes its place at the back. Events are kept up
    to :data:`OUTBOX_EVENTS`: beyond, a new one is dropped and counted in :attr:`dropped`.
    """

    def __init__(
        self, events_limit: int = OUTBOX_EVENTS, retained_limit: int = OUTBOX_RETAINED
    ) -> None:
        """An empty outbox."""
        self._events_limit = events_limit
        self._retained_limit = retained_limit
        # Keyed by topic for a retained message, by a sequence number for an event.
        self._waiting: OrderedDict[str | int, Message] = OrderedDict()
        self._numbers = itertools.count()
        self._events = 0
        #: Messages dropped at the bound since :meth:`take_dropped` was last called.
        self.dropped = 0

    def __len__(self) -> int:
        """How many messages wait."""
        return len(self._waiting)

    def put(self, message: Message) -> bool:
        """Queue a normal message; ``False`` when it was dropped at the bound."""
        if message.retain:
            replaced = self._waiting.pop(message.topic, None) is not None
            if not replaced and len(self._waiting) - self._events >= self._retained_limit:
                self.dropped += 1
                return False
            self._waiting[message.topic] = message
            return True
        if self._events >= self._events_limit:
            self.dropped += 1
            return False
        self._events += 1
        self._waiting[next(self._numbers)] = message
        return True

    def pop(self) -> Message | None:
        """The oldest waiting message, or ``None``."""
        if not self._waiting:
            return None
        key, message = self._waiting.popitem(last=False)
        if isinstance(key, int):
            self._events -= 1
        return message

    def clear(self) -> int:
        """Forget everything waiting (the connection is gone); how many there were."""
        count = len(self._waiting)
        self._waiting.clear()
        self._events = 0
        return count

    def take_dropped(self) -> int:
        """The count of dropped messages, reset to zero."""
        count, self.dropped = self.dropped, 0
        return count


class BrokerError(Exception):
    """A broker connection could not be set up (bad URL, unreadable TLS file, ...)."""


class BrokerClient(abc.ABC):
    """A connection to an MQTT broker, owned by one asyncio task.

    Events are delivered to the sink on the event loop's thread, in order. The adapter owns
    reconnection (with backoff) and never delivers a message published while disconnected,
    nor one that was still waiting to go out when the connection dropped.
    """

    @abc.abstractmethod
    def start(self, sink: EventSink) -> None:
        """Begin connecting; from now on events go to ``sink`` on the event loop."""

    @abc.abstractmethod
    def publish(self, message: Message) -> bool:
        """Publish; ``False`` (and nothing queued) when not connected.

        An urgent message goes to the connection at once, ahead of normal messages published
        earlier that still wait (never more than :data:`UNWRITTEN_LIMIT` of them are ahead of
        it). Normal messages go out in order, through an :class:`Outbox`: a retained one may
        replace an earlier one on its topic that had not gone out yet, and an event beyond the
        outbox's bound is dropped (``False``). Whatever still waits when the connection drops
        is forgotten, never sent on the next connection (safety rule 6).
        """

    @abc.abstractmethod
    def subscribe(self, topics: Sequence[str], *, commands: bool = False) -> None:
        """Subscribe to topic filters (QoS 1); a no-op while disconnected.

        ``commands`` marks filters that carry commands: redlight's own command topics and the
        plug command topics it watches for retained commands (safety rule 7). On MQTT 5 they
        are subscribed with Retain As Published, so a retained command published while
        redlight is connected still arrives flagged (to be cleared, never obeyed), and with No
        Local, so redlight does not hear its own plug commands back. MQTT 3.1.1 has neither:
        there the flag changes nothing. Subscribing a filter again replaces its options, so a
        filter is given with the same ``commands`` every time.
        """

    @abc.abstractmethod
    def unsubscribe(self, topics: Sequence[str]) -> None:
        """Drop subscriptions."""

    @property
    @abc.abstractmethod
    def connected(self) -> bool:
        """Whether the client is connected right now."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Disconnect cleanly (the last will is not sent) and stop reconnecting."""
