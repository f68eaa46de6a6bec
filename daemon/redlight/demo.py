"""``redlight demo``: the whole system on one machine, no broker and no hardware.

The real session core and runtime run against the in-memory broker, with simulated plugs of
three firmwares (Tasmota, Shelly Gen2, Zigbee2MQTT) that behave as their firmwares document.
A short scripted story shows what redlight promises: a session that ends on time with the plug's
own timer armed, an over-limit request refused, a routine with its spoken prompt, a plug
switched on by hand and cut off, and a shutdown that leaves every panel off. Times are
shortened (``max_on`` is 8 s) so it fits in well under a minute; the rules are the same as with
15 minutes.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from collections.abc import Awaitable
from datetime import datetime
from pathlib import Path
from typing import Any, Final, TextIO

from redlight.broker import BrokerEvent, Connected, Message, Received
from redlight.config import Config
from redlight.durations import parse_duration
from redlight.membroker import MemoryBroker
from redlight.messages import Topics, status_message
from redlight.runtime import Runtime
from redlight.simplug import SimulatedPlug
from redlight.storage import History, HistoryWriter
from redlight.systemd import Notifier

#: The demo's ceiling: the real one is 15 minutes; the rules do not change with it.
DEMO_MAX_ON: Final = "8s"
#: ON time with less than this much OFF between counts as one exposure (``safety.min_off``).
DEMO_MIN_OFF: Final = "1m"

_PANELS: Final[dict[str, dict[str, Any]]] = {
    "hip_left": {
        "name": "Left hip",
        "area": "left hip",
        "default_duration": "4s",
        "irradiance_mw_cm2": 50,
        "plug": {"preset": "tasmota", "topic": "panel_left"},
    },
    "hip_right": {
        "name": "Right hip",
        "area": "right hip",
        "default_duration": "4s",
        "plug": {"preset": "shelly_gen2", "prefix": "shellyplugsg3-demo"},
    },
    "knee": {
        "name": "Knee",
        "area": "left knee",
        "default_duration": "4s",
        "plug": {"preset": "zigbee2mqtt", "device": "Knee panel plug", "failsafe": True},
    },
}


class Story:
    """Prints what happens, as a person wants to read it: timestamped, coloured on a terminal."""

    def __init__(self, out: TextIO) -> None:
        """Write to ``out``; colours only when it is a terminal."""
        self.out = out
        self.colour = out.isatty()

    def _paint(self, text: str, code: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.colour else text

    def line(self, who: str, text: str, code: str = "0") -> None:
        """One timestamped line."""
        stamp = self._paint(datetime.now().astimezone().strftime("%H:%M:%S"), "2")
        self.out.write(f"{stamp}  {self._paint(f'{who:<10}', '36')} {self._paint(text, code)}\n")
        self.out.flush()

    def chapter(self, text: str) -> None:
        """A heading for the next part of the story."""
        self.out.write("\n" + self._paint(f"== {text}", "1;33") + "\n")
        self.out.flush()


def _describe(event: dict[str, Any]) -> tuple[str, str]:
    """A human sentence and a colour for one redlight event."""
    kind = event.get("event_type")
    if kind == "session_started":
        failsafe = event.get("failsafe_s")
        armed = f", plug's own timer armed for {failsafe:g}s" if failsafe else ""
        return f"session started: {event.get('duration_s'):g}s ({event.get('source')}){armed}", "32"
    if kind == "session_finished":
        reason = event.get("reason")
        colour = "32" if reason in ("completed", "stopped") else "1;31"
        return f"session finished: {reason} after {event.get('duration_s', 0):g}s", colour
    if kind == "cutoff_enforced":
        return (
            f"cutoff: switched off after {event.get('on_s'):g}s, what was left of max_on "
            f"({event.get('max_on_s'):g}s) for this exposure",
            "1;31",
        )
    if kind == "command_rejected":
        return f"refused ({event.get('reason')}): {event.get('message')}", "33"
    if kind == "ending_soon":
        return "ending soon", "2"
    if kind == "routine_started":
        return f"routine '{event.get('name')}' started ({event.get('steps')} steps)", "32"
    if kind == "routine_step":
        what = event.get("prompt") or "switch on " + ", ".join(event.get("panels") or [])
        return f"step {event.get('step')}/{event.get('steps')}: {what}", "1;36"
    if kind == "routine_finished":
        return f"routine finished: {event.get('reason')}", "32"
    return str(kind), "0"


async def run_demo(out: TextIO | None = None) -> int:
    """Run the scripted story; return 0 when every promise held."""
    story = Story(out or sys.stdout)
    with tempfile.TemporaryDirectory(prefix="redlight-demo-") as tmp:
        return await _story(story, Path(tmp))


async def _story(story: Story, tmp: Path) -> int:
    db = tmp / "history.db"
    routine = {
        "name": "After the run",
        "steps": [
            {"panels": ["hip_left"], "duration": "2s"},
            {"pause": "2s", "prompt": "Turn to your right side"},
            {"panels": ["hip_right"], "duration": "2s"},
        ],
    }
    config = Config(
        mqtt={"base_topic": "redlight"},
        routines={"after_run": routine},
        homeassistant={"enabled": False},
        safety={
            "max_on": DEMO_MAX_ON,
            "min_off": DEMO_MIN_OFF,
            "confirm_timeout": "2s",
            "failsafe_margin": "2s",
        },
        storage={"path": str(db)},
        panels=_PANELS,
    )
    broker = MemoryBroker()
    topics = Topics("redlight")
    plugs: dict[str, SimulatedPlug] = {}
    for panel_id, panel in config.panels.items():
        client = broker.client(f"plug-{panel_id}", will=SimulatedPlug.last_will(panel.plug))
        plugs[panel_id] = SimulatedPlug(panel_id, panel.plug, client=client)
        await plugs[panel_id].start()

    def show(event: BrokerEvent) -> None:
        if isinstance(event, Connected):
            watcher.subscribe([topics.daemon_event])
        elif isinstance(event, Received):
            body = json.loads(event.payload)
            if body.get("event_type") != "ending_soon":
                text, colour = _describe(body)
                story.line(body.get("panel") or "redlight", text, colour)

    watcher = broker.client("watcher")
    watcher.start(show)
    user = broker.client("user")
    user.start(lambda event: None)
    await asyncio.sleep(0)

    writer = HistoryWriter(db)
    runtime = Runtime(
        config,
        broker.client("redlight", will=status_message(topics, online=False)),
        writer=writer,
        notifier=Notifier(None, None),
    )
    story.chapter("redlight starts: every plug is asked for its state and switched OFF")
    online = broker.next(topics.status, lambda m: m.payload_bytes() == b"online")
    task = asyncio.create_task(runtime.run())
    await online
    story.line("redlight", "online; 3 panels: Tasmota, Shelly Gen2, Zigbee2MQTT", "32")

    def command(panel: str, body: dict[str, Any] | str) -> None:
        text = body if isinstance(body, str) else json.dumps(body)
        story.line("you", f"{topics.panel_set(panel)} <- {text}", "35")
        user.publish(Message(topics.panel_set(panel), text))

    async def until(plug: SimulatedPlug, on: bool) -> None:
        async with asyncio.timeout(15.0):
            await plug.wait_for(lambda p: p.is_on is on)

    async def wait(what: Awaitable[Any]) -> None:
        async with asyncio.timeout(15.0):
            await what

    left, right = plugs["hip_left"], plugs["hip_right"]
    finished = broker.next(topics.daemon_event, lambda m: b"session_finished" in m.payload_bytes())

    story.chapter("A 4-second session on the left hip (Tasmota) ends on time")
    command("hip_left", {"action": "start", "duration": "4s"})
    await until(left, on=True)
    story.line("tasmota", f"relay ON (PulseTime {left.pulsetime} = its own off-timer)", "2")
    await wait(finished)
    await until(left, on=False)
    story.line("tasmota", f"relay OFF after {left.on_seconds()[-1]:.1f}s", "2")

    story.chapter("Asking for more than max_on is refused, never shortened")
    rejected = broker.next(topics.daemon_event, lambda m: b"command_rejected" in m.payload_bytes())
    command("hip_right", {"action": "start", "duration": "20s"})
    await wait(rejected)

    story.chapter("A routine: left hip, a pause with a prompt, then the right hip")
    routine_done = broker.next(
        topics.daemon_event, lambda m: b"routine_finished" in m.payload_bytes()
    )
    story.line("you", f"{topics.routine_set('after_run')} <- START", "35")
    user.publish(Message(topics.routine_set("after_run"), "START"))
    await wait(routine_done)
    await until(right, on=False)

    story.chapter(
        f"Someone switches the right hip panel on at the plug itself, right after its step: "
        f"ON time with less than {DEMO_MIN_OFF} OFF between is one exposure, within max_on"
    )
    cut = broker.next(topics.daemon_event, lambda m: b"cutoff_enforced" in m.payload_bytes())
    right.press_button()
    story.line("shelly", "relay ON by its button (redlight did not start this)", "2")
    await wait(cut)
    await until(right, on=False)
    story.line("shelly", f"relay OFF after {right.on_seconds()[-1]:.1f}s", "2")

    story.chapter("Shutdown in the middle of a session: everything goes off first")
    command("knee", "ON")
    await until(plugs["knee"], on=True)
    story.line("zigbee", f"relay ON (on_time {plugs['knee'].failsafe_armed_s:g}s armed)", "2")
    await asyncio.sleep(1.0)
    runtime.request_shutdown()
    code = await task
    story.line("redlight", f"offline (retained: {broker.retained(topics.status)!r})", "32")
    for plug in plugs.values():
        await plug.stop()
    await watcher.stop()
    await user.stop()

    writer.close(timeout=2.0)
    with History.open(db) as history:
        rows = history.sessions()
    story.chapter("History (SQLite)")
    for row in rows:
        story.line(row.panel, f"{row.source:<13} {row.reason:<9} {row.actual_s or 0:.1f}s", "0")

    longest = max((_longest_exposure(plug) for plug in plugs.values()), default=0.0)
    held = code == 0 and not any(p.is_on for p in plugs.values()) and longest <= 8.5
    story.chapter(
        f"Every panel is off; the longest exposure of any panel: {longest:.1f}s "
        f"(max_on {DEMO_MAX_ON})"
    )
    return 0 if held else 1


def _longest_exposure(plug: SimulatedPlug) -> float:
    """The most ON time a relay had with less than ``min_off`` of OFF between (safety rule 1)."""
    min_off = parse_duration(DEMO_MIN_OFF).total_seconds()
    longest = total = 0.0
    last_end: float | None = None
    for (start, _), seconds in zip(plug.on_intervals, plug.on_seconds(), strict=True):
        if last_end is not None and start - last_end >= min_off:
            total = 0.0
        total += seconds
        last_end = start + seconds
        longest = max(longest, total)
    return longest


def main() -> int:
    """Entry point for ``redlight demo``."""
    from redlight.logs import configure_logging

    configure_logging("error")
    return asyncio.run(run_demo())
