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
from redlight.presets import pulsetime_seconds
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

    def say(self, text: str) -> None:
        """Plain text, before the story begins."""
        self.out.write(text + "\n")
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


def _config(db: Path) -> Config:
    """Three panels, one routine, and the demo's short ceiling."""
    routine = {
        "name": "After the run",
        "steps": [
            {"panels": ["hip_left"], "duration": "2s"},
            {"pause": "2s", "prompt": "Turn to your right side"},
            {"panels": ["hip_right"], "duration": "2s"},
        ],
    }
    return Config(
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


async def _story(story: Story, tmp: Path) -> int:
    stage = _Stage(story, _config(tmp / "history.db"))
    await stage.set_up()
    story.say(
        "redlight demo: the real core on an in-memory broker, with simulated plugs.\n"
        f"Times are shortened: max_on is {DEMO_MAX_ON} here (15 minutes for real), so the "
        "story takes about 20 seconds; the rules are the same."
    )
    await stage.start()
    await stage.session_on_time()
    await stage.over_the_ceiling()
    await stage.routine()
    await stage.button_press()
    code = await stage.shutdown()
    stage.history()
    longest = max((_longest_exposure(plug) for plug in stage.plugs.values()), default=0.0)
    held = code == 0 and not any(p.is_on for p in stage.plugs.values()) and longest <= 8.5
    story.chapter(
        f"Every panel is off; the longest exposure of any panel: {longest:.1f}s "
        f"(max_on {DEMO_MAX_ON})"
    )
    return 0 if held else 1


class _Stage:
    """The demo's broker, plugs, daemon and clients, and the story's sections in order.

    Each section waits until the lines it announces are printed (:meth:`printed`) before the
    next heading, so no event's line strays under the following one.
    """

    def __init__(self, story: Story, config: Config) -> None:
        """Everything the story needs; nothing runs until :meth:`set_up`."""
        self.story = story
        self.config = config
        self.broker = MemoryBroker()
        self.topics = Topics("redlight")
        self.plugs: dict[str, SimulatedPlug] = {}
        self.watcher = self.broker.client("watcher")
        self.user = self.broker.client("user")
        self.writer = HistoryWriter(config.storage.path)
        self.runtime = Runtime(
            config,
            self.broker.client("redlight", will=status_message(self.topics, online=False)),
            writer=self.writer,
            notifier=Notifier(None, None),
        )
        self.task: asyncio.Task[int] | None = None
        self._awaited: list[tuple[str, str | None, asyncio.Future[None]]] = []

    async def set_up(self) -> None:
        """The plugs connect, and the watcher that prints every event."""
        for panel_id, panel in self.config.panels.items():
            will = SimulatedPlug.last_will(panel.plug)
            client = self.broker.client(f"plug-{panel_id}", will=will)
            self.plugs[panel_id] = SimulatedPlug(panel_id, panel.plug, client=client)
            await self.plugs[panel_id].start()
        self.watcher.start(self._show)
        self.user.start(lambda event: None)
        await asyncio.sleep(0)

    def _show(self, event: BrokerEvent) -> None:
        if isinstance(event, Connected):
            self.watcher.subscribe([self.topics.daemon_event])
        elif isinstance(event, Received):
            body = json.loads(event.payload)
            kind, panel = body.get("event_type"), body.get("panel")
            if kind != "ending_soon":
                text, colour = _describe(body)
                self.story.line(panel or "redlight", text, colour)
            for awaited in list(self._awaited):
                if awaited[0] == kind and awaited[1] in (None, panel):
                    self._awaited.remove(awaited)
                    awaited[2].set_result(None)

    def printed(self, kind: str, panel: str | None = None) -> asyncio.Future[None]:
        """Done once the watcher has printed the next event of ``kind`` (for ``panel``)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._awaited.append((kind, panel, future))
        return future

    def command(self, panel: str, body: dict[str, Any] | str) -> None:
        """Send a panel command, as Home Assistant or a user would."""
        text = body if isinstance(body, str) else json.dumps(body)
        self.story.line("you", f"{self.topics.panel_set(panel)} <- {text}", "35")
        self.user.publish(Message(self.topics.panel_set(panel), text))

    async def start(self) -> None:
        """Safety rule 8: redlight asks every plug and switches it OFF, then says online."""
        self.story.chapter("redlight starts: every plug is asked for its state and switched OFF")
        online = self.broker.next(self.topics.status, lambda m: m.payload_bytes() == b"online")
        self.task = asyncio.create_task(self.runtime.run())
        await _wait(online)
        self.story.line("redlight", "online; 3 panels: Tasmota, Shelly Gen2, Zigbee2MQTT", "32")

    async def session_on_time(self) -> None:
        """A session ends on time, with the plug's own off-timer armed (rules 3 and 5)."""
        left = self.plugs["hip_left"]
        self.story.chapter("A 4-second session on the left hip (Tasmota) ends on time")
        finished = self.printed("session_finished", "hip_left")
        self.command("hip_left", {"action": "start", "duration": "4s"})
        await _until(left, on=True)
        self.story.line(
            "tasmota",
            f"relay ON; PulseTime {left.pulsetime} ({pulsetime_seconds(left.pulsetime):g}s: the "
            "plug's own off-timer, armed before the ON; Tasmota counts it in tenths of a second)",
            "2",
        )
        await _wait(finished)
        await _until(left, on=False)
        self.story.line("tasmota", f"relay OFF after {left.on_seconds()[-1]:.1f}s", "2")

    async def over_the_ceiling(self) -> None:
        """Rule 1: a request over max_on is refused, never shortened."""
        self.story.chapter("Asking for more than max_on is refused, never shortened")
        rejected = self.printed("command_rejected", "hip_right")
        self.command("hip_right", {"action": "start", "duration": "20s"})
        await _wait(rejected)

    async def routine(self) -> None:
        """A routine's steps, with its prompt, to the end."""
        self.story.chapter("A routine: left hip, a pause with a prompt, then the right hip")
        done = self.printed("routine_finished")
        self.story.line("you", f"{self.topics.routine_set('after_run')} <- START", "35")
        self.user.publish(Message(self.topics.routine_set("after_run"), "START"))
        await _wait(done)
        await _until(self.plugs["hip_right"], on=False)

    async def button_press(self) -> None:
        """Rule 2: an ON redlight did not cause is cut off within what is left of max_on."""
        right = self.plugs["hip_right"]
        self.story.chapter(
            f"Someone switches the right hip panel on at the plug itself, right after its step: "
            f"ON time with less than {DEMO_MIN_OFF} OFF between is one exposure, within max_on"
        )
        ended = self.printed("session_finished", "hip_right")
        right.press_button()
        self.story.line("shelly", "relay ON by its button (redlight did not start this)", "2")
        await _wait(ended)  # after cutoff_enforced
        await _until(right, on=False)
        self.story.line("shelly", f"relay OFF after {right.on_seconds()[-1]:.1f}s", "2")

    async def shutdown(self) -> int:
        """Rule 9: a shutdown mid-session switches everything off first; the exit code."""
        knee = self.plugs["knee"]
        self.story.chapter("Shutdown in the middle of a session: everything goes off first")
        self.command("knee", "ON")
        await _until(knee, on=True)
        self.story.line("zigbee", f"relay ON (on_time {knee.failsafe_armed_s:g}s armed)", "2")
        await asyncio.sleep(1.0)  # a second of the session, then the shutdown
        ended = self.printed("session_finished", "knee")
        self.runtime.request_shutdown()
        assert self.task is not None
        code = await self.task
        await _wait(ended)
        retained = self.broker.retained(self.topics.status)
        said = retained.decode("utf-8", "replace") if retained is not None else "nothing"
        self.story.line("redlight", f"offline (its retained status: {said})", "32")
        for plug in self.plugs.values():
            await plug.stop()
        await self.watcher.stop()
        await self.user.stop()
        return code

    def history(self) -> None:
        """What the history database holds, once the writer has finished."""
        self.writer.close(timeout=2.0)
        with History.open(self.config.storage.path) as history:
            rows = history.sessions()
        self.story.chapter("History (SQLite)")
        for row in rows:
            line = f"{row.source:<13} {row.reason:<9} {row.actual_s or 0:.1f}s"
            self.story.line(row.panel, line, "0")


async def _until(plug: SimulatedPlug, on: bool) -> None:
    async with asyncio.timeout(15.0):
        await plug.wait_for(lambda p: p.is_on is on)


async def _wait(what: Awaitable[Any]) -> None:
    async with asyncio.timeout(15.0):
        await what


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
