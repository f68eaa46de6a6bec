"""The benchmark's processes: what Linux says of them (CPU time, resident memory, the broker
socket), and stopping them."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Final

_CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
#: /proc/net/tcp's state code for an established connection.
_ESTABLISHED: Final = "01"


def terminate(process: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM and wait for the exit; SIGKILL if it takes longer than ``timeout``."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process used so far (utime + stime of /proc/<pid>/stat)."""
    text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    # The command name may hold spaces: the fields start after its closing parenthesis.
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def status_mb(pid: int, key: str = "VmRSS") -> float:
    """A memory figure of /proc/<pid>/status (``VmRSS``, ``VmHWM``) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def clients_of(port: int) -> set[int]:
    """Local ports of the established TCP connections to 127.0.0.1:``port`` (client side).

    One read of /proc/net/tcp, cheap enough to poll every millisecond while a process starts.
    """
    want = f":{port:04X}"
    found: set[int] = set()
    with open("/proc/net/tcp", encoding="ascii") as table:
        next(table)
        for line in table:
            parts = line.split()
            if parts[2].endswith(want) and parts[3] == _ESTABLISHED:
                found.add(int(parts[1].rsplit(":", 1)[1], 16))
    return found
