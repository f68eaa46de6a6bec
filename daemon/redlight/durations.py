"""Durations as users write them: ``"90s"``, ``"10m"``, ``"1h30m"`` or plain seconds."""

from __future__ import annotations

import math
import re
from datetime import timedelta

# Longest unit names first, so "10min" is ten minutes, not "10m" and a stray "in".
_UNITS = r"hours|hour|hr|h|minutes|minute|mins|min|m|seconds|second|secs|sec|s"
_PART = re.compile(rf"(\d+(?:\.\d+)?)({_UNITS})")
_WHOLE = re.compile(rf"(?:\d+(?:\.\d+)?(?:{_UNITS}))+")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0}
_LONGEST_S = 366 * 24 * 3600.0


def parse_duration(value: object) -> timedelta:
    """Parse a duration; raise ``ValueError`` with a message fit for a user."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like '90s', '10m' or '1h30m' (got {value!r})")
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:  # an integer beyond any float (TOML and JSON allow those)
            raise ValueError("a duration must be at most a year") from None
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            seconds = float(text)
        elif _WHOLE.fullmatch(text):
            seconds = sum(float(n) * _UNIT_S[u[0]] for n, u in _PART.findall(text))
        else:
            raise ValueError(f"expected a duration like '90s', '10m' or '1h30m' (got {value!r})")
    else:
        raise ValueError(f"expected a duration like '90s', '10m' or '1h30m' (got {value!r})")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"a duration must be zero or more seconds (got {value!r})")
    if seconds > _LONGEST_S:
        raise ValueError(f"a duration must be at most a year (got {value!r})")
    return timedelta(seconds=seconds)


def format_duration(value: timedelta | float) -> str:
    """Format a duration compactly: ``"1h30m"``, ``"10m"``, ``"7m30s"``, ``"0.5s"``."""
    total = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if total < 60 and total != int(total):
        return f"{total:g}s"
    whole = round(total)
    hours, rest = divmod(whole, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [f"{n}{u}" for n, u in ((hours, "h"), (minutes, "m"), (seconds, "s")) if n]
    return "".join(parts) or "0s"
