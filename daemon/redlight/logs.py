"""Logging set-up (SPEC §6): one structlog pipeline for redlight and for stdlib loggers alike.

Human-readable on a terminal, one JSON object per line otherwise, and under journald no
timestamp (the journal adds its own) but a ``<N>`` syslog priority prefix so ``journalctl -p``
works. paho-mqtt's and APScheduler's stdlib records go through the same processors, including
the one that masks registered secrets, so no secret reaches a log line by any route.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import Any, Final, Literal, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

#: What a registered secret is replaced with.
MASK: Final = "***"

#: The name of the one root handler this module installs (and replaces when called again).
HANDLER_NAME: Final = "redlight"

_LEVELS: Final[Mapping[str, int]] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

#: syslog priorities (RFC 5424) by structlog level name, for journald's ``<N>`` prefix.
_PRIORITIES: Final[Mapping[str, int]] = {
    "debug": 7,
    "info": 6,
    "notice": 5,
    "warn": 4,
    "warning": 4,
    "error": 3,
    "exception": 3,
    "critical": 2,
    "fatal": 2,
}

_secrets: set[str] = set()


def register_secret(value: str) -> None:
    """Mask every occurrence of ``value`` in every later log line (empty strings are ignored)."""
    if value:
        _secrets.add(value)


def clear_secrets() -> None:
    """Forget all registered secrets (for tests)."""
    _secrets.clear()


def configure_logging(
    level: str = "info",
    mode: Literal["auto", "console", "json", "journald"] = "auto",
    stream: TextIO | None = None,
) -> None:
    """Route structlog and stdlib logging at ``level`` to ``stream`` (stderr by default).

    ``auto`` renders for a person on a TTY and JSON otherwise; journald is detected from
    ``$JOURNAL_STREAM`` (or forced with ``journald``). Safe to call again: it replaces its own
    handler and configuration instead of adding to them.
    """
    numeric = _LEVELS.get(level.lower())
    if numeric is None:
        raise ValueError(f"unknown log level {level!r}; use one of {', '.join(_LEVELS)}")
    if mode not in ("auto", "console", "json", "journald"):
        raise ValueError(f"unknown log format {mode!r}; use auto, console, json or journald")
    out = stream if stream is not None else sys.stderr
    journald = mode == "journald" or _is_journal_stream(out)
    console = mode == "console" or (mode == "auto" and not journald and _isatty(out))
    shared = _shared_processors(journald=journald, console=console)
    renderer: Processor
    if console:
        renderer = structlog.dev.ConsoleRenderer(colors=not journald and _isatty(out))
    else:
        renderer = structlog.processors.JSONRenderer()
    if journald:
        renderer = _JournaldPrefix(renderer)
    _install_handler(_formatter(shared, renderer), out, numeric)
    _configure_structlog(shared)


def _shared_processors(*, journald: bool, console: bool) -> list[Processor]:
    """What structlog events and stdlib records both go through before rendering."""
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
    ]
    if not journald:
        # journald stamps every line itself; a second timestamp is noise.
        if console:
            shared.append(structlog.processors.TimeStamper(fmt="%Y-%m-%d %H:%M:%S", utc=False))
        else:
            shared.append(structlog.processors.TimeStamper(fmt="iso", utc=True))
    return shared


def _formatter(shared: list[Processor], renderer: Processor) -> logging.Formatter:
    """The root handler's formatter: masks secrets, then renders."""
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.StackInfoRenderer(),
            # Exceptions become text before masking, so a secret in a message or traceback
            # is masked too (the console renderer prints the pre-rendered text as is).
            structlog.processors.format_exc_info,
            _mask_secrets,
            renderer,
        ],
    )


def _install_handler(formatter: logging.Formatter, out: TextIO, numeric: int) -> None:
    """Replace this module's root handler (and only it) with one writing to ``out``."""
    handler = logging.StreamHandler(out)
    handler.set_name(HANDLER_NAME)
    handler.setFormatter(formatter)
    # Also on the handler: a logger's filter may demote a record after the level check.
    handler.setLevel(numeric)

    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(numeric)
    # APScheduler logs every job run at info; that is only interesting when debugging.
    logging.getLogger("apscheduler").setLevel(
        logging.NOTSET if numeric <= logging.DEBUG else logging.WARNING
    )


def _configure_structlog(shared: list[Processor]) -> None:
    """structlog hands its events to stdlib logging, so one handler renders both."""
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached, so calling configure_logging again (tests, `redlight run`) takes effect
        # for loggers created at import time.
        cache_logger_on_first_use=False,
    )


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _is_journal_stream(stream: TextIO) -> bool:
    """Whether ``stream`` is the journal socket systemd named in ``$JOURNAL_STREAM``."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    device, _, inode = expected.partition(":")
    try:
        want = (int(device), int(inode))
        stat = os.fstat(stream.fileno())
    except (AttributeError, ValueError, OSError):
        # Not set or malformed, or a stream without a file descriptor (StringIO in tests):
        # either way not the journal.
        return False
    return (stat.st_dev, stat.st_ino) == want


class _JournaldPrefix:
    """Wrap a renderer to prefix every line with the event's syslog priority, ``<N>``."""

    def __init__(self, renderer: Processor) -> None:
        self._renderer = renderer

    def __call__(self, logger: WrappedLogger, name: str, event_dict: EventDict) -> str:
        priority = _PRIORITIES.get(str(event_dict.get("level", name)).lower(), 6)
        text = self._renderer(logger, name, event_dict)
        if not isinstance(text, str):
            text = text.decode() if isinstance(text, bytes | bytearray) else str(text)
        # journald reads the prefix per line, so a multi-line traceback keeps its priority.
        return "\n".join(f"<{priority}>{line}" for line in text.split("\n"))


def _mask_secrets(logger: WrappedLogger, name: str, event_dict: EventDict) -> EventDict:
    """Replace every registered secret in the event and all values with :data:`MASK`."""
    if not _secrets:
        return event_dict
    # Longest first, so a secret that contains another is masked whole.
    ordered = sorted(_secrets, key=len, reverse=True)
    return {key: _mask(value, ordered) for key, value in event_dict.items()}


def _mask(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        return _mask_text(value, secrets)
    if isinstance(value, dict):
        return {_mask(k, secrets): _mask(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask(item, secrets) for item in value]
    if type(value) in (tuple, set, frozenset):
        return type(value)(_mask(item, secrets) for item in value)
    if value is None or isinstance(value, bool | int | float):
        return value
    return _mask_object(value, secrets)


def _mask_text(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text


def _mask_object(value: object, secrets: list[str]) -> object:
    """An object other than a container or a scalar, or its masked text if it shows a secret.

    Such an object is rendered by str() or repr(); if either would show a secret, the masked
    text is logged instead of the object.
    """
    for text in (str(value), repr(value)):
        if any(secret in text for secret in secrets):
            return _mask_text(text, secrets)
    return value


__all__ = ["MASK", "clear_secrets", "configure_logging", "register_secret"]
