"""The files redlight ships beside its code: the systemd unit and the example configs.

In a wheel they are package data (``redlight/unit/``, ``redlight/examples/``; see
``[tool.setuptools]`` in pyproject.toml); in a checkout they are the repository's
``systemd/`` and ``config/``. Either way ``redlight print-unit`` and ``redlight print-example``
print them, so an installed package needs no checkout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

_PACKAGE: Final = Path(__file__).resolve().parent
#: The repository root when running from a checkout (``daemon/redlight`` -> ``.``).
_CHECKOUT: Final = _PACKAGE.parents[1]
#: The name ``print-example`` gives the full example (``config/example.toml``).
FULL_EXAMPLE: Final = "example"


def _first(*candidates: Path) -> Path:
    """The first candidate that exists (the installed one comes first)."""
    for candidate in candidates:
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"not shipped with this installation: {candidates[0].name}")


def unit_file() -> Path:
    """The systemd unit, ``redlight.service``."""
    return _first(
        _PACKAGE / "unit" / "redlight.service", _CHECKOUT / "systemd" / "redlight.service"
    )


def _examples_dir() -> Path:
    return _first(_PACKAGE / "examples", _CHECKOUT / "config")


def example_names() -> list[str]:
    """The example configs by name: ``example`` (every option) and one per plug firmware."""
    found = sorted(path.stem for path in (_examples_dir() / "examples").glob("*.toml"))
    return [FULL_EXAMPLE, *found]


def example_file(name: str) -> Path:
    """The example config called ``name``; :class:`ValueError` naming the valid ones."""
    if name not in example_names():
        raise ValueError(f"no example named {name!r}; there are: {', '.join(example_names())}")
    if name == FULL_EXAMPLE:
        return _examples_dir() / "example.toml"
    return _examples_dir() / "examples" / f"{name}.toml"
