"""podman as it works on these machines (runc, cgroupfs, explicit ulimits), for the image tests.

See ``../shared/reference/containers.md``: crun fails here, so every command names runc and
the cgroupfs manager. Every container a test starts has a unique name and is removed by
:meth:`Container.remove`, which the fixtures call whatever happened.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

PODMAN: Final = ("podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs")
ULIMITS: Final = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024")
#: The images ``make image`` builds (``make test-image`` passes the same names).
IMAGE: Final = os.environ.get("REDLIGHT_IMAGE", "localhost/redlight:0.1.0")
APP_IMAGE: Final = os.environ.get("REDLIGHT_APP_IMAGE", "localhost/redlight-app:0.1.0")
#: What the tests give ``podman stop`` (as compose's stop_grace_period and the App's timeout).
STOP_TIMEOUT_S: Final = 20


def podman(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """One podman command, its output captured; never raises on a non-zero exit."""
    return subprocess.run(
        [*PODMAN, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def missing_image(image: str) -> str | None:
    """Why ``image`` cannot be tested here (no podman, or not built), or ``None``."""
    if shutil.which("podman") is None:
        return "podman is not installed (make test-image installs it)"
    if podman("image", "exists", image).returncode != 0:
        return f"{image} is not built (make image)"
    return None


@dataclass
class Container:
    """One container of a test: started detached, on the host's network."""

    image: str
    volumes: Sequence[str] = ()
    env: dict[str, str] = field(default_factory=dict)
    command: Sequence[str] = ()
    name: str = field(default_factory=lambda: f"redlight-test-{secrets.token_hex(4)}")

    async def run(self) -> None:
        """``podman run -d``: returns once podman has started it."""
        args = ["run", "-d", "--name", self.name, "--network", "host", *ULIMITS]
        for volume in self.volumes:
            args += ["-v", volume]
        for key, value in self.env.items():
            args += ["-e", f"{key}={value}"]
        done = await asyncio.to_thread(podman, *args, self.image, *self.command)
        assert done.returncode == 0, done.stderr

    async def stop(self) -> int:
        """``podman stop`` (SIGTERM, then SIGKILL after the timeout); the exit code."""
        timeout = str(STOP_TIMEOUT_S)
        done = await asyncio.to_thread(podman, "stop", "-t", timeout, self.name, timeout=60)
        assert done.returncode == 0, done.stderr
        return await self.wait()

    async def kill(self) -> None:
        """``podman kill``: SIGKILL, nothing runs after it (no ExecStopPost in a container)."""
        done = await asyncio.to_thread(podman, "kill", self.name)
        assert done.returncode == 0, done.stderr

    async def wait(self) -> int:
        """The exit code, once the container has exited."""
        done = await asyncio.to_thread(podman, "wait", self.name, timeout=60)
        assert done.returncode == 0, done.stderr
        return int(done.stdout.strip().splitlines()[-1])

    async def health(self) -> int:
        """``podman healthcheck run``: the image's HEALTHCHECK, once; its exit code."""
        done = await asyncio.to_thread(podman, "healthcheck", "run", self.name)
        return done.returncode

    def logs(self) -> str:
        """Everything the container wrote (stdout and stderr)."""
        done = podman("logs", self.name)
        return done.stdout + done.stderr

    def inspect(self) -> str:
        """``podman inspect`` as text (its command line and environment among it)."""
        return podman("inspect", self.name).stdout

    def remove(self) -> None:
        """Remove it, running or not (the fixtures' cleanup)."""
        podman("rm", "-f", "-t", "0", self.name)
