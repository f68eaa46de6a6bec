"""The paho adapter's own rules: URL parsing, set-up errors, secrets, and no late re-sends."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho_mqtt
import pytest
from paho.mqtt.client import DisconnectFlags, MQTTMessageInfo
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from structlog.testing import capture_logs
from structlog.typing import EventDict, Processor

from redlight.broker import (
    OUTBOX_EVENTS,
    STATE_QOS,
    UNWRITTEN_LIMIT,
    BrokerError,
    Connected,
    ConnectFailed,
    Disconnected,
    Message,
    Received,
)
from redlight.config import MqttProtocol
from redlight.mqtt import PahoClient, ShortLivedConnections, TlsOptions, parse_broker_url
from tests.brokerkit import WAIT_S, Events, paho_client
from tests.mosquitto import MosquittoBroker, mosquitto_binary


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://broker", ("broker", 1883, False)),
        ("mqtt://broker.lan:1884", ("broker.lan", 1884, False)),
        ("mqtt://127.0.0.1:2000/", ("127.0.0.1", 2000, False)),
        ("mqtts://broker", ("broker", 8883, True)),
        ("MQTTS://broker:8884", ("broker", 8884, True)),
        ("mqtt://[::1]:1885", ("::1", 1885, False)),
    ],
)
def test_parse_broker_url_accepts_mqtt_and_mqtts(url: str, expected: tuple[str, int, bool]) -> None:
    """mqtt:// and mqtts:// URLs give host, port (1883/8883 by default) and the TLS flag."""
    assert parse_broker_url(url) == expected


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("http://broker", "mqtt:// or mqtts://"),
        ("broker:1883", "mqtt:// or mqtts://"),
        ("", "mqtt:// or mqtts://"),
        ("mqtt://", "no host"),
        ("mqtt://:1883", "no host"),
        ("mqtt://broker:99999", "port"),
        ("mqtt://broker:abc", "port"),
        ("mqtt://broker:0", "port"),
        ("mqtt://user:hunter2@broker", "credentials"),
        ("mqtt://hunter2@broker", "credentials"),
        ("mqtt://:hunter2@broker", "credentials"),
        ("mqtt://hunter2%40broker", "credentials"),
        ("mqtt://broker:1883 ", "spaces"),
        ("mqtt://broker/some/path", "path"),
        ("mqtt://broker?x=1", "path"),
        ("mqtt://broker#frag", "path"),
    ],
)
def test_parse_broker_url_rejects_anything_else(url: str, complaint: str) -> None:
    """Other schemes, missing hosts, bad ports, credentials or paths raise one-sentence errors."""
    with pytest.raises(BrokerError, match=complaint) as raised:
        parse_broker_url(url)
    message = str(raised.value)
    assert message.endswith(".")
    assert "\n" not in message
    assert "hunter2" not in message


def test_missing_ca_file_is_a_broker_error(tmp_path: Path) -> None:
    """A TLS CA file that does not exist fails at construction with a BrokerError."""
    tls = TlsOptions(ca_file=tmp_path / "missing-ca.pem")
    with pytest.raises(BrokerError, match="FileNotFoundError"):
        paho_client(8883, "tls", tls=tls)


def test_tls_verifies_the_broker_unless_insecure() -> None:
    """TLS requires a valid certificate; insecure only skips the host name check."""
    strict = paho_client(8883, "strict", tls=TlsOptions())
    loose = paho_client(8883, "loose", tls=TlsOptions(insecure=True))
    for client, check_hostname in ((strict, True), (loose, False)):
        context = client._client._ssl_context
        assert context is not None
        assert context.verify_mode == ssl.CERT_REQUIRED
        assert context.check_hostname is check_hostname


def test_password_without_username_is_a_broker_error() -> None:
    """MQTT 3.1.1 cannot send a password without a username, so the config is refused."""
    with pytest.raises(BrokerError, match="username") as raised:
        paho_client(1884, "nouser", password="hunter2")  # noqa: S106 - a test value
    assert "hunter2" not in str(raised.value)


async def test_unstarted_client_publishes_nothing_and_stops_quietly() -> None:
    """Before start() the client is not connected: publish is False, subscribe and stop no-ops."""
    client = paho_client(1884, "idle")
    assert not client.connected
    assert not client.publish(Message("t/x", "ON"))
    client.subscribe(["t/#"])
    client.unsubscribe(["t/#"])
    await client.stop()


@pytest.fixture
def password_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A private mosquitto that only lets user ``redlight`` with password ``right-one`` in."""
    passwd = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    if mosquitto_binary() is None or not Path(passwd).exists():
        pytest.skip("mosquitto and mosquitto_passwd are not installed")
    password_file = tmp_path / "passwords"
    subprocess.run(
        [passwd, "-b", "-c", str(password_file), "redlight", "right-one"],
        check=True,
        capture_output=True,
    )
    broker = MosquittoBroker(tmp_path / "mosquitto", password_file=password_file)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def signal_on(event_name: str, flag: asyncio.Event) -> Processor:
    """A structlog processor that sets ``flag`` (on the running loop) when ``event_name`` logs."""
    loop = asyncio.get_running_loop()

    def processor(logger: Any, method: str, event_dict: EventDict) -> EventDict:
        if event_dict.get("event") == event_name:
            loop.call_soon_threadsafe(flag.set)
        return event_dict

    return processor


@pytest.mark.integration
@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_wrong_password_is_logged_without_the_password(
    password_broker: MosquittoBroker,
    caplog: pytest.LogCaptureFixture,
    protocol: MqttProtocol,
) -> None:
    """A refused login is logged at error with the reason, never with the password.

    mosquitto 2 gives the same reason on both protocols (MQTT 5's 0x87 is 3.1.1's code 5).
    """
    secret = "Wr0ng-Hunter2-Secret"  # noqa: S105 - the deliberately wrong password under test
    client = paho_client(
        password_broker.port, "refused", username="redlight", password=secret, protocol=protocol
    )
    with caplog.at_level(logging.DEBUG):
        refused, logs = await refusal(client)

    assert refused["log_level"] == "error"
    assert refused["reason"] == "Not authorized"
    assert "Sending CONNECT" in caplog.text  # paho's own logging is routed and was captured
    assert secret not in caplog.text
    assert secret not in repr(logs)


async def refusal(client: PahoClient) -> tuple[EventDict, list[EventDict]]:
    """Start ``client`` until the broker refuses it: the refusal's log entry, and every entry.

    A refused connection is no connection: the sink hears only that it failed, and why.
    """
    sink = Events()
    refused_logged = asyncio.Event()
    with capture_logs([signal_on("mqtt_connect_refused", refused_logged)]) as logs:
        client.start(sink)
        try:
            await asyncio.wait_for(refused_logged.wait(), WAIT_S)
        finally:
            await client.stop()
    assert sink.history
    assert all(
        isinstance(e, ConnectFailed) and e.reason.startswith("refused: ") for e in sink.history
    )
    return next(e for e in logs if e["event"] == "mqtt_connect_refused"), logs


async def _answer_connect_as_3_1_1_only(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """A broker that lacks MQTT 5: any CONNECT gets 3.1.1's "unacceptable protocol version"."""
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
        await reader.readexactly(2)  # the CONNECT's fixed header; its length fits one byte here
        writer.write(b"\x20\x02\x00\x01")
        await writer.drain()
        await reader.read()  # until paho closes the connection
    writer.close()


async def test_a_broker_without_mqtt_5_is_one_error_with_the_3_1_1_hint() -> None:
    """Refused for its protocol version, redlight on 5 says to set ``mqtt.protocol = "3.1.1"``."""
    server = await asyncio.start_server(_answer_connect_as_3_1_1_only, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        refused, _ = await refusal(paho_client(port, "too-new", protocol="5"))

    assert refused["log_level"] == "error"
    assert refused["reason"] == "Unsupported protocol version"
    assert refused["hint"] == 'the broker does not speak MQTT 5: set mqtt.protocol = "3.1.1"'


async def test_a_session_taken_over_on_5_is_a_client_id_conflict_at_once() -> None:
    """MQTT 5's DISCONNECT "Session taken over" (0x8E) is reported on the first drop.

    mosquitto 2.0.11 closes the old connection without that DISCONNECT (its log says "closing
    old connection"), so the broker's packet is played into paho's callback here.
    """
    client = paho_client(1, "same-id", protocol="5")
    client._loop = asyncio.get_running_loop()
    client._connected = True
    taken_over = ReasonCode(PacketTypes.DISCONNECT, identifier=0x8E)
    with capture_logs() as logs:
        client._on_disconnect(client._client, None, DisconnectFlags(True), taken_over, None)

    conflict = next(e for e in logs if e["event"] == "client_id_conflict")
    assert conflict["client_id"] == "same-id"
    assert conflict["reason"] == "Session taken over"


class PersistentPlug:
    """A 3.1.1 plug with a persistent session (as Tasmota can be): the broker queues for it."""

    def __init__(self, port: int, topic: str) -> None:
        """A plug of the broker on ``port`` that listens on ``topic`` at QoS 1."""
        self.port = port
        self.topic = topic
        self.payloads: list[bytes] = []
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        self._client: paho_mqtt.Client | None = None

    def _connection(self) -> paho_mqtt.Client:
        """A new paho client for one visit: like the adapter's, started once and stopped once."""
        client = paho_mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id="persistent-plug",
            clean_session=False,
            protocol=paho_mqtt.MQTTv311,
        )
        client.on_connect = lambda c, *_: c.subscribe(self.topic, 1)
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    def _on_subscribe(self, *_: object) -> None:
        self._loop.call_soon_threadsafe(self._changed.set)

    def _on_message(self, client: paho_mqtt.Client, userdata: Any, message: Any) -> None:
        self._loop.call_soon_threadsafe(self._got, bytes(message.payload))

    def _got(self, payload: bytes) -> None:
        self.payloads.append(payload)
        self._changed.set()

    async def online(self) -> None:
        """Connect (the broker hands over what it queued) and wait until subscribed."""
        self._changed.clear()
        self._client = self._connection()
        await asyncio.to_thread(self._client.connect, "127.0.0.1", self.port)
        self._client.loop_start()
        async with asyncio.timeout(WAIT_S):
            await self._changed.wait()

    async def offline(self) -> None:
        """Disconnect cleanly: the session, and its subscription, stay on the broker."""
        assert self._client is not None
        self._client.disconnect()
        await asyncio.to_thread(self._client.loop_stop)

    async def heard(self, payload: bytes) -> None:
        """Wait until ``payload`` has arrived."""
        async with asyncio.timeout(WAIT_S):
            while payload not in self.payloads:
                self._changed.clear()
                await self._changed.wait()


@pytest.mark.integration
@pytest.mark.parametrize(("protocol", "delivered"), [("5", []), ("3.1.1", [b"ON"])])
async def test_a_message_that_expired_never_reaches_a_plug_that_was_away(
    mosquitto: MosquittoBroker, protocol: MqttProtocol, delivered: list[bytes]
) -> None:
    """Rule 6 at the broker: on MQTT 5 an ON queued for an absent plug expires there.

    The plug speaks 3.1.1 and keeps a persistent session, so the broker queues for it; on
    3.1.1 redlight cannot ask for an expiry and the late ON arrives. QoS 1 here: mosquitto
    queues redlight's QoS 0 commands only with ``queue_qos0_messages``, where the same holds.
    """
    plug = PersistentPlug(mosquitto.port, "t/plug/power")
    await plug.online()
    await plug.offline()
    client = paho_client(mosquitto.port, "expiring", protocol=protocol)
    events = Events()
    client.start(events)
    await events.next(Connected)
    client.subscribe(["t/sync"])
    assert client.publish(Message("t/plug/power", "ON", qos=1, expiry_s=1))
    assert client.publish(Message("t/plug/power", "barrier", qos=1))
    assert client.publish(Message("t/sync", "queued", qos=1))
    await events.next(Received, lambda e: e.topic == "t/sync")
    # The plug stays away past the expiry (mosquitto counts whole seconds): that is the case.
    await asyncio.sleep(2.5)
    try:
        await plug.online()
        await plug.heard(b"barrier")
    finally:
        await plug.offline()
        await client.stop()
    assert plug.payloads == [*delivered, b"barrier"]


class Proxy:
    """A TCP relay to mosquitto that can swallow the client's packets and cut connections.

    It reproduces the one case paho would re-send after a reconnect: a QoS 1 PUBLISH that was
    sent but never acknowledged before the connection died.
    """

    def __init__(self, upstream_port: int) -> None:
        """A relay to 127.0.0.1:``upstream_port``; call :meth:`start`."""
        self.upstream_port = upstream_port
        self.swallow = False
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Listen on a free port."""
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def cut(self) -> None:
        """Abort every relayed connection on both sides (no MQTT DISCONNECT)."""
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()

    async def close(self) -> None:
        """Stop listening and wait for the relays to end."""
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=WAIT_S)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._writers += [writer, up_writer]
        pipes = {
            asyncio.create_task(self._pipe(reader, up_writer, to_broker=True)),
            asyncio.create_task(self._pipe(up_reader, writer, to_broker=False)),
        }
        self._tasks |= pipes
        await asyncio.wait(pipes)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, to_broker: bool
    ) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                if to_broker and self.swallow:
                    continue
                writer.write(data)
                await writer.drain()
        writer.transport.abort()


@pytest.fixture
async def proxy(mosquitto: MosquittoBroker) -> AsyncIterator[Proxy]:
    """A relay in front of the test's mosquitto."""
    relay = Proxy(mosquitto.port)
    await relay.start()
    yield relay
    await relay.close()


@pytest.mark.integration
async def test_unacknowledged_qos1_message_is_not_resent_after_reconnect(
    mosquitto: MosquittoBroker, proxy: Proxy
) -> None:
    """Safety rule 6: a QoS 1 message unacknowledged when the link died is dropped, not re-sent."""
    observer, seen = paho_client(mosquitto.port, "observer"), Events()
    client, events = paho_client(proxy.port, "through-proxy"), Events()
    try:
        observer.start(seen)
        client.start(events)
        await seen.next(Connected)
        await events.next(Connected)
        observer.subscribe(["t/#"])
        assert observer.publish(Message("t/ready", "", qos=STATE_QOS))
        await seen.message("t/ready")

        proxy.swallow = True
        assert client.publish(Message("t/plug/power", "ON", qos=STATE_QOS))
        proxy.cut()
        await events.next(Disconnected)
        # paho really did keep it for a re-send: the scenario under test is real.
        assert len(client._client._out_messages) == 1
        proxy.swallow = False

        await events.next(Connected)
        # The client's connection would carry a re-sent message before this barrier.
        assert client.publish(Message("t/barrier", "", qos=STATE_QOS))
        await seen.message("t/barrier")
        assert [m.topic for m in seen.received()] == ["t/ready", "t/barrier"]
    finally:
        await client.stop()
        await observer.stop()


@pytest.mark.integration
async def test_connection_sends_each_packet_at_once(mosquitto: MosquittoBroker) -> None:
    """The socket has TCP_NODELAY: a plug command never waits for an earlier packet's ACK."""
    client, events = paho_client(mosquitto.port, "no-delay"), Events()
    try:
        client.start(events)
        await events.next(Connected)
        sock = client._client.socket()
        assert isinstance(sock, socket.socket)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        await client.stop()


def test_three_short_lived_connections_in_a_row_are_a_client_id_conflict() -> None:
    """Dropped within 30 s of connecting, three times in a row: reported, then counted afresh."""
    seen = ShortLivedConnections()
    reports = []
    for start in range(0, 60, 10):  # six connections, each closed 2 s after it opened
        seen.connected(float(start))
        reports.append(seen.dropped(start + 2.0))
    assert reports == [False, False, True, False, False, True]


def test_a_connection_that_lasted_starts_the_count_again() -> None:
    """A drop after more than 30 s is an ordinary outage: the short-lived count starts over."""
    seen = ShortLivedConnections()
    timeline = [(0.0, 1.0), (2.0, 3.0), (4.0, 100.0), (101.0, 102.0), (103.0, 104.0)]
    reports = []
    for opened, closed in timeline:
        seen.connected(opened)
        reports.append(seen.dropped(closed))
    assert reports == [False, False, False, False, False]
    seen.connected(105.0)
    assert seen.dropped(106.0)
    # A drop with no connection before it (a refused CONNECT) counts for nothing.
    assert not seen.dropped(107.0)


class FakePaho:
    """Stands in for ``paho.Client`` behind a :class:`PahoClient`: records what it is handed."""

    def __init__(self) -> None:
        """Connected, nothing handed yet."""
        self.handed: list[tuple[int, str, bytes]] = []
        self._out_message_mutex = threading.RLock()
        self._out_messages: dict[int, object] = {}

    def is_connected(self) -> bool:
        """Always connected."""
        return True

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        properties: Properties | None = None,
    ) -> MQTTMessageInfo:
        """Take the message as paho would: queued for its network thread to write."""
        info = MQTTMessageInfo(len(self.handed) + 1)
        info.rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        self.handed.append((info.mid, topic, payload))
        return info


def fake_connected_client() -> tuple[PahoClient, FakePaho]:
    """A :class:`PahoClient` on the running loop, connected to a :class:`FakePaho`."""
    client = paho_client(1884, "fake")
    fake = FakePaho()
    client._client = fake  # type: ignore[assignment]
    client._loop = asyncio.get_running_loop()
    client._connected = True
    return client, fake


def written(client: PahoClient, mid: int) -> None:
    """paho's thread reports message ``mid`` written (QoS 0) or acknowledged (QoS 1)."""
    client._on_publish(
        None,  # type: ignore[arg-type]
        None,
        mid,
        ReasonCode(PacketTypes.PUBACK),
        Properties(PacketTypes.PUBACK),  # type: ignore[no-untyped-call]
    )


async def test_an_urgent_message_waits_behind_at_most_the_unwritten_limit() -> None:
    """Safety rule 12: paho holds at most UNWRITTEN_LIMIT events when an OFF is handed to it."""
    client, fake = fake_connected_client()
    for n in range(500):
        assert client.publish(Message("t/event", f"{n}", qos=STATE_QOS))
    assert len(fake.handed) == UNWRITTEN_LIMIT
    assert client.publish(Message("t/plug/set", "OFF", urgent=True))
    assert fake.handed[-1][1:] == ("t/plug/set", b"OFF")
    assert len(fake.handed) == UNWRITTEN_LIMIT + 1

    # As paho writes them, the waiting events follow, in order, never more on their way.
    for mid in range(1, UNWRITTEN_LIMIT + 1):
        written(client, mid)
    written(client, UNWRITTEN_LIMIT + 1)  # the OFF's own: not an event, frees nothing
    await asyncio.sleep(0)
    events = [payload for _, topic, payload in fake.handed if topic == "t/event"]
    assert events == [str(n).encode() for n in range(2 * UNWRITTEN_LIMIT)]


async def test_a_waiting_retained_state_is_replaced_by_the_next_on_its_topic() -> None:
    """Only the last retained message per topic goes out; events keep their order."""
    client, fake = fake_connected_client()
    for n in range(UNWRITTEN_LIMIT):
        client.publish(Message("t/filler", f"{n}"))
    client.publish(Message("t/state", "one", retain=True, qos=STATE_QOS))
    client.publish(Message("t/event", "between"))
    client.publish(Message("t/state", "two", retain=True, qos=STATE_QOS))
    for mid in range(1, UNWRITTEN_LIMIT + 1):
        written(client, mid)
    await asyncio.sleep(0)
    assert [(t, p) for _, t, p in fake.handed[UNWRITTEN_LIMIT:]] == [
        ("t/event", b"between"),
        ("t/state", b"two"),
    ]


async def test_waiting_messages_never_go_out_on_the_next_connection() -> None:
    """Safety rule 6: what still waited when the link dropped is forgotten on reconnect."""
    client, fake = fake_connected_client()
    for n in range(3 * UNWRITTEN_LIMIT):
        client.publish(Message("t/event", f"{n}"))
    assert client._drop_unsent() == 0  # paho's on_connect after a reconnect
    await asyncio.sleep(0)
    for mid in range(1, UNWRITTEN_LIMIT + 1):
        written(client, mid)  # late reports from the old connection
    await asyncio.sleep(0)
    assert len(fake.handed) == UNWRITTEN_LIMIT


async def test_events_past_the_outbox_bound_are_dropped_and_reported_once() -> None:
    """A flood of events cannot grow memory: past the bound they are dropped and counted."""
    client, fake = fake_connected_client()
    with capture_logs() as logs:
        total = OUTBOX_EVENTS + UNWRITTEN_LIMIT + 500
        results = [client.publish(Message("t/event", f"{n}")) for n in range(total)]
        assert client.publish(Message("t/plug/set", "OFF", urgent=True))
    assert results.count(False) == 500
    assert fake.handed[-1][1] == "t/plug/set"  # a plug command is never dropped
    drops = [line for line in logs if line["event"] == "mqtt_messages_dropped"]
    assert [line["count"] for line in drops] == [1]
    assert client._drop_report is not None  # the next summary, a second later
    client._drop_report.cancel()
