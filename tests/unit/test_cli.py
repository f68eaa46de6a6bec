"""The command line's own surface: help with examples, version, completion, one-line errors."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from redlight import __version__
from redlight.cli import _EXAMPLES, _control_line, _paused, build_parser, completion_script, main
from redlight.config import load_config

COMMANDS = sorted(_EXAMPLES)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_examples(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``redlight COMMAND --help`` exits 0 and shows examples that use the command."""
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out
    assert f"redlight {command}" in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    """``--version`` prints the package version."""
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"redlight {__version__}"


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_bash_completion_is_valid_and_knows_every_command(tmp_path: Path) -> None:
    """The bash script parses, and completing 'redlight st' offers start, status and stop."""
    script = tmp_path / "redlight.bash"
    script.write_text(completion_script(build_parser(), "bash"))
    probe = (
        f"source {script}; COMP_WORDS=(redlight st); COMP_CWORD=1; _redlight; "
        'echo "${COMPREPLY[@]}"'
    )
    done = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True)
    assert sorted(done.stdout.split()) == ["start", "status", "stop"]
    for command in COMMANDS:
        assert f"{command}) opts=" in script.read_text()


def test_errors_are_one_sentence(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown panel is one line on stderr, naming the panels there are, and exit 1, never a
    traceback."""
    path = tmp_path / "config.toml"
    path.write_text('[panels.hip_left]\nplug = { preset = "tasmota", topic = "t" }\n')
    assert main(["start", "nope", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert err == "redlight: there is no panel 'nope' in the config (panels: hip_left)\n"


def test_check_fails_on_a_storage_path_that_cannot_be_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 14 item 8: a history path under a file passes no more: ``check`` names it, exit 1
    (the daemon would run without a history), and ``history`` says why there is none."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    path = tmp_path / "config.toml"
    path.write_text(
        f'[storage]\npath = "{blocker / "history.db"}"\n'
        '[panels.hip_left]\nplug = { preset = "tasmota", topic = "t" }\n'
    )
    assert main(["check", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert (
        err
        == f"storage.path: cannot create {blocker / 'history.db'}: {blocker} is not a directory\n"
    )
    assert main(["history", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"redlight: the history database is unavailable: {blocker}")
    assert "no history yet" not in err


TWO_PANELS = (
    '[panels.hip_left]\nplug = { preset = "tasmota", topic = "l" }\n'
    '[panels.hip_right]\nplug = { preset = "tasmota", topic = "r" }\n'
    '[routines.post_run]\nsteps = [{ panels = ["hip_left"], duration = "1m" }]\n'
)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["start", "hip_left", "--routine", "post_run"],
            "a routine sets its own panels and lengths: 'redlight start --routine ID', or "
            "'redlight start PANEL [--duration 10m | --dose 30]', not both",
        ),
        (
            ["start", "--routine", "post_run", "--duration", "5m"],
            "a routine sets its own panels and lengths: 'redlight start --routine ID', or "
            "'redlight start PANEL [--duration 10m | --dose 30]', not both",
        ),
        (
            ["start", "hip_left", "--duration", "10"],
            "--duration: give a unit, e.g. 10m for minutes or 10s for seconds "
            "(a bare number is ambiguous)",
        ),
        (
            ["off"],
            "name the panels to switch off (e.g. 'redlight off hip_left'), or use --all "
            "(panels: hip_left, hip_right)",
        ),
        (["off", "hip_left", "--all"], "name panels to switch off, or use --all, not both"),
        (
            ["extend", "hip_left", "2"],
            "by: give a unit, e.g. 2m for minutes or 2s for seconds (a bare number is ambiguous)",
        ),
        (
            ["extend", "hip_left", "soon"],
            "by: expected a duration like '90s', '10m' or '1h30m' (got 'soon')",
        ),
        (["pause", "nope"], "there is no panel 'nope' in the config (panels: hip_left, hip_right)"),
        (
            ["off", "hip_left", "nope"],
            "there is no panel 'nope' in the config (panels: hip_left, hip_right)",
        ),
    ],
)
def test_ambiguous_commands_are_refused_before_anything_is_sent(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 14 item 10: a panel beside a routine (the panel was ignored), a bare number for a
    duration (seconds here, minutes in Home Assistant), ``off`` with nothing to switch: each
    is one sentence and exit 1, before any broker is asked (none runs here)."""
    path = tmp_path / "config.toml"
    path.write_text('[mqtt]\nurl = "mqtt://127.0.0.1:9"\n' + TWO_PANELS)
    assert main([*argv, "--config", str(path)]) == 1
    assert capsys.readouterr().err == f"redlight: {message}\n"


@pytest.mark.parametrize(
    ("event", "line"),
    [
        (
            {
                "event_type": "session_extended",
                "by_s": 120,
                "duration_s": 720,
                "ends_at": "2026-11-24T07:42:00+01:00",
                "failsafe_s": 450,
            },
            "extended hip_left by 2m: 12m in all, until 07:42:00; the plug's own timer is "
            "re-armed for 7m30s",
        ),
        (
            {"event_type": "session_extended", "by_s": 60, "duration_s": 300},
            "extended hip_left by 1m: 5m in all (paused: the end moves with the resume)",
        ),
        (
            {
                "event_type": "session_extended",
                "by_s": 60,
                "duration_s": 300,
                "ends_at": "2026-11-24T07:35:00+01:00",
            },
            "extended hip_left by 1m: 5m in all, until 07:35:00",  # a plug without a timer
        ),
        (
            {
                "event_type": "session_resumed",
                "remaining_s": 360,
                "ends_at": "2026-11-24T07:50:00+01:00",
            },
            "resumed hip_left: 6m left, until 07:50:00",
        ),
    ],
)
def test_a_control_says_what_the_daemon_did(event: dict[str, object], line: str) -> None:
    """``extend`` and ``resume`` print the daemon's answer: the length it became, the end, and
    whether the plug's own timer was re-armed (only while the panel is on, with a timer)."""
    assert _control_line("hip_left", event) == line


def test_a_pause_is_done_once_the_plug_confirmed_off(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A confirmed pause says what is left and until when to resume; an unconfirmed one names
    the plug's report topic on stderr and fails."""
    path = tmp_path / "config.toml"
    path.write_text(TWO_PANELS)
    config = load_config(path)
    event = {"remaining_s": 360, "resume_by": "2026-11-24T07:44:00+01:00"}
    assert _paused(config, "hip_left", event, confirmed=True) == 0
    assert capsys.readouterr().out == (
        "paused hip_left: off, 6m left; 'redlight resume hip_left' before 07:44:00, or it ends\n"
    )
    assert _paused(config, "hip_left", event, confirmed=False) == 1
    err = capsys.readouterr().err
    assert err.startswith(
        "not confirmed off: hip_left (paused, but redlight waited for a report on "
    )
    assert err.endswith("); it keeps sending OFF, check the plug\n")
