"""sd_notify over a real datagram socket, and the shipped systemd unit file."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from redlight.systemd import Notifier

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "redlight.service"


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    """A bound AF_UNIX datagram socket standing in for systemd's notify socket."""
    path = tmp_path / "n.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    # Datagrams sent before recv() are already queued; the timeout only bounds a failure.
    sock.settimeout(5.0)
    yield str(path), sock
    sock.close()


def receive(sock: socket.socket) -> str:
    """The next datagram, decoded."""
    return sock.recv(4096).decode("utf-8")


@pytest.mark.parametrize(
    ("method", "expected"),
    [("ready", "READY=1"), ("watchdog", "WATCHDOG=1"), ("stopping", "STOPPING=1")],
)
def test_notifications_reach_the_socket(
    listener: tuple[str, socket.socket], method: str, expected: str
) -> None:
    """Each notification sends its assignment as one datagram."""
    path, sock = listener
    notifier = Notifier(path, None)
    getattr(notifier, method)()
    assert receive(sock) == expected
    notifier.close()


def test_status_sends_one_line(listener: tuple[str, socket.socket]) -> None:
    """``status`` sends ``STATUS=<text>``, with newlines folded so it stays one assignment."""
    path, sock = listener
    notifier = Notifier(path, None)
    notifier.status("x")
    notifier.status("connected\nREADY=1")
    assert receive(sock) == "STATUS=x"
    assert receive(sock) == "STATUS=connected READY=1"
    notifier.close()


def test_abstract_namespace_socket() -> None:
    """A ``NOTIFY_SOCKET`` starting with ``@`` names a socket in the abstract namespace."""
    name = f"redlight-test-{secrets.token_hex(8)}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5.0)
    try:
        notifier = Notifier("@" + name, None)
        notifier.ready()
        assert receive(sock) == "READY=1"
        notifier.close()
    finally:
        sock.close()


def test_from_env_reads_socket_and_watchdog(
    listener: tuple[str, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``from_env`` uses ``$NOTIFY_SOCKET`` and turns ``$WATCHDOG_USEC`` into seconds."""
    path, sock = listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    notifier = Notifier.from_env()
    assert notifier.enabled
    assert notifier.watchdog_interval_s() == 30.0
    notifier.watchdog()
    assert receive(sock) == "WATCHDOG=1"
    notifier.close()


@pytest.mark.parametrize(
    ("pid_offset", "expected"),
    [(0, 2.5), (1, None)],
)
def test_watchdog_pid_must_be_this_process(
    monkeypatch: pytest.MonkeyPatch, pid_offset: int, expected: float | None
) -> None:
    """``$WATCHDOG_USEC`` counts only when ``$WATCHDOG_PID`` is unset or this process."""
    monkeypatch.setenv("WATCHDOG_USEC", "2500000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + pid_offset))
    assert Notifier.from_env().watchdog_interval_s() == expected


@pytest.mark.parametrize("value", ["", "soon", "0", "-5"])
def test_unusable_watchdog_usec_means_no_watchdog(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """A missing, malformed or non-positive ``$WATCHDOG_USEC`` disables the watchdog."""
    monkeypatch.setenv("WATCHDOG_USEC", value)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert Notifier.from_env().watchdog_interval_s() is None


def test_without_notify_socket_everything_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not started by systemd: no socket, no watchdog, and every call does nothing."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    notifier = Notifier.from_env()
    assert not notifier.enabled
    assert notifier.watchdog_interval_s() is None
    with capture_logs() as logs:
        notifier.ready()
        notifier.status("x")
        notifier.watchdog()
        notifier.stopping()
    assert logs == []


def test_vanished_socket_is_logged_once_and_never_raises(tmp_path: Path) -> None:
    """Sending to a socket that is gone logs one warning, however often it is tried."""
    notifier = Notifier(str(tmp_path / "gone.sock"), 30_000_000)
    with capture_logs() as logs:
        notifier.ready()
        notifier.watchdog()
        notifier.status("x")
    notifier.close()
    [entry] = logs
    assert (entry["event"], entry["log_level"]) == ("sd_notify_failed", "warning")
    assert entry["message"] == "READY=1"


# ---------------------------------------------------------------------------- unit file


def unit_settings(path: Path) -> dict[str, list[str]]:
    """``Section.Key`` to every value it is given, in order (keys may repeat in units)."""
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        settings.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return settings


def test_unit_file_runs_safely_and_hardened() -> None:
    """The unit is Type=notify with a watchdog, turns plugs off after stop, and is sandboxed."""
    units = unit_settings(UNIT)

    def one(key: str) -> str:
        [value] = units[key]
        return value

    assert one("Service.Type") == "notify"
    assert one("Service.NotifyAccess") == "main"
    assert one("Service.WatchdogSec") == "30"
    assert one("Service.ExecStart").endswith("redlight run --config /etc/redlight/config.toml")
    assert "off --all" in one("Service.ExecStopPost")
    assert one("Service.Restart") == "on-failure"
    assert one("Service.RestartPreventExitStatus") == "78"
    assert one("Service.DynamicUser") == "yes"
    assert one("Service.StateDirectory") == "redlight"
    assert one("Service.NoNewPrivileges") == "yes"
    assert one("Service.ProtectSystem") == "strict"
    assert one("Service.CapabilityBoundingSet") == ""
    assert units["Service.SystemCallFilter"] == ["@system-service", "~@privileged @resources"]
    assert one("Service.Environment") == "REDLIGHT_STORAGE__PATH=/var/lib/redlight/redlight.db"
    assert one("Install.WantedBy") == "multi-user.target"


def unit_copy(tmp_path: Path) -> tuple[Path, str]:
    """The unit with ExecStart pointing at a binary that exists (verify checks it), and the
    systemd-analyze to check it with."""
    copy = tmp_path / "redlight.service"
    copy.write_text(
        UNIT.read_text(encoding="utf-8").replace("/usr/local/bin/redlight", "/bin/true"),
        encoding="utf-8",
    )
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None
    return copy, analyze


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_unit_file_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """``systemd-analyze verify`` accepts the unit without a warning."""
    copy, analyze = unit_copy(tmp_path)
    result = subprocess.run(
        [analyze, "verify", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    complaints = [
        line for line in (result.stdout + result.stderr).splitlines() if "redlight" in line
    ]
    assert result.returncode == 0, result.stdout + result.stderr
    assert complaints == []


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_unit_file_security_exposure_is_ok_or_better(tmp_path: Path) -> None:
    """``systemd-analyze security --offline`` rates the unit "OK" or better (at most 2.0)."""
    copy, analyze = unit_copy(tmp_path)
    result = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    found = re.search(r"Overall exposure level for redlight.service: ([\d.]+) (\w+)", result.stdout)
    if found is None:
        pytest.skip(f"this systemd-analyze cannot rate an offline unit: {result.stderr.strip()}")
    assert float(found.group(1)) <= 2.0, result.stdout
    assert found.group(2) in {"OK", "SAFE"}
