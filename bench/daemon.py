"""The real ``redlight run`` process under test, and the config it is given."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from . import procfs
from .clients import plug_command_topic, plug_state_topic

STOP_TIMEOUT_S: Final = 15.0


def panel_ids(count: int) -> list[str]:
    """``p0000``, ``p0001``, ...: one generic plug each."""
    return [f"p{i:04d}" for i in range(count)]


def config_text(port: int, db: Path, panels: list[str]) -> str:
    """A config with every default (cooldown 0, confirm_timeout 5 s) and one generic plug each."""
    lines = [
        "[mqtt]",
        f'url = "mqtt://127.0.0.1:{port}"',
        'client_id = "redlight-bench"',
        "[storage]",
        f"path = {json.dumps(str(db))}",
    ]
    for panel in panels:
        lines += [
            f"[panels.{panel}]",
            f'plug = {{ preset = "generic", command_topic = "{plug_command_topic(panel)}", '
            f'state_topic = "{plug_state_topic(panel)}" }}',
        ]
    return "\n".join(lines) + "\n"


def _env() -> dict[str, str]:
    """The benchmark's environment, without anything that would change the daemon's config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDLIGHT_")}
    env.pop("NOTIFY_SOCKET", None)
    return env


def _quiet(argv: list[str]) -> str:
    try:
        done = subprocess.run(  # noqa: S603 - fixed argument list
            argv, capture_output=True, text=True, timeout=30, env=_env(), check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def source() -> dict[str, str]:
    """Which redlight the daemon runs: its package directory and, in a checkout, the commit.

    ``dirty`` lists files changed under the package since that commit (others may be editing
    the tree while the benchmark runs: the figures belong to the code that was there).
    """
    where = _quiet(
        [sys.executable, "-c", "import redlight, os; print(os.path.dirname(redlight.__file__))"]
    )
    info = {"redlight": where}
    if where:
        git = ["git", "-C", where]
        info["commit"] = _quiet([*git, "rev-parse", "--short", "HEAD"])
        info["dirty"] = " ".join(
            line.split(maxsplit=1)[-1]
            for line in _quiet([*git, "status", "--porcelain", "--", "."]).splitlines()
        )
    return info


class Daemon:
    """``python -m redlight run --config <path> --log-format json --log-level warning``."""

    def __init__(
        self,
        config: Path,
        log: Path,
        *,
        env: Mapping[str, str] | None = None,
        cgroup: Path | None = None,
    ) -> None:
        """Prepare; nothing runs until :meth:`start`.

        ``env`` is added to the daemon's environment only (an ``LD_PRELOAD`` shim, say);
        ``cgroup`` is a cgroup v1 directory the process joins before redlight starts.
        """
        self.config = config
        self.log = log
        self.extra_env = dict(env or {})
        self.cgroup = cgroup
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """The process id (the interpreter itself: no wrapper in between)."""
        assert self._process is not None
        return self._process.pid

    def start(self) -> float:
        """Start the process; the :func:`time.perf_counter` time just before."""
        env = _env() | self.extra_env
        argv = [
            sys.executable,
            "-m",
            "redlight",
            "run",
            "--config",
            str(self.config),
            "--log-format",
            "json",
            "--log-level",
            "warning",
        ]
        if self.cgroup is not None:
            # The shell joins the cgroup, then becomes the interpreter (exec keeps the pid), so
            # that the daemon is limited from its first instruction, imports included.
            procs = self.cgroup / "cgroup.procs"
            argv = ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(procs), *argv]
        with self.log.open("ab") as log:
            at = time.perf_counter()
            self._process = subprocess.Popen(  # noqa: S603 - fixed argument list
                argv, stdout=log, stderr=subprocess.STDOUT, env=env
            )
        return at

    def stop(self) -> float:
        """SIGTERM (every panel OFF, confirmed, then exit); seconds until the process exited."""
        process = self._process
        if process is None or process.poll() is not None:
            return 0.0
        at = time.perf_counter()
        procfs.terminate(process, STOP_TIMEOUT_S)
        return time.perf_counter() - at

    def kill(self) -> None:
        """Clean-up after a failure: SIGKILL if still running."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(timeout=STOP_TIMEOUT_S)

    def exit_code(self) -> int | None:
        """The exit code, or ``None`` while running."""
        return None if self._process is None else self._process.poll()
