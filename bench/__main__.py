"""``python -m bench [--quick] [--profile DIR]``: measure redlight and print the figures.

The lines printed are a readable table; the last one is a single JSON object with every figure.
Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from bench.broker import BrokerError
from bench.clients import BenchError
from bench.daemon import source
from bench.profile import summarise
from bench.report import figures, flood_report, json_line, table
from bench.scenarios import FULL, QUICK, progress, run, run_flood


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
        "--keep", action="store_true", help="keep the working directory (logs, configs)"
    )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    work = tempfile.mkdtemp(prefix="redlight-bench-")
    if args.flood_only:
        try:
            flood = run_flood(Path(work))
        except (BenchError, BrokerError) as error:
            progress(f"failed: {error} (logs in {work})")
            return 1
        sys.stdout.write("\n".join(flood_report(flood, source())) + "\n")
        if args.keep:
            progress(f"working directory kept: {work}")
        else:
            shutil.rmtree(work)
        return 0
    try:
        results = run(plan, Path(work), args.profile, nodelay=args.broker_nodelay)
    except (BenchError, BrokerError) as error:
        progress(f"failed: {error} (logs in {work})")
        return 1
    figs = figures(results, (load_before, os.getloadavg()[0]))
    lines = table(results, figs)
    for path in results.profiles:
        lines += summarise(path)
    lines.append(json_line(figs))
    sys.stdout.write("\n".join(lines) + "\n")
    if args.keep:
        progress(f"working directory kept: {work}")
    else:
        shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
