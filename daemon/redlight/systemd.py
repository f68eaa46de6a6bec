"""sd_notify(3) without dependencies: READY, STATUS, WATCHDOG and STOPPING for ``Type=notify``.

Notifications are fire-and-forget datagrams: a missing or full socket is logged once and never
raises, because the service manager being unreachable must not stop the daemon switching panels
off. Without ``$NOTIFY_SOCKET`` (not started by systemd) every method does nothing.
"""

from __future__ import annotations

import os
import socket
from typing import Self

import structlog

log = structlog.get_logger("redlight.systemd")


class Notifier:
    """Sends state notifications to the service manager over its notify socket."""

    def __init__(self, socket_path: str | None, watchdog_usec: int | None) -> None:
        """Notify ``socket_path`` (``@`` = abstract namespace); ``None`` disables notifications."""
        self._address: str | None = None
        if socket_path:
            # sd_notify(3): a leading "@" names a socket in the abstract namespace.
            self._address = "\0" + socket_path[1:] if socket_path.startswith("@") else socket_path
        self._watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None
        self._socket: socket.socket | None = None
        self._warned = False

    @classmethod
    def from_env(cls) -> Self:
        """A notifier for ``$NOTIFY_SOCKET`` and ``$WATCHDOG_USEC`` (if meant for this process)."""
        watchdog_usec: int | None = None
        pid = os.environ.get("WATCHDOG_PID")
        if pid is None or pid.strip() == str(os.getpid()):
            try:
                watchdog_usec = int(os.environ.get("WATCHDOG_USEC", ""))
            except ValueError:
                watchdog_usec = None
        return cls(os.environ.get("NOTIFY_SOCKET") or None, watchdog_usec)

    @property
    def enabled(self) -> bool:
        """Whether notifications go anywhere."""
        return self._address is not None

    def watchdog_interval_s(self) -> float | None:
        """The watchdog timeout in seconds (ping at least every half of it), or None if off."""
        return None if self._watchdog_usec is None else self._watchdog_usec / 1e6

    def ready(self) -> None:
        """Start-up is complete (``READY=1``)."""
        self._send("READY=1")

    def status(self, text: str) -> None:
        """A one-line status for ``systemctl status`` (``STATUS=...``)."""
        # The protocol is newline-separated assignments; a newline would start a new one.
        self._send("STATUS=" + " ".join(text.splitlines()))

    def watchdog(self) -> None:
        """Still alive (``WATCHDOG=1``)."""
        self._send("WATCHDOG=1")

    def stopping(self) -> None:
        """Shutdown has begun (``STOPPING=1``)."""
        self._send("STOPPING=1")

    def close(self) -> None:
        """Close the socket; a later notification opens it again."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def _send(self, message: str) -> None:
        if self._address is None:
            return
        try:
            if self._socket is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                # Never block the event loop on the service manager.
                sock.setblocking(False)
                self._socket = sock
            self._socket.sendto(message.encode("utf-8"), self._address)
        except OSError as error:
            if not self._warned:
                # Once: a vanished socket would otherwise log at every watchdog ping.
                self._warned = True
                log.warning(
                    "sd_notify_failed",
                    socket=_printable(self._address),
                    message=message,
                    error=str(error),
                )


def _printable(address: str) -> str:
    return "@" + address[1:] if address.startswith("\0") else address


__all__ = ["Notifier"]
