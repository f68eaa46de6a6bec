"""The broker port: what redlight needs from an MQTT connection, and the events it delivers.

Two adapters implement it: :mod:`redlight.mqtt` (paho-mqtt, a real broker) and
:mod:`redlight.membroker` (an in-memory broker for tests and the demo). Everything above this
port sees only these values, never a library's types or exceptions.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, TypeAlias


@dataclass(frozen=True, slots=True)
class Message:
    """One MQTT message to publish: built by pure functions, published only by an adapter."""

    topic: str
    payload: str | bytes
    retain: bool = False
    qos: int = 0

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
class Received:
    """A message arrived on a subscribed topic."""

    topic: str
    payload: bytes
    retain: bool = False


BrokerEvent: TypeAlias = Connected | Disconnected | Received
EventSink: TypeAlias = Callable[[BrokerEvent], None]

#: QoS for plug commands. QoS 0 is never queued by paho while disconnected and never
#: re-sent after a reconnect, so an ON can never arrive late (safety rule 6); delivery is
#: confirmed end to end by the plug's state report instead (safety rule 4).
COMMAND_QOS: Final = 0
#: QoS for redlight's own retained state and for subscriptions.
STATE_QOS: Final = 1


class BrokerError(Exception):
    """A broker connection could not be set up (bad URL, unreadable TLS file, ...)."""


class BrokerClient(abc.ABC):
    """A connection to an MQTT broker, owned by one asyncio task.

    Events are delivered to the sink on the event loop's thread, in order. The adapter owns
    reconnection (with backoff) and never delivers a message published while disconnected.
    """

    @abc.abstractmethod
    def start(self, sink: EventSink) -> None:
        """Begin connecting; from now on events go to ``sink`` on the event loop."""

    @abc.abstractmethod
    def publish(self, message: Message) -> bool:
        """Publish now; ``False`` (and nothing queued) when not connected."""

    @abc.abstractmethod
    def subscribe(self, topics: Sequence[str]) -> None:
        """Subscribe to topic filters (QoS 1); a no-op while disconnected."""

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
