"""The runtime's inbox: everything that happened, in one queue, with commands bounded.

Broker events, signals, schedule firings and history answers arrive here and are taken one
at a time by the task that owns all state. Commands (messages on redlight's own ``.../set``
topics) waiting in the queue are bounded: a flood beyond :data:`INBOUND_COMMANDS` is dropped,
counted and logged, so it cannot grow memory without limit. Plug reports, Home Assistant's
birth and everything else always get through.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Final, Generic, TypeVar

import structlog

from redlight.broker import Received
from redlight.shedding import ShedCounter

log = structlog.get_logger("redlight")

#: Commands waiting in the queue at most.
INBOUND_COMMANDS: Final = 1000

T = TypeVar("T")


class Inbox(Generic[T]):
    """One queue of items, the commands among them counted."""

    def __init__(self, base_topic: str, plug_topics: Iterable[str]) -> None:
        """Commands are ``<base_topic>/.../set`` topics that are not a plug's own."""
        self.queue: asyncio.Queue[T] = asyncio.Queue()
        self._prefix = f"{base_topic}/"
        # Plug topics could lie under the base topic too: they are never shed.
        self._plug_topics = frozenset(plug_topics)
        self.commands_waiting = 0
        self.shed = ShedCounter()

    def arrive(self, item: T, mono: float) -> None:
        """Queue ``item``, unless it is a command past the bound.

        Dropping a command is safe: it never reached the core, so it changed nothing; a
        dropped stop leaves the session to end at its deadline, which the core enforces
        whatever arrives (never beyond ``max_on``). INBOUND_COMMANDS waiting commands are junk
        or a runaway client. Plug reports and availability are never dropped (rule 4).
        """
        if isinstance(item, Received) and self._is_command(item.topic):
            if self.commands_waiting >= INBOUND_COMMANDS:
                count = self.shed.shed(mono)
                if count:
                    self.log_shed(count)
                return
            self.commands_waiting += 1
        self.queue.put_nowait(item)

    def put(self, item: T) -> None:
        """Queue an item that is never shed (a signal, a firing, an answer)."""
        self.queue.put_nowait(item)

    def empty(self) -> bool:
        """Nothing is waiting."""
        return self.queue.empty()

    def get_nowait(self) -> T:
        """The next item (the queue must not be empty)."""
        return self._taken(self.queue.get_nowait())

    async def get(self, within: float | None) -> T | None:
        """The next item, or ``None`` if none comes ``within`` seconds."""
        try:
            return self._taken(await asyncio.wait_for(self.queue.get(), within))
        except TimeoutError:
            return None

    def shed_due(self, mono: float) -> None:
        """Log the commands dropped since the last report, when a report is due."""
        count = self.shed.due(mono)
        if count:
            self.log_shed(count)

    def log_shed(self, count: int) -> None:
        """``commands_dropped``: how many, and how many are still waiting."""
        log.warning(
            "commands_dropped",
            count=count,
            waiting=self.commands_waiting,
            total=self.shed.total,
            reason="too many commands waiting",
        )

    def _taken(self, item: T) -> T:
        if isinstance(item, Received) and self._is_command(item.topic):
            self.commands_waiting -= 1
        return item

    def _is_command(self, topic: str) -> bool:
        # Every command filter is ``<base>/.../set``; checked on each message, so kept cheap.
        return (
            topic.endswith("/set")
            and topic.startswith(self._prefix)
            and topic not in self._plug_topics
        )
