"""The broker port's contract, run against the in-memory broker and paho with a real mosquitto.

Whatever the runtime may rely on is stated here once; both adapters must pass it. "Nothing was
delivered" is always proven with a barrier: a later message on the same path that did arrive.
"""

from __future__ import annotations

import abc
import asyncio
import itertools
import socket
from collections.abc import AsyncIterator, Sequence
from typing import Final

import pytest

from redlight.broker import (
    STATE_QOS,
    UNWRITTEN_LIMIT,
    BrokerClient,
    Connected,
    Disconnected,
    Message,
    Received,
)
from redlight.config import MqttProtocol
from redlight.membroker import MemoryBroker, MemoryClient
from redlight.mqtt import PahoClient
from tests.brokerkit import Events
from tests.mosquitto import MosquittoBroker

#: Where clients check that their own subscriptions are live; outside the ``t/`` test tree.
SYNC_ROOT: Final = "sync"


class Peer:
    """A started client with its recorded events."""

    def __init__(self, client_id: str, client: BrokerClient) -> None:
        """Wrap a client that is not started yet."""
        self.client_id = client_id
        self.client = client
        self.events = Events()
        self._syncs = itertools.count()

    async def start(self) -> None:
        """Start and wait for ``Connected``."""
        self.client.start(self.events)
        await self.events.next(Connected)

    async def subscribe(self, filters: Sequence[str], *, commands: bool = False) -> None:
        """Subscribe and wait until the broker has applied it (proven by an echo)."""
        if commands:
            # The sync topic stays a plain subscription: No Local would swallow its echo.
            self.client.subscribe(filters, commands=True)
            filters = []
        self.client.subscribe([*filters, f"{SYNC_ROOT}/{self.client_id}"])
        await self.sync()

    async def sync(self) -> None:
        """Wait until the broker processed everything this client sent before.

        A broker handles one connection's packets in order, so the echo of our own message on
        our own sync topic comes back only after all earlier publishes and subscriptions.
        """
        topic = f"{SYNC_ROOT}/{self.client_id}"
        payload = str(next(self._syncs)).encode()
        assert self.client.publish(Message(topic, payload, qos=STATE_QOS))
        await self.events.next(Received, lambda e: e.topic == topic and e.payload == payload)

    async def barrier(self, observer: Peer, topic: str = "t/barrier") -> None:
        """Publish a barrier on ``topic`` and wait until ``observer`` has it."""
        assert self.client.publish(Message(topic, b"barrier", qos=STATE_QOS))
        await observer.events.next(Received, lambda e: e.topic == topic and e.payload == b"barrier")


class Adapter(abc.ABC):
    """Builds clients of one broker implementation and injects its faults."""

    def __init__(self, protocol: MqttProtocol) -> None:
        """No clients yet; they speak ``protocol``."""
        self.peers: list[Peer] = []
        self.protocol: MqttProtocol = protocol

    @abc.abstractmethod
    def make_client(self, client_id: str, will: Message | None) -> BrokerClient:
        """A new, unstarted client."""

    @abc.abstractmethod
    def drop(self, peer: Peer) -> None:
        """Break one client's connection as a network fault would (no DISCONNECT packet)."""

    @abc.abstractmethod
    async def broker_down(self) -> None:
        """Stop the broker."""

    @abc.abstractmethod
    async def broker_up(self) -> None:
        """Start the broker again (same address, retained messages kept)."""

    def peer(self, client_id: str, will: Message | None = None) -> Peer:
        """A new, unstarted peer."""
        peer = Peer(client_id, self.make_client(client_id, will))
        self.peers.append(peer)
        return peer

    async def connected_peer(self, client_id: str, will: Message | None = None) -> Peer:
        """A new peer that is connected."""
        peer = self.peer(client_id, will)
        await peer.start()
        return peer

    async def close(self) -> None:
        """Stop every client."""
        for peer in self.peers:
            await peer.client.stop()


class MemoryAdapter(Adapter):
    """The in-memory broker."""

    def __init__(self, protocol: MqttProtocol) -> None:
        """A fresh broker whose clients speak ``protocol``."""
        super().__init__(protocol)
        self.broker = MemoryBroker(protocol)

    def make_client(self, client_id: str, will: Message | None) -> BrokerClient:
        """A memory client."""
        return self.broker.client(client_id, will=will)

    def drop(self, peer: Peer) -> None:
        """The broker's own fault injection."""
        assert isinstance(peer.client, MemoryClient)
        self.broker.disconnect(peer.client.client_id)

    async def broker_down(self) -> None:
        """Take the memory broker down."""
        self.broker.stop()

    async def broker_up(self) -> None:
        """Bring it back."""
        self.broker.start()


class MosquittoAdapter(Adapter):
    """paho clients of a private mosquitto."""

    def __init__(self, broker: MosquittoBroker, protocol: MqttProtocol) -> None:
        """Clients of ``broker``, which is running, speaking ``protocol``."""
        super().__init__(protocol)
        self.broker = broker

    def make_client(self, client_id: str, will: Message | None) -> BrokerClient:
        """A paho client without credentials or TLS."""
        return PahoClient(
            host="127.0.0.1",
            port=self.broker.port,
            client_id=client_id,
            will=will,
            username=None,
            password=None,
            tls=None,
            protocol=self.protocol,
        )

    def drop(self, peer: Peer) -> None:
        """Shut paho's TCP socket down: mosquitto sees a dead link, not a DISCONNECT."""
        assert isinstance(peer.client, PahoClient)
        sock = peer.client._client.socket()
        assert isinstance(sock, socket.socket)
        sock.shutdown(socket.SHUT_RDWR)

    async def broker_down(self) -> None:
        """SIGTERM mosquitto and wait for it to exit (off the loop: it blocks)."""
        await asyncio.to_thread(self.broker.stop)

    async def broker_up(self) -> None:
        """Start mosquitto on the same port and wait until it listens."""
        await asyncio.to_thread(self.broker.start)


@pytest.fixture(
    params=[
        "memory-3.1.1",
        "memory-5",
        pytest.param("mosquitto-3.1.1", marks=pytest.mark.integration),
        pytest.param("mosquitto-5", marks=pytest.mark.integration),
    ]
)
async def adapter(request: pytest.FixtureRequest) -> AsyncIterator[Adapter]:
    """Each broker implementation on each protocol in turn; clients stopped afterwards."""
    kind, protocol = request.param.split("-")
    assert protocol in ("5", "3.1.1")
    built: Adapter
    if kind == "memory":
        built = MemoryAdapter(protocol)
    else:
        built = MosquittoAdapter(request.getfixturevalue("mosquitto"), protocol)
    try:
        yield built
    finally:
        await built.close()


async def test_connected_is_delivered_after_start(adapter: Adapter) -> None:
    """Starting a client delivers Connected later on the loop, never during start()."""
    peer = adapter.peer("alice")
    peer.client.start(peer.events)
    assert peer.events.history == []
    await peer.events.next(Connected)
    assert peer.client.connected


async def test_published_message_reaches_subscriber_without_retain_flag(adapter: Adapter) -> None:
    """A message published while connected reaches a subscriber once, with retain False."""
    alice = await adapter.connected_peer("alice")
    bob = await adapter.connected_peer("bob")
    await alice.subscribe(["t/x"])

    assert bob.client.publish(Message("t/x", "hello"))
    assert bob.client.publish(Message("t/x", b"state", retain=True, qos=STATE_QOS))
    await bob.barrier(alice, "t/x")

    assert alice.events.received() == [
        Received("t/x", b"hello", retain=False),
        Received("t/x", b"state", retain=False),
        Received("t/x", b"barrier", retain=False),
    ]


async def test_retained_message_is_delivered_on_subscribe_and_cleared_by_empty(
    adapter: Adapter,
) -> None:
    """A retained message arrives on subscribe with retain True; an empty retained one clears it."""
    bob = await adapter.connected_peer("bob")
    await bob.subscribe([])
    assert bob.client.publish(Message("t/r", "on", retain=True, qos=STATE_QOS))
    await bob.sync()

    alice = await adapter.connected_peer("alice")
    await alice.subscribe(["t/r"])
    assert alice.events.received() == [Received("t/r", b"on", retain=True)]

    assert bob.client.publish(Message("t/r", b"", retain=True, qos=STATE_QOS))
    await bob.sync()
    carol = await adapter.connected_peer("carol")
    await carol.subscribe(["t/r"])  # the echo that ends this proves nothing came before it
    assert carol.events.received() == []


async def test_a_live_retained_command_keeps_its_flag_on_5_only(adapter: Adapter) -> None:
    """Retain As Published: on MQTT 5 a command filter hears a live retained message as retained.

    Safety rule 7 then recognises it and clears it. MQTT 3.1.1 has no such option: there it
    arrives unflagged, the documented 3.1.1 limitation. Plain filters are unflagged on both.
    """
    alice = await adapter.connected_peer("alice")
    bob = await adapter.connected_peer("bob")
    await alice.subscribe(["t/cmd"], commands=True)
    await alice.subscribe(["t/plain"])

    assert bob.client.publish(Message("t/cmd", "ON", retain=True, qos=STATE_QOS))
    assert bob.client.publish(Message("t/plain", "ON", retain=True, qos=STATE_QOS))
    await bob.barrier(alice, "t/cmd")

    assert alice.events.received() == [
        Received("t/cmd", b"ON", retain=adapter.protocol == "5"),
        Received("t/plain", b"ON", retain=False),
        Received("t/cmd", b"barrier", retain=False),
    ]


async def test_a_command_filter_does_not_echo_the_subscriber_on_5(adapter: Adapter) -> None:
    """No Local: on MQTT 5 a client does not hear its own messages on its command filters.

    On 3.1.1 it does; plain filters echo on both (the contract's sync relies on it).
    """
    alice = await adapter.connected_peer("alice")
    bob = await adapter.connected_peer("bob")
    await alice.subscribe(["t/cmd"], commands=True)

    assert alice.client.publish(Message("t/cmd", "OFF", urgent=True))
    await alice.sync()  # the broker has routed alice's OFF before bob's barrier
    await bob.barrier(alice, "t/cmd")

    own = [Received("t/cmd", b"OFF")] if adapter.protocol == "3.1.1" else []
    assert alice.events.received() == [*own, Received("t/cmd", b"barrier")]


async def test_wildcard_filters_match_like_mqtt(adapter: Adapter) -> None:
    """``+`` matches one level and ``#`` the parent and every level below it."""
    alice = await adapter.connected_peer("alice")
    bob = await adapter.connected_peer("bob")
    await alice.subscribe(["t/+/state", "t/deep/#"])

    for topic in ["t/1/state", "t/1/other", "t/deep/a/b", "t/deep", "t/x/y/state", "t/deeper"]:
        assert bob.client.publish(Message(topic, topic))
    await bob.barrier(alice, "t/barrier/state")

    assert [e.topic for e in alice.events.received()] == [
        "t/1/state",
        "t/deep/a/b",
        "t/deep",
        "t/barrier/state",
    ]


async def test_many_filters_are_subscribed_at_once(adapter: Adapter) -> None:
    """Hundreds of filters in one call are all subscribed (the adapter may split packets)."""
    alice = await adapter.connected_peer("alice")
    bob = await adapter.connected_peer("bob")
    await alice.subscribe([f"t/n/{i}" for i in range(250)])

    assert bob.client.publish(Message("t/n/0", "first"))
    await bob.barrier(alice, "t/n/249")
    assert [e.topic for e in alice.events.received()] == ["t/n/0", "t/n/249"]


async def test_will_is_published_when_a_client_drops(adapter: Adapter) -> None:
    """A dropped connection publishes the client's will; the client then reconnects."""
    alice = await adapter.connected_peer("alice")
    await alice.subscribe(["t/status"])
    will = Message("t/status", "offline", retain=True, qos=STATE_QOS)
    bob = await adapter.connected_peer("bob", will=will)

    adapter.drop(bob)

    assert await alice.events.message("t/status") == Received("t/status", b"offline")
    await bob.events.next(Disconnected)
    await bob.events.next(Connected)
    assert bob.client.connected


async def test_will_is_not_published_on_clean_stop(adapter: Adapter) -> None:
    """stop() disconnects cleanly: no will, and the stopped client hears nothing more."""
    alice = await adapter.connected_peer("alice")
    await alice.subscribe(["t/#"])
    bob = await adapter.connected_peer("bob", will=Message("t/status", "offline", qos=STATE_QOS))

    await bob.client.stop()
    assert not bob.client.connected
    await alice.barrier(alice)

    assert [e.topic for e in alice.events.received()] == ["t/barrier"]
    assert bob.events.history == [Connected()]


async def test_message_published_while_disconnected_is_never_delivered(adapter: Adapter) -> None:
    """Safety rule 6: publish while disconnected returns False and nothing arrives later."""
    alice = await adapter.connected_peer("alice")
    bob = await adapter.connected_peer("bob")
    await alice.subscribe(["t/#"])

    await adapter.broker_down()
    await alice.events.next(Disconnected)
    await bob.events.next(Disconnected)
    assert not bob.client.connected
    assert not bob.client.publish(Message("t/plug/power", "ON", qos=0))
    assert not bob.client.publish(Message("t/plug/power", "ON", qos=1))

    await adapter.broker_up()
    await alice.events.next(Connected)
    await bob.events.next(Connected)
    await alice.subscribe(["t/#"])
    # bob's connection would carry any stale message before this barrier.
    await bob.barrier(alice)

    assert [e.topic for e in alice.events.received()] == ["t/barrier"]


async def test_client_reconnects_after_broker_restart_and_resubscribes(adapter: Adapter) -> None:
    """After a broker restart the client hears Connected again and can subscribe anew."""
    alice = await adapter.connected_peer("alice")
    bob = await adapter.connected_peer("bob")
    await alice.subscribe(["t/x"])
    assert bob.client.publish(Message("t/kept", "retained", retain=True, qos=STATE_QOS))
    await bob.barrier(alice, "t/x")

    await adapter.broker_down()
    await alice.events.next(Disconnected)
    assert not alice.client.connected
    alice.client.subscribe(["t/ignored"])  # a no-op while disconnected, never an error
    await adapter.broker_up()
    await alice.events.next(Connected)
    await bob.events.next(Connected)
    assert alice.client.connected

    await alice.subscribe(["t/x", "t/kept"])
    assert bob.client.publish(Message("t/x", "after"))
    await alice.events.next(Received, lambda e: e.payload == b"after")
    assert alice.events.received()[1:] == [
        Received("t/kept", b"retained", retain=True),
        Received("t/x", b"after"),
    ]


async def test_an_urgent_message_overtakes_normal_ones_still_waiting(adapter: Adapter) -> None:
    """Safety rule 12: an urgent message has at most UNWRITTEN_LIMIT earlier ones ahead of it.

    Normal messages still all arrive, in the order they were published.
    """
    alice = await adapter.connected_peer("alice")
    bob = await adapter.connected_peer("bob")
    await alice.subscribe(["t/#"])

    for n in range(400):
        assert bob.client.publish(Message("t/event", str(n), qos=STATE_QOS))
    assert bob.client.publish(Message("t/plug", "OFF", urgent=True))
    await bob.barrier(alice)

    topics = [e.topic for e in alice.events.received()]
    assert topics.index("t/plug") <= UNWRITTEN_LIMIT
    events = [e.payload for e in alice.events.received() if e.topic == "t/event"]
    assert events == [str(n).encode() for n in range(400)]


async def test_only_the_last_waiting_retained_message_on_a_topic_is_guaranteed(
    adapter: Adapter,
) -> None:
    """Retained messages still waiting on one topic may be coalesced; the last always arrives."""
    alice = await adapter.connected_peer("alice")
    bob = await adapter.connected_peer("bob")
    await alice.subscribe(["t/#"])

    for n in range(300):
        assert bob.client.publish(Message("t/state", str(n), retain=True, qos=STATE_QOS))
    await bob.barrier(alice)

    seen = [int(e.payload) for e in alice.events.received() if e.topic == "t/state"]
    assert seen == sorted(set(seen))  # in order, none twice
    assert seen[-1] == 299
    carol = await adapter.connected_peer("carol")
    await carol.subscribe(["t/state"])
    assert carol.events.received() == [Received("t/state", b"299", retain=True)]
