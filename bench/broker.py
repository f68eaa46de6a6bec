"""A private mosquitto for the benchmark: its own directory and a free port, never 1883.

Self-contained (the benchmark does not depend on the test tree). Unlike the tests' broker it
keeps nothing on disk and logs only problems: the benchmark sends thousands of messages, and
mosquitto's per-packet log would cost CPU the daemon under test competes for.
"""

from __future__ import annotations

import getpass
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Final

from . import procfs

#: The machine's shared broker: never used here.
SHARED_PORT: Final = 1883
STARTUP_TIMEOUT_S: Final = 10.0
STOP_TIMEOUT_S: Final = 10.0


class BrokerError(RuntimeError):
    """mosquitto is missing or did not start."""


def mosquitto_binary() -> str:
    """The mosquitto executable; :class:`BrokerError` when it is not installed."""
    found = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(found).exists():
        raise BrokerError("mosquitto is not installed (apt-get install mosquitto)")
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (never 1883)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port: int = probe.getsockname()[1]
        if port != SHARED_PORT:
            return port


class Mosquitto:
    """A mosquitto process on 127.0.0.1 whose config and log live in ``directory``."""

    def __init__(
        self, directory: Path, *, nodelay: bool = False, log_publishes: bool = False
    ) -> None:
        """Prepare (not start) a broker on a free port; ``nodelay`` sets ``set_tcp_nodelay``;
        ``log_publishes`` logs every packet (``log_type debug``), so each PUBLISH a client
        was sent can be counted (it costs the broker CPU: only where counting is the point)."""
        self.directory = directory
        self.nodelay = nodelay
        self.log_publishes = log_publishes
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        """mosquitto's log (errors, warnings and notices only)."""
        return self.directory / "mosquitto.log"

    def config_text(self) -> str:
        """The broker's config: mosquitto's defaults, except where the benchmark needs otherwise."""
        return "\n".join(
            [
                f"listener {self.port} 127.0.0.1",
                "allow_anonymous true",
                "persistence false",
                f"log_dest file {self.log_path}",
                "log_type error",
                "log_type warning",
                "log_type notice",
                *(["log_type debug"] if self.log_publishes else []),
                # The default (1000 QoS 1 messages queued per client) drops messages in the
                # start-up burst of 1,000 panels; the benchmark must see every one it counts.
                "max_queued_messages 0",
                # mosquitto's default is false (Nagle's algorithm on); --broker-nodelay compares.
                f"set_tcp_nodelay {'true' if self.nodelay else 'false'}",
                # As root, mosquitto would switch to the 'mosquitto' user and lose access to
                # the benchmark's directory; naming the current user keeps it.
                f"user {getpass.getuser()}",
                "",
            ]
        )

    def start(self) -> None:
        """Start mosquitto and wait until it accepts TCP connections."""
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "mosquitto.conf"
        config.write_text(self.config_text(), encoding="utf-8")
        self._process = subprocess.Popen(  # noqa: S603 - fixed argument list, our own config
            [mosquitto_binary(), "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline and self._process.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)  # polling a condition under a deadline
        self.stop()
        raise BrokerError(f"mosquitto did not listen on port {self.port} (see {self.log_path})")

    def stop(self) -> None:
        """SIGTERM, and wait for the process to exit."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        procfs.terminate(process, STOP_TIMEOUT_S)

    def __enter__(self) -> Mosquitto:
        """Start; stop on leaving the block."""
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop."""
        self.stop()
