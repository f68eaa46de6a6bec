"""The in-memory broker's own behaviour: its log, fault injection, and helpers for tests."""

from __future__ import annotations

import asyncio

import pytest

from redlight.broker import BrokerEvent, Connected, Disconnected, Message, Received
from redlight.membroker import MemoryBroker, MemoryClient


def started(
    broker: MemoryBroker, client_id: str, will: Message | None = None
) -> tuple[MemoryClient, list[BrokerEvent]]:
    """A started client of ``broker`` and the list its events go to."""
    events: list[BrokerEvent] = []
    client = broker.client(client_id, will=will)
    client.start(events.append)
    return client, events


async def settle() -> None:
    """Let every callback already queued on the loop run (the broker never uses timers)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_connected_arrives_on_a_later_loop_iteration() -> None:
    """start() only schedules the connection: Connected and publishing come after a yield."""
    broker = MemoryBroker()
    client, events = started(broker, "alice")
    assert events == []
    assert not client.connected
    assert not client.publish(Message("t/early", "x"))

    await asyncio.sleep(0)
    assert events == [Connected()]
    assert client.publish(Message("t/late", "x"))
    await settle()
    assert [m.topic for _, m in broker.published] == ["t/late"]


async def test_published_log_keeps_client_ids_order_and_bytes() -> None:
    """Every accepted message is logged in order with its client id, payload as bytes."""
    broker = MemoryBroker()
    alice, _ = started(broker, "alice")
    bob, _ = started(broker, "bob")
    await settle()

    alice.publish(Message("t/a", "text", retain=True, qos=1))
    bob.publish(Message("t/b", b"\x00raw"))
    await settle()

    assert broker.published == [
        ("alice", Message("t/a", b"text", retain=True, qos=1)),
        ("bob", Message("t/b", b"\x00raw")),
    ]
    assert broker.messages_on("t/+") == [m for _, m in broker.published]
    assert broker.messages_on("t/b") == [Message("t/b", b"\x00raw")]


async def test_retained_store_sets_replaces_and_deletes() -> None:
    """Retained payloads are kept per topic and an empty retained payload deletes one."""
    broker = MemoryBroker()
    alice, _ = started(broker, "alice")
    await settle()

    alice.publish(Message("t/r", "one", retain=True))
    alice.publish(Message("t/r", "two", retain=True))
    alice.publish(Message("t/other", "live only"))
    await settle()
    assert broker.retained == {"t/r": b"two"}
    assert broker.retained("t/r") == b"two"

    alice.publish(Message("t/r", "", retain=True))
    await settle()
    assert broker.retained == {}
    assert broker.retained("t/r") is None


async def test_client_receives_its_own_messages_when_subscribed() -> None:
    """Like mosquitto, a publisher subscribed to the topic gets its own message back."""
    broker = MemoryBroker()
    alice, events = started(broker, "alice")
    await settle()
    alice.subscribe(["t/#"])
    alice.publish(Message("t/echo", "hi"))
    assert events == [Connected()]  # delivery is never synchronous
    await settle()
    assert events == [Connected(), Received("t/echo", b"hi")]


async def test_disconnect_publishes_will_and_reconnects_without_subscriptions() -> None:
    """A network drop publishes the will, then Disconnected and Connected, subscriptions gone."""
    broker = MemoryBroker()
    will = Message("t/status", "offline", retain=True, qos=1)
    alice, events = started(broker, "alice", will=will)
    await settle()
    alice.subscribe(["t/#"])

    broker.disconnect("alice")
    assert not alice.connected
    assert broker.published == [("alice", Message("t/status", b"offline", retain=True, qos=1))]
    assert broker.retained("t/status") == b"offline"
    await settle()

    assert events == [Connected(), Disconnected(reason="network drop"), Connected()]
    assert alice.connected
    assert alice.subscriptions == frozenset()


async def test_disconnect_of_an_unknown_or_offline_client_is_an_error() -> None:
    """Fault injection on a client that is not connected is a mistake in the test."""
    broker = MemoryBroker()
    with pytest.raises(ValueError, match="ghost"):
        broker.disconnect("ghost")


async def test_broker_outage_drops_wills_keeps_retained_and_reconnects_on_start() -> None:
    """While down nothing is accepted and no will goes out; on start every client reconnects."""
    broker = MemoryBroker()
    alice, alice_events = started(broker, "alice", will=Message("t/status", "offline"))
    bob, bob_events = started(broker, "bob")
    await settle()
    bob.publish(Message("t/kept", "yes", retain=True))
    await settle()  # out of bob's outbox before the broker goes down
    alice.subscribe(["t/#"])

    broker.stop()
    assert not broker.up
    assert not alice.publish(Message("t/lost", "x"))
    await settle()
    assert alice_events == [
        Connected(),
        Received("t/kept", b"yes", retain=True),
        Disconnected(reason="broker down"),
    ]
    assert bob_events == [Connected(), Disconnected(reason="broker down")]
    assert [m.topic for m in broker.messages_on("#")] == ["t/kept"]

    broker.start()
    await settle()
    assert alice_events[3:] == [Connected()]
    assert bob_events[2:] == [Connected()]
    assert alice.subscriptions == frozenset()
    assert broker.retained == {"t/kept": b"yes"}


async def test_clean_stop_sends_no_will_and_silences_the_client() -> None:
    """stop() publishes no will, drops queued events and the client never reconnects."""
    broker = MemoryBroker()
    alice, events = started(broker, "alice", will=Message("t/status", "offline"))
    bob, _ = started(broker, "bob")
    await settle()
    alice.subscribe(["t/#"])
    bob.publish(Message("t/x", "queued for alice"))

    await alice.stop()
    broker.stop()
    broker.start()
    await settle()

    assert events == [Connected()]
    assert not alice.connected
    assert broker.messages_on("t/status") == []


async def test_a_second_client_with_the_same_id_takes_the_session_over() -> None:
    """As in MQTT, a new connection with a taken client id disconnects the old one for good."""
    broker = MemoryBroker()
    first, first_events = started(broker, "same")
    await settle()
    second, second_events = started(broker, "same")
    await settle()
    broker.stop()
    broker.start()
    await settle()

    assert first_events == [Connected(), Disconnected(reason="session taken over")]
    assert not first.connected
    assert second.connected
    assert second_events == [Connected(), Disconnected(reason="broker down"), Connected()]


async def test_next_resolves_with_the_next_matching_message() -> None:
    """next() waits for a later message matching the filter and the predicate."""
    broker = MemoryBroker()
    alice, _ = started(broker, "alice")
    await settle()
    alice.publish(Message("t/a", "before"))

    waiting = broker.next("t/+", lambda m: m.payload == b"wanted")
    alice.publish(Message("t/a", "other"))
    alice.publish(Message("u/a", "wanted"))
    alice.publish(Message("t/b", "wanted"))

    assert await asyncio.wait_for(waiting, 10) == Message("t/b", b"wanted")


@pytest.mark.looptime
async def test_works_in_virtual_time() -> None:
    """The broker uses no threads or timers, so an hour of virtual time passes instantly."""
    broker = MemoryBroker()
    alice, events = started(broker, "alice")
    await settle()
    alice.subscribe(["t/#"])
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def later() -> None:
        await asyncio.sleep(3600)
        alice.publish(Message("t/hour", "done"))

    task = asyncio.create_task(later())
    message = await asyncio.wait_for(broker.next("t/hour"), 7200)
    await task
    await settle()

    assert message.payload == b"done"
    assert loop.time() - start == pytest.approx(3600)
    assert events[-1] == Received("t/hour", b"done")
