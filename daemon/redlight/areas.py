"""Body areas: what panels are aimed at (``panels.<id>.area``, free text), as one total each.

An area is the sum of the panels aimed at it. Spellings that differ only in case, accents or
punctuation ("Left hip", "left-hip") are one area, named as its first panel in the config
spells it; its slug is the area's MQTT topic level (``<b>/area/<slug>/state``) and the end of
its Home Assistant ids, so it uses only ``a-z``, ``0-9`` and ``_``.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

#: A slug longer than this is cut and made unique with a hash (ids stay within Home
#: Assistant's 255 characters with the base topic and the entity's words around them).
MAX_SLUG: Final = 48


@dataclass(frozen=True, slots=True)
class Area:
    """The panels aimed at one body area."""

    slug: str
    name: str
    panels: tuple[str, ...]


def area_slug(area: str) -> str:
    """``"Left hip"`` -> ``"left_hip"``; text with no ASCII letter or digit, or a very long
    one, gets a short hash of the text so that two such areas never share a slug."""
    plain = unicodedata.normalize("NFKD", area).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "_", plain.lower()).strip("_")
    if slug and len(slug) <= MAX_SLUG:
        return slug
    digest = hashlib.sha256(area.strip().lower().encode()).hexdigest()[:8]
    return f"{slug[: MAX_SLUG - 9].rstrip('_')}_{digest}" if slug else f"area_{digest}"


def group_areas(panels: Iterable[tuple[str, str | None]]) -> dict[str, Area]:
    """``(panel id, area)`` pairs, in config order, as areas by slug; no area, no group."""
    names: dict[str, str] = {}
    members: dict[str, list[str]] = {}
    for panel, area in panels:
        text = (area or "").strip()
        if not text:
            continue
        slug = area_slug(text)
        names.setdefault(slug, text)
        members.setdefault(slug, []).append(panel)
    return {slug: Area(slug, names[slug], tuple(members[slug])) for slug in names}


__all__ = ["MAX_SLUG", "Area", "area_slug", "group_areas"]
