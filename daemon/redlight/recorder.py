"""The history adapter: the core's history effects, handed to the writer thread.

A session's journal row is acknowledged back to the event loop (safety rule 8: its ON waits
for that, never the loop); the close of a session and a changed setting are only enqueued.
Without a history, every journal row counts as acknowledged at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from redlight.effects import SessionClosed, SessionOpened, SettingChanged
from redlight.storage import HistoryWriter, SessionRow


class Recorder:
    """Writes what the core records; collects the acknowledged journal rows for the loop."""

    def __init__(self, writer: HistoryWriter | None, wake: Callable[[], None]) -> None:
        """``wake`` is called on the loop after an acknowledgement, so the loop looks."""
        self.writer = writer
        self._wake = wake
        self._acked: list[str] = []

    def record(self, effect: SessionOpened | SessionClosed | SettingChanged) -> None:
        """Hand one history effect to the writer thread (never waiting for it)."""
        writer = self.writer
        if isinstance(effect, SessionOpened):
            self._journal(effect)
        elif writer is None:
            return
        elif isinstance(effect, SessionClosed):
            writer.session_closed(
                effect.id, effect.ended_at, effect.actual_s, effect.reason, effect.dose_j_cm2
            )
        else:
            writer.set_setting(effect.key, effect.value)

    def take_acked(self) -> list[str]:
        """The sessions whose journal rows were acknowledged since the last call."""
        acked, self._acked = self._acked, []
        return acked

    def _journal(self, opened: SessionOpened) -> None:
        if self.writer is None:
            self._acked.append(opened.id)  # nothing to wait for
            return
        loop = asyncio.get_running_loop()
        row = SessionRow(
            id=opened.id,
            panel=opened.panel,
            area=opened.area,
            source=opened.source,
            started_at=opened.started_at,
            planned_s=opened.planned_s,
            irradiance_mw_cm2=opened.irradiance_mw_cm2,
        )

        def acknowledged() -> None:  # on the writer thread (here, if the writer is closed)
            loop.call_soon_threadsafe(self._journaled, row.id)

        self.writer.session_opened(row, acknowledged)

    def _journaled(self, session_id: str) -> None:
        """The row is committed, or will not be soon (called on the loop): the ON goes out next.

        Ahead of whatever waits in the queue, so a flood of messages cannot delay an ON: the
        loop looks after every item it handles; ``wake`` makes sure it looks soon.
        """
        self._acked.append(session_id)
        self._wake()
