"""``--idle-lateness``: where the milliseconds of a cutoff go, hop by hop, idle and busy.

The daemon is started with a ``sitecustomize`` module (on ``PYTHONPATH``, the daemon's alone)
that wraps three functions and writes a line per call, stamped with ``time.monotonic()`` —
the same clock as the benchmark's ``time.perf_counter()`` on Linux (``CLOCK_MONOTONIC``), so
the daemon's stamps and the plugs' can be subtracted:

- ``Core._end_session``: the session's deadline and start on the core's clock, and ``now``
  (when the loop woke and read the time);
- ``PahoClient.publish`` of a plug command: when the loop handed it to paho;
- paho's ``Client._sock_send`` of a plug command: when paho's network thread wrote it;
- ``selectors.EpollSelector.select`` on the main thread: when the loop went back to sleep.

With the plugs' receive times that splits a session's measured lateness, (OFF seen - ON seen)
- duration, into: the loop's wake-up after the deadline, the OFF's way from the loop to the
socket, the socket to the plug, minus the same for the ON (its way from the start command's
handling, journal wait included). It is measured in waves of :data:`SESSIONS` sessions of
:data:`SESSION_S`, idle, then with a ``SCHED_IDLE`` process spinning on each CPU (so that no
CPU ever halts, at no cost to anything else), then idle again. In each phase, the same two
hops without redlight (:func:`wake_chain`): an epoll timer's wake-up and one wake-up of
another process through a socket, which the spinners should change as much as they change
redlight's figures if the cause is the machine's idle CPUs rather than redlight.
"""

from __future__ import annotations

import bisect
import json
import multiprocessing
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from .report import percentile
from .scenarios import cutoff_wave, progress, rig

SESSIONS: Final = 10
SESSION_S: Final = 5
WAVES: Final = 3
PANELS: Final = 1000
SPINNERS: Final = os.cpu_count() or 2
CHAIN_ROUNDS: Final = 100
PROBE_ENV: Final = "BENCH_PROBE_LOG"

#: Imported by the daemon's interpreter at start-up (``site`` imports ``sitecustomize``).
SITECUSTOMIZE: Final = f'''
import os, time, json
_fd = os.open(os.environ["{PROBE_ENV}"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

def _note(**fields):
    os.write(_fd, (json.dumps(fields) + "\\n").encode())

import paho.mqtt.client as _paho
from redlight import core as _core, mqtt as _mqtt

_end = _core.Core._end_session
def _end_session(self, panel, now, reason, **kw):
    s = panel.session
    _note(k="end", panel=panel.id, at=time.monotonic(), now=now.mono, deadline=s.deadline,
          started=s.started_mono, reason=reason)
    return _end(self, panel, now, reason, **kw)
_core.Core._end_session = _end_session

_pub = _mqtt.PahoClient.publish
def _publish(self, message):
    if message.topic.startswith("bench/plug/"):
        _note(k="pub", panel=message.topic.split("/")[2], at=time.monotonic(),
              word=message.payload_bytes().decode(errors="replace"))
    return _pub(self, message)
_mqtt.PahoClient.publish = _publish

_send = _paho.Client._sock_send
def _sock_send(self, buf):
    at = time.monotonic()
    data = bytes(buf)
    i = data.find(b"bench/plug/")
    if i >= 0 and (data.endswith(b"ON") or data.endswith(b"OFF")):
        panel = data[i:].split(b"/")[2].decode()
        _note(k="send", panel=panel, at=at, word="OFF" if data.endswith(b"OFF") else "ON")
    return _send(self, buf)
_paho.Client._sock_send = _sock_send

import selectors as _selectors, threading as _threading
_select = _selectors.EpollSelector.select
def _select_stamped(self, timeout=None):
    # The event loop going back to sleep: where it lets go of the GIL.
    if _threading.current_thread() is _threading.main_thread():
        _note(k="sleep", at=time.monotonic())
    return _select(self, timeout)
_selectors.EpollSelector.select = _select_stamped
'''


def _spin(until: float) -> None:
    """Keep one CPU from going idle, at the lowest priority there is (``SCHED_IDLE``).

    A ``SCHED_IDLE`` task runs only when nothing else wants the CPU and gives way at once to
    any task that wakes: the CPU never halts, and nobody waits for the spinner.
    """
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    while time.monotonic() < until:
        pass


def _wake_chain(rounds: int, conn: Any) -> None:
    """Without redlight: sleep to a deadline in epoll, then wake a second process.

    Sends back, per round, (woke - deadline, the other process's receive - our send) in ms.
    """
    import random
    import select
    import socket

    near, far = socket.socketpair()
    child = os.fork()
    if child == 0:  # the receiver: block, stamp, echo the stamp
        near.close()
        while data := far.recv(64):
            far.send(repr(time.monotonic()).encode() + b"|" + data)
        os._exit(0)
    far.close()
    poller = select.epoll()
    samples = []
    for _ in range(rounds):
        deadline = time.monotonic() + random.uniform(0.05, 0.15)  # noqa: S311 - not crypto
        while (left := deadline - time.monotonic()) > 0:
            poller.poll(left)
        woke = time.monotonic()
        near.send(repr(woke).encode())
        received, sent = near.recv(128).split(b"|")
        samples.append(((woke - deadline) * 1000, (float(received) - float(sent)) * 1000))
    near.close()
    os.waitpid(child, 0)
    conn.send(samples)


def wake_chain(rounds: int = CHAIN_ROUNDS) -> tuple[float, float]:
    """Medians (ms) of :func:`_wake_chain`: an epoll timer's wake-up, one hop to a process."""
    here, there = multiprocessing.Pipe()
    worker = multiprocessing.Process(target=_wake_chain, args=(rounds, there))
    worker.start()
    samples: list[tuple[float, float]] = here.recv()
    worker.join()
    return (
        percentile([s[0] for s in samples], 50),
        percentile([s[1] for s in samples], 50),
    )


@dataclass(frozen=True, slots=True)
class Hops:
    """One session's lateness, split (all in ms)."""

    late: float
    wake: float  # loop woke after the deadline
    off_to_paho: float  # deadline seen -> OFF handed to paho (the core's step)
    off_to_socket: float  # handed to paho -> written by paho's thread
    off_loop_on: float  # of which: the loop still running before it went back to epoll
    off_to_plug: float  # written -> the plug received it (mosquitto, the bench's client)
    on_to_paho: float  # start handled -> ON handed to paho (journal wait included)
    on_to_socket: float
    on_to_plug: float


def _hops(log: Path, wave_on: dict[str, float], wave_off: dict[str, float]) -> list[Hops]:
    notes = [json.loads(line) for line in log.read_text().splitlines()]
    sleeps = sorted(float(n["at"]) for n in notes if n["k"] == "sleep")
    out = []
    for panel, on_seen in wave_on.items():
        off_seen = wave_off.get(panel)
        ends = [n for n in notes if n["k"] == "end" and n["panel"] == panel]
        if off_seen is None or not ends:
            continue
        # This wave's end of the panel's session: the one whose deadline is nearest the OFF.
        end = min(ends, key=lambda n: abs(n["deadline"] - off_seen))
        started = end["started"]

        def first(kind: str, word: str, after: float, panel: str = panel) -> float:
            return min(
                float(n["at"])
                for n in notes
                if n["k"] == kind and n["panel"] == panel and n["word"] == word and n["at"] >= after
            )

        on_pub = first("pub", "ON", started)
        on_send = first("send", "ON", on_pub)
        off_pub = first("pub", "OFF", end["now"])
        off_send = first("send", "OFF", off_pub)
        slept = sleeps[bisect.bisect_left(sleeps, off_pub)] if sleeps[-1] >= off_pub else off_send
        duration = end["deadline"] - started
        out.append(
            Hops(
                late=(off_seen - on_seen - duration) * 1000,
                wake=(end["now"] - end["deadline"]) * 1000,
                off_to_paho=(off_pub - end["now"]) * 1000,
                off_to_socket=(off_send - off_pub) * 1000,
                off_loop_on=(min(slept, off_send) - off_pub) * 1000,
                off_to_plug=(off_seen - off_send) * 1000,
                on_to_paho=(on_pub - started) * 1000,
                on_to_socket=(on_send - on_pub) * 1000,
                on_to_plug=(on_seen - on_send) * 1000,
            )
        )
    return out


def run_probe(root: Path) -> dict[str, Any]:
    """Waves idle, with the CPUs kept busy, idle again; the median of each hop."""
    site = root / "probe-site"
    site.mkdir(parents=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    log = root / "probe.jsonl"
    env = {"PYTHONPATH": str(site), PROBE_ENV: str(log)}
    results: dict[str, Any] = {}
    with rig(root, "probe", PANELS, env=env) as setup:
        setup.start_daemon()
        for phase in ("idle", "cpus kept awake", "idle again"):
            spinners: list[multiprocessing.Process] = []
            if phase == "cpus kept awake":
                until = time.monotonic() + WAVES * (SESSION_S + 15) + 30
                spinners = [
                    multiprocessing.Process(target=_spin, args=(until,), daemon=True)
                    for _ in range(SPINNERS)
                ]
                for spinner in spinners:
                    spinner.start()
            hops: list[Hops] = []
            load = os.getloadavg()[0]
            progress(f"idle lateness: {phase}, {CHAIN_ROUNDS} timer wake-ups without redlight")
            chain_wake, chain_hop = wake_chain()
            for wave_no in range(WAVES):
                progress(f"idle lateness: {phase}, wave {wave_no + 1}/{WAVES}")
                wave = cutoff_wave(setup, SESSIONS, SESSION_S)
                hops += _hops(log, wave.on_at, wave.off_at)
            for spinner in spinners:
                spinner.terminate()
                spinner.join()
            results[phase] = {
                "load": round(load, 2),
                "n": len(hops),
                **{
                    name: round(percentile([getattr(h, name) for h in hops], 50), 2)
                    for name in Hops.__slots__
                },
                "late_p99": round(percentile([h.late for h in hops], 99), 2),
                "bare_wake": round(chain_wake, 2),
                "bare_hop": round(chain_hop, 2),
            }
        setup.daemon.stop()
    return results


def probe_report(found: dict[str, Any]) -> str:
    """One row per phase, the median of each hop in ms, and the JSON."""
    names = [*Hops.__slots__, "bare_wake", "bare_hop"]
    lines = ["phase            load    n  " + "  ".join(f"{n:>13}" for n in names)]
    for phase, row in found.items():
        lines.append(
            f"{phase:<15}  {row['load']:>4}  {row['n']:>3}  "
            + "  ".join(f"{row[n]:>13.2f}" for n in names)
        )
    lines.append(json.dumps(found, separators=(", ", ": ")))
    return "\n".join(lines)
