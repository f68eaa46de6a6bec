"""Logging set-up: renderers per destination, one pipeline for stdlib loggers, masked secrets."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from redlight.logs import HANDLER_NAME, clear_secrets, configure_logging, register_secret

SECRET = "hunter2-s3cr3t"  # noqa: S105 - made up; the tests prove it is masked


@pytest.fixture(autouse=True)
def reset_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run each test outside journald and put logging back as it was afterwards."""
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    root = logging.getLogger()
    apscheduler = logging.getLogger("apscheduler")
    levels = (root.level, apscheduler.level)
    yield
    for handler in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(levels[0])
    apscheduler.setLevel(levels[1])
    structlog.reset_defaults()
    clear_secrets()


def json_lines(text: str) -> list[dict[str, Any]]:
    """Parse output that must be one JSON object per line."""
    parsed = [json.loads(line) for line in text.splitlines()]
    assert all(isinstance(entry, dict) for entry in parsed)
    return parsed


def test_json_mode_writes_one_object_per_line() -> None:
    """In JSON mode every event is one JSON object on one line with event, level and timestamp."""
    out = io.StringIO()
    configure_logging("info", mode="json", stream=out)
    log = structlog.get_logger("redlight.test")
    log.info("session_started", panel="hip_left", duration_s=600)
    log.warning("plug_unresponsive", panel="knee")
    first, second = json_lines(out.getvalue())
    assert first["event"] == "session_started"
    assert (first["level"], first["logger"]) == ("info", "redlight.test")
    assert (first["panel"], first["duration_s"]) == ("hip_left", 600)
    assert first["timestamp"].endswith("Z")
    assert (second["event"], second["level"]) == ("plug_unresponsive", "warning")


def test_auto_mode_writes_json_when_not_a_terminal() -> None:
    """``auto`` renders JSON for a stream that is not a TTY."""
    out = io.StringIO()
    configure_logging(stream=out)
    structlog.get_logger("redlight").info("starting")
    [entry] = json_lines(out.getvalue())
    assert entry["event"] == "starting"


def test_console_mode_is_human_readable() -> None:
    """Console mode writes a plain line with the event and key=value pairs, not JSON."""
    out = io.StringIO()
    configure_logging("info", mode="console", stream=out)
    structlog.get_logger("redlight").info("session_started", panel="hip_left")
    text = out.getvalue()
    assert not text.startswith("{")
    assert "session_started" in text
    assert "panel=hip_left" in text
    assert "info" in text
    assert "\x1b[" not in text  # no colour codes when the stream is not a terminal


def test_level_filters_structlog_and_stdlib_alike() -> None:
    """Events below the configured level are dropped, whichever logger sent them."""
    out = io.StringIO()
    configure_logging("warning", mode="json", stream=out)
    structlog.get_logger("redlight").info("quiet")
    logging.getLogger("paho.mqtt.client").info("quiet too")
    structlog.get_logger("redlight").error("loud")
    assert [e["event"] for e in json_lines(out.getvalue())] == ["loud"]


def test_journald_lines_have_a_priority_prefix_and_no_timestamp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under journald each line starts with its syslog priority and carries no timestamp."""
    path = tmp_path / "journal"
    with path.open("w", encoding="utf-8") as stream:
        stat = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{stat.st_dev}:{stat.st_ino}")
        configure_logging("debug", stream=stream)
        log = structlog.get_logger("redlight")
        log.debug("detail")
        log.info("starting", panels=2)
        log.warning("careful")
        log.error("broken")
        log.critical("on_fire")
        logging.getLogger("paho.mqtt.client").warning("from paho")
        stream.flush()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [line[:3] for line in lines] == ["<7>", "<6>", "<4>", "<3>", "<2>", "<4>"]
    entries = [json.loads(line[3:]) for line in lines]
    assert [e["event"] for e in entries] == [
        "detail",
        "starting",
        "careful",
        "broken",
        "on_fire",
        "from paho",
    ]
    assert all("timestamp" not in e for e in entries)


def test_another_file_is_not_mistaken_for_the_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``$JOURNAL_STREAM`` naming a different file leaves plain JSON with timestamps."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("")
    stat = os.stat(elsewhere)
    monkeypatch.setenv("JOURNAL_STREAM", f"{stat.st_dev}:{stat.st_ino}")
    path = tmp_path / "log"
    with path.open("w", encoding="utf-8") as stream:
        configure_logging("info", stream=stream)
        structlog.get_logger("redlight").info("starting")
    [entry] = json_lines(path.read_text(encoding="utf-8"))
    assert "timestamp" in entry


def test_journald_mode_can_be_forced() -> None:
    """``mode="journald"`` prefixes priorities and drops timestamps even without the socket."""
    out = io.StringIO()
    configure_logging("info", mode="journald", stream=out)
    structlog.get_logger("redlight").error("broken")
    text = out.getvalue()
    assert text.startswith("<3>{")
    assert "timestamp" not in json.loads(text[3:])


def test_stdlib_records_go_through_the_same_pipeline() -> None:
    """A paho-mqtt stdlib record comes out as the same JSON as redlight's own events."""
    out = io.StringIO()
    configure_logging("info", mode="json", stream=out)
    logging.getLogger("paho.mqtt.client").warning("Connection to %s lost", "broker")
    [entry] = json_lines(out.getvalue())
    assert entry["event"] == "Connection to broker lost"
    assert (entry["level"], entry["logger"]) == ("warning", "paho.mqtt.client")
    assert "timestamp" in entry


def test_apscheduler_chatter_is_hidden_unless_debugging() -> None:
    """APScheduler's info records are dropped at info level and shown at debug level."""
    out = io.StringIO()
    configure_logging("info", mode="json", stream=out)
    logging.getLogger("apscheduler.scheduler").info("Added job")
    logging.getLogger("apscheduler.scheduler").warning("Run time missed")
    assert [e["event"] for e in json_lines(out.getvalue())] == ["Run time missed"]
    out = io.StringIO()
    configure_logging("debug", mode="json", stream=out)
    logging.getLogger("apscheduler.scheduler").info("Added job")
    assert [e["event"] for e in json_lines(out.getvalue())] == ["Added job"]


def test_configuring_again_does_not_stack_handlers() -> None:
    """Calling configure_logging repeatedly leaves one handler, writing to the latest stream."""
    old = io.StringIO()
    configure_logging("info", mode="json", stream=old)
    configure_logging("info", mode="json", stream=old)
    new = io.StringIO()
    configure_logging("info", mode="json", stream=new)
    structlog.get_logger("redlight").info("once")
    logging.getLogger("paho").info("once too")
    assert old.getvalue() == ""
    assert [e["event"] for e in json_lines(new.getvalue())] == ["once", "once too"]
    assert [h.get_name() for h in logging.getLogger().handlers].count(HANDLER_NAME) == 1


def test_unknown_level_is_rejected() -> None:
    """An unknown level name is a ValueError that lists the valid ones."""
    with pytest.raises(ValueError, match="debug, info"):
        configure_logging("loud", stream=io.StringIO())


@pytest.mark.parametrize("mode", ["json", "console", "journald"])
def test_registered_secret_never_appears(mode: str) -> None:
    """A registered secret is masked in events, values, nested values, tracebacks and stdlib."""
    out = io.StringIO()
    configure_logging("info", mode=mode, stream=out)  # type: ignore[arg-type]
    register_secret(SECRET)
    log = structlog.get_logger("redlight")
    log.info(f"login with {SECRET}")  # noqa: G004 - the secret must be masked even here
    log.info("connecting", password=SECRET, url=f"mqtt://u:{SECRET}@host")
    log.info("nested", options={"auth": [f"x{SECRET}x", (SECRET,)], SECRET: 1})
    log.info("object", error=ValueError(f"bad password {SECRET}"), raw=SECRET.encode())
    try:
        raise RuntimeError(f"refused: {SECRET}")
    except RuntimeError:
        log.exception("connect_failed")
    logging.getLogger("paho.mqtt.client").error("auth failed for %s", SECRET)
    try:
        raise OSError(SECRET)
    except OSError:
        logging.getLogger("apscheduler").exception("job raised")
    text = out.getvalue()
    assert SECRET not in text
    assert "hunter2" not in text
    assert text.count("***") >= 10
    assert "refused: ***" in text
    assert "auth failed for ***" in text


def test_empty_secret_is_ignored() -> None:
    """Registering an empty string masks nothing."""
    out = io.StringIO()
    configure_logging("info", mode="json", stream=out)
    register_secret("")
    structlog.get_logger("redlight").info("plain", value="text")
    [entry] = json_lines(out.getvalue())
    assert (entry["event"], entry["value"]) == ("plain", "text")
