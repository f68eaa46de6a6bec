"""Talking to the plugs: the OFF that is confirmed, the polls, and what a gap means.

The transitions of the relay machine (:class:`redlight.panel.Relay`) that concern the plug
itself live here: sending OFF and re-sending it until the plug confirms (safety rule 4),
calling a silent plug unresponsive, polling, and the gaps in redlight's view that make the
relay ``unknown``. Sessions are the core's business; this class never starts or ends one.
"""

from __future__ import annotations

from typing import Final

from redlight.broker import Message
from redlight.durations import format_duration
from redlight.effects import Now, Outbox, Resubscribe
from redlight.panel import Panel, Relay
from redlight.timers import TimerKind, Timers
from redlight.view import num

#: Safety rule 4: an unconfirmed OFF is re-sent at least this often.
MAX_OFF_RETRY_S: Final = 10.0


class RelayControl:
    """Sends the plug commands of the relay machine and keeps its plug timers."""

    def __init__(self, outbox: Outbox, timers: Timers, confirm_s: float, poll_s: float) -> None:
        """Commands go to ``outbox``; ``confirm_s`` and ``poll_s`` come from ``safety``."""
        self.out = outbox
        self.timers = timers
        self.confirm_s = confirm_s
        self.poll_s = poll_s
        self.connected = False

    def send(self, messages: list[Message]) -> None:
        """Plug commands (urgent: the outbox puts them first)."""
        self.out.extend(messages)

    def send_off(self, panel: Panel, now: Now) -> None:
        """Safety rule 4: send OFF and expect the plug's report within confirm_timeout."""
        self.timers.disarm(panel.index, TimerKind.CONFIRM_ON)
        if not panel.off_pending:
            panel.off_attempts = 0
            panel.off_requested_at = now.mono
        panel.go(Relay.UNRESPONSIVE if panel.unresponsive else Relay.OFF_PENDING)
        self.timers.arm(panel.index, TimerKind.OFF_RETRY, now.mono + self._retry_s(panel))
        if self.connected:
            self.send(panel.plug.turn_off())

    def retry_off(self, panel: Panel, now: Now) -> None:
        """The OFF was not confirmed in time: the plug is unresponsive; send it again.

        While disconnected nothing can be sent: :meth:`Core.connect` sends it at once.
        """
        if not self.connected:
            return
        self.unresponsive(panel, now, "off")
        panel.off_attempts += 1
        self.timers.arm(panel.index, TimerKind.OFF_RETRY, now.mono + self._retry_s(panel))
        self.send(panel.plug.turn_off())
        self.send(panel.plug.ask_state())

    def off_confirmed(self, panel: Panel, now: Now) -> None:
        """The plug reported OFF while one was pending."""
        self.timers.disarm(panel.index, TimerKind.OFF_RETRY)
        panel.exposure.close_stray(now.mono)
        if panel.unresponsive:
            self.out.event("plug_recovered", panel.id, now.wall)
        panel.go(panel.idle_state)

    def unresponsive(self, panel: Panel, now: Now, command: str) -> None:
        """A confirmation was missed: a fault to tell a person about (once)."""
        if panel.unresponsive or not self.connected:
            return
        panel.go(Relay.UNRESPONSIVE)
        self.out.event(
            "plug_unresponsive",
            panel.id,
            now.wall,
            command=command,
            online=panel.online,
            message=f"the plug of {panel.name} did not confirm {command.upper()} within "
            f"{format_duration(self.confirm_s)} (no report on {panel.plug.report_topic})",
        )

    def off_not_obeyed(self, panel: Panel, now: Now) -> None:
        """The plug reports ON while its OFF is pending and it has missed a confirmation."""
        waited = now.mono - panel.off_requested_at
        self.out.event(
            "off_not_obeyed",
            panel.id,
            now.wall,
            off_pending_s=num(waited),
            message=f"the plug of {panel.name} reports ON although redlight has sent OFF for "
            f"{format_duration(waited)} without effect; switch it off at the plug",
        )

    def learn_state(self, panel: Panel, now: Now) -> None:
        """Make the plug report now: ask it, or, if it cannot be asked, switch it off (it is
        idle, so "off" is what redlight holds it to) and have the OFF confirmed."""
        asks = panel.plug.ask_state()
        if asks:
            self.send(asks)
        elif not panel.off_pending:
            self.send_off(panel, now)

    def poll(self, panel: Panel, now: Now) -> None:
        """Ask the plug its state on a fixed interval: an ON whose report was lost is found."""
        self.timers.arm(panel.index, TimerKind.POLL, now.mono + self.poll_s)
        if not self.connected:
            return
        asks = panel.plug.ask_state()
        if not asks:
            # A plug that retains its state and takes no query is asked by subscribing again;
            # whether anything is retained is the plug's business, so no answer is expected.
            self.out.add(Resubscribe(tuple(s.topic for s in panel.plug.states)))
            return
        self.send(asks)
        if self.timers.due_at(panel.index, TimerKind.POLL_ANSWER) is None:
            self.timers.arm(panel.index, TimerKind.POLL_ANSWER, now.mono + self.confirm_s)

    def poll_unanswered(self, panel: Panel, now: Now) -> None:
        """A poll went unanswered: the plug may be away, so its next ON may be an old one."""
        if panel.watching:
            self.lose_sight(panel)
            self.out.log("info", "plug_silent", panel=panel.id)

    def heard(self, panel: Panel) -> None:
        """The plug reported its relay: whatever poll was out is answered."""
        self.timers.disarm(panel.index, TimerKind.POLL_ANSWER)

    def seen_off(self, panel: Panel, now: Now) -> None:
        """A fresh OFF report: from here on an ON is reported as it happens, until a gap."""
        panel.off_seen_at = now.mono
        panel.watching = True
        if panel.relay is Relay.UNKNOWN:
            panel.go(Relay.OFF)

    def lose_sight(self, panel: Panel) -> None:
        """A gap in redlight's view (a disconnect, an availability message, a silent poll)."""
        panel.watching = False
        if panel.relay is Relay.OFF:
            panel.go(Relay.UNKNOWN)

    def _retry_s(self, panel: Panel) -> float:
        return min(MAX_OFF_RETRY_S, self.confirm_s * 2.0 ** min(panel.off_attempts, 8))
