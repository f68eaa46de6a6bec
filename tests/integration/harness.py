"""Black-box harness: the real ``redlight run`` process, a private mosquitto, simulated plugs."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from paho.mqtt.client import topic_matches_sub

from redlight.broker import Connected, Message, Received
from redlight.config import MqttProtocol
from redlight.mqtt import PahoClient
from redlight.presets import PlugConfig, build_plug
from redlight.simplug import SimulatedPlug
from tests.mosquitto import MosquittoBroker

#: Generous bounds: the machines are small and shared. Precise timing is the benchmark's job.
WAIT_S = 15.0
#: The client id config_text gives the daemon (the one an intruder takes, to make a conflict).
DAEMON_CLIENT_ID = "redlight-under-test"


@dataclass
class Seen:
    """A message the observer saw, with the loop time it arrived."""

    topic: str
    payload: bytes
    retain: bool
    at: float

    def json(self) -> dict[str, Any]:
        """The payload as a JSON object."""
        value = json.loads(self.payload)
        assert isinstance(value, dict)
        return value


@dataclass
class Observer:
    """A client subscribed to everything, recording what it sees."""

    port: int
    client_id: str = "observer"
    seen: list[Seen] = field(default_factory=list)
    _client: PahoClient | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        """Connect and subscribe to ``#``."""
        loop = asyncio.get_running_loop()
        connected = asyncio.Event()
        self._client = PahoClient(
            host="127.0.0.1",
            port=self.port,
            client_id=self.client_id,
            will=None,
            username=None,
            password=None,
            tls=None,
        )

        def sink(event: object) -> None:
            if isinstance(event, Connected):
                assert self._client is not None
                self._client.subscribe(["#"])
                connected.set()
            elif isinstance(event, Received):
                self.seen.append(Seen(event.topic, event.payload, event.retain, loop.time()))
                self._changed.set()

        self._client.start(sink)
        async with asyncio.timeout(WAIT_S):
            await connected.wait()

    async def stop(self) -> None:
        """Disconnect."""
        if self._client is not None:
            await self._client.stop()

    def publish(self, topic: str, payload: str | bytes, *, retain: bool = False) -> None:
        """Publish as a user or Home Assistant would."""
        assert self._client is not None
        assert self._client.publish(Message(topic, payload, retain=retain, qos=1))

    def subscribe(self, topic_filter: str) -> None:
        """Subscribe (again): the broker sends what it retains on the filter."""
        assert self._client is not None
        self._client.subscribe([topic_filter])

    def matching(self, topic_filter: str, since: int = 0) -> list[Seen]:
        """Messages seen on a filter (from index ``since``)."""
        return [m for m in self.seen[since:] if topic_matches_sub(topic_filter, m.topic)]

    def mark(self) -> int:
        """A position in the record, to look only at what comes after."""
        return len(self.seen)

    async def wait(
        self,
        topic_filter: str,
        predicate: Callable[[Seen], bool] = lambda m: True,
        *,
        since: int = 0,
        within: float = WAIT_S,
    ) -> Seen:
        """The first message (from ``since``) matching, waiting for it if need be."""
        async with asyncio.timeout(within):
            index = since
            while True:
                while index < len(self.seen):
                    message = self.seen[index]
                    index += 1
                    if topic_matches_sub(topic_filter, message.topic) and predicate(message):
                        return message
                self._changed.clear()
                await self._changed.wait()

    async def event(
        self, event_type: str, *, since: int = 0, within: float = WAIT_S, **fields: Any
    ) -> dict[str, Any]:
        """The first event of a type (with the given fields) on ``<b>/event``."""

        def wanted(message: Seen) -> bool:
            body = message.json()
            return body.get("event_type") == event_type and all(
                body.get(k) == v for k, v in fields.items()
            )

        return (await self.wait("redlight/event", wanted, since=since, within=within)).json()

    def events(self, event_type: str, since: int = 0) -> list[dict[str, Any]]:
        """Events of a type seen so far."""
        return [
            m.json()
            for m in self.matching("redlight/event", since)
            if m.json().get("event_type") == event_type
        ]


class Daemon:
    """The real ``redlight run`` process."""

    def __init__(
        self,
        config_path: Path,
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        """Prepare; nothing runs until :meth:`start`. ``env`` adds variables (REDLIGHT_...
        overrides, which are otherwise removed); ``cwd`` is where the process runs."""
        self.config_path = config_path
        self.log_path = log_path
        self.env = dict(env or {})
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the process (its output goes to a log file in tmp_path)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("REDLIGHT_")}
        env.pop("NOTIFY_SOCKET", None)
        env.update(self.env)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "redlight",
                "run",
                "--config",
                str(self.config_path),
                "--log-format",
                "json",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.cwd,
        )
        log.close()

    async def wait_exit(self, within: float = WAIT_S) -> int:
        """Wait for the process to exit; its exit code."""
        assert self.process is not None
        loop = asyncio.get_running_loop()
        return await asyncio.wait_for(loop.run_in_executor(None, self.process.wait), within)

    def signal(self, signum: signal.Signals) -> None:
        """Send a signal (SIGTERM, SIGKILL)."""
        assert self.process is not None
        self.process.send_signal(signum)

    def stop_now(self) -> None:
        """Teardown: kill if still running."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(5)

    def logged(self, event: str) -> list[dict[str, Any]]:
        """The daemon's log lines for one event (``storage_error``, ...)."""
        return [line for line in self.log_lines() if line.get("event") == event]

    async def wait_logged(self, event: str, within: float = WAIT_S) -> dict[str, Any]:
        """The first log line of an event, polling the log file until it appears (bounded)."""
        async with asyncio.timeout(within):
            while True:
                found = self.logged(event)
                if found:
                    return found[0]
                await asyncio.sleep(0.05)  # polling a file for a condition, with a deadline

    def log_lines(self) -> list[dict[str, Any]]:
        """The daemon's JSON log lines."""
        lines = []
        for raw in self.log_path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                lines.append(json.loads(raw))
        return lines


class PlugLink:
    """A TCP relay between one simulated plug and the broker, which a test can cut.

    :meth:`cut` drops the plug's connection abruptly, without an MQTT DISCONNECT, as a Wi-Fi
    outage or a power cut does: the broker publishes the plug's last will. While cut, the plug's
    reconnect attempts are held (accepted, not forwarded); :meth:`restore` lets them through,
    so the plug is back as soon as the partition heals rather than after paho's backoff.
    """

    def __init__(self, broker_port: int) -> None:
        """Prepare a relay to the broker on ``broker_port``; nothing listens until :meth:`start`."""
        self.broker_port = broker_port
        self.port = 0
        self._open = asyncio.Event()
        self._open.set()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Listen on a free port of 127.0.0.1."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def cut(self) -> None:
        """Drop every connection at once (TCP reset, no DISCONNECT) and hold new ones."""
        self._open.clear()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def restore(self) -> None:
        """Heal the partition: held and new connections go through to the broker."""
        self._open.set()

    async def close(self) -> None:
        """Stop listening and drop everything."""
        self.cut()
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        await self._open.wait()
        if writer.transport.is_closing():
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.broker_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.add(up_writer)
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(source, sink, writer, up_writer))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        *ends: asyncio.StreamWriter,
    ) -> None:
        with contextlib.suppress(OSError):
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        # One side closed (or was cut): close both, as a broken path would.
        for end in ends:
            end.transport.abort()
            self._writers.discard(end)


async def start_plug(
    port: int, panel_id: str, plug: dict[str, Any], name: str, *, link: PlugLink | None = None
) -> SimulatedPlug:
    """A simulated plug of one firmware on its own broker connection (through ``link``).

    Its client carries the firmware's last will, so a connection that drops without a
    DISCONNECT makes the broker announce the plug offline.
    """
    config = PlugConfig(**plug)
    client = PahoClient(
        host="127.0.0.1",
        port=link.port if link is not None else port,
        client_id=f"sim-{name}",
        will=SimulatedPlug.last_will(config),
        username=None,
        password=None,
        tls=None,
    )
    sim = SimulatedPlug(panel_id, config, base_topic="redlight", client=client)
    await sim.start()
    return sim


def default_protocol() -> MqttProtocol:
    """The daemon's protocol in a run: ``REDLIGHT_TEST_PROTOCOL``, else its own default, 5."""
    chosen = os.environ.get("REDLIGHT_TEST_PROTOCOL", "5")
    if chosen not in ("5", "3.1.1"):
        raise ValueError(f'REDLIGHT_TEST_PROTOCOL must be "5" or "3.1.1" (got {chosen!r})')
    return "5" if chosen == "5" else "3.1.1"


def config_text(
    port: int,
    db: Path,
    panels: dict[str, dict[str, Any]],
    safety: str = "",
    extra: str = "",
    settings: Mapping[str, Mapping[str, Any]] | None = None,
    protocol: MqttProtocol = "5",
) -> str:
    """A config file for the daemon under test, speaking ``protocol`` to the broker.

    ``settings`` adds keys to a panel's table (e.g. ``default_duration``); ``extra`` is appended
    after the panels (routines, schedules).
    """
    lines = [
        "[mqtt]",
        f'url = "mqtt://127.0.0.1:{port}"',
        f'protocol = "{protocol}"',
        f'client_id = "{DAEMON_CLIENT_ID}"',
        "[storage]",
        f'path = "{db}"',
        "[safety]",
        # A default that the test's own ``safety`` lines may replace (TOML forbids a repeat).
        *([] if "confirm_timeout" in safety else ['confirm_timeout = "2s"']),
        safety,
    ]
    for panel_id, plug in panels.items():
        lines.append(f"[panels.{panel_id}]")
        lines.append(f'name = "{panel_id}"')
        for key, value in (settings or {}).get(panel_id, {}).items():
            lines.append(f"{key} = {json.dumps(value)}")
        items = ", ".join(f"{k} = {json.dumps(v)}" for k, v in plug.items())
        lines.append(f"plug = {{ {items} }}")
    lines.append(extra)
    return "\n".join(lines) + "\n"


PRESETS: dict[str, dict[str, Any]] = {
    "tasmota": {"preset": "tasmota", "topic": "sim_tasmota"},
    "shelly_gen1": {"preset": "shelly_gen1", "id": "shellyplug-s-SIM1"},
    "shelly_gen2": {"preset": "shelly_gen2", "prefix": "shellyplusplugs-sim2"},
    "zigbee2mqtt": {"preset": "zigbee2mqtt", "device": "sim plug", "failsafe": True},
    "esphome": {"preset": "esphome", "node": "sim-esphome", "switch": "relay"},
    "generic": {
        "preset": "generic",
        "command_topic": "sim/generic/set",
        "state_topic": "sim/generic/state",
    },
    # A generic plug that can be asked its state (how a poll reaches it).
    "generic_asked": {
        "preset": "generic",
        "command_topic": "sim/generic_asked/set",
        "state_topic": "sim/generic_asked/state",
        "state_request_topic": "sim/generic_asked/get",
    },
}


@dataclass
class System:
    """Broker, observer, plugs and daemon of one test."""

    tmp: Path
    broker: MosquittoBroker
    observer: Observer
    plugs: dict[str, SimulatedPlug] = field(default_factory=dict)
    links: dict[str, PlugLink] = field(default_factory=dict)
    daemon: Daemon | None = None
    db_path: Path | None = None
    #: What the daemon speaks to the broker unless a test says otherwise.
    protocol: MqttProtocol = "5"

    @property
    def db(self) -> Path:
        """The daemon's history database."""
        return self.db_path or self.tmp / "history.db"

    async def up(
        self,
        presets: list[str],
        *,
        safety: str = "",
        start: bool = True,
        settings: Mapping[str, Mapping[str, Any]] | None = None,
        extra: str = "",
        links: Collection[str] = (),
        db: Path | None = None,
        protocol: MqttProtocol | None = None,
    ) -> Daemon:
        """Start plugs for ``presets`` (one panel each, named after the preset) and the daemon.

        ``settings`` and ``extra`` go into the config file as :func:`config_text` describes;
        the plugs named in ``links`` connect through a :class:`PlugLink` a test can cut; ``db``
        replaces the history database's path; the daemon speaks ``protocol`` to the broker
        (default: the system's, see the ``system`` fixture).
        """
        self.db_path = db
        panels = {name: PRESETS[name] for name in presets}
        for name, plug in panels.items():
            link = None
            if name in links:
                link = self.links[name] = PlugLink(self.broker.port)
                await link.start()
            self.plugs[name] = await start_plug(self.broker.port, name, plug, name, link=link)
        path = self.tmp / "config.toml"
        text = config_text(
            self.broker.port, self.db, panels, safety, extra, settings, protocol or self.protocol
        )
        path.write_text(text)
        self.daemon = Daemon(path, self.tmp / "daemon.log")
        if start:
            await self.start_daemon()
        return self.daemon

    async def start_daemon(self, *, off: Collection[str] | None = None) -> None:
        """Start the daemon and wait until it says online and has switched the plugs off.

        ``off`` names the plugs to wait for (default: all; a cut-off plug cannot answer).
        Switched off means both: redlight reports the plug off, and the plug has received every
        start-up OFF (rule 8) redlight sent before that report. The report alone can be the
        answer to a state query sent just before an OFF, and a button pressed before that OFF
        arrives is then switched off by it (seen once in a full integration run under load).
        """
        assert self.daemon is not None
        mark = self.observer.mark()
        names = list(self.plugs if off is None else off)
        before = {name: len(self.plugs[name].commands) for name in names}
        self.daemon.start()
        await self.observer.wait("redlight/status", lambda m: m.payload == b"online", since=mark)
        for name in names:
            await self.observer.wait(
                f"redlight/panel/{name}/state",
                lambda m: m.json()["plug"] == "off",
                since=mark,
            )
            # Redlight sends plug commands before its state, so the observer has seen each OFF.
            offs = off_commands(self.plugs[name])
            sent = sum((m.topic, m.payload) in offs for m in self.observer.seen[mark:])
            await until(
                self.plugs[name], functools.partial(received_offs, since=before[name], count=sent)
            )

    def command(self, panel: str, payload: str | dict[str, Any]) -> int:
        """Send a panel command; return the observer mark from just before it."""
        mark = self.observer.mark()
        text = payload if isinstance(payload, str) else json.dumps(payload)
        self.observer.publish(f"redlight/panel/{panel}/set", text)
        return mark

    def history(self) -> list[sqlite3.Row]:
        """The sessions in the daemon's database."""
        with sqlite3.connect(self.db) as db:
            db.row_factory = sqlite3.Row
            rows: list[sqlite3.Row] = db.execute(
                "SELECT * FROM sessions ORDER BY started_at"
            ).fetchall()
        db.close()
        return rows


async def until(
    plug: SimulatedPlug, condition: Callable[[SimulatedPlug], bool], within: float = WAIT_S
) -> None:
    """Wait (bounded) until a simulated plug's state satisfies ``condition``."""
    async with asyncio.timeout(within):
        await plug.wait_for(condition)


def off_commands(plug: SimulatedPlug) -> frozenset[tuple[str, bytes]]:
    """Topic and payload of each message of redlight's OFF for this plug."""
    built = build_plug(plug.panel_id, plug.config, base_topic=plug.base_topic)
    return frozenset((m.topic, m.payload_bytes()) for m in built.turn_off())


def received_offs(plug: SimulatedPlug, *, since: int, count: int) -> bool:
    """The plug has received ``count`` OFF messages after its first ``since`` commands."""
    offs = off_commands(plug)
    return sum((c.topic, c.payload) in offs for c in plug.commands[since:]) >= count


def is_on(plug: SimulatedPlug) -> bool:
    """The plug's relay is on."""
    return plug.is_on


def is_off(plug: SimulatedPlug) -> bool:
    """The plug's relay is off."""
    return not plug.is_on
