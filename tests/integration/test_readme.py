"""Every ``redlight`` command in the README's code blocks works as written."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.harness import WAIT_S, Daemon, System, config_text, start_plug

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"

PANELS = {
    "hip_left": {"preset": "tasmota", "topic": "readme_left"},
    "hip_right": {"preset": "shelly_gen2", "prefix": "shellyplugsg3-readme"},
}
EXTRA = """
[routines.post_run]
name = "Post-run hips"
steps = [
  { panels = ["hip_left"], duration = "3s" },
  { pause = "1s", prompt = "Turn to your right side" },
  { panels = ["hip_right"], duration = "3s" },
]

[schedules.rest_days]
routine = "post_run"
cron = "0 19 * * tue,thu,sat"
timezone = "Europe/Amsterdam"
"""


def readme_commands() -> list[str]:
    """The ``redlight ...`` lines of the README's ``sh`` blocks, in order."""
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(), flags=re.DOTALL)
    lines = [line.split("#")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line.startswith("redlight ")]


def test_the_readme_has_the_commands_this_test_runs() -> None:
    """The Try-it block is there (so the test below really runs the README)."""
    commands = readme_commands()
    assert "redlight start hip_right --dose 10 --follow" in commands
    assert "redlight off --all" in commands


async def test_every_readme_command_works(system: System) -> None:
    """Each command exits 0, prints no traceback, and does what the README says."""
    for name, plug in PANELS.items():
        system.plugs[name] = await start_plug(system.broker.port, name, plug, name)
    path = system.tmp / "config.toml"
    # 1000 mW/cm² makes 10 J/cm² a 10-second session, so --follow ends quickly.
    settings = {"hip_right": {"irradiance_mw_cm2": 1000}}
    path.write_text(
        config_text(system.broker.port, system.db, PANELS, extra=EXTRA, settings=settings)
    )
    system.daemon = Daemon(path, system.tmp / "daemon.log")
    await system.start_daemon()
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDLIGHT_")}
    env["REDLIGHT_CONFIG"] = str(path)
    ran: list[str] = []
    for line in readme_commands():
        argv = shlex.split(line)
        if argv[1] in {"run", "demo"}:
            continue  # the daemon itself runs under the harness; the demo has its own test
        if argv[1] == "check" and "--config" in argv:
            argv[argv.index("--config") + 1] = str(path)
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "redlight", *argv[1:]],
            capture_output=True,
            text=True,
            env=env,
            timeout=WAIT_S * 4,
            check=False,
        )
        assert done.returncode == 0, f"{line}: {done.stderr}"
        assert "Traceback" not in done.stderr
        ran.append(line)
        if line == "redlight start hip_right --dose 10 --follow":
            assert "hip_right: finished (completed)" in done.stdout
        if line == "redlight history --days 7":
            assert "sessions, " in done.stdout
    assert len(ran) >= 10
    assert not any(plug.is_on for plug in system.plugs.values())
