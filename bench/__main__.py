"""``python -m bench [--quick] [--profile DIR]``: measure redlight and print the figures.

The lines printed are a readable table; the last one is a single JSON object with every figure.
Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from .broker import BrokerError
from .clients import BenchError
from .constrained import (
    quarter_core_figures,
    quarter_core_rows,
    run_quarter_core,
    run_slow_disk,
    slow_disk_figures,
    slow_disk_rows,
)
from .cpuquota import unavailable
from .daemon import source
from .probe import probe_report, run_probe
from .profile import summarise
from .report import figures, flood_report, json_line, table
from .scenarios import FULL, QUICK, Plan, progress, run, run_flood
from .startupmsgs import (
    run_startup_messages,
    startup_messages_figures,
    startup_messages_report,
)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when it completed (whether or not the goals were met)."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="fewer repetitions (under 5 minutes on 2 cores)"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="also sample the daemon with py-spy into DIR and print its hot spots "
        "(the figures of such a run are disturbed by the sampling)",
    )
    parser.add_argument(
        "--broker-nodelay",
        action="store_true",
        help="run mosquitto with set_tcp_nodelay true (its default is false)",
    )
    parser.add_argument(
        "--flood-only",
        action="store_true",
        help="run only the flood phase (junk flood during a cutoff, then a birth storm)",
    )
    parser.add_argument(
        "--slow-disk",
        action="store_true",
        help="run only the slow-disk phase: OFFs due while sessions start and a WAL checkpoint "
        "runs, every fsync of the daemon 200 ms slower (LD_PRELOAD shim; needs gcc), "
        "against the normal disk (about 2 minutes)",
    )
    parser.add_argument(
        "--quarter-core",
        action="store_true",
        help="run only the quarter-core phase: start-up and 100 sessions with the daemon in a "
        "cgroup v1 cpu quota of 25 ms per 100 ms (needs root), against unlimited "
        "(about 3 minutes)",
    )
    parser.add_argument(
        "--idle-lateness",
        action="store_true",
        help="run only the hop-by-hop look at 10-session cutoffs, idle and with the CPUs kept "
        "busy (the daemon instrumented through a sitecustomize module; about 3 minutes)",
    )
    parser.add_argument(
        "--startup-messages",
        action="store_true",
        help="run only the count of messages the daemon is sent while 1,000 panels start, on "
        "MQTT 3.1.1 and on 5 (No Local), from the broker's debug log (about 1 minute)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the working directory (logs, configs)"
    )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    work = tempfile.mkdtemp(prefix="redlight-bench-")
    root = Path(work)
    try:
        lines = _measure(args, plan, root, load_before)
    except (BenchError, BrokerError) as error:
        progress(f"failed: {error} (logs in {work})")
        return 1
    sys.stdout.write("\n".join(lines) + "\n")
    if args.keep:
        progress(f"working directory kept: {work}")
    else:
        shutil.rmtree(work)
    return 0


def _measure(args: argparse.Namespace, plan: Plan, root: Path, load: float) -> list[str]:
    """Run what ``args`` ask for in ``root``; the lines of its report."""
    if args.idle_lateness:
        return [probe_report(run_probe(root))]
    if args.startup_messages:
        counted = run_startup_messages(root)
        figs = startup_messages_figures(counted) | {"source": source()}
        return [*startup_messages_report(counted), json.dumps(figs)]
    if args.slow_disk or args.quarter_core:
        return constrained(root, slow_disk=args.slow_disk, quarter=args.quarter_core)
    if args.flood_only:
        return flood_report(run_flood(root), source())
    # The full or quick run: its table, the profiles' hot spots, and one JSON line.
    results = run(plan, root, args.profile, nodelay=args.broker_nodelay)
    figs = figures(results, (load, os.getloadavg()[0]))
    lines = table(results, figs)
    for path in results.profiles:
        lines += summarise(path)
    lines.append(json_line(figs))
    return lines


def constrained(work: Path, *, slow_disk: bool, quarter: bool) -> list[str]:
    """``--slow-disk`` and/or ``--quarter-core``: their table and one JSON line."""
    load_before = os.getloadavg()[0]
    figs: dict[str, Any] = {}
    rows: list[tuple[str, str, str]] = []
    if slow_disk:
        figs |= slow_disk_figures(run_slow_disk(work))
        rows += slow_disk_rows(figs)
    if quarter:
        reason = unavailable()
        if reason is not None:
            raise BenchError(f"--quarter-core: {reason}")
        figs |= quarter_core_figures(run_quarter_core(work))
        rows += quarter_core_rows(figs)
    load = (load_before, os.getloadavg()[0])
    figs |= {"loadavg_1m_before": round(load[0], 2), "loadavg_1m_after": round(load[1], 2)}
    figs["redlight"] = source()
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    lines = [
        f"redlight benchmark (constrained): {os.cpu_count()} CPUs, load average "
        f"{load[0]:.2f} -> {load[1]:.2f}; daemon from {figs['redlight']}"
    ]
    lines += [f"{a.ljust(widths[0])}  {b.ljust(widths[1])}  {c}".rstrip() for a, b, c in rows]
    lines.append(json.dumps(figs, separators=(", ", ": ")))
    return lines


if __name__ == "__main__":
    sys.exit(main())
