"""Broker test kit: a recording event sink for adapter tests (the memory broker and paho
alike), and a paho client of a local broker (also the intruder that takes another's id)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final, TypeVar

from redlight.broker import BrokerEvent, Connected, Disconnected, Received
from redlight.config import MqttProtocol
from redlight.mqtt import PahoClient, TlsOptions

#: Generous bound on every wait: events normally arrive in milliseconds (paho reconnects ~1 s).
WAIT_S: Final = 10.0

E = TypeVar("E", Connected, Disconnected, Received)


class Events:
    """A sink that records every event and lets a test await the next one of a kind."""

    def __init__(self) -> None:
        """No events yet."""
        self.history: list[BrokerEvent] = []
        self._cursor = 0
        self._changed = asyncio.Event()

    def __call__(self, event: BrokerEvent) -> None:
        """Record an event (called by the adapter on the loop)."""
        self.history.append(event)
        self._changed.set()

    async def next(self, kind: type[E], where: Callable[[E], bool] | None = None) -> E:
        """The next unseen event of ``kind`` (matching ``where``), waiting up to WAIT_S."""
        async with asyncio.timeout(WAIT_S):
            while True:
                while self._cursor < len(self.history):
                    event = self.history[self._cursor]
                    self._cursor += 1
                    if isinstance(event, kind) and (where is None or where(event)):
                        return event
                self._changed.clear()
                await self._changed.wait()

    async def message(self, topic: str) -> Received:
        """The next message received on ``topic``."""
        return await self.next(Received, lambda event: event.topic == topic)

    def received(self, prefix: str = "t/") -> list[Received]:
        """Every message received so far under ``prefix``."""
        return [e for e in self.history if isinstance(e, Received) and e.topic.startswith(prefix)]


def paho_client(
    port: int,
    client_id: str,
    *,
    username: str | None = None,
    password: str | None = None,
    tls: TlsOptions | None = None,
    protocol: MqttProtocol = "3.1.1",
) -> PahoClient:
    """A client of a broker on 127.0.0.1, without a will.

    With the daemon's client id it is the intruder of the client-id conflict tests: the broker
    drops whoever held the id, and each side's reconnect drops the other.
    """
    return PahoClient(
        host="127.0.0.1",
        port=port,
        client_id=client_id,
        will=None,
        username=username,
        password=password,
        tls=tls,
        protocol=protocol,
    )
