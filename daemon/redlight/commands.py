"""Parsing what arrives on redlight's command topics into typed requests, or a rejection.

Nothing here has side effects; a bad payload becomes a :class:`Rejection` whose reason and
message end up in a ``command_rejected`` event (safety rule 13).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Final, Literal

from redlight.durations import format_duration, parse_duration

#: Commands are short; anything longer is rejected before it is parsed.
MAX_COMMAND_BYTES: Final = 4096


@dataclass(frozen=True, slots=True)
class Start:
    """Start a session: for ``duration_s``, for ``dose_j_cm2``, or (both None) the default."""

    duration_s: float | None = None
    dose_j_cm2: float | None = None
    request_id: str | None = None
    source: Literal["homeassistant", "cli"] = "homeassistant"


@dataclass(frozen=True, slots=True)
class Stop:
    """Stop the panel's session (or switch it off if it is on for any reason)."""

    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class Extend:
    """Make the running (or paused) session ``by_s`` seconds longer, within ``max_on``."""

    by_s: float
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class Pause:
    """Switch the panel off and keep its session, to be resumed within ``safety.max_pause``."""

    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class Resume:
    """Switch a paused session's panel on again for the on-time it has left."""

    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class SetDefault:
    """Set a panel's default session length (from Home Assistant's number entity)."""

    duration_s: float


@dataclass(frozen=True, slots=True)
class StopAll:
    """Stop every session and switch every panel off."""

    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class AcceptOffer:
    """Accept a schedule's offer to start a session (``None``: the newest open offer)."""

    offer: str | None
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class RoutineCommand:
    """Start or stop a routine; ``source`` says who asked (the command line sends JSON)."""

    start: bool
    source: Literal["homeassistant", "cli"] = "homeassistant"


@dataclass(frozen=True, slots=True)
class ScheduleCommand:
    """Enable or disable a schedule."""

    enabled: bool


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a command was refused: a machine-readable reason and a sentence for people."""

    reason: str
    message: str
    request_id: str | None = None
    allowed_at: str | None = None


#: What changes a session that is already there.
SessionChange = Extend | Pause | Resume
PanelCommand = Start | Stop | SessionChange
DaemonCommand = StopAll | AcceptOffer


def _decode(payload: bytes) -> str | Rejection:
    if len(payload) > MAX_COMMAND_BYTES:
        return Rejection("invalid_payload", f"the command is longer than {MAX_COMMAND_BYTES} bytes")
    try:
        return payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        return Rejection("invalid_payload", "the command is not UTF-8 text")


def _json_object(text: str) -> dict[str, object] | Rejection:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return Rejection(
            "invalid_payload", f"expected ON, OFF or a JSON object (got {_quote(text)})"
        )
    if not isinstance(value, dict):
        return Rejection(
            "invalid_payload", f"expected ON, OFF or a JSON object (got {_quote(text)})"
        )
    try:
        # A "\ud800" escape decodes to a lone surrogate: no reply could carry it back.
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except (UnicodeEncodeError, RecursionError):
        return Rejection(
            "invalid_payload", "the command has a \\u escape that is not a valid character"
        )
    return value


def _quote(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:37] + "...")


def _request_id(body: dict[str, object]) -> str | Rejection | None:
    value = body.get("request_id")
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= 64:
        return Rejection("invalid_payload", "'request_id' must be a string of 1 to 64 characters")
    return value


def _seconds(value: object, what: str) -> float | str:
    """A duration in seconds, or an error message."""
    try:
        seconds = parse_duration(value).total_seconds()
    except ValueError as error:
        return f"'{what}': {error}"
    return seconds


def _body(text: str) -> tuple[dict[str, object], str | None] | Rejection:
    """A JSON command's object and its ``request_id``: the part every JSON command shares."""
    body = _json_object(text)
    if isinstance(body, Rejection):
        return body
    request_id = _request_id(body)
    if isinstance(request_id, Rejection):
        return request_id
    return body, request_id


#: The plain-text panel commands (any case).
_WORDS: Final[dict[str, PanelCommand]] = {
    "ON": Start(),
    "OFF": Stop(),
    "PAUSE": Pause(),
    "RESUME": Resume(),
}


def parse_panel_command(payload: bytes) -> PanelCommand | Rejection:
    """Parse ``<b>/panel/<id>/set``: ``ON``, ``OFF``, ``PAUSE``, ``RESUME`` or a JSON object."""
    text = _decode(payload)
    if isinstance(text, Rejection):
        return text
    word = _WORDS.get(text.upper())
    if word is not None:
        return word
    parsed = _body(text)
    if isinstance(parsed, Rejection):
        return parsed
    return _panel_action(*parsed)


#: The JSON panel actions that carry nothing but ``request_id``.
_BARE_ACTIONS: Final[dict[str, type[Stop | Pause | Resume]]] = {
    "stop": Stop,
    "pause": Pause,
    "resume": Resume,
}


def _panel_action(body: dict[str, object], request_id: str | None) -> PanelCommand | Rejection:
    """A JSON panel command: its ``action`` is start, stop, extend, pause or resume."""
    action = body.get("action")
    bare = _BARE_ACTIONS.get(action) if isinstance(action, str) else None
    if bare is not None:
        unknown = set(body) - {"action", "request_id"}
        return _unknown_keys(unknown, request_id) if unknown else bare(request_id=request_id)
    if action == "extend":
        return _extend(body, request_id)
    if action != "start":
        return Rejection(
            "unknown_action",
            "'action' must be 'start', 'stop', 'extend', 'pause' or 'resume' "
            f"(got {_quote(str(action))})",
            request_id,
        )
    return _start(body, request_id)


def _extend(body: dict[str, object], request_id: str | None) -> Extend | Rejection:
    """A JSON ``extend``: ``by`` a duration (seconds, or text such as ``"2m"``)."""
    unknown = set(body) - {"action", "by", "request_id"}
    if unknown:
        return _unknown_keys(unknown, request_id)
    if "by" not in body:
        return Rejection("invalid_duration", "'extend' needs 'by', e.g. \"2m\"", request_id)
    seconds = _seconds(body["by"], "by")
    if isinstance(seconds, str):
        return Rejection("invalid_duration", seconds, request_id)
    if seconds < 1:
        return Rejection("invalid_duration", "'by': extend by at least 1 second", request_id)
    return Extend(seconds, request_id)


def _start(body: dict[str, object], request_id: str | None) -> Start | Rejection:
    """A JSON ``start``: for a duration, for a dose, or for the panel's default."""
    unknown = set(body) - {"action", "duration", "dose_j_cm2", "request_id", "source"}
    if unknown:
        return _unknown_keys(unknown, request_id)
    source = body.get("source", "homeassistant")
    if source not in ("homeassistant", "cli"):
        return Rejection("invalid_payload", "'source' must be 'homeassistant' or 'cli'", request_id)
    if "duration" in body and "dose_j_cm2" in body:
        return Rejection(
            "invalid_payload", "give either 'duration' or 'dose_j_cm2', not both", request_id
        )
    if "duration" in body:
        return _duration_start(body["duration"], request_id, source)
    if "dose_j_cm2" in body:
        return _dose_start(body["dose_j_cm2"], request_id, source)
    return Start(request_id=request_id, source=source)


def _duration_start(
    duration: object, request_id: str | None, source: Literal["homeassistant", "cli"]
) -> Start | Rejection:
    """A ``start`` for a duration, in seconds or as text such as ``"10m"``."""
    seconds = _seconds(duration, "duration")
    if isinstance(seconds, str):
        return Rejection("invalid_duration", seconds, request_id)
    return Start(duration_s=seconds, request_id=request_id, source=source)


def _dose_start(
    dose: object, request_id: str | None, source: Literal["homeassistant", "cli"]
) -> Start | Rejection:
    """A ``start`` for a dose: a finite number of J/cm² above 0."""
    if isinstance(dose, bool) or not isinstance(dose, int | float) or not _finite(dose):
        return Rejection("invalid_dose", "'dose_j_cm2' must be a number", request_id)
    if dose <= 0:
        return Rejection("invalid_dose", "'dose_j_cm2' must be more than 0", request_id)
    return Start(dose_j_cm2=float(dose), request_id=request_id, source=source)


def _finite(number: int | float) -> bool:
    """Finite, and not an integer too large for a float (JSON allows those)."""
    try:
        return math.isfinite(number)
    except OverflowError:
        return False


def _unknown_keys(keys: set[str], request_id: str | None) -> Rejection:
    names = ", ".join(sorted(repr(k) for k in keys))
    return Rejection("invalid_payload", f"unknown key {names}", request_id)


#: How much longer than max_on a number from Home Assistant may be and still mean max_on.
ROUNDING_S: Final = 0.5


def parse_duration_minutes(payload: bytes, max_on_s: float) -> SetDefault | Rejection:
    """Parse ``<b>/panel/<id>/duration/set``: minutes, from 1 second to ``max_on``."""
    text = _decode(payload)
    if isinstance(text, Rejection):
        return text
    try:
        minutes = float(text)
    except ValueError:
        return Rejection("invalid_duration", f"expected a number of minutes (got {_quote(text)})")
    seconds = minutes * 60
    # Home Assistant's number shows minutes to 2 decimals, so max_on may come back up to
    # 0.3 s too long: within that rounding it means max_on (never more).
    if math.isfinite(seconds) and max_on_s < seconds <= max_on_s + ROUNDING_S:
        seconds = max_on_s
    if not math.isfinite(seconds) or not 1.0 <= seconds <= max_on_s:
        return Rejection(
            "invalid_duration",
            f"the session length must be 1 second to {format_duration(max_on_s)} "
            f"(got {_quote(text)} minutes); safety.max_on is {format_duration(max_on_s)}",
        )
    return SetDefault(duration_s=seconds)


def parse_daemon_command(payload: bytes) -> DaemonCommand | Rejection:
    """Parse ``<b>/set``: ``{"action": "stop_all"}`` or ``{"action": "accept_offer", ...}``."""
    text = _decode(payload)
    if isinstance(text, Rejection):
        return text
    parsed = _body(text)
    if isinstance(parsed, Rejection):
        return parsed
    body, request_id = parsed
    action = body.get("action")
    if action == "stop_all":
        unknown = set(body) - {"action", "request_id"}
        return _unknown_keys(unknown, request_id) if unknown else StopAll(request_id)
    if action == "accept_offer":
        return _accept_offer(body, request_id)
    return Rejection(
        "unknown_action",
        f"'action' must be 'stop_all' or 'accept_offer' (got {_quote(str(action))})",
        request_id,
    )


def _accept_offer(body: dict[str, object], request_id: str | None) -> AcceptOffer | Rejection:
    """An ``accept_offer`` names the offer it accepts (or none: the newest), nothing else."""
    offer = body.get("offer")
    unknown = set(body) - {"action", "offer", "request_id"}
    if unknown:
        return _unknown_keys(unknown, request_id)
    if offer is not None and (not isinstance(offer, str) or not offer):
        return Rejection(
            "invalid_payload",
            "'offer' must name the offer to accept (or be left out: the newest open offer)",
            request_id,
        )
    return AcceptOffer(offer, request_id)


def parse_routine_command(payload: bytes) -> RoutineCommand | Rejection:
    """Parse ``<b>/routine/<id>/set``: ``START`` or ``STOP``, or the command line's JSON
    ``{"action": "start", "source": "cli"}`` (so the routine is logged as the CLI's)."""
    text = _decode(payload)
    if isinstance(text, Rejection):
        return text
    if text.upper() in {"START", "STOP"}:
        return RoutineCommand(start=text.upper() == "START")
    if not text.startswith("{"):
        return Rejection("invalid_payload", f"expected START or STOP (got {_quote(text)})")
    return _routine_json(text)


def _routine_json(text: str) -> RoutineCommand | Rejection:
    """The JSON form of a routine command: ``action``, ``source`` and ``request_id`` only."""
    parsed = _body(text)
    if isinstance(parsed, Rejection):
        return parsed
    body, request_id = parsed
    unknown = set(body) - {"action", "source", "request_id"}
    if unknown:
        return _unknown_keys(unknown, request_id)
    action, source = body.get("action"), body.get("source", "homeassistant")
    if action not in ("start", "stop"):
        message = f"'action' must be 'start' or 'stop' (got {_quote(str(action))})"
        return Rejection("unknown_action", message, request_id)
    if source not in ("homeassistant", "cli"):
        return Rejection("invalid_payload", "'source' must be 'homeassistant' or 'cli'", request_id)
    return RoutineCommand(start=action == "start", source=source)


def parse_schedule_command(payload: bytes) -> ScheduleCommand | Rejection:
    """Parse ``<b>/schedule/<id>/set``: ``ON`` or ``OFF``."""
    text = _decode(payload)
    if isinstance(text, Rejection):
        return text
    if text.upper() in {"ON", "OFF"}:
        return ScheduleCommand(enabled=text.upper() == "ON")
    return Rejection("invalid_payload", f"expected ON or OFF (got {_quote(text)})")
