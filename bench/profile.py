"""Optional sampling profiles of the daemon with py-spy, summarised as file:function hot spots."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Final

#: Samples per second: enough for hot spots, light enough not to distort the figures much.
RATE_HZ: Final = 200
_FRAME: Final = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def py_spy() -> str | None:
    """The py-spy executable next to this interpreter or on PATH (``pip install py-spy``)."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Recording:
    """``py-spy record --nonblocking`` attached to a running process; collapsed stacks."""

    def __init__(self, executable: str, pid: int, output: Path) -> None:
        """Attach now; :meth:`stop` ends the recording and writes ``output``."""
        self.output = output
        self._process = subprocess.Popen(  # noqa: S603 - fixed argument list
            [
                executable,
                "record",
                "--pid",
                str(pid),
                "--rate",
                str(RATE_HZ),
                "--nonblocking",
                "--format",
                "raw",
                "--output",
                str(output),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        """Stop sampling (SIGINT, as py-spy expects) and wait for the file."""
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGINT)
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


def _where(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    path = match["file"]
    for marker in ("redlight/", "site-packages/"):
        if marker in path:
            path = path[path.index(marker) + (0 if marker == "redlight/" else len(marker)) :]
            break
    else:
        path = Path(path).name
    return f"{path}:{match['func']}"


def summarise(path: Path, top: int = 12) -> list[str]:
    """The hottest functions of a collapsed-stack file: self time, and redlight's inclusive time."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return [f"(no profile written to {path})"]
    for line in lines:
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_where(f) for f in stack.split(";") if "(" in f]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for where in set(frames):
            if where.startswith("redlight/"):
                inclusive[where] += count
    if not total:
        return [f"(no samples in {path})"]
    out = [f"{path.name}: {total} samples at {RATE_HZ} Hz (~{total / RATE_HZ:.1f} s on CPU)"]
    out.append("  self time:")
    out += [f"    {100 * n / total:5.1f}%  {where}" for where, n in own.most_common(top)]
    out.append("  inclusive, redlight's own functions:")
    out += [f"    {100 * n / total:5.1f}%  {where}" for where, n in inclusive.most_common(top)]
    return out
