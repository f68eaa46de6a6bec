"""The README's Try-it block runs as written, against the config file it names (issue 14)."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from redlight.config import load_config
from tests.integration.harness import WAIT_S, Daemon, System, start_plug

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"


def try_it_lines() -> list[str]:
    """The lines of the first ``sh`` block under the README's "Try it" heading, in order."""
    section = README.read_text().split("### Try it\n", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, flags=re.DOTALL)
    assert block is not None
    lines = [line.split("#")[0].strip() for line in block.group(1).splitlines()]
    return [line for line in lines if line]


def test_the_try_it_block_is_what_the_test_below_runs() -> None:
    """The block names a shipped config, runs the daemon, and ends with every plug off; each
    line is an ``export`` or a ``redlight`` command (the only kinds the test knows how to run)."""
    lines = try_it_lines()
    assert lines[0] == "export REDLIGHT_CONFIG=config/examples/try-it.toml"
    assert (REPO / "config" / "examples" / "try-it.toml").is_file()
    assert "redlight run" in lines
    assert "redlight start hip_right --dose 1 --follow" in lines
    assert lines[-1] == "redlight off --all"
    assert all(line.startswith(("export ", "redlight ")) for line in lines)


#: What each line must print (on stdout) besides exiting 0, to do what the README says.
EXPECTED = {
    "redlight check --connect": [
        "config/examples/try-it.toml: OK (2 panels, 1 routine, 1 schedule; max_on 15m)",
        "redlight: running, by redlight/status",
        "hip_left: answered, off (tasmota on stat/panel_left/",
        "hip_right: answered, off (tasmota on stat/panel_right/",
    ],
    "redlight status": ["redlight: online", "hip_left", "hip_right"],
    "redlight start hip_left --duration 8m": ["started hip_left for 8m, until "],
    "redlight stop hip_left": ["stopped: hip_left"],
    "redlight start hip_right --dose 1 --follow": [
        "started hip_right for 10s",
        "hip_right: finished (completed)",
    ],
    "redlight start --routine post_run": ["started routine Post-run hips (3 steps)"],
    "redlight stop --all": ["stopped: hip_left", "not running: hip_right (plug off)"],
    "redlight schedules": ["rest_days", "offer", "enabled"],
    "redlight history --days 7": [
        "Left hip (left hip): 2 sessions, ",
        "Right hip (right hip): 1 session, ",
    ],
    "redlight off --all": ["OFF sent to 2 plugs; confirmed off: hip_left, hip_right"],
}


async def test_the_try_it_block_runs_as_written(system: System) -> None:
    """Each line of the Try-it block, typed as written in a directory laid out like the
    repository (its ``config`` is the repository's own, linked), exits 0, prints what it did
    and no traceback. Nothing in the shipped file is changed: simulated plugs answer on its
    topics, and the only setting made is the one the README mentions, REDLIGHT_MQTT__URL,
    pointing at the test's private broker."""
    home = system.tmp / "checkout"
    home.mkdir()
    (home / "config").symlink_to(REPO / "config", target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDLIGHT_")}
    env["REDLIGHT_MQTT__URL"] = f"mqtt://127.0.0.1:{system.broker.port}"
    lines = try_it_lines()
    exports = dict(
        line.removeprefix("export ").split("=", 1) for line in lines if line.startswith("export ")
    )
    assert set(exports) == {"REDLIGHT_CONFIG"}
    config = load_config(REPO / exports["REDLIGHT_CONFIG"])
    for key, panel in config.panels.items():
        plug = panel.plug.model_dump(exclude_unset=True)
        system.plugs[key] = await start_plug(system.broker.port, key, plug, key)
    ran = []
    for line in lines:
        if line.startswith("export "):
            name, value = line.removeprefix("export ").split("=", 1)
            env[name] = value
            continue
        argv = shlex.split(line)
        if argv == ["redlight", "run"]:
            # In the foreground, as the README says; the harness waits until it is online.
            system.daemon = Daemon(
                Path(env["REDLIGHT_CONFIG"]), system.tmp / "daemon.log", env=env, cwd=home
            )
            await system.start_daemon()
            continue
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "redlight", *argv[1:]],
            capture_output=True,
            text=True,
            env=env,
            cwd=home,
            timeout=WAIT_S * 4,
            check=False,
        )
        assert (done.returncode, done.stderr) == (0, ""), f"{line}: {done.stderr}"
        for expected in EXPECTED[line]:
            assert expected in done.stdout, f"{line}: {expected!r} not in {done.stdout!r}"
        ran.append(line)
    assert ran == list(EXPECTED)
    assert not any(plug.is_on for plug in system.plugs.values())
    assert (home / "redlight-try.db").is_file()  # the history went where the file says
