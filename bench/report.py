"""Figures from the measurements: the readable table, and the one JSON line that ends the output."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from typing import Any, Final

from .flood import FLOOD_RATE, FloodResult
from .scenarios import Latencies, Results, Startup

#: The issue's goals: figure, the most it may be.
GOALS: Final = (
    ("cmd_to_plug_p50_ratio", 3.0),
    ("cmd_to_plug_p99_ratio", 10.0),
    ("cutoff_late_ms_p99_1000", 20.0),
    ("rss_mb_1000_panels", 80.0),
    ("startup_s_1000_panels", 2.0),
    ("idle_cpu_pct_1000_panels", 1.0),
    ("flood_off_late_ms", 1000.0),
    ("flood_rss_growth_mb", 30.0),
)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), interpolated between the closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def _latency_figures(lat: Latencies, suffix: str) -> dict[str, float]:
    floor50 = percentile(lat.floor, 50)
    floor99 = percentile(lat.floor, 99)
    figures = {
        f"floor_p50_ms{suffix}": _ms(floor50),
        f"floor_p99_ms{suffix}": _ms(floor99),
    }
    for name, samples in (
        ("cmd_to_plug", lat.command),
        ("cmd_on", lat.command_on),
        ("cmd_off", lat.command_off),
        ("state", lat.state),
    ):
        p50 = percentile(samples, 50)
        p99 = percentile(samples, 99)
        figures[f"{name}_p50_ms{suffix}"] = _ms(p50)
        figures[f"{name}_p99_ms{suffix}"] = _ms(p99)
        if name in ("cmd_to_plug", "state"):
            figures[f"{name}_p50_ratio{suffix}"] = round(p50 / floor50, 2)
            figures[f"{name}_p99_ratio{suffix}"] = round(p99 / floor99, 2)
    return figures


def _startup_figures(startup: Startup | None, panels: int) -> dict[str, float]:
    if startup is None:
        return {}
    suffix = f"_{panels}_panels"
    return {
        f"startup_s{suffix}": round(startup.online_s, 3),
        f"connect_s{suffix}": round(startup.connect_s, 3),
        f"cpu_to_online_s{suffix}": round(startup.cpu_online_s, 3),
        f"discovery_s{suffix}": round(startup.discovery_s, 3),
        f"all_off_s{suffix}": round(startup.all_off_s, 3),
        f"settled_s{suffix}": round(startup.settled_s, 3),
        f"rss_mb{suffix}": round(startup.rss_online_mb, 1),
    }


def figures(results: Results, load: tuple[float, float]) -> dict[str, Any]:
    """Every figure by name (the JSON line), goals included."""
    plan = results.plan
    out: dict[str, Any] = {"quick": plan.quick}
    out |= _latency_figures(results.small, "")
    out |= _latency_figures(results.busy, "_busy")
    out |= _latency_figures(results.large, f"_{plan.large}_panels")
    for wave in results.waves:
        n = f"burst_{wave.sessions}" if wave.burst else str(wave.sessions)
        late = wave.late_ms
        # Sessions that ended otherwise (cut off early as unconfirmed) do not count.
        out[f"cutoff_late_ms_p50_{n}"] = round(percentile(late, 50), 2) if late else None
        out[f"cutoff_late_ms_p99_{n}"] = round(percentile(late, 99), 2) if late else None
        out[f"cutoff_late_ms_max_{n}"] = round(max(late), 2) if late else None
        out[f"cutoff_completed_{n}"] = len(late)
        out[f"cutoff_on_spread_s_{n}"] = round(wave.on_spread_s, 3)
    out |= _startup_figures(results.startup_small, plan.small)
    out |= _startup_figures(results.startup_large, plan.large)
    large = f"_{plan.large}_panels"
    out[f"rss_idle_mb{large}"] = round(results.rss_idle_mb, 1)
    out[f"rss_peak_mb{large}"] = round(results.rss_peak_mb, 1)
    out[f"idle_cpu_pct{large}"] = round(results.idle_cpu_pct, 3)
    out[f"shutdown_s{large}"] = round(results.shutdown_s, 3)
    if results.flood is not None:
        out |= flood_figures(results.flood)
    out["rounds"] = plan.rounds
    out["rounds_large"] = plan.rounds_large
    out["session_s"] = plan.session_s
    out["cpus"] = os.cpu_count()
    out["loadavg_1m_before"] = round(load[0], 2)
    out["loadavg_1m_after"] = round(load[1], 2)
    out["broker_nodelay"] = results.broker_nodelay
    out["redlight"] = results.source
    out["goals_met"] = {
        name: out.get(name) is not None and bool(out[name] <= limit) for name, limit in GOALS
    }
    return out


def _fmt(value: float, unit: str) -> str:
    return f"{value:.3f} {unit}" if value < 10 else f"{value:.1f} {unit}"


def table(results: Results, figs: dict[str, Any]) -> list[str]:
    """The readable table."""
    plan = results.plan
    goal = dict(GOALS)
    met: dict[str, bool] = figs["goals_met"]

    def verdict(name: str) -> str:
        if name not in goal:
            return ""
        return f"<= {goal[name]:g}  {'met' if met[name] else 'MISSED'}"

    rows: list[tuple[str, str, str, str]] = []

    def latency_rows(lat: Latencies, suffix: str, label: str) -> None:
        rows.append(
            (
                f"floor: bare paho cmd -> plug -> state round trip{label}",
                f"p50 {_fmt(figs[f'floor_p50_ms{suffix}'], 'ms')}",
                f"p99 {_fmt(figs[f'floor_p99_ms{suffix}'], 'ms')}",
                f"n={len(lat.floor)}",
            )
        )
        for key, text in (
            ("cmd_to_plug", "command: set -> plug command"),
            ("state", "state: plug report -> redlight state"),
        ):
            goals = ""
            if f"{key}_p50_ratio{suffix}" in goal:
                goals = (
                    f"p50 {verdict(f'{key}_p50_ratio{suffix}')}, "
                    f"p99 {verdict(f'{key}_p99_ratio{suffix}')}"
                )
            rows.append(
                (
                    f"{text}{label}",
                    f"p50 {_fmt(figs[f'{key}_p50_ms{suffix}'], 'ms')} "
                    f"({figs[f'{key}_p50_ratio{suffix}']:.2f}x)",
                    f"p99 {_fmt(figs[f'{key}_p99_ms{suffix}'], 'ms')} "
                    f"({figs[f'{key}_p99_ratio{suffix}']:.2f}x)",
                    goals,
                )
            )

    latency_rows(results.small, "", f" ({plan.small} panels)")
    latency_rows(results.busy, "_busy", f" ({plan.small} panels, 5 ms apart)")
    latency_rows(results.large, f"_{plan.large}_panels", f" ({plan.large} panels)")
    for wave in results.waves:
        n = f"burst_{wave.sessions}" if wave.burst else str(wave.sessions)
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(wave.finished.items())) or "none"

        def late(key: str) -> str:
            value = figs[key]
            return "n/a" if value is None else f"{value:.1f} ms"

        rows.append(
            (
                f"cutoff lateness, {wave.sessions} concurrent sessions"
                + (", started in one burst" if wave.burst else ""),
                f"p50 {late(f'cutoff_late_ms_p50_{n}')}",
                f"p99 {late(f'cutoff_late_ms_p99_{n}')}, max {late(f'cutoff_late_ms_max_{n}')}",
                verdict(f"cutoff_late_ms_p99_{n}") + f"  (ONs over {wave.on_spread_s:.2f} s; "
                f"ended: {reasons})",
            )
        )
    large = f"_{plan.large}_panels"
    singles = (
        (f"start-up to 'online', {plan.small} panels", f"startup_s_{plan.small}_panels", "s"),
        (f"start-up to 'online', {plan.large} panels", f"startup_s{large}", "s"),
        ("  process start -> broker connection", f"connect_s{large}", "s"),
        ("  CPU time the daemon used until 'online'", f"cpu_to_online_s{large}", "s"),
        ("  process start -> every plug confirmed OFF", f"all_off_s{large}", "s"),
        ("  process start -> daemon idle (< 2% CPU)", f"settled_s{large}", "s"),
        (f"discovery: connect -> last of {plan.large + 1} configs", f"discovery_s{large}", "s"),
        ("resident memory at 'online'", f"rss_mb{large}", "MiB"),
        ("resident memory when idle / peak (VmHWM)", f"rss_idle_mb{large}", "MiB"),
        (f"idle CPU over {results.idle_s:.0f} s, % of one core", f"idle_cpu_pct{large}", "%"),
        ("shutdown (SIGTERM -> exit, every plug OFF)", f"shutdown_s{large}", "s"),
    )
    for label, key, unit in singles:
        value = _fmt(figs[key], unit)
        if key == f"rss_idle_mb{large}":
            value += f" / {_fmt(figs[f'rss_peak_mb{large}'], unit)}"
        rows.append((label, value, "", verdict(key)))
    if results.flood is not None:
        rows += flood_rows(results.flood, verdict)
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    source = results.source
    code = source.get("redlight", "?")
    if source.get("commit"):
        code += f" at {source['commit']}"
        code += f", changed: {source['dirty']}" if source.get("dirty") else ", unchanged"
    lines = [
        f"redlight benchmark ({'quick' if plan.quick else 'full'}): {os.cpu_count()} CPUs, "
        f"load average {figs['loadavg_1m_before']:.2f} -> {figs['loadavg_1m_after']:.2f}; "
        f"daemon from {code}; mosquitto set_tcp_nodelay {str(results.broker_nodelay).lower()}",
    ]
    lines += [
        f"{a.ljust(widths[0])}  {b.ljust(widths[1])}  {c.ljust(widths[2])}  {d}".rstrip()
        for a, b, c, d in rows
    ]
    return lines


def flood_figures(flood: FloodResult) -> dict[str, Any]:
    """The flood phase's figures."""
    return {
        "flood_off_late_ms": round(flood.off_late_ms, 1),
        "flood_rss_growth_mb": round(flood.rss_peak_mb - flood.rss_before_mb, 1),
        "flood_rss_before_mb": round(flood.rss_before_mb, 1),
        "flood_rss_peak_mb": round(flood.rss_peak_mb, 1),
        "flood_sent": flood.flood_sent,
        "flood_rate_per_s": round(flood.flood_rate),
        "flood_rate_asked_per_s": FLOOD_RATE,
        "flood_settled_s": round(flood.settled_after_flood_s, 2),
        "births": flood.births,
        "births_rss_before_mb": round(flood.birth_rss_before_mb, 1),
        "births_rss_peak_mb": round(flood.birth_rss_peak_mb, 1),
        "births_discovery_messages": flood.birth_discovery_messages,
    }


def flood_rows(
    flood: FloodResult, verdict: Callable[[str], str]
) -> list[tuple[str, str, str, str]]:
    """The flood phase's rows of the table."""
    figs = flood_figures(flood)
    return [
        (
            f"cutoff during a junk flood ({figs['flood_rate_per_s']:,}/s reached)",
            f"OFF {figs['flood_off_late_ms']:.1f} ms late",
            f"{figs['flood_sent']:,} junk commands",
            verdict("flood_off_late_ms"),
        ),
        (
            "  resident memory growth during the flood",
            f"{figs['flood_rss_growth_mb']:.1f} MiB",
            f"{figs['flood_rss_before_mb']:.1f} -> {figs['flood_rss_peak_mb']:.1f} MiB",
            verdict("flood_rss_growth_mb") + f"  (idle {figs['flood_settled_s']:.1f} s after)",
        ),
        (
            f"{figs['births']:,} Home Assistant births: peak memory",
            f"{figs['births_rss_peak_mb']:.1f} MiB",
            f"from {figs['births_rss_before_mb']:.1f} MiB",
            f"{figs['births_discovery_messages']:,} discovery configs sent after",
        ),
    ]


def flood_report(flood: FloodResult, source: dict[str, str]) -> list[str]:
    """``--flood-only``: the flood rows and a JSON line."""
    figs = flood_figures(flood)
    limits = dict(GOALS)

    def verdict(name: str) -> str:
        if name not in limits:
            return ""
        return f"<= {limits[name]:g}  {'met' if figs[name] <= limits[name] else 'MISSED'}"

    rows = flood_rows(flood, verdict)
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [f"redlight flood phase: {os.cpu_count()} CPUs; daemon from {source}"]
    lines += [
        f"{a.ljust(widths[0])}  {b.ljust(widths[1])}  {c.ljust(widths[2])}  {d}".rstrip()
        for a, b, c, d in rows
    ]
    lines.append(json.dumps(figs | {"redlight": source}, separators=(", ", ": ")))
    return lines


def json_line(figs: dict[str, Any]) -> str:
    """The last line of the output."""
    return json.dumps(figs, sort_keys=False, separators=(", ", ": "))
