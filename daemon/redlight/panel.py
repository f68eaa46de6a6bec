"""One panel's state: the relay machine, its session, and what the limits remember.

Everything that decides what redlight does with a relay is the named state :class:`Relay`
and the table :data:`TRANSITIONS`; the core changes it only through :meth:`Panel.go`, which
refuses a move the table does not allow. What the plug last *said* (``reported``) and whether
redlight has watched it without a gap since (``watching``) are facts beside the state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Final, Literal

from redlight.presets import Plug

Source = Literal["homeassistant", "cli", "schedule", "routine", "external"]


class Relay(StrEnum):
    """What redlight is doing with a panel's relay."""

    #: Not heard from since a gap in redlight's view (start-up, a disconnect, a silent poll):
    #: it may be on unseen, so no session starts (``plug_state_unknown``).
    UNKNOWN = "unknown"
    #: Reported off, watched without a gap since.
    OFF = "off"
    #: A session is accepted; its journal row is on its way to disk, the ON waits for it.
    JOURNALING = "journaling"
    #: The one ON has been sent (safety rule 6); the plug has yet to confirm it.
    ON_REQUESTED = "on_requested"
    #: On, with a session that ends at its deadline (redlight's own, or an external ON).
    ON = "on"
    #: OFF sent, not yet confirmed; it is re-sent until it is (safety rule 4).
    OFF_PENDING = "off_pending"
    #: OFF sent and missed its confirmation: still re-sent, and the panel reads as a fault.
    UNRESPONSIVE = "unresponsive"


_IDLE: Final = frozenset({Relay.UNKNOWN, Relay.OFF})
_STARTING: Final = frozenset({Relay.JOURNALING, Relay.ON_REQUESTED})
_OFF_SENT: Final = frozenset({Relay.OFF_PENDING, Relay.UNRESPONSIVE})

#: Every move the relay machine can make. An OFF can be sent from any state (and again while
#: pending); a session starts only from a watched idle or a pending OFF; an ON nobody asked for
#: becomes a session only where no OFF is pending (else it is a stray, and the OFF goes on).
TRANSITIONS: Final[Mapping[Relay, frozenset[Relay]]] = {
    Relay.UNKNOWN: frozenset({Relay.OFF, Relay.ON, Relay.OFF_PENDING}),
    Relay.OFF: frozenset({Relay.UNKNOWN, Relay.ON, Relay.OFF_PENDING} | _STARTING),
    Relay.JOURNALING: frozenset({Relay.ON_REQUESTED, Relay.OFF_PENDING}),
    Relay.ON_REQUESTED: frozenset({Relay.ON, Relay.OFF_PENDING}),
    Relay.ON: frozenset({Relay.OFF_PENDING}),
    Relay.OFF_PENDING: frozenset(_IDLE | _OFF_SENT | _STARTING),
    Relay.UNRESPONSIVE: frozenset(_IDLE | {Relay.UNRESPONSIVE}),
}


class IllegalTransition(RuntimeError):
    """The core tried a move :data:`TRANSITIONS` does not allow: a bug, never input."""


@dataclass(slots=True)
class Session:
    """A period in which redlight holds a panel on, or watches an ON it did not start."""

    id: str
    source: Source
    #: When the panel went on for this stretch (the session's start, or its last resume).
    started_mono: float
    #: When the session began, on the wall clock (history, the local day it counts on).
    started_wall: datetime
    #: The session's planned on-time in all, pauses not counted (at most ``max_on``).
    duration_s: float
    request_id: str | None = None
    #: On-time of the stretches before the last pause, and the pauses' length in all.
    on_before_s: float = 0.0
    paused_s: float = 0.0
    #: Since when the session is paused (its panel off), or ``None`` while it runs.
    paused_at: float | None = None

    @property
    def deadline(self) -> float:
        """When the panel must be off, on the monotonic clock."""
        return self.started_mono + self.duration_s - self.on_before_s

    def elapsed(self, mono: float) -> float:
        """Seconds on so far, pauses not counted."""
        if self.paused_at is not None:
            return self.on_before_s
        return self.on_before_s + max(0.0, min(mono, self.deadline) - self.started_mono)

    def remaining(self, mono: float) -> float:
        """On-time still to come."""
        return max(0.0, self.duration_s - self.elapsed(mono))

    def stretch(self, mono: float) -> float:
        """On-time since the last resume (the whole session's, if it was never paused)."""
        return self.elapsed(mono) - self.on_before_s

    def ended_wall(self, mono: float) -> datetime:
        """When the light ended (or ends, if it ended now), on the wall clock (for people)."""
        return self.started_wall + timedelta(seconds=self.paused_s + self.elapsed(mono))


@dataclass(slots=True)
class Exposure:
    """ON time with less than ``min_off`` of OFF between (safety rule 1 on light, not plans).

    ``on_s`` is the exposure's on-time so far and ``end`` when its last ON ended; ``stray_at``
    is an ON the plug reported while an OFF was pending (a press racing the OFF, a stale
    report): lit from then on until the OFF is confirmed.
    """

    min_off_s: float
    on_s: float = 0.0
    end: float = float("-inf")
    stray_at: float | None = None

    def before(self, at: float) -> float:
        """On-time of the exposure that an ON at ``at`` continues (0 after ``min_off`` OFF)."""
        stray = self.stray_at
        last = self.end if stray is None else stray
        chained = self.on_s if last - self.end < self.min_off_s else 0.0
        if stray is not None:
            return chained + max(0.0, at - stray)
        return chained if at - self.end < self.min_off_s else 0.0

    def lit(self, started: float, lit_s: float) -> None:
        """A session that began at ``started`` kept the panel lit for ``lit_s``."""
        self.on_s = self.before(started) + lit_s
        self.end = started + lit_s

    def close_stray(self, now: float) -> None:
        """The stray ON ended (its OFF is confirmed, or a session takes over)."""
        stray = self.stray_at
        if stray is not None:
            self.stray_at = None
            self.on_s = self.before(stray) + (now - stray)
            self.end = now


@dataclass(slots=True)
class Power:
    """Power verification: a panel that draws too little, a relay that passes power when off."""

    min_w: float | None
    watts: float | None = None
    at: float = float("-inf")
    #: Since when the plug has reported OFF (a stuck relay is judged after it settled).
    off_since: float | None = None
    stuck: bool = False


@dataclass(slots=True)
class Panel:
    """Everything the core knows about one panel; only the core mutates it."""

    id: str
    index: int
    name: str
    area: str | None
    plug: Plug
    irradiance: float | None
    default_s: float
    exposure: Exposure
    power: Power
    relay: Relay = Relay.UNKNOWN
    session: Session | None = None
    #: A session paused by its user: the panel is off (``session`` is then ``None``, or an
    #: ON redlight did not start) until it is resumed, stopped, or the pause is too long.
    paused: Session | None = None
    #: What the plug last said of its relay, fresh or retained.
    reported: Literal["on", "off", "unknown"] = "unknown"
    availability: dict[str, bool] = field(default_factory=dict)
    #: The plug has said anything at all since redlight started (its state, availability or
    #: power): one that never has may be unplugged, or on another topic than configured.
    heard: bool = False
    # Blind spots: the last OFF the plug reported, and whether redlight has watched it without
    # a gap since (connected throughout, the plug not re-announced, every poll answered). An ON
    # found after a gap may have been on since that OFF report.
    off_seen_at: float = float("-inf")
    watching: bool = False
    #: The OFF now pending: when it was first sent (``off_not_obeyed`` says how long ago) and
    #: how often it has been re-sent (the retry interval doubles).
    off_requested_at: float = 0.0
    off_attempts: int = 0
    cooldown_until: float = float("-inf")
    cooldown_wall: datetime | None = None
    # The local day whose sessions ``finished_today_s`` counts, and what the day before left
    # when history has not answered for this one yet.
    day: str = ""
    finished_today_s: float = 0.0
    carry_s: float = 0.0

    def go(self, relay: Relay) -> None:
        """Move the relay machine; a move :data:`TRANSITIONS` lacks is a bug."""
        if relay not in TRANSITIONS[self.relay]:
            raise IllegalTransition(f"{self.id}: {self.relay} -> {relay}")
        self.relay = relay

    @property
    def online(self) -> bool:
        """The plug (and its bridge) are not known to be offline."""
        return all(self.availability.values())

    @property
    def off_pending(self) -> bool:
        """An OFF has been sent and not confirmed."""
        return self.relay in _OFF_SENT

    @property
    def unresponsive(self) -> bool:
        """The plug missed a confirmation; its OFF is still being re-sent."""
        return self.relay is Relay.UNRESPONSIVE

    @property
    def idle_state(self) -> Relay:
        """Where a confirmed OFF leaves the relay: off if watched since, else unknown."""
        return Relay.OFF if self.watching else Relay.UNKNOWN

    @property
    def plug_view(self) -> str:
        """The relay as redlight knows it now: ``unknown`` after a gap until the plug reports
        again (no session starts then: ``plug_state_unknown``)."""
        if self.session is None and not self.watching:
            return "unknown"
        return self.reported

    def cooling(self, mono: float) -> bool:
        """Within the cooldown after the last session."""
        return self.cooldown_wall is not None and mono < self.cooldown_until
