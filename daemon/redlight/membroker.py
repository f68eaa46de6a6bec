"""An in-memory MQTT broker: the broker port without a network, for fast tests and the demo.

It behaves like a persistent mosquitto with clean sessions: retained messages survive a broker
outage, subscriptions do not survive a reconnect, a dropped client's last will is published, and
a clean stop sends no will. Like the paho adapter, a client sends an urgent message at once and
normal ones through an :class:`~redlight.broker.Outbox`, :data:`~redlight.broker.UNWRITTEN_LIMIT`
of them per loop iteration (the model of a connection that writes that many packets at a time),
so an urgent message overtakes normal ones still waiting. Made with ``protocol="5"`` it models
MQTT 5's Retain As Published and No Local on command subscriptions (see
:meth:`~redlight.broker.BrokerClient.subscribe`); it keeps no session for an offline client, so
a message expiry has nothing to expire and is ignored. Every event reaches a client's sink
through ``loop.call_soon``, never synchronously, so ordering is that of the loop and no caller
is re-entered. No threads and no sleeps: it runs as well under virtual time (``looptime``) as
under real time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from paho.mqtt.client import topic_matches_sub

from redlight.broker import (
    UNWRITTEN_LIMIT,
    BrokerClient,
    BrokerEvent,
    Connected,
    Disconnected,
    EventSink,
    Message,
    Outbox,
    Received,
)
from redlight.config import MqttProtocol

MessagePredicate = Callable[[Message], bool]


class RetainedMessages(dict[str, bytes]):
    """Retained payloads by topic; ``retained(topic)`` is the payload, or ``None``."""

    def __call__(self, topic: str) -> bytes | None:
        """The retained payload on ``topic``, or ``None`` when there is none."""
        return self.get(topic)


@dataclass(slots=True)
class _Waiter:
    """A pending :meth:`MemoryBroker.next`."""

    topic_filter: str
    predicate: MessagePredicate | None
    future: asyncio.Future[Message]


class MemoryBroker:
    """An MQTT broker in memory, with fault injection (client drops, broker outages)."""

    def __init__(self, protocol: MqttProtocol = "5") -> None:
        """An empty broker that is up; its clients speak ``protocol`` (the daemon's default,
        5, unless a test says otherwise)."""
        self.protocol: MqttProtocol = protocol
        #: Retained payloads by topic, kept across :meth:`stop`/:meth:`start`.
        self.retained = RetainedMessages()
        #: Everything the broker accepted, in order, as (publishing client id, message);
        #: a will is logged under the id of the client that dropped.
        self.published: list[tuple[str, Message]] = []
        self._clients: dict[str, MemoryClient] = {}
        self._waiters: list[_Waiter] = []
        self._up = True

    @property
    def up(self) -> bool:
        """Whether the broker accepts connections (see :meth:`stop` and :meth:`start`)."""
        return self._up

    def client(self, client_id: str, will: Message | None = None) -> MemoryClient:
        """A new client of this broker; it connects when started."""
        return MemoryClient(self, client_id, will)

    def messages_on(self, topic_filter: str) -> list[Message]:
        """Every accepted message whose topic matches the filter, in order."""
        return [m for _, m in self.published if topic_matches_sub(topic_filter, m.topic)]

    def next(
        self, topic_filter: str, predicate: MessagePredicate | None = None
    ) -> asyncio.Future[Message]:
        """A future for the next message accepted from now on that matches filter and predicate.

        The waiter is registered when this is called, not when it is awaited, so a message
        published right after the call is never missed.
        """
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._waiters.append(_Waiter(topic_filter, predicate, future))
        return future

    # -- fault injection -------------------------------------------------------------------

    def disconnect(self, client_id: str) -> None:
        """Drop one client's connection as a network fault would: its will is published.

        The client hears ``Disconnected`` and reconnects on the next loop iteration (hearing
        ``Connected``, with no subscriptions) unless the broker is down by then.
        """
        client = self._clients.get(client_id)
        if client is None or not client.connected:
            raise ValueError(f"client {client_id!r} is not connected")
        client._lose_connection("network drop")
        if client.will is not None:
            self._accept(client_id, client.will)
        client._schedule_connect()

    def stop(self) -> None:
        """Take the broker down: every client hears ``Disconnected``; wills go nowhere."""
        self._up = False
        for client in list(self._clients.values()):
            if client.connected:
                client._lose_connection("broker down")

    def start(self) -> None:
        """Bring the broker back: every started client reconnects, with no subscriptions."""
        self._up = True
        for client in list(self._clients.values()):
            client._schedule_connect()

    # -- used by MemoryClient ----------------------------------------------------------------

    def _register(self, client: MemoryClient) -> None:
        """Add a started client; a client already using the id is taken over, as in MQTT.

        The previous client hears ``Disconnected`` and does not reconnect (its id is taken).
        """
        previous = self._clients.get(client.client_id)
        if previous is not None and previous is not client and previous.connected:
            previous._lose_connection("session taken over")
        self._clients[client.client_id] = client

    def _unregister(self, client: MemoryClient) -> None:
        if self._clients.get(client.client_id) is client:
            del self._clients[client.client_id]

    def _accept(self, client_id: str, message: Message) -> None:
        """Store, log and route one message (the broker is up, the sender connected)."""
        payload = message.payload_bytes()
        stored = Message(message.topic, payload, retain=message.retain, qos=message.qos)
        self.published.append((client_id, stored))
        if message.retain:
            if payload:
                self.retained[message.topic] = payload
            else:
                # MQTT: an empty retained payload deletes the retained message.
                self.retained.pop(message.topic, None)
        for client in list(self._clients.values()):
            if not client.connected:
                continue
            matching = client._matching(message.topic)
            if not matching:
                continue
            # MQTT 5 subscription options (only ever set on 5): one copy per client, as
            # mosquitto sends when subscriptions overlap.
            if client is self._clients.get(client_id) and all(matching):
                continue  # No Local: the sender does not hear itself on its command filters
            # Live delivery carries the retain flag only with Retain As Published, like mosquitto.
            retain = message.retain and any(matching)
            client._deliver(Received(message.topic, payload, retain=retain))
        self._notify_waiters(stored)

    def _notify_waiters(self, message: Message) -> None:
        pending: list[_Waiter] = []
        for waiter in self._waiters:
            if waiter.future.done():
                continue
            if topic_matches_sub(waiter.topic_filter, message.topic) and (
                waiter.predicate is None or waiter.predicate(message)
            ):
                waiter.future.set_result(message)
            else:
                pending.append(waiter)
        self._waiters = pending


class MemoryClient(BrokerClient):
    """One client of a :class:`MemoryBroker`; events reach its sink through ``call_soon``."""

    def __init__(self, broker: MemoryBroker, client_id: str, will: Message | None) -> None:
        """A client that is not started yet; use :meth:`MemoryBroker.client`."""
        self.client_id = client_id
        self.will = will
        self._broker = broker
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sink: EventSink | None = None
        self._connected = False
        self._stopped = False
        #: Subscribed filters, each with whether it has MQTT 5's command options (see
        #: :meth:`subscribe`): Retain As Published and No Local.
        self._subscriptions: dict[str, bool] = {}
        self._outbox = Outbox()
        self._writing = False
        #: Normal messages dropped at the outbox's bound, in all.
        self.dropped = 0

    def start(self, sink: EventSink) -> None:
        """Connect; ``Connected`` arrives on a later loop iteration, never during this call."""
        self._loop = asyncio.get_running_loop()
        self._sink = sink
        self._stopped = False
        self._broker._register(self)
        self._schedule_connect()

    def publish(self, message: Message) -> bool:
        """Publish; ``False`` and the message is gone when not connected (or dropped).

        An urgent message reaches the broker during this call; a normal one waits in the
        outbox for a later loop iteration.
        """
        if not self.connected:
            return False
        if message.urgent:
            self._broker._accept(self.client_id, message)
            return True
        if not self._outbox.put(message):
            self.dropped += self._outbox.take_dropped()
            return False
        if not self._writing and self._loop is not None:
            self._writing = True
            self._loop.call_soon(self._write)
        return True

    def _write(self) -> None:
        """Send up to :data:`UNWRITTEN_LIMIT` waiting messages; the rest on the next iteration."""
        self._writing = False
        if not self.connected:
            self._outbox.clear()
            return
        for _ in range(UNWRITTEN_LIMIT):
            message = self._outbox.pop()
            if message is None:
                return
            self._broker._accept(self.client_id, message)
        if len(self._outbox) and self._loop is not None:
            self._writing = True
            self._loop.call_soon(self._write)

    def subscribe(self, topics: Sequence[str], *, commands: bool = False) -> None:
        """Subscribe; matching retained messages follow with ``retain=True``.

        On a broker made with ``protocol="5"``, ``commands`` filters get Retain As Published
        and No Local; on 3.1.1 the flag changes nothing, as on a real broker.
        """
        if not self.connected:
            return
        options = commands and self._broker.protocol == "5"
        self._subscriptions.update(dict.fromkeys(topics, options))
        for topic, payload in list(self._broker.retained.items()):
            if any(topic_matches_sub(f, topic) for f in topics):
                self._deliver(Received(topic, payload, retain=True))

    def unsubscribe(self, topics: Sequence[str]) -> None:
        """Drop subscriptions."""
        for topic in topics:
            self._subscriptions.pop(topic, None)

    @property
    def connected(self) -> bool:
        """Whether the client is connected right now."""
        return self._connected

    @property
    def subscriptions(self) -> frozenset[str]:
        """The topic filters this connection is subscribed to."""
        return frozenset(self._subscriptions)

    async def stop(self) -> None:
        """Disconnect cleanly (what still waits is sent first): no will, no more events."""
        if self.connected:
            while (message := self._outbox.pop()) is not None:
                self._broker._accept(self.client_id, message)
        self._stopped = True
        self._connected = False
        self._subscriptions.clear()
        self._broker._unregister(self)

    # -- used by MemoryBroker ------------------------------------------------------------------

    def _matching(self, topic: str) -> list[bool]:
        """The command-options flag of each subscribed filter that matches ``topic``."""
        return [o for f, o in self._subscriptions.items() if topic_matches_sub(f, topic)]

    def _deliver(self, event: BrokerEvent) -> None:
        if self._loop is not None:
            self._loop.call_soon(self._dispatch, event)

    def _dispatch(self, event: BrokerEvent) -> None:
        # Events queued before a clean stop are dropped: a stopped client hears nothing.
        if not self._stopped and self._sink is not None:
            self._sink(event)

    def _schedule_connect(self) -> None:
        if self._loop is not None:
            self._loop.call_soon(self._connect)

    def _connect(self) -> None:
        if self._stopped or self._connected or not self._broker.up:
            return
        if self._broker._clients.get(self.client_id) is not self:
            return
        # Clean session: whatever the previous connection subscribed to is gone.
        self._subscriptions.clear()
        self._connected = True
        self._dispatch(Connected())

    def _lose_connection(self, reason: str) -> None:
        self._connected = False
        self._outbox.clear()  # safety rule 6: nothing waits for the next connection
        self._subscriptions.clear()
        self._deliver(Disconnected(reason=reason))


__all__ = ["MemoryBroker", "MemoryClient", "RetainedMessages"]
