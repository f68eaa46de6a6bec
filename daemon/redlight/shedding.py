"""What the daemon sheds under load: repeated rejections, and junk commands past a bound.

A flood of bad commands must not cost more than a trickle: each rejection would otherwise be
two events and a log line, all queued ahead of whatever comes next. Pure and clocked by the
caller (monotonic seconds), like the core, so it is tested in virtual time.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Final, TypeAlias

from redlight.messages import Event

#: While rejections keep coming for one topic, at most one summary in this many seconds.
REJECTION_SUMMARY_S: Final = 1.0
#: At most one summary of shed commands in this many seconds.
SHED_REPORT_S: Final = 1.0

#: What rejections are coalesced by: the panel (``None``: the daemon-wide topic), and the
#: routine or schedule refused, so a refusal ``redlight routine`` waits for stays its own.
GateKey: TypeAlias = tuple[str | None, str | None]


@dataclass(slots=True)
class _Window:
    """One topic's rejections: the first went out; how many since, and the latest of them."""

    until: float
    suppressed: int = 0
    latest: Event | None = None


class RejectionGate:
    """``command_rejected`` events, coalesced per topic (panel, or the daemon-wide one).

    A caller may split a topic further with the ``key`` of :meth:`admit` (by routine, say).

    The first rejection goes out at once. Further ones within :data:`REJECTION_SUMMARY_S` are
    held back; when that second is over, the latest of them goes out with ``suppressed``: how
    many rejections had no event of their own, itself included. A rejection that carries a
    ``request_id`` always goes out on its own: someone (``redlight start``) waits for it.
    """

    def __init__(self, interval: float = REJECTION_SUMMARY_S) -> None:
        """No rejection seen yet."""
        self._interval = interval
        self._windows: dict[GateKey, _Window] = {}
        # The earliest window end: due() runs after every message, and returns at once
        # until then.
        self._earliest = float("inf")

    def admit(self, event: Event, mono: float, key: str | None = None) -> bool:
        """Whether to publish (and log) this rejection now; if not, it is counted."""
        if "request_id" in event.fields:
            return True
        gate_key = (event.panel, key)
        window = self._windows.get(gate_key)
        if window is None or (mono >= window.until and not window.suppressed):
            self._open(gate_key, mono)
            return True
        window.suppressed += 1
        window.latest = event
        return False

    def due(self, mono: float) -> list[Event]:
        """The summaries whose second is over (each starts a new second for its topic)."""
        if mono < self._earliest:
            return []
        out: list[Event] = []
        for key, window in list(self._windows.items()):
            if mono < window.until:
                continue
            if window.latest is None:
                del self._windows[key]  # a quiet second: the next rejection goes out at once
                continue
            fields = dict(window.latest.fields) | {"suppressed": window.suppressed}
            out.append(replace(window.latest, fields=fields))
            self._windows[key] = _Window(mono + self._interval)
        self._earliest = min((w.until for w in self._windows.values()), default=float("inf"))
        return out

    def _open(self, key: GateKey, mono: float) -> None:
        self._windows[key] = _Window(mono + self._interval)
        self._earliest = min(self._earliest, mono + self._interval)

    def next_wakeup(self) -> float | None:
        """When the next summary is due, if one is pending."""
        pending = [w.until for w in self._windows.values() if w.latest is not None]
        return min(pending) if pending else None


class ShedCounter:
    """Counts what was shed and says when to report it: at once, then once a second."""

    def __init__(self, interval: float = SHED_REPORT_S) -> None:
        """Nothing shed yet."""
        self._interval = interval
        self._count = 0
        self._report_at: float | None = None
        #: Everything shed since the start.
        self.total = 0

    def shed(self, mono: float) -> int:
        """One more was shed; the count to report now (0 while a report waits)."""
        self._count += 1
        self.total += 1
        if self._report_at is None or mono >= self._report_at:
            return self._take(mono)
        return 0

    def due(self, mono: float) -> int:
        """The count to report now that its second is over, or 0."""
        if self._count and self._report_at is not None and mono >= self._report_at:
            return self._take(mono)
        return 0

    def next_wakeup(self) -> float | None:
        """When the pending count is to be reported, if there is one."""
        return self._report_at if self._count else None

    def _take(self, mono: float) -> int:
        count, self._count = self._count, 0
        self._report_at = mono + self._interval
        return count


__all__ = ["RejectionGate", "ShedCounter"]
