"""Phase ``flood``: a cutoff while junk commands pour in, and a storm of Home Assistant births.

One daemon with one panel. First a session of :data:`SESSION_S` runs while other processes
publish junk on the panel's command topic at :data:`FLOOD_RATE` messages a second, from a
second into the session until past its deadline: how late the OFF reaches the plug, and how
much the daemon's resident memory grows. Then :data:`BIRTHS` ``homeassistant/status`` =
``online`` messages at once: the daemon's peak memory, and how many discovery configs follow.

A Python paho client cannot publish 100,000 messages a second: the flooders send MQTT PUBLISH
packets encoded once, over raw sockets, from :data:`FLOODERS` processes; the rate they reached
is reported with the figures.
"""

from __future__ import annotations

import json
import multiprocessing
import socket
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Final

from . import procfs
from .clients import BenchError

SESSION_S: Final = 5
#: Messages a second, all flooders together, and over how long (from 1 s into the session).
FLOOD_RATE: Final = 100_000
FLOOD_START_S: Final = 1.0
FLOOD_S: Final = 6.0
FLOODERS: Final = 2
#: Packets per ``sendall``: large enough that the flooders cost little CPU per message.
CHUNK: Final = 500
JUNK: Final = b"junk, not a command"
BIRTHS: Final = 20_000
BIRTH_TOPIC: Final = "homeassistant/status"
#: How long memory is watched after the birth storm (rediscovery comes 2 to 5 s after a birth).
BIRTH_WATCH_S: Final = 12.0
RSS_SAMPLE_S: Final = 0.05


@dataclass(frozen=True, slots=True)
class FloodResult:
    """What the flood phase measured."""

    off_late_ms: float
    flood_sent: int
    flood_rate: float
    rss_before_mb: float
    rss_peak_mb: float
    births: int
    birth_rss_before_mb: float
    birth_rss_peak_mb: float
    birth_discovery_messages: int
    settled_after_flood_s: float


def _remaining_length(length: int) -> bytes:
    out = bytearray()
    while True:
        byte, length = length % 128, length // 128
        out.append(byte | (0x80 if length else 0))
        if not length:
            return bytes(out)


def _string(value: bytes) -> bytes:
    return len(value).to_bytes(2, "big") + value


def connect_packet(client_id: str) -> bytes:
    """MQTT 3.1.1 CONNECT, clean session, keepalive 60 s."""
    body = _string(b"MQTT") + b"\x04\x02" + (60).to_bytes(2, "big") + _string(client_id.encode())
    return b"\x10" + _remaining_length(len(body)) + body


def publish_packet(topic: str, payload: bytes) -> bytes:
    """MQTT PUBLISH at QoS 0, not retained."""
    body = _string(topic.encode()) + payload
    return b"\x30" + _remaining_length(len(body)) + body


def _raw_client(port: int, client_id: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(connect_packet(client_id))
    connack = sock.recv(4)
    if len(connack) < 4 or connack[0] != 0x20 or connack[3] != 0:
        raise BenchError(f"{client_id}: the broker refused the connection ({connack!r})")
    return sock


def _flooder(
    port: int, index: int, packet: bytes, rate: float, seconds: float, out: Connection
) -> None:
    """One flooding process: ``rate`` packets a second for ``seconds``; sends back the count."""
    sock = _raw_client(port, f"bench-flood-{index}")
    chunk = packet * CHUNK
    sent = 0
    start = time.perf_counter()
    end = start + seconds
    while (now := time.perf_counter()) < end:
        due = (now - start) * rate
        if sent >= due:
            time.sleep(min(CHUNK / rate, end - now))
            continue
        sock.sendall(chunk)
        sent += CHUNK
    out.send((sent, time.perf_counter() - start))
    sock.close()


def flood(port: int, topic: str, rate: float, seconds: float) -> tuple[int, float]:
    """Junk on ``topic`` from :data:`FLOODERS` processes; messages sent and the rate reached."""
    packet = publish_packet(topic, JUNK)
    pipes = []
    processes = []
    context = multiprocessing.get_context("spawn")
    for index in range(FLOODERS):
        receiver, sender = context.Pipe(duplex=False)
        process = context.Process(
            target=_flooder, args=(port, index, packet, rate / FLOODERS, seconds, sender)
        )
        process.start()
        pipes.append(receiver)
        processes.append(process)
    total = 0
    longest = 0.0
    for receiver, process in zip(pipes, processes, strict=True):
        if not receiver.poll(seconds + 30):
            process.kill()
            raise BenchError("a flooder did not finish")
        sent, took = receiver.recv()
        total += sent
        longest = max(longest, took)
        process.join()
    return total, total / longest


def births(port: int, count: int) -> None:
    """``count`` Home Assistant births, back to back, on one raw connection."""
    sock = _raw_client(port, "bench-births")
    sock.sendall(publish_packet(BIRTH_TOPIC, b"online") * count)
    # A PINGREQ answered means the broker has read everything before it.
    sock.sendall(b"\xc0\x00")
    if sock.recv(2) != b"\xd0\x00":
        raise BenchError("the broker did not answer the ping after the births")
    sock.close()


class PeakRss:
    """The largest VmRSS of a process, sampled on a thread while the block runs."""

    def __init__(self, pid: int) -> None:
        """Start sampling ``pid`` now."""
        self.pid = pid
        self.peak = procfs.status_mb(pid)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._done.wait(RSS_SAMPLE_S):
            self.peak = max(self.peak, procfs.status_mb(self.pid))

    def stop(self) -> float:
        """Stop sampling; the peak."""
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, procfs.status_mb(self.pid))
        return self.peak


def body(session_s: int) -> str:
    """The start command for a session of ``session_s``."""
    return json.dumps({"action": "start", "duration": f"{session_s}s"})


__all__ = ["FloodResult", "PeakRss", "births", "flood"]
