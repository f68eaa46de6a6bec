"""What a plug says (its relay, its availability, its power), and what redlight does about it.

Each report is matched to the panel's relay machine: an ON confirms the ON that was sent, or
is a stray during a pending OFF, or an ON redlight did not start (a session to watch, safety
rule 2); an OFF confirms a pending OFF, or ends a session switched off at the plug.
"""

from __future__ import annotations

from typing import Final

from redlight.effects import Now
from redlight.panel import Panel, Relay
from redlight.presets import PlugAvailability
from redlight.relay import RelayControl
from redlight.sessions import POWER_ASK_S, POWER_CHECK_S, Sessions
from redlight.timers import TimerKind
from redlight.view import Board, num

#: A plug still passing power this long after it confirmed OFF has a stuck (welded) relay.
STUCK_AFTER_S: Final = 5.0


class PlugReports:
    """Applies each plug report to its panel."""

    def __init__(self, sessions: Sessions, relays: RelayControl, board: Board) -> None:
        """Reports may end or start sessions, answer the relay machine, change the state."""
        self.sessions = sessions
        self.relays = relays
        self.timers = relays.timers
        self.out = relays.out
        self.board = board

    def state(self, panel: Panel, on: bool, now: Now, *, fresh: bool = True) -> None:
        """The plug says its relay is on or off; ``fresh`` unless the broker kept it retained
        (then it is the plug's last word, perhaps from before a gap, not news of now)."""
        self.board.touch(panel)
        self.relays.heard(panel)
        panel.heard = True
        if on:
            panel.power.off_since = None
        else:
            if panel.reported != "off" or panel.power.off_since is None:
                panel.power.off_since = now.mono
            if fresh:
                self.relays.seen_off(panel, now)
        panel.reported = "on" if on else "off"
        if on:
            self._reported_on(panel, now)
        else:
            self._reported_off(panel, now)

    def _reported_on(self, panel: Panel, now: Now) -> None:
        relay = panel.relay
        if relay is Relay.ON_REQUESTED:
            panel.go(Relay.ON)
            self.timers.disarm(panel.index, TimerKind.CONFIRM_ON)
            if panel.power.min_w is not None:
                self.timers.arm(panel.index, TimerKind.POWER_ASK, now.mono + POWER_ASK_S)
                self.timers.arm(panel.index, TimerKind.POWER_CHECK, now.mono + POWER_CHECK_S)
        elif panel.off_pending:
            # An OFF is on its way and re-sent until confirmed; this report may be stale.
            # Once the plug is known not to obey, each ON it reports is news to a person.
            if panel.exposure.stray_at is None:
                panel.exposure.stray_at = now.mono
            if panel.unresponsive:
                self.relays.off_not_obeyed(panel, now)
        elif relay in (Relay.UNKNOWN, Relay.OFF):
            self.sessions.external_on(panel, now)
        # ON, or JOURNALING: already on, or redlight's ON has not gone out yet (this report
        # says nothing of it; the plug's answer to that ON will).

    def _reported_off(self, panel: Panel, now: Now) -> None:
        if panel.off_pending:
            self.relays.off_confirmed(panel, now)
        elif panel.relay is Relay.ON:
            # Switched off by hand, by its own failsafe or by a power cut; OFF is still sent
            # (and confirmed), since a stale report must not leave a panel on unwatched.
            self.sessions.end(panel, now, "external_off")

    def availability(self, panel: Panel, report: PlugAvailability, now: Now) -> None:
        self.board.touch(panel)
        panel.heard = True
        panel.availability[report.topic] = report.online
        # Any availability message means the plug (or its bridge) went away or came back: what
        # it did meanwhile was not seen, even when redlight never saw it go (a dying broker
        # sends no will).
        self.relays.lose_sight(panel)
        if panel.online:
            # Online, changed or not: ask what it is doing, and repeat a pending OFF at once.
            self.relays.send(panel.plug.ask_state())
            if panel.off_pending:
                self.relays.send_off(panel, now)

    def power(self, panel: Panel, watts: float, now: Now) -> None:
        """A power reading: remembered for the check after ON; a stuck relay after OFF."""
        panel.heard = True
        power = panel.power
        assert power.min_w is not None
        power.watts = watts
        power.at = now.mono
        settled = power.off_since is not None and now.mono - power.off_since >= STUCK_AFTER_S
        off = panel.reported == "off" and not panel.off_pending
        if off and settled and watts >= power.min_w and not power.stuck:
            power.stuck = True
            self.out.event(
                "relay_stuck",
                panel.id,
                now.wall,
                power_w=num(watts),
                message=f"the plug of {panel.name} says OFF but still passes {watts:g} W: "
                "its relay may be welded; unplug the panel",
            )
            self.board.touch(panel)
        elif power.stuck and watts < power.min_w:
            power.stuck = False
            self.board.touch(panel)

    def ask_power(self, panel: Panel, now: Now) -> None:
        """Power verification: the plug is asked what the panel draws, a while after ON."""
        if self.relays.connected:
            self.relays.send(panel.plug.ask_power())

    def check_power(self, panel: Panel, now: Now) -> None:
        """A few seconds after ON: a panel that draws too little has its own switch off."""
        session = panel.session
        power = panel.power
        if session is None or power.min_w is None:
            return
        fresh = now.mono - power.at <= POWER_CHECK_S - POWER_ASK_S + 1.0
        if power.watts is None or not fresh:
            self.out.log("warning", "power_unknown", panel=panel.id, session=session.id)
            return
        if power.watts < power.min_w:
            self.sessions.end(panel, now, "no_power")
