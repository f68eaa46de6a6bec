"""The paho-mqtt adapter of the broker port: a real MQTT 5 or 3.1.1 connection with reconnection.

paho runs its network loop on its own thread. Its callbacks never touch redlight's state: they
only hand events to the asyncio loop with ``call_soon_threadsafe`` (one owner of state), where the
runtime applies them in order. paho's exceptions and error codes are translated here, at the
boundary; nothing above this module sees a paho type.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import ssl
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import paho.mqtt.client as paho
import structlog
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from redlight.broker import (
    STATE_QOS,
    UNWRITTEN_LIMIT,
    BrokerClient,
    BrokerError,
    BrokerEvent,
    Connected,
    ConnectFailed,
    Disconnected,
    EventSink,
    Message,
    Outbox,
    Received,
)
from redlight.config import MqttProtocol
from redlight.config import parse_broker_url as _parse_url

log = structlog.get_logger("redlight.mqtt")

#: Reconnect backoff, in seconds: paho doubles the delay from the minimum up to the maximum.
RECONNECT_MIN_DELAY: Final = 1
RECONNECT_MAX_DELAY: Final = 30
#: How long ``stop()`` waits for the broker to see the clean DISCONNECT.
STOP_TIMEOUT: Final = 2.0
#: At most one ``mqtt_messages_dropped`` summary in this many seconds.
DROP_REPORT_S: Final = 1.0
#: Topic filters per SUBSCRIBE/UNSUBSCRIBE packet, so a large panel set stays well inside
#: brokers' packet limits.
FILTERS_PER_PACKET: Final = 100
#: ``client_id_conflict`` is logged when this many connections in a row were each closed by the
#: broker within :data:`CONFLICT_WINDOW_S` of being accepted: MQTT 3.1.1 brokers close the older
#: of two connections with one client id without a word, so the two clients take turns.
CONFLICT_DROPS: Final = 3
CONFLICT_WINDOW_S: Final = 30.0
#: MQTT 5 CONNACK: the broker does not speak the protocol version asked for (a 3.1.1-only
#: broker answers 1, which paho reports as this).
UNSUPPORTED_PROTOCOL: Final = 0x84
#: MQTT 5 DISCONNECT: another connection with our client id took the session over.
SESSION_TAKEN_OVER: Final = 0x8E


@dataclass(frozen=True, slots=True)
class TlsOptions:
    """TLS settings for an ``mqtts://`` broker; the CA is verified unless ``insecure``."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure: bool = False


def parse_broker_url(url: str) -> tuple[str, int, bool]:
    """Split ``mqtt://host[:port]`` or ``mqtts://host[:port]`` into host, port and TLS flag.

    The rules are the config's (:func:`redlight.config.parse_broker_url`), so ``redlight check``
    refuses exactly what this would; the URL is never echoed (it may hold a credential).
    """
    try:
        address = _parse_url(url)
    except ValueError as err:
        raise BrokerError(f"The broker URL {err}.") from None
    return address.host, address.port, address.tls


class ShortLivedConnections:
    """Counts connections the broker closed soon after accepting them (a client id conflict).

    Only paho's thread touches it (from ``on_connect`` and ``on_disconnect``); times are
    passed in, so the rule is tested without a clock.
    """

    def __init__(self) -> None:
        """No connection yet."""
        self._since: float | None = None
        self._count = 0

    def connected(self, now: float) -> None:
        """The broker accepted a connection at ``now``."""
        self._since = now

    def dropped(self, now: float) -> bool:
        """The connection dropped; ``True`` when that completes :data:`CONFLICT_DROPS` in a row.

        A connection that lasted longer than :data:`CONFLICT_WINDOW_S` starts the count again;
        after a report it starts again too, so a lasting conflict is reported every few drops
        rather than on every one.
        """
        since, self._since = self._since, None
        if since is None or now - since > CONFLICT_WINDOW_S:
            self._count = 0
            return False
        self._count += 1
        if self._count < CONFLICT_DROPS:
            return False
        self._count = 0
        return True


def _no_delay(client: paho.Client, userdata: Any, sock: Any) -> None:
    """Send each packet at once (TCP_NODELAY) rather than batching small writes.

    paho leaves Nagle's algorithm on: a plug command written while an earlier packet waits
    for the broker's ACK would be held until that ACK, up to Linux's 40 ms delayed ACK.
    """
    with contextlib.suppress(OSError, AttributeError):  # not a TCP socket: nothing to do
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class PahoClient(BrokerClient):
    """A broker connection through paho-mqtt, with paho's own reconnect loop and backoff."""

    def __init__(  # noqa: PLR0913 - keyword-only connection settings, each named at every call
        self,
        *,
        host: str,
        port: int,
        client_id: str,
        will: Message | None,
        username: str | None,
        password: str | None,
        tls: TlsOptions | None,
        keepalive: int = 30,
        protocol: MqttProtocol = "3.1.1",
    ) -> None:
        """Configure the connection; nothing touches the network until :meth:`start`."""
        self._host = host
        self._protocol = protocol
        self._port = port
        self._keepalive = keepalive
        self._client_id = client_id
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sink: EventSink | None = None
        # Written on paho's thread, read on the loop's: single bool stores are atomic.
        self._connected = False
        self._stopping = False
        self._stopped: asyncio.Event | None = None
        self._short_lived = ShortLivedConnections()
        #: Filters of each SUBSCRIBE waiting for its SUBACK, by packet id (the loop's only).
        self._pending_subscriptions: dict[int, Sequence[str]] = {}
        # Loop-owned: normal messages not yet handed to paho, and the mids of those handed
        # to it and not yet written (see publish).
        self._outbox = Outbox()
        self._unwritten: set[int] = set()
        self._drop_report: asyncio.TimerHandle | None = None
        client = _paho_client(
            client_id, protocol, will=will, username=username, password=password, tls=tls
        )
        self._client = self._wired(client)

    def _wired(self, client: paho.Client) -> paho.Client:
        """``client`` with this adapter's callbacks set."""
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_socket_open = _no_delay
        return client

    # -- the port --------------------------------------------------------------------------

    def start(self, sink: EventSink) -> None:
        """Start paho's network thread; events go to ``sink`` on the running loop."""
        self._loop = asyncio.get_running_loop()
        self._sink = sink
        self._stopped = asyncio.Event()
        # MQTT 5: a clean start on every connection, and no session expiry interval (so 0): the
        # broker forgets the session when the connection ends, as 3.1.1's clean session does.
        # Nothing may wait at the broker for a redlight that is away (safety rule 6). paho
        # ignores the flag on 3.1.1, where the client's clean_session does the same.
        try:
            self._client.connect_async(self._host, self._port, self._keepalive, clean_start=True)
        except ValueError as err:
            raise BrokerError(f"Invalid MQTT broker address ({err}).") from err
        log.info(
            "mqtt_connecting",
            host=self._host,
            port=self._port,
            client_id=self._client_id,
            protocol=self._protocol,
        )
        self._client.loop_start()

    def publish(self, message: Message) -> bool:
        """Publish; ``False`` and nothing queued when not connected (safety rule 6).

        Safety rule 12: paho writes its packets in the order it was handed them, so a plug
        command handed to it behind thousands of events would wait for all of them. Only
        urgent messages go to paho at once; normal ones wait in an :class:`Outbox` and are
        handed over while fewer than :data:`UNWRITTEN_LIMIT` are still unwritten (paho calls
        ``on_publish`` when a QoS 0 packet is written to the socket, and for QoS 1 on its
        PUBACK), so an OFF has at most that many packets ahead of it.
        """
        if not self.connected:
            log.debug("mqtt_publish_dropped", topic=message.topic, reason="not connected")
            return False
        if message.urgent:
            return self._send(message) is not None
        if not self._outbox.put(message):
            self._dropped()
            return False
        self._drain()
        return True

    def _send(self, message: Message) -> int | None:
        """Hand one message to paho; its mid, or ``None`` when it was not taken."""
        try:
            info = self._client.publish(
                message.topic,
                message.payload_bytes(),
                message.qos,
                message.retain,
                properties=self._publish_properties(message),
            )
        except ValueError as err:
            # A bad topic is a bug upstream, but it must not take the event loop down with it.
            log.error("mqtt_publish_invalid", topic=message.topic, error=str(err))
            return None
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            # The connection dropped between the check above and paho's send. For QoS > 0 paho
            # keeps the message to re-send after the reconnect; forget it here (safety rule 6).
            self._forget_outgoing(info.mid)
            log.debug(
                "mqtt_publish_dropped", topic=message.topic, reason=paho.error_string(info.rc)
            )
            return None
        return info.mid

    def _publish_properties(self, message: Message) -> Properties | None:
        """MQTT 5's Message Expiry Interval for a message that has one; ``None`` otherwise."""
        if message.expiry_s is None or self._protocol != "5":
            return None
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.MessageExpiryInterval = max(1, math.ceil(message.expiry_s))
        return properties

    def _drain(self) -> None:
        """Hand waiting normal messages to paho while fewer than the limit are unwritten."""
        if not self.connected:
            # Safety rule 6: nothing waits for the next connection.
            self._unwritten.clear()
            dropped = self._outbox.clear()
            if dropped:
                log.debug("mqtt_publish_dropped", count=dropped, reason="not connected")
            return
        while len(self._unwritten) < UNWRITTEN_LIMIT:
            message = self._outbox.pop()
            if message is None:
                return
            mid = self._send(message)
            if mid is not None:
                self._unwritten.add(mid)

    def _written(self, mid: int) -> None:
        """paho wrote (QoS 0) or the broker acknowledged (QoS 1) message ``mid``."""
        self._unwritten.discard(mid)
        self._drain()

    def _restart_outbox(self) -> None:
        """A new connection: what waited for the old one is stale (safety rule 6)."""
        self._unwritten.clear()
        dropped = self._outbox.clear()
        if dropped:
            log.debug("mqtt_publish_dropped", count=dropped, reason="connection lost")

    def _dropped(self) -> None:
        """An event was dropped at the outbox's bound: one warning, then a summary a second."""
        if self._drop_report is not None or self._loop is None:
            return
        self._report_drops()

    def _report_drops(self) -> None:
        count = self._outbox.take_dropped()
        if not count:
            self._drop_report = None
            return
        log.warning("mqtt_messages_dropped", count=count, reason="outgoing queue full")
        assert self._loop is not None
        self._drop_report = self._loop.call_later(DROP_REPORT_S, self._report_drops)

    def subscribe(self, topics: Sequence[str], *, commands: bool = False) -> None:
        """Subscribe to the filters at QoS 1; a no-op while disconnected.

        On MQTT 5, ``commands`` filters get Retain As Published and No Local (see the port).
        """
        if not self.connected:
            return
        with_options = commands and self._protocol == "5"
        options = SubscribeOptions(qos=STATE_QOS, noLocal=True, retainAsPublished=True)
        for chunk in _chunks(topics):
            try:
                if with_options:
                    rc, mid = self._client.subscribe([(topic, options) for topic in chunk])
                else:
                    rc, mid = self._client.subscribe([(topic, STATE_QOS) for topic in chunk])
            except ValueError as err:
                raise BrokerError(f"Invalid MQTT topic filter ({err}).") from err
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                # The runtime subscribes again on the next Connected.
                log.warning("mqtt_subscribe_failed", reason=paho.error_string(rc))
            elif mid is not None:
                # Stored before the SUBACK can be handled: that happens on this loop, later.
                self._pending_subscriptions[mid] = chunk

    def unsubscribe(self, topics: Sequence[str]) -> None:
        """Drop subscriptions; a no-op while disconnected (the broker forgot them anyway)."""
        if not self.connected:
            return
        for chunk in _chunks(topics):
            try:
                rc, _ = self._client.unsubscribe(list(chunk))
            except ValueError as err:
                raise BrokerError(f"Invalid MQTT topic filter ({err}).") from err
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                log.warning("mqtt_unsubscribe_failed", reason=paho.error_string(rc))

    @property
    def connected(self) -> bool:
        """Whether the broker accepted the connection and it has not dropped since."""
        return self._connected and self._client.is_connected()

    async def stop(self) -> None:
        """Send a clean DISCONNECT (so no last will), wait briefly, and end paho's thread."""
        if self._loop is None or self._stopping:
            return
        # A clean stop sends what still waits (the final ``offline`` among it) before the
        # DISCONNECT, which paho writes after every packet it already holds.
        if self.connected:
            while (message := self._outbox.pop()) is not None:
                self._send(message)
        if self._drop_report is not None:
            self._drop_report.cancel()
            self._drop_report = None
        self._stopping = True
        was_connected = self._connected
        self._connected = False
        self._client.disconnect()
        if was_connected and self._stopped is not None:
            try:
                await asyncio.wait_for(self._stopped.wait(), STOP_TIMEOUT)
            except TimeoutError:
                log.warning("mqtt_disconnect_timeout", seconds=STOP_TIMEOUT)
        # The join can take up to a second while paho waits out a reconnect delay: off the loop.
        await asyncio.to_thread(self._client.loop_stop)
        # paho leaves the socket pair that wakes its thread to its __del__ (no public close):
        # closed here, it cannot be left to the garbage collector ("unclosed socket").
        self._client._reset_sockets(sockpair_only=True)
        log.info("mqtt_stopped")

    # -- paho's callbacks: run on paho's thread, only hand events over --------------------------

    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if self._stopping:
            return
        if reason_code.is_failure:
            # A refusal (bad password, not authorised, ...) is not a connection: deliver
            # nothing and let paho retry with backoff, so a fixed broker config heals itself.
            if reason_code.value == UNSUPPORTED_PROTOCOL:
                hint = 'the broker does not speak MQTT 5: set mqtt.protocol = "3.1.1"'
                log.error(
                    "mqtt_connect_refused", reason=str(reason_code), host=self._host, hint=hint
                )
                self._post(ConnectFailed(f"refused: {reason_code} ({hint})"))
            else:
                log.error("mqtt_connect_refused", reason=str(reason_code), host=self._host)
                self._post(ConnectFailed(f"refused: {reason_code}"))
            return
        dropped = self._drop_unsent()
        if dropped:
            log.warning("mqtt_stale_messages_dropped", count=dropped)
        self._connected = True
        self._short_lived.connected(time.monotonic())
        log.info("mqtt_connected", host=self._host, port=self._port)
        # SUBACKs of the lost connection never come: forget their filters, before Connected
        # makes the runtime subscribe again.
        self._call_on_loop(self._pending_subscriptions.clear)
        self._post(Connected())

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        # paho calls this from inside its ``except OSError``: the error says why (refused,
        # unreachable, a certificate that does not verify), which is what a user needs.
        error = sys.exc_info()[1]
        why = str(error) if error is not None else "unknown"
        log.warning("mqtt_connect_failed", host=self._host, port=self._port, error=why)
        self._post(ConnectFailed(why))

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        was_connected = self._connected
        self._connected = False
        if self._stopping:
            self._call_on_loop(self._set_stopped)
            return
        if not was_connected:
            # The broker refused the CONNECT: already reported by _on_connect, and the
            # runtime never heard Connected, so there is no connection to lose.
            return
        log.warning("mqtt_disconnected", reason=str(reason_code))
        repeated = self._short_lived.dropped(time.monotonic())
        if reason_code.value == SESSION_TAKEN_OVER:
            # MQTT 5 says so at once; 3.1.1 shows it only as a pattern of short connections.
            _warn_client_id_conflict(self._client_id, reason=str(reason_code))
        elif repeated:
            _warn_client_id_conflict(
                self._client_id, drops=CONFLICT_DROPS, within_s=CONFLICT_WINDOW_S
            )
        self._post(Disconnected(reason=str(reason_code)))

    def _on_subscribe(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        if self._stopping:
            return
        self._call_on_loop(self._subscribed, mid, [code.is_failure for code in reason_codes])

    def _on_publish(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        self._call_on_loop(self._written, mid)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        if self._stopping:
            return
        self._post(Received(message.topic, bytes(message.payload), bool(message.retain)))

    # -- helpers --------------------------------------------------------------------------------

    def _post(self, event: BrokerEvent) -> None:
        sink = self._sink
        if sink is not None:
            self._call_on_loop(sink, event)

    def _call_on_loop(self, func: Callable[..., object], *args: object) -> None:
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(func, *args)
        except RuntimeError:
            # The loop closed while paho's thread was still winding down: nobody is left to
            # tell, and raising here would only be swallowed by paho.
            log.debug("mqtt_event_after_loop_closed")

    def _subscribed(self, mid: int, refused: list[bool]) -> None:
        """On the loop: a SUBACK arrived; name the filters the broker refused (an ACL, say)."""
        filters = self._pending_subscriptions.pop(mid, None)
        if filters is None or not any(refused):
            return
        names = [topic for topic, failed in zip(filters, refused, strict=False) if failed]
        log.warning(
            "mqtt_subscribe_refused",
            filters=names,
            hint="the broker refused these subscriptions (an ACL?); redlight sees nothing "
            "published on them",
        )

    def _set_stopped(self) -> None:
        if self._stopped is not None:
            self._stopped.set()

    def _drop_unsent(self) -> int:
        """Forget what paho and our outbox kept from the previous connection (safety rule 6).

        Called inside ``on_connect``: after the reconnect and before paho's re-send (see
        :func:`_clear_out_messages`). Returns how many messages paho had kept.
        """
        count = _clear_out_messages(self._client)
        # Our own outbox is the loop's: it is emptied there, before Connected is delivered.
        self._call_on_loop(self._restart_outbox)
        return count

    def _forget_outgoing(self, mid: int) -> None:
        """Remove one message paho queued for after a reconnect (see :meth:`_drop_unsent`)."""
        with self._client._out_message_mutex:
            self._client._out_messages.pop(mid, None)


def _paho_client(  # noqa: PLR0913 - the connection settings, each named at the one call
    client_id: str,
    protocol: MqttProtocol,
    *,
    will: Message | None,
    username: str | None,
    password: str | None,
    tls: TlsOptions | None,
) -> paho.Client:
    """A paho client for MQTT 5 or 3.1.1 with reconnect backoff; settings errors as BrokerError."""
    five = protocol == "5"
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        # MQTT 5 has no clean session flag: the clean start is asked for at each connect.
        clean_session=None if five else True,
        protocol=paho.MQTTv5 if five else paho.MQTTv311,
        reconnect_on_failure=True,
    )
    # An exception in a callback must not kill paho's thread: the connection would die
    # silently with the plugs in whatever state they were.
    client.suppress_exceptions = True
    client.enable_logger(_paho_logger())
    client.reconnect_delay_set(min_delay=RECONNECT_MIN_DELAY, max_delay=RECONNECT_MAX_DELAY)
    try:
        if will is not None:
            client.will_set(will.topic, will.payload_bytes(), will.qos, will.retain)
        if password is not None and username is None:
            raise BrokerError("An MQTT password needs an MQTT username.")
        if username is not None:
            client.username_pw_set(username, password)
        if tls is not None:
            _configure_tls(client, tls)
    except (ssl.SSLError, OSError, ValueError) as err:
        # ``err`` never holds the password: paho only stores it, and TLS errors are about
        # files. The message names the error type so the user knows where to look.
        raise BrokerError(
            f"Could not set up the MQTT connection ({type(err).__name__}: {err})."
        ) from err
    return client


def _clear_out_messages(client: paho.Client) -> int:
    """Forget QoS > 0 messages paho kept from the previous connection; return how many.

    Safety rule 6: an ON must never arrive late. paho keeps every unacknowledged QoS 1/2
    PUBLISH in ``Client._out_messages`` across a connection loss and re-sends it right after
    the next CONNACK (``_handle_connack`` walks that dict after calling ``on_connect``). A
    command or state message from before an outage is stale by definition: the runtime
    re-publishes state on ``Connected`` and commands are re-decided by the core. Clearing
    the dict inside ``on_connect`` is the one point that is after the reconnect and before
    paho's re-send. paho guards the dict with ``Client._out_message_mutex`` (an RLock also
    taken by ``publish``); ``Client.drop_out_messages()`` does the same from paho 2.2.
    """
    with client._out_message_mutex:
        count = len(client._out_messages)
        client._out_messages.clear()
        client._inflight_messages = 0
    return count


def _warn_client_id_conflict(client_id: str, **evidence: object) -> None:
    """Another client seems to use our client id: say so, with what showed it."""
    log.warning(
        "client_id_conflict",
        client_id=client_id,
        **evidence,
        hint="the broker keeps closing the connection shortly after it opens; another "
        "client may be using the same client id (set a unique mqtt.client_id)",
    )


class _DemoteNotConnected(logging.Filter):
    """Demote paho 2.2's "Client is not connected" from ERROR to DEBUG.

    paho logs it at ERROR whenever its loop turns without a socket: after every clean
    disconnect and on each retry while the broker is down. Those states are already reported
    as ``mqtt_disconnected`` and ``mqtt_connect_failed``; an ERROR on every shutdown would teach
    users to ignore errors.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Let the record through, demoted when it is the not-connected message."""
        if record.levelno == logging.ERROR and str(record.msg).startswith(
            "Client is not connected"
        ):
            record.levelno = logging.DEBUG
            record.levelname = logging.getLevelName(logging.DEBUG)
        return True


def _paho_logger() -> logging.Logger:
    """The stdlib logger paho writes to, with the demoting filter installed once."""
    logger = logging.getLogger("paho.mqtt.client")
    if not any(isinstance(f, _DemoteNotConnected) for f in logger.filters):
        logger.addFilter(_DemoteNotConnected())
    return logger


def _configure_tls(client: paho.Client, tls: TlsOptions) -> None:
    """Enable TLS; the broker's certificate is verified unless ``insecure`` is set."""
    client.tls_set(
        ca_certs=str(tls.ca_file) if tls.ca_file else None,
        certfile=str(tls.cert_file) if tls.cert_file else None,
        keyfile=str(tls.key_file) if tls.key_file else None,
        cert_reqs=ssl.CERT_REQUIRED,
    )
    if tls.insecure:
        # Only the host name check is skipped: explicitly asked for, e.g. a broker on an IP.
        client.tls_insecure_set(True)


def _chunks(topics: Sequence[str]) -> list[Sequence[str]]:
    """The filters in groups of :data:`FILTERS_PER_PACKET`, deduplicated, order kept."""
    unique = list(dict.fromkeys(topics))
    return [unique[i : i + FILTERS_PER_PACKET] for i in range(0, len(unique), FILTERS_PER_PACKET)]


__all__ = ["PahoClient", "TlsOptions", "parse_broker_url"]
