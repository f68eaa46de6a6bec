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


def sections(text: str) -> dict[str, list[str]]:
    """The demo's output by heading (``== ...``); the lines before the first under ``""``."""
    found: dict[str, list[str]] = {"": []}
    heading = ""
    for line in text.splitlines():
        if line.startswith("== "):
            heading = line[3:]
            found[heading] = []
        elif line:
            found[heading].append(line)
    return found


async def demo_text(monkeypatch: pytest.MonkeyPatch) -> str:
    """What the demo prints (called from a looptime test: virtual time, milliseconds)."""
    monkeypatch.setattr(demo, "HistoryWriter", AnsweringWriter)
    out = io.StringIO()
    assert await run_demo(out) == 0
    return out.getvalue()


@pytest.mark.looptime
async def test_the_demo_says_its_ceiling_before_it_begins(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 14 item 9: the 8 s ceiling is announced up front, before the first heading."""
    text = await demo_text(monkeypatch)
    before = sections(text)[""]
    assert any("max_on is 8s here (15 minutes for real)" in line for line in before)


@pytest.mark.looptime
async def test_pulsetime_is_explained_where_it_is_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 14 item 9: ``PulseTime 60`` says what it is: 6 s, the plug's own off-timer."""
    text = await demo_text(monkeypatch)
    assert (
        "relay ON; PulseTime 60 (6s: the plug's own off-timer, armed before the ON; "
        "Tasmota counts it in tenths of a second)"
    ) in text


@pytest.mark.looptime
async def test_the_offline_status_is_text_not_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 14 item 9: the retained status is printed as text, not as a Python bytes repr."""
    text = await demo_text(monkeypatch)
    assert "offline (its retained status: offline)" in text
    assert "b'" not in text


@pytest.mark.looptime
async def test_every_event_line_is_under_its_own_heading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 14 item 9: a section waits for the lines it announces before the next heading:
    the cut-off session's end is under the button's heading, not under the shutdown's."""
    text = await demo_text(monkeypatch)
    found = sections(text)
    [button] = [h for h in found if h.startswith("Someone switches the right hip panel on")]
    [shutdown] = [h for h in found if h.startswith("Shutdown in the middle")]
    assert any("hip_right  session finished: cutoff after 6s" in line for line in found[button])
    assert not [line for line in found[shutdown] if "hip_right" in line]
    assert found[shutdown][-1].endswith("offline (its retained status: offline)")
