"""The measurements: one rig (broker, observer, plugs, daemon) per panel count.

Phase ``small`` (10 panels): the floor, command latency and state latency, a floor round trip
before every measured one, so that drift (other jobs on this shared machine) hits the floor and
the figures alike; then the same with operations 5 ms apart. Phase ``large`` (1,000 panels):
start-up, memory, discovery, idle CPU, command latency again, then waves of concurrent sessions
whose cutoffs are timed, and one burst of 1,000 starts.
"""

from __future__ import annotations

import itertools
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from . import procfs
from .broker import Mosquitto
from .clients import FLOOR_CMD, BenchError, Observer, PanelView, Record, Responder, Wave
from .daemon import Daemon, config_text, panel_ids, source
from .flood import (
    BIRTH_WATCH_S,
    BIRTHS,
    FLOOD_RATE,
    FLOOD_S,
    FLOOD_START_S,
    SESSION_S,
    FloodResult,
    PeakRss,
    births,
    flood,
)
from .flood import body as flood_body
from .profile import Recording, py_spy

#: Pause before each measured operation: commands and reports come now and then, so each one
#: meets a quiet connection, as the floor's do. Longer than Linux's delayed ACK (40 ms): with
#: mosquitto's default ``set_tcp_nodelay false``, a message sent to a client that has not yet
#: acknowledged the previous one waits for that ACK (Nagle's algorithm).
GAP_S: Final = 0.1
#: Starts of a cutoff wave not yet switched on, at most (so the wave measures cutoffs, not a
#: queue of starts: see ``burst``).
WINDOW: Final = 10
#: The back-to-back variant: operations 5 ms apart, as on a busy broker.
BUSY_GAP_S: Final = 0.005
#: How long one awaited message may take before the run fails (the machine is shared).
WAIT_S: Final = 30.0
#: The daemon counts as settled once a window of this length costs it at most QUIET_PCT of a core.
QUIET_WINDOW_S: Final = 0.5
QUIET_PCT: Final = 2.0


@dataclass(frozen=True, slots=True)
class Plan:
    """How much to measure."""

    quick: bool
    rounds: int
    rounds_large: int
    rounds_busy: int
    wave_repeats: int
    session_s: int
    idle_s: float
    small: int = 10
    large: int = 1000
    waves: tuple[int, ...] = (10, 100, 1000)


QUICK: Final = Plan(
    quick=True,
    rounds=100,
    rounds_large=30,
    rounds_busy=40,
    wave_repeats=1,
    session_s=10,
    idle_s=20.0,
)
FULL: Final = Plan(
    quick=False,
    rounds=500,
    rounds_large=150,
    rounds_busy=200,
    wave_repeats=3,
    session_s=10,
    idle_s=60.0,
)


@dataclass(slots=True)
class Latencies:
    """Round-trip samples in seconds."""

    floor: list[float] = field(default_factory=list)
    command: list[float] = field(default_factory=list)
    command_on: list[float] = field(default_factory=list)
    command_off: list[float] = field(default_factory=list)
    state: list[float] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Startup:
    """From process start: TCP connection to the broker, ``online``, discovery, settled."""

    connect_s: float
    online_s: float
    cpu_online_s: float
    discovery_s: float
    all_off_s: float
    settled_s: float
    rss_online_mb: float


@dataclass(frozen=True, slots=True)
class WaveResult:
    """How late each OFF of a wave of concurrent sessions came, after its deadline."""

    sessions: int
    burst: bool
    late_ms: list[float]
    on_spread_s: float
    finished: dict[str, int]
    rejected: dict[str, int]
    #: When each panel's ON and then its OFF reached the plug (for a closer look at one wave).
    on_at: dict[str, float] = field(default_factory=dict)
    off_at: dict[str, float] = field(default_factory=dict)


@dataclass(slots=True)
class Results:
    """Everything measured, for the report."""

    plan: Plan
    small: Latencies = field(default_factory=Latencies)
    busy: Latencies = field(default_factory=Latencies)
    large: Latencies = field(default_factory=Latencies)
    startup_small: Startup | None = None
    startup_large: Startup | None = None
    rss_idle_mb: float = 0.0
    rss_peak_mb: float = 0.0
    idle_cpu_pct: float = 0.0
    idle_s: float = 0.0
    waves: list[WaveResult] = field(default_factory=list)
    shutdown_s: float = 0.0
    source: dict[str, str] = field(default_factory=dict)
    broker_nodelay: bool = False
    profiles: list[Path] = field(default_factory=list)
    flood: FloodResult | None = None


def progress(text: str) -> None:
    """A line on stderr: stdout holds only the report."""
    sys.stderr.write(f"bench: {text}\n")
    sys.stderr.flush()


class Rig:
    """A private broker, the observer, the plugs' responder and one daemon, for one phase."""

    def __init__(
        self,
        root: Path,
        name: str,
        panels: int,
        *,
        nodelay: bool = False,
        env: Mapping[str, str] | None = None,
        cgroup: Path | None = None,
        log_publishes: bool = False,
    ) -> None:
        """Lay out the phase's directory; nothing starts until :meth:`up`.

        ``env`` and ``cgroup`` are the daemon's alone (see :class:`bench.daemon.Daemon`);
        ``log_publishes`` is the broker's (see :class:`bench.broker.Mosquitto`).
        """
        self.root = root / name
        self.root.mkdir(parents=True)
        self.name = name
        self.panels = panel_ids(panels)
        self.broker = Mosquitto(
            self.root / "mosquitto", nodelay=nodelay, log_publishes=log_publishes
        )
        config = self.root / "config.toml"
        self.history = self.root / "history.db"
        config.write_text(config_text(self.broker.port, self.history, self.panels))
        self.daemon = Daemon(config, self.root / "daemon.log", env=env, cgroup=cgroup)
        self.record = Record(self.panels)
        self._observer: Observer | None = None
        self._responder: Responder | None = None

    @property
    def observer(self) -> Observer:
        """The client in Home Assistant's seat."""
        assert self._observer is not None
        return self._observer

    @property
    def responder(self) -> Responder:
        """The client that answers for every plug."""
        assert self._responder is not None
        return self._responder

    def up(self) -> None:
        """Broker and bench clients (the daemon is started by :meth:`start_daemon`)."""
        self.broker.start()
        self._observer = Observer(self.broker.port, self.record)
        self._responder = Responder(self.broker.port, self.record)

    def down(self) -> None:
        """Stop everything that is still running."""
        self.daemon.kill()
        for client in (self._observer, self._responder):
            if client is not None:
                client.close()
        self.broker.stop()

    def start_daemon(self, started: Callable[[int], None] | None = None) -> Startup:
        """Start the daemon and time its way to ``online``, discovery, every plug OFF, quiet.

        ``started`` is called with the process id right after the start (to attach a profiler).
        """
        rec = self.record
        connected = threading.Event()
        connected_at: list[float] = []
        port = self.broker.port
        # The bench's own clients are connected already; the daemon's is the next one.
        known = procfs.clients_of(port)
        t0 = self.daemon.start()
        pid = self.daemon.pid

        def watch_connection() -> None:
            # The daemon's TCP connection to the broker, polled every millisecond (its CONNACK
            # follows within about a millisecond on this machine).
            while not connected.is_set():
                if procfs.clients_of(port) - known:
                    connected_at.append(time.perf_counter())
                    connected.set()
                    return
                time.sleep(0.001)

        watcher = threading.Thread(target=watch_connection, daemon=True)
        watcher.start()
        if started is not None:
            started(pid)
        try:
            rec.wait(lambda: any(p == b"online" for _, p in rec.status), 60, "redlight online")
            rss = procfs.status_mb(pid)
            cpu = procfs.cpu_seconds(pid)
            online = next(at for at, p in rec.status if p == b"online")
            count = len(self.panels)
            rec.wait(lambda: len(rec.discovery_topics) > count, 120, "every discovery message")
            discovery = rec.discovery_last
            rec.wait(lambda: rec.idle_count == count, 120, "every plug confirmed OFF")
            all_off = time.perf_counter()
        finally:
            connected.set()
            watcher.join()
        settled = wait_quiet(pid)
        connect = connected_at[0] if connected_at else online
        return Startup(
            connect_s=connect - t0,
            online_s=online - t0,
            cpu_online_s=cpu,
            discovery_s=discovery - connect,
            all_off_s=all_off - t0,
            settled_s=settled - t0,
            rss_online_mb=rss,
        )


@contextmanager
def rig(
    root: Path,
    name: str,
    panels: int,
    *,
    nodelay: bool = False,
    env: Mapping[str, str] | None = None,
    cgroup: Path | None = None,
    log_publishes: bool = False,
) -> Iterator[Rig]:
    """A :class:`Rig` that is up inside the block and torn down after it, however it ends."""
    setup = Rig(
        root, name, panels, nodelay=nodelay, env=env, cgroup=cgroup, log_publishes=log_publishes
    )
    try:
        setup.up()
        yield setup
    finally:
        setup.down()


def wait_quiet(pid: int, timeout: float = 120.0) -> float:
    """Block until the process spends at most QUIET_PCT of a core; the time it did."""
    deadline = time.perf_counter() + timeout
    before = procfs.cpu_seconds(pid)
    while time.perf_counter() < deadline:
        time.sleep(QUIET_WINDOW_S)
        after = procfs.cpu_seconds(pid)
        if (after - before) / QUIET_WINDOW_S * 100 <= QUIET_PCT:
            return time.perf_counter()
        before = after
    raise BenchError(f"the daemon did not go quiet within {timeout:g} s")


def _first_plug_after(view: PanelView, index: int, plug: str) -> float | None:
    """When redlight's state first showed the plug as ``plug``, from state number ``index`` on."""
    for at, seen, _ in view.states[index:]:
        if seen == plug:
            return at
    return None


_keys = itertools.count()


def latency_rounds(
    setup: Rig, rounds: int, out: Latencies, *, gap: float = GAP_S, panels: int = 10
) -> None:
    """Command (ON, then OFF) and state-report (ON, then OFF) round trips, one at a time.

    Before each one, after the pause, a floor round trip: the floor and the figures are
    interleaved, so drift on this shared machine hits both alike.
    """
    used = setup.panels[:panels]
    for i in range(rounds):
        panel = used[i % len(used)]
        for word in ("ON", "OFF"):
            time.sleep(gap)
            out.floor.append(_floor_sample(setup, str(next(_keys)).encode()))
            sample = _command_sample(setup, panel, word)
            (out.command_on if word == "ON" else out.command_off).append(sample)
            out.command.append(sample)
        # A plug reports on its own (a button press): the state must follow, on then off.
        for word in ("ON", "OFF"):
            time.sleep(gap)
            out.floor.append(_floor_sample(setup, str(next(_keys)).encode()))
            out.state.append(_state_sample(setup, panel, word))


def _floor_sample(setup: Rig, key: bytes) -> float:
    """Observer -> broker -> responder -> broker -> observer, as bare paho clients."""
    rec = setup.record
    sent = setup.observer.publish(FLOOR_CMD, key)
    rec.wait(lambda: key in rec.floor, WAIT_S, "the floor's reply")
    return rec.floor[key] - sent


def _command_sample(setup: Rig, panel: str, word: str) -> float:
    """``ON``/``OFF`` on ``<b>/panel/<id>/set`` until the plug command is seen on the broker."""
    rec = setup.record
    view = rec.panels[panel]
    seen = len(view.commands)
    sent = setup.observer.publish(f"redlight/panel/{panel}/set", word)
    rec.wait(lambda: len(view.commands) > seen, WAIT_S, f"plug command {word}")
    at, payload = view.commands[seen]
    if payload != word.encode():
        raise BenchError(f"{panel}: expected plug command {word}, saw {payload!r}")
    # The responder confirms; the next sample starts from a settled panel.
    if word == "ON":
        rec.wait(
            lambda: bool(view.states) and view.states[-1][1:] == ("on", True),
            WAIT_S,
            "the session confirmed ON",
        )
    else:
        rec.wait(lambda: view.idle, WAIT_S, "the panel idle")
    return at - sent


def _state_sample(setup: Rig, panel: str, word: str) -> float:
    """The plug reports ``word`` unasked, until redlight's retained state shows it."""
    rec = setup.record
    view = rec.panels[panel]
    plug = word.lower()
    seen = len(view.states)
    sent = setup.responder.report(panel, word)
    rec.wait(lambda: _first_plug_after(view, seen, plug) is not None, WAIT_S, f"state plug={plug}")
    at = _first_plug_after(view, seen, plug)
    assert at is not None
    if word == "OFF":
        rec.wait(lambda: view.idle, WAIT_S, "the panel idle")
    return at - sent


def cutoff_wave(setup: Rig, sessions: int, session_s: int, *, burst: bool = False) -> WaveResult:
    """Start ``sessions`` concurrent sessions; time each OFF against its ON as the plugs saw it.

    The starts go out as fast as redlight takes them (at most :data:`WINDOW` not yet switched
    on), or, with ``burst``, all at once.
    """
    rec = setup.record
    panels = setup.panels[:sessions]
    finished_before, rejected_before = rec.event_counts()
    wave = rec.start_wave(panels)
    body = json.dumps({"action": "start", "duration": f"{session_s}s"})
    first = time.perf_counter()
    for sent, panel in enumerate(panels):
        if not burst:
            rec.wait(_window_open(wave, sent), WAIT_S, "ONs to catch up")
        setup.observer.publish(f"redlight/panel/{panel}/set", body)
    rec.wait(lambda: len(wave.on) == sessions, 120, f"{sessions} ONs")
    on_spread = max(wave.on.values()) - first
    rec.wait(lambda: len(wave.off) == sessions, session_s + 120, f"{sessions} OFFs")
    total = len(setup.panels)
    rec.wait(lambda: rec.idle_count == total, 120, "every panel idle again")
    rec.wait(lambda: len(wave.reasons) == sessions, WAIT_S, "every session_finished event")
    rec.end_wave()
    finished_after, rejected_after = rec.event_counts()
    finished = {k: v - finished_before.get(k, 0) for k, v in finished_after.items()}
    rejected = {k: v - rejected_before.get(k, 0) for k, v in rejected_after.items()}
    # Only sessions that ran to their deadline tell how late a cutoff was; one that its plug
    # did not confirm in time (confirm_timeout) was switched off early, on purpose.
    late = [
        (wave.off[p] - wave.on[p] - session_s) * 1000
        for p in panels
        if wave.reasons.get(p) == "completed"
    ]
    wait_quiet(setup.daemon.pid)
    return WaveResult(
        sessions=sessions,
        burst=burst,
        late_ms=late,
        on_spread_s=on_spread,
        finished={k: v for k, v in finished.items() if v},
        rejected={k: v for k, v in rejected.items() if v},
        on_at=dict(wave.on),
        off_at=dict(wave.off),
    )


def _window_open(wave: Wave, sent: int) -> Callable[[], bool]:
    def open_() -> bool:
        return sent - len(wave.on) < WINDOW

    return open_


def _pooled(runs: list[WaveResult]) -> WaveResult:
    """Repeats of one wave as one: every sample, the widest spread, the summed reasons."""
    finished: dict[str, int] = {}
    rejected: dict[str, int] = {}
    for one in runs:
        for key, count in one.finished.items():
            finished[key] = finished.get(key, 0) + count
        for key, count in one.rejected.items():
            rejected[key] = rejected.get(key, 0) + count
    return WaveResult(
        sessions=runs[0].sessions,
        burst=runs[0].burst,
        late_ms=[ms for one in runs for ms in one.late_ms],
        on_spread_s=max(one.on_spread_s for one in runs),
        finished=finished,
        rejected=rejected,
    )


def run(plan: Plan, root: Path, profile_dir: Path | None, *, nodelay: bool = False) -> Results:
    """Run both phases and return what was measured (``nodelay``: mosquitto without Nagle)."""
    results = Results(plan, source=source(), broker_nodelay=nodelay)
    spy = py_spy() if profile_dir is not None else None
    if profile_dir is not None and spy is None:
        raise BenchError("--profile needs py-spy: .venv/bin/pip install py-spy")

    def record(pid: int, name: str) -> Recording | None:
        if spy is None or profile_dir is None:
            return None
        output = profile_dir / f"{name}.txt"
        results.profiles.append(output)
        return Recording(spy, pid, output)

    progress(f"phase 1: {plan.small} panels, {plan.rounds} interleaved rounds")
    with rig(root, "small", plan.small, nodelay=nodelay) as small:
        results.startup_small = small.start_daemon()
        spying = record(small.daemon.pid, "small-latency")
        latency_rounds(small, plan.rounds, results.small)
        progress(
            f"phase 1: {plan.rounds_busy} rounds back to back ({BUSY_GAP_S * 1000:g} ms apart)"
        )
        latency_rounds(small, plan.rounds_busy, results.busy, gap=BUSY_GAP_S)
        if spying is not None:
            spying.stop()
        small.daemon.stop()

    progress(f"phase 2: {plan.large} panels: start-up, discovery")
    with rig(root, "large", plan.large, nodelay=nodelay) as large:
        startup: list[Recording] = []

        def attach(pid: int) -> None:
            # py-spy needs the interpreter up before it can attach: imports are partly missed.
            if spy is not None:
                time.sleep(0.1)
                startup.extend(r for r in [record(pid, "large-startup")] if r is not None)

        results.startup_large = large.start_daemon(attach)
        for spying in startup:
            spying.stop()
        pid = large.daemon.pid
        progress(f"phase 2: idle CPU over {plan.idle_s:g} s")
        before, at = procfs.cpu_seconds(pid), time.perf_counter()
        time.sleep(plan.idle_s)
        after, end = procfs.cpu_seconds(pid), time.perf_counter()
        results.idle_cpu_pct = (after - before) / (end - at) * 100
        results.idle_s = end - at
        results.rss_idle_mb = procfs.status_mb(pid)
        spying = record(pid, "large-load")
        progress(f"phase 2: {plan.rounds_large} latency rounds with {plan.large} panels")
        latency_rounds(large, plan.rounds_large, results.large)
        for sessions in plan.waves:
            runs = []
            for repeat in range(plan.wave_repeats):
                progress(
                    f"phase 2: {sessions} concurrent sessions of {plan.session_s} s "
                    f"({repeat + 1}/{plan.wave_repeats})"
                )
                runs.append(cutoff_wave(large, sessions, plan.session_s))
            results.waves.append(_pooled(runs))
        progress(f"phase 2: {plan.large} sessions started in one burst")
        results.waves.append(cutoff_wave(large, plan.large, plan.session_s, burst=True))
        if spying is not None:
            spying.stop()
        results.rss_peak_mb = procfs.status_mb(pid, "VmHWM")
        results.shutdown_s = large.daemon.stop()
    results.flood = run_flood(root)
    return results


def flood_phase(setup: Rig) -> tuple[float, int, float, float, float, float]:
    """A cutoff during a junk flood (see :mod:`bench.flood`).

    The OFF's lateness in ms, the messages sent and the rate reached, resident memory before
    and at its peak, and how long after the flood the daemon went idle.
    """
    rec = setup.record
    panel = setup.panels[0]
    pid = setup.daemon.pid
    wave = rec.start_wave([panel])
    rss_before = procfs.status_mb(pid)
    peak = PeakRss(pid)
    setup.observer.publish(f"redlight/panel/{panel}/set", flood_body(SESSION_S))
    rec.wait(lambda: panel in wave.on, WAIT_S, "the session's ON")
    time.sleep(max(0.0, wave.on[panel] + FLOOD_START_S - time.perf_counter()))
    sent, rate = flood(setup.broker.port, f"redlight/panel/{panel}/set", FLOOD_RATE, FLOOD_S)
    flood_end = time.perf_counter()
    rec.wait(lambda: panel in wave.off, 300, "the session's OFF")
    off_late = (wave.off[panel] - wave.on[panel] - SESSION_S) * 1000
    rec.end_wave()
    settled = wait_quiet(pid, 300) - flood_end
    return off_late, sent, rate, rss_before, peak.stop(), settled


def birth_storm(setup: Rig) -> tuple[float, float, int]:
    """:data:`BIRTHS` births at once: memory before and at its peak, discovery configs after."""
    rec = setup.record
    pid = setup.daemon.pid
    before = procfs.status_mb(pid)
    discovery_before = rec.discovery_count
    peak = PeakRss(pid)
    births(setup.broker.port, BIRTHS)
    time.sleep(BIRTH_WATCH_S)
    wait_quiet(pid, 300)
    return before, peak.stop(), rec.discovery_count - discovery_before


def run_flood(root: Path) -> FloodResult:
    """The flood phase, each part on a fresh rig of one panel."""
    progress(f"phase 3: a {SESSION_S} s cutoff during a junk flood of {FLOOD_RATE:,}/s")
    with rig(root, "flood", 1) as setup:
        setup.start_daemon()
        late, sent, rate, rss_before, rss_peak, settled = flood_phase(setup)
        setup.daemon.stop()
    progress(f"phase 3: {BIRTHS:,} Home Assistant births at once")
    with rig(root, "births", 1) as setup:
        setup.start_daemon()
        birth_before, birth_peak, configs = birth_storm(setup)
        setup.daemon.stop()
    return FloodResult(
        off_late_ms=late,
        flood_sent=sent,
        flood_rate=rate,
        rss_before_mb=rss_before,
        rss_peak_mb=rss_peak,
        births=BIRTHS,
        birth_rss_before_mb=birth_before,
        birth_rss_peak_mb=birth_peak,
        birth_discovery_messages=configs,
        settled_after_flood_s=settled,
    )
