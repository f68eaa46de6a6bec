"""What redlight publishes of its panels: each one's state (SPEC §4), each area's totals, and
the running list."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from redlight.areas import group_areas
from redlight.broker import STATE_QOS, Message
from redlight.days import Totals
from redlight.messages import Topics, dumps, iso, panel_state_message
from redlight.panel import Panel, Session


def panel_state(
    panel: Panel, mono: float, totals: Totals, weekly_goal: timedelta | None = None
) -> dict[str, Any]:
    """A panel's state object: what Home Assistant's entities read; ``weekly_goal_s`` only
    with a goal."""
    session = panel.session or panel.paused
    if panel.unresponsive:
        state = "fault"
    elif panel.session is not None:
        state = "running"
    elif session is not None:
        state = "paused"
    elif panel.cooling(mono):
        state = "cooldown"
    else:
        state = "idle"
    session_view = None
    if session is not None:
        paused = session.paused_at is not None
        session_view = {
            "id": session.id,
            "source": session.source,
            "started_at": iso(session.started_wall),
            # Unknown while paused: the end moves with the resume.
            "ends_at": None if paused else iso(ends_wall(session)),
            "duration_s": num(session.duration_s),
            "remaining_s": round(session.remaining(mono)),
            "paused": paused,
        }
    return {
        "state": state,
        "plug": panel.plug_view,
        # null until the plug has said anything: not heard is not online (a topic typo).
        "plug_online": panel.online if panel.heard else None,
        "session": session_view,
        "default_duration_s": num(panel.default_s),
        "today_s": round(totals.today_s),
        "week_s": round(totals.week_s),
        "relay_stuck": panel.power.stuck,
    } | ({} if weekly_goal is None else {"weekly_goal_s": num(weekly_goal.total_seconds())})


def ends_wall(session: Session) -> datetime:
    """When the session's deadline falls, on the wall clock (for people)."""
    return session.started_wall + timedelta(seconds=session.paused_s + session.duration_s)


def num(value: float) -> float | int:
    """Whole seconds as an int, else rounded to a tenth."""
    rounded = round(value, 1)
    return int(rounded) if rounded == int(rounded) else rounded


class Board:
    """What is published of the panels: each panel's state when it changed, each area's totals
    (``<b>/area/<slug>/state``, the sums of its panels' published states) when they changed,
    and the running list on ``<b>/state``, rate-limited (a thousand sessions ending in one
    second make one update with the outcome, not a thousand lists)."""

    def __init__(self, topics: Topics, panels: list[Panel], every_s: float) -> None:
        """``panels`` in config order; ``<b>/state`` goes out at most once per ``every_s``."""
        self.topics = topics
        self.panels = panels
        self.every_s = every_s
        #: Panels whose state may have changed in this step, and what each published last.
        self.dirty: set[int] = set()
        self.published: dict[int, dict[str, Any]] = {}
        self.running: set[int] = set()
        self.running_changed = True
        self.published_running: list[str] | None = None
        self.daemon_state_at = float("-inf")
        self.daemon_state_due: float | None = None
        self.areas = group_areas((panel.id, panel.area) for panel in panels)
        index = {panel.id: panel.index for panel in panels}
        self._members = {a.slug: [index[p] for p in a.panels] for a in self.areas.values()}
        self._area_of = {i: slug for slug, members in self._members.items() for i in members}
        self.published_areas: dict[str, dict[str, Any]] = {}

    def touch(self, panel: Panel) -> None:
        """``panel``'s state may have changed: compared and published at the end of the step."""
        self.dirty.add(panel.index)

    def republish(self, panel: Panel) -> None:
        """Publish ``panel``'s state in this step even if it did not change."""
        self.published.pop(panel.index, None)
        self.dirty.add(panel.index)

    def forget(self) -> None:
        """Whatever was published is lost (a reconnect, Home Assistant restarted): all again."""
        self.published.clear()
        self.published_areas.clear()
        self.dirty.update(range(len(self.panels)))
        self.published_running = None
        self.running_changed = True
        self.daemon_state_at = float("-inf")

    def session(self, panel: Panel) -> None:
        """``panel`` started or ended a session: the running list changed."""
        if panel.session is None and panel.paused is None:
            self.running.discard(panel.index)
        else:
            self.running.add(panel.index)
        self.running_changed = True
        self.dirty.add(panel.index)

    def running_ids(self) -> list[str]:
        """Panels with a session, in config order."""
        return [self.panels[i].id for i in sorted(self.running)]

    def publish(
        self, now_mono: float, state_of: Callable[[Panel], dict[str, Any]], *, stopping: bool
    ) -> list[Message]:
        """The messages of this step: changed panel states, the areas whose totals they
        changed, and ``<b>/state`` when due."""
        out: list[Message] = []
        areas: set[str] = set()
        for index in sorted(self.dirty):
            panel = self.panels[index]
            body = state_of(panel)
            if self.published.get(index) != body:
                self.published[index] = body
                out.append(panel_state_message(self.topics, panel.id, body))
                if index in self._area_of:
                    areas.add(self._area_of[index])
        self.dirty.clear()
        out.extend(self.area_states(areas))
        if self.running_changed:
            # Only when a session started or ended: the list is as long as the sessions.
            self.running_changed = False
            if self.daemon_state_due is None:
                self.daemon_state_due = max(now_mono, self.daemon_state_at + self.every_s)
        due = self.daemon_state_due
        if due is not None and (now_mono >= due or stopping):
            out.extend(self.daemon_state(now_mono))
        return out

    def area_states(self, slugs: set[str]) -> list[Message]:
        """The states of the areas ``slugs`` that differ from what was published, retained."""
        out: list[Message] = []
        for slug in sorted(slugs):
            area = self.areas[slug]
            bodies = [self.published.get(i, {}) for i in self._members[slug]]
            body = {
                "area": area.name,
                "panels": list(area.panels),
                "today_s": sum(b.get("today_s", 0) for b in bodies),
                "week_s": sum(b.get("week_s", 0) for b in bodies),
            }
            if self.published_areas.get(slug) != body:
                self.published_areas[slug] = body
                topic = self.topics.area_state(slug)
                out.append(Message(topic, dumps(body), retain=True, qos=STATE_QOS))
        return out

    def daemon_state(self, now_mono: float, *, force: bool = False) -> list[Message]:
        """``<b>/state`` now, if the running list differs from the one published (or forced)."""
        self.daemon_state_due = None
        running = self.running_ids()
        if running == self.published_running and not force:
            return []
        self.published_running = running
        self.daemon_state_at = now_mono
        body = {"active_sessions": len(running), "running": running}
        return [Message(self.topics.daemon_state, dumps(body), retain=True, qos=STATE_QOS)]
