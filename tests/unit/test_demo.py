"""``redlight demo``: the story runs on the real core and tells the truth about what happened."""

from __future__ import annotations

import io

import pytest

from redlight.demo import run_demo


@pytest.mark.looptime
async def test_demo_story_shows_every_promise_and_exits_0() -> None:
    """On time, over-limit refused, a routine with its prompt, a hand-switched plug cut off."""
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
