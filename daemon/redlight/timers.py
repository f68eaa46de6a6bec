"""Every timer of every panel in one heap: what is due next is found in O(log n).

A timer is a (panel, kind) pair with one due time on the monotonic clock. The core arms and
disarms them where its state changes; when one is due, :meth:`Core.tick` looks its kind up in
one table of handlers. The next wake-up is the heap's first entry, so it cannot disagree with
what ``tick`` will do: there is nothing else to keep in step.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from enum import IntEnum


class TimerKind(IntEnum):
    """What a due timer means; on ties, the lower value is handled first."""

    #: The session's end: the panel is switched off (safety rules 1 and 3).
    DEADLINE = 0
    #: The plug has not confirmed ON within ``confirm_timeout`` (rule 4).
    CONFIRM_ON = 1
    #: The plug has not confirmed OFF: send it again, and call the plug unresponsive (rule 4).
    OFF_RETRY = 2
    #: The journal row has not been acknowledged: the ON goes out all the same (rule 12).
    JOURNAL = 3
    #: ``ending_soon`` is announced.
    ENDING_SOON = 4
    #: Power verification: ask the plug for its power, then judge what it said.
    POWER_ASK = 5
    POWER_CHECK = 6
    #: A poll went unanswered: the plug may be away (a gap in redlight's view).
    POLL_ANSWER = 7
    #: Time to ask the plug its state again (``safety.poll_interval``).
    POLL = 8
    #: The cooldown is over: the panel's state reads idle again.
    COOLDOWN_END = 9
    #: A running session's minute is up: its state is published again, so ``today_s`` moves.
    TODAY = 10
    #: A paused session was not resumed within ``safety.max_pause``: it ends.
    PAUSE_END = 11


class Timers:
    """Due times keyed by (panel index, kind), in one heap with lazy removal."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, TimerKind]] = []
        self._at: dict[tuple[int, TimerKind], float] = {}

    def arm(self, index: int, kind: TimerKind, when: float) -> None:
        """Panel ``index`` has ``kind`` due at ``when`` (replacing any earlier arming)."""
        key = (index, kind)
        if self._at.get(key) == when:
            return
        self._at[key] = when
        heapq.heappush(self._heap, (when, index, kind))
        if len(self._heap) > 4 * len(self._at) + 64:
            # Superseded entries are dropped lazily; rebuild before they pile up.
            self._heap = [(at, i, k) for (i, k), at in self._at.items()]
            heapq.heapify(self._heap)

    def disarm(self, index: int, kind: TimerKind) -> None:
        """Panel ``index`` no longer has ``kind`` due."""
        self._at.pop((index, kind), None)

    def due_at(self, index: int, kind: TimerKind) -> float | None:
        """When ``kind`` is due for panel ``index``, if armed."""
        return self._at.get((index, kind))

    def armed(self, index: int) -> dict[TimerKind, float]:
        """Every timer armed for panel ``index`` (for tests and the state invariant)."""
        return {kind: self._at[index, kind] for kind in TimerKind if (index, kind) in self._at}

    def earliest(self) -> float | None:
        """The earliest due time of any timer."""
        heap = self._heap
        while heap:
            when, index, kind = heap[0]
            if self._at.get((index, kind)) == when:
                return when
            heapq.heappop(heap)
        return None

    def pop_due(self, now: float) -> Iterator[tuple[int, TimerKind]]:
        """Disarm and yield the timers due at ``now``, earliest first.

        A generator, so a handler that arms a timer already due (a zero delay) has it
        yielded in the same pass.
        """
        while (first := self.earliest()) is not None and first <= now:
            _, index, kind = heapq.heappop(self._heap)
            del self._at[index, kind]
            yield index, kind

    def any_due(self, now: float, kind: TimerKind) -> bool:
        """Some timer of ``kind`` is due at ``now``: a walk of the heap's due part only."""
        heap = self._heap
        stack = [0] if heap else []
        while stack:
            i = stack.pop()
            when, index, entry_kind = heap[i]
            if when > now:
                continue  # every entry below this one is later still
            if entry_kind is kind and self._at.get((index, kind)) == when:
                return True
            stack.extend(child for child in (2 * i + 1, 2 * i + 2) if child < len(heap))
        return False
