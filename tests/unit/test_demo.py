"""``redlight demo``: the story runs on the real core and tells the truth about what happened."""

from __future__ import annotations

import io
from collections.abc import Callable

import pytest

from redlight import demo
from redlight.demo import run_demo
from redlight.storage import HistoryWriter, SessionRow


class AnsweringWriter(HistoryWriter):
    """Answers each journal row before it returns.

    Under virtual time the clock jumps ahead whenever the loop is idle, so a real writer
    thread's acknowledgement races the journal wait (JOURNAL_WAIT_S) and an ON would go out
    0.1 s of virtual time late now and then. Blocking here holds the virtual clock instead.
    """

    def session_opened(
        self, row: SessionRow, acknowledged: Callable[[], None] | None = None
    ) -> None:
        super().session_opened(row, acknowledged)
        assert self.flush(5.0)


@pytest.mark.looptime
async def test_demo_story_shows_every_promise_and_exits_0(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On time, over-limit refused, a routine with its prompt, a hand-switched plug cut off."""
    monkeypatch.setattr(demo, "HistoryWriter", AnsweringWriter)
    out = io.StringIO()
    assert await run_demo(out) == 0
    text = out.getvalue()
    assert "session finished: completed after 4s" in text
    assert "refused (over_max_on): 20s is more than safety.max_on (8s)" in text
    # The button press follows the routine's 2 s on that panel: one exposure, 8 s in all.
    assert "cutoff: switched off after 6s, what was left of max_on (8s)" in text
    assert "step 2/3: Turn to your right side" in text
    assert "routine finished: completed" in text
    assert "session finished: shutdown" in text
    assert "Every panel is off; the longest exposure of any panel: 8.0s" in text
    assert "\033[" not in text  # no colour codes when not on a terminal
