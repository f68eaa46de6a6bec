"""The state a panel publishes on ``<b>/panel/<id>/state`` (SPEC §4), built from the panel."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from redlight.messages import iso
from redlight.panel import Panel, Session


def panel_state(panel: Panel, mono: float, today_s: float) -> dict[str, Any]:
    """A panel's state object: what Home Assistant's entities read."""
    session = panel.session
    if panel.unresponsive:
        state = "fault"
    elif session is not None:
        state = "running"
    elif panel.cooling(mono):
        state = "cooldown"
    else:
        state = "idle"
    session_view = None
    if session is not None:
        session_view = {
            "id": session.id,
            "source": session.source,
            "started_at": iso(session.started_wall),
            "ends_at": iso(ends_wall(session)),
            "duration_s": num(session.duration_s),
        }
    return {
        "state": state,
        "plug": panel.plug_view,
        "plug_online": panel.online,
        "session": session_view,
        "default_duration_s": num(panel.default_s),
        "today_s": round(today_s),
        "relay_stuck": panel.power.stuck,
    }


def ends_wall(session: Session) -> datetime:
    """When the session's deadline falls, on the wall clock (for people)."""
    return session.started_wall + timedelta(seconds=session.duration_s)


def num(value: float) -> float | int:
    """Whole seconds as an int, else rounded to a tenth."""
    rounded = round(value, 1)
    return int(rounded) if rounded == int(rounded) else rounded
