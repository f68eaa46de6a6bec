"""The limits policy: may a session start on a panel now, and for how long (SPEC §3).

One pure function, :func:`admit`, answers with the session's length in seconds or the
:class:`~redlight.commands.Rejection` a user sees. It reads the panel and the clock and
changes nothing; the core acts on the answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from redlight import commands as cmd
from redlight.config import SafetyConfig, dose_to_duration
from redlight.durations import format_duration
from redlight.messages import iso
from redlight.panel import Panel, Session


@dataclass(frozen=True, slots=True)
class Limits:
    """The configured ceilings, in seconds."""

    max_on_s: float
    cooldown_s: float
    min_off_s: float
    daily_max_s: float | None
    #: A paused session not resumed within this ends (:mod:`redlight.controls`).
    max_pause_s: float = 600.0

    @classmethod
    def from_safety(cls, safety: SafetyConfig) -> Limits:
        """The ``[safety]`` section's limits."""
        return cls(
            max_on_s=safety.max_on.total_seconds(),
            cooldown_s=safety.cooldown.total_seconds(),
            min_off_s=safety.min_off.total_seconds(),
            daily_max_s=safety.daily_max.total_seconds() if safety.daily_max else None,
            max_pause_s=safety.max_pause.total_seconds(),
        )


@dataclass(frozen=True, slots=True)
class Moment:
    """What :func:`admit` needs to know beside the panel."""

    mono: float
    wall: datetime
    connected: bool
    stopping: bool
    #: Seconds the panel has been on today (``safety.daily_max`` counts them).
    today_s: float


def admit(limits: Limits, panel: Panel, request: cmd.Start, at: Moment) -> float | cmd.Rejection:
    """The session length to use, or why the session may not start.

    Checked in this order: the connection, the plug, the session length (ceiling and dose),
    then what earlier sessions left (cooldown, exposure, daily maximum).
    """
    rid = request.request_id
    refusal = _reachable(panel, at, rid)
    if refusal is not None:
        return refusal
    if panel.paused is not None:
        return cmd.Rejection(
            "already_running", f"{panel.name} has a paused session; resume or stop it first", rid
        )
    duration_s = _length(limits, panel, request)
    if isinstance(duration_s, cmd.Rejection):
        return duration_s
    return _budget(limits, panel, duration_s, at, rid) or duration_s


def _reachable(panel: Panel, at: Moment, rid: str | None) -> cmd.Rejection | None:
    """Why redlight cannot switch the panel on now: the broker, the plug, a session."""
    refusal = _broker(at, rid)
    if refusal is not None:
        return refusal
    if not panel.online:
        return cmd.Rejection("plug_offline", f"the plug of {panel.name} is offline", rid)
    if panel.unresponsive:
        return cmd.Rejection(
            "plug_unresponsive",
            f"the plug of {panel.name} has not confirmed it is off (no report on "
            f"{panel.plug.report_topic}); check it first",
            rid,
        )
    if panel.session is None and not panel.watching:
        # After a gap in its view the relay may be on unseen: an ON now would add to that.
        return cmd.Rejection(
            "plug_state_unknown",
            f"redlight has not heard from the plug of {panel.name} since it was out of "
            "sight, so it may be on already; it has been asked: try again in a moment (no "
            f"report yet on {panel.plug.report_topic}; check the plug's topic if this stays)",
            rid,
        )
    if panel.session is not None:
        external = panel.session.source == "external"
        what = "is switched on outside redlight" if external else "already has a session"
        return cmd.Rejection("already_running", f"{panel.name} {what}; stop it first", rid)
    return None


def _broker(at: Moment, rid: str | None) -> cmd.Rejection | None:
    """Why no command can reach a plug now: no broker, or redlight is shutting down."""
    if not at.connected:
        return cmd.Rejection("disconnected", "redlight is not connected to the broker", rid)
    if at.stopping:
        return cmd.Rejection("shutting_down", "redlight is shutting down", rid)
    return None


def _length(limits: Limits, panel: Panel, request: cmd.Start) -> float | cmd.Rejection:
    """The asked length (a duration, a dose, or the panel's default) within ``max_on``."""
    rid = request.request_id
    max_on = format_duration(limits.max_on_s)
    if request.dose_j_cm2 is not None:
        if panel.irradiance is None:
            return cmd.Rejection(
                "no_irradiance",
                f"{panel.name} has no irradiance_mw_cm2 configured, so a dose cannot "
                "become a duration",
                rid,
            )
        try:
            duration_s = dose_to_duration(request.dose_j_cm2, panel.irradiance).total_seconds()
        except ValueError as error:  # a dose so large it would overflow a timedelta
            return cmd.Rejection("over_max_on", f"{error}, more than safety.max_on ({max_on})", rid)
        what = (
            f"{request.dose_j_cm2:g} J/cm² at {panel.irradiance:g} mW/cm² needs "
            f"{format_duration(duration_s)},"
        )
    else:
        duration_s = request.duration_s if request.duration_s is not None else panel.default_s
        what = f"{format_duration(duration_s)} is"
    if duration_s > limits.max_on_s:
        return cmd.Rejection("over_max_on", f"{what} more than safety.max_on ({max_on})", rid)
    if duration_s < 1:
        return cmd.Rejection("invalid_duration", "a session lasts at least 1 second", rid)
    return duration_s


def admit_resume(
    limits: Limits, panel: Panel, remaining_s: float, at: Moment, rid: str | None
) -> cmd.Rejection | None:
    """Why a paused session may not switch its panel on again now for ``remaining_s``: what
    a start of that length would meet, but the length itself (admitted when it began)."""
    return _reachable(panel, at, rid) or _budget(limits, panel, remaining_s, at, rid)


def admit_extension(  # noqa: PLR0913 - what a start is judged on, and the session and step
    limits: Limits, panel: Panel, session: Session, by_s: float, at: Moment, rid: str | None
) -> cmd.Rejection | None:
    """Why ``session`` (running or paused) may not be ``by_s`` longer: the broker, the
    ceiling on its on-time in all, the exposure its stretch of light continues, the day."""
    refusal = _broker(at, rid)
    if refusal is not None:
        return refusal
    longest = limits.max_on_s
    if session.duration_s + by_s > longest:
        left = max(0.0, longest - session.duration_s)
        return cmd.Rejection(
            "over_max_on",
            f"extending by {format_duration(by_s)} makes the session "
            f"{format_duration(session.duration_s + by_s)}, more than safety.max_on "
            f"({format_duration(longest)}); it can be extended by {format_duration(left)} at most",
            rid,
        )
    # A lit stretch is judged from its start (as it was admitted); a paused one from now.
    since = at.mono if session.paused_at is not None else session.started_mono
    prior = panel.exposure.before(since)
    if prior + session.duration_s + by_s - session.on_before_s > longest:
        return _exposure_refusal(limits, panel, prior, at, rid)
    to_come = session.remaining(at.mono) + by_s
    return _daily_refusal(limits, panel, to_come, at, rid)


def _budget(
    limits: Limits, panel: Panel, duration_s: float, at: Moment, rid: str | None
) -> cmd.Rejection | None:
    """Why earlier sessions leave no room for this one: cooldown, exposure, daily maximum."""
    if panel.cooling(at.mono):
        assert panel.cooldown_wall is not None
        return cmd.Rejection(
            "cooldown",
            f"{panel.name} is cooling down until {panel.cooldown_wall:%H:%M:%S} "
            f"(safety.cooldown {format_duration(limits.cooldown_s)})",
            rid,
            allowed_at=iso(panel.cooldown_wall),
        )
    prior = panel.exposure.before(at.mono)
    if prior + duration_s > limits.max_on_s:
        return _exposure_refusal(limits, panel, prior, at, rid)
    return _daily_refusal(limits, panel, duration_s, at, rid)


def _exposure_refusal(
    limits: Limits, panel: Panel, prior: float, at: Moment, rid: str | None
) -> cmd.Rejection:
    """The exposure already holds ``prior`` seconds: what is left, and until when."""
    min_off = format_duration(limits.min_off_s)
    allowed = at.wall + timedelta(seconds=panel.exposure.end + limits.min_off_s - at.mono)
    return cmd.Rejection(
        "exposure",
        f"{panel.name} was on for {format_duration(prior)} with less than {min_off} off "
        f"since, and an exposure may last {format_duration(limits.max_on_s)} "
        f"(safety.max_on); {format_duration(max(0.0, limits.max_on_s - prior))} is left until "
        f"it has been off for {min_off}, at {allowed:%H:%M:%S} (safety.min_off)",
        rid,
        allowed_at=iso(allowed),
    )


def _daily_refusal(
    limits: Limits, panel: Panel, duration_s: float, at: Moment, rid: str | None
) -> cmd.Rejection | None:
    """Why ``duration_s`` more on-time today would break ``safety.daily_max``, if it would."""
    if limits.daily_max_s is None or at.today_s + duration_s <= limits.daily_max_s:
        return None
    left = max(0.0, limits.daily_max_s - at.today_s)
    midnight = next_midnight(at.wall)
    return cmd.Rejection(
        "daily_max",
        f"{panel.name} has {format_duration(left)} left today "
        f"(safety.daily_max {format_duration(limits.daily_max_s)}); "
        f"{format_duration(duration_s)} more is allowed again from {midnight:%Y-%m-%d %H:%M}",
        rid,
        allowed_at=iso(midnight),
    )


def next_midnight(wall: datetime) -> datetime:
    """The start of the local day after ``wall``."""
    tomorrow = (wall + timedelta(days=1)).date()
    return datetime(tomorrow.year, tomorrow.month, tomorrow.day, tzinfo=wall.tzinfo)
