"""What the daemon is sent at start-up, per MQTT protocol: the effect of No Local (issue 12).

On 3.1.1 redlight subscribes to its plugs' command topics (to clear retained commands, safety
rule 7) and so hears each of its own start-up OFFs back; on 5 those subscriptions carry No
Local. The broker logs every PUBLISH it sends (``log_type debug``); the lines addressed to the
daemon's client id between its start and its going quiet are counted, by kind of topic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from .clients import PLUG_PREFIX
from .scenarios import progress, rig

PANELS: Final = 1000
PROTOCOLS: Final = ("3.1.1", "5")
#: The daemon's client id in the benchmark's config (bench/daemon.py).
CLIENT_ID: Final = "redlight-bench"
#: mosquitto 2's debug line for a PUBLISH it sends: "Sending PUBLISH to <id> (d0, q1, r0,
#: m3, '<topic>', ... (N bytes))".
_SENT: Final = re.compile(rf"Sending PUBLISH to {re.escape(CLIENT_ID)} \([^']*'(?P<topic>[^']*)'")


@dataclass(frozen=True, slots=True)
class Received:
    """The PUBLISH packets the broker sent the daemon during one start-up."""

    protocol: str
    own_commands: int
    plug_reports: int
    other: int
    startup_s: float

    @property
    def total(self) -> int:
        """Every PUBLISH the daemon was sent."""
        return self.own_commands + self.plug_reports + self.other


def count(log: Path, start_offset: int) -> tuple[int, int, int]:
    """Own plug commands, plug reports, and the rest sent to the daemon after ``start_offset``."""
    own = reports = other = 0
    with log.open("rb") as lines:
        lines.seek(start_offset)
        for raw in lines:
            found = _SENT.search(raw.decode(errors="replace"))
            if found is None:
                continue
            topic = found["topic"]
            if topic.startswith(f"{PLUG_PREFIX}/") and topic.endswith("/set"):
                own += 1
            elif topic.startswith(f"{PLUG_PREFIX}/"):
                reports += 1
            else:
                other += 1
    return own, reports, other


def run_startup_messages(root: Path) -> list[Received]:
    """One start-up of 1,000 panels per protocol, each on its own broker."""
    results: list[Received] = []
    for protocol in PROTOCOLS:
        progress(f"start-up messages: {PANELS} panels on MQTT {protocol}")
        env = {"REDLIGHT_MQTT__PROTOCOL": protocol}
        with rig(root, f"startup-{protocol}", PANELS, env=env, log_publishes=True) as setup:
            log = setup.broker.log_path
            offset = log.stat().st_size if log.exists() else 0
            startup = setup.start_daemon()
            own, reports, other = count(log, offset)
            setup.daemon.stop()
        results.append(Received(protocol, own, reports, other, startup.settled_s))
    return results


def startup_messages_report(results: list[Received]) -> list[str]:
    """A Markdown table, then one JSON-ready dict per protocol."""
    lines = [
        "| MQTT | own plug commands heard back | plug reports | other | total | settled after |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.protocol} | {r.own_commands} | {r.plug_reports} | {r.other} | {r.total} "
            f"| {r.startup_s:.1f} s |"
        )
    return lines


def startup_messages_figures(results: list[Received]) -> dict[str, Any]:
    """The counts, by protocol, for the JSON line."""
    return {
        f"startup_received_{r.protocol.replace('.', '')}": {
            "own_commands": r.own_commands,
            "plug_reports": r.plug_reports,
            "other": r.other,
            "total": r.total,
        }
        for r in results
    }
