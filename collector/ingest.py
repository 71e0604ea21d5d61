"""Input stage: MQTT v5 messages in, acknowledgements out. Moves bytes only; parsing is elsewhere.

An asyncio protocol on the event loop's own socket, no thread: each chunk the socket gives (up to
256 KiB; asyncio's read size) is cut into packets in one pass (collector/mqtt5.py, over the
gateway's codec in edge/mqtt/packets.py), and every PUBLISH in it reaches the pipeline as one
list, `on_messages(messages)`, once per chunk. The PUBACKs the pipeline releases in one loop
iteration leave in one socket write. (paho-mqtt, which this replaces, parsed each packet in its
own thread and handed each message to the loop with `call_soon_threadsafe`: ~0.9 us per reading
in its thread plus a callback per message on the loop; docs/benchmarks.md.) The receipts published
in one loop iteration join those PUBACKs: one write, one system call, for a whole flush of
receipts (a `send` system call per receipt before: in the throughput bench, about one per message).

Delivery: QoS 1, a fixed client id, clean start off and a long session expiry, so the broker
keeps our subscriptions and queues messages while the collector is down. The PUBACK is sent
only when the pipeline says the message's readings are durable or dead-lettered (`ack`).

In flight: Mosquitto 2.0 does not keep to the Receive Maximum we send (it delivered 14-19k of 20k
messages at once), so the input bounds what it holds itself: at `receive_maximum` messages
delivered and not yet acknowledged it stops reading the socket (`pause_reading`); the broker's
writes then back up in TCP and Mosquitto keeps the rest. It reads again once acknowledgements
bring the count below the bound. While reading is paused no PINGRESP can be seen, so the
keepalive check waits until reading resumes (our PINGREQs still go out, so the broker keeps us).

A message carries the connection generation it arrived on; an acknowledgement for a message from
an earlier connection is not sent (that packet id may be reused), the broker redelivers the
message on the resumed session and the dedup stage skips it.

Reconnect: a broker that is down at start, a lost connection or a refused CONNECT is retried with
exponential backoff with full jitter up to `reconnect_max` (edge.mqtt.client.backoff_delays, the
gateways' schedule), never sooner than `reconnect_min`; the exponent is reset after a connection
that was accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable, Iterator

from collector import mqtt5
from collector.config import MqttConfig
from edge.mqtt import packets
from edge.mqtt.client import backoff_delays
from edge.mqtt.errors import MQTTError

log = logging.getLogger(__name__)

MAX_SESSION_EXPIRY = 0xFFFFFFFF
CONNECT_TIMEOUT = 10.0  # seconds for TCP (+ TLS) and the CONNACK
CLOSE_TIMEOUT = 5.0  # seconds for the DISCONNECT and the PUBACKs before it to leave


class Message:
    """One PUBLISH as the pipeline sees it (slots: one small object per message)."""

    __slots__ = ("topic", "payload", "mid", "qos", "dup", "generation", "received")

    def __init__(
        self,
        topic: str,
        payload: bytes,
        mid: int,
        qos: int,
        dup: bool,
        generation: int,
        received: float | None = None,
    ) -> None:
        self.topic = topic
        self.payload = payload
        self.mid = mid
        self.qos = qos
        self.dup = dup
        self.generation = generation
        self.received = time.monotonic() if received is None else received

    def __repr__(self) -> str:
        return f"Message({self.topic!r}, {len(self.payload)} bytes, mid={self.mid}, gen={self.generation})"


def topics(config: MqttConfig) -> list[str]:
    """Batches and alarms through the shared group (load split across collectors); statuses are
    subscribed by every collector without sharing, because MQTT 5 does not send retained messages to
    shared subscriptions and each collector tracks gateway liveness itself."""
    share = f"$share/{config.share_group}/" if config.share_group else ""
    p = config.topic_prefix
    return [f"{share}{p}/+/up", f"{share}{p}/+/alarm", f"{p}/+/status"]


def ssl_context(config: MqttConfig) -> ssl.SSLContext | None:
    """The broker's certificate is verified against `ca_file` (or the system's CAs), host name included."""
    return ssl.create_default_context(cafile=config.ca_file or None) if config.tls else None


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection: bytes in, packets out to the input; nothing else is kept here."""

    def __init__(self, owner: MqttInput) -> None:
        loop = asyncio.get_running_loop()
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.connack: asyncio.Future[mqtt5.Connack] = loop.create_future()
        self.lost: asyncio.Future[str] = loop.create_future()
        self.rest = bytearray()  # an incomplete packet from the end of the last chunk
        self.rx_at = time.monotonic()
        self.paused = False
        self.generation = 0
        self.out = bytearray()  # PUBACKs and receipts of this loop iteration, written together

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)  # a stream connection, by construction
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.rx_at = now = time.monotonic()
        messages: list[Message] = []
        others: list[tuple[int, bytes]] = []

        def make(topic: str, payload: bytes, pid: int, qos: int, dup: bool) -> Message:
            return Message(topic, payload, pid, qos, dup, 0, now)  # generation: set on delivery

        try:
            if self.rest:
                self.rest += data
                hl, _b0, n = packets.decode_header(self.rest, 0, len(self.rest))
                if not hl or hl + n > len(self.rest):
                    return  # the packet begun in an earlier read is still incomplete
                data = bytes(self.rest)
                self.rest.clear()
            end = mqtt5.parse_packets(data, 0, make, messages, others)
            if end < len(data):
                self.rest += memoryview(data)[end:]
            for kind, body in others:  # before the PUBLISHes: a CONNACK starts the generation
                self.owner._control(self, kind, body)
        except MQTTError as exc:  # ProtocolError: the spec's answer is to close the connection
            log.error("MQTT: malformed packet from the broker (%s); closing the connection", exc)
            self.close_now(f"protocol error: {exc}")
            return
        if messages:
            self.owner._deliver(self, messages)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(str(exc) if exc else "closed")
        if not self.connack.done():
            self.connack.set_exception(ConnectionError(f"connection closed before CONNACK: {exc}"))
            self.connack.exception()  # retrieved: nobody may be waiting any more

    def close_now(self, why: str) -> None:
        if not self.lost.done():
            self.lost.set_result(why)
        if self.transport is not None:
            self.transport.abort()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)


class MqttInput:
    """Delivers lists of `Message`s to `on_messages` on the loop; `ack` each when it is safe."""

    def __init__(self, config: MqttConfig, on_messages: Callable[[list[Message]], None]) -> None:
        self.config = config
        self._on_messages = on_messages
        self._connect_packet = mqtt5.encode_connect(
            config.client_id,
            keepalive=max(5, int(config.keepalive)),
            session_expiry=min(MAX_SESSION_EXPIRY, int(config.session_expiry)),
            receive_maximum=config.receive_maximum,
            username=config.username,
            password=config.password,
        )
        self.max_unacked = config.receive_maximum
        self.generation = 0
        self.connected = False
        self.subscribed = asyncio.Event()
        self.acks_sent = 0
        self.acks_stale = 0
        self.publishes = 0
        self.publishes_dropped = 0
        self.connects = 0
        self.pauses = 0  # times reading stopped at max_unacked (TCP backpressure on the broker)
        self.unacked = 0  # QoS 1 messages of this connection delivered and not yet acknowledged
        self._conn: _Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._flush_pending = False
        self._stopping = False
        self._sub_pid = 0

    async def start(self) -> None:
        """Connect in the background: a broker that is down at start is retried, not fatal."""
        self._stopping = False
        self._task = asyncio.get_running_loop().create_task(self._run())

    def ack(self, msg: Message) -> bool:
        """Queue the PUBACK for `msg` (call on the loop; this iteration's PUBACKs leave in one write).
        False when it arrived on an older connection."""
        if msg.qos == 0:
            return True
        conn = self._conn
        if conn is None or msg.generation != conn.generation or not self.connected:
            self.acks_stale += 1
            return False
        conn.out += mqtt5.encode_puback(msg.mid)
        self.acks_sent += 1
        self.unacked -= 1
        self._flush_soon()
        return True

    def publish(self, topic: str, payload: bytes) -> bool:
        """Publish QoS 0, not retained (call on the loop); it leaves with this iteration's other
        packets in one write. False while disconnected: the message is not queued. QoS 0 because a
        receipt is cumulative: a lost one is healed by the next, and by the gateway's re-send of
        what stays unreceipted (docs/benchmarks.md)."""
        conn = self._conn
        if conn is None or not self.connected:
            self.publishes_dropped += 1
            return False
        conn.out += mqtt5.encode_publish(topic, payload)
        self.publishes += 1
        self._flush_soon()
        return True

    async def close(self) -> None:
        """Disconnect cleanly: queued PUBACKs, then DISCONNECT (the session stays), then close."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        conn = self._conn
        if conn is not None and conn.transport is not None and self.connected:
            self._flush_out()
            conn.write(mqtt5.DISCONNECT_PACKET)
            conn.transport.close()  # after the buffered writes
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(conn.lost), CLOSE_TIMEOUT)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        self.connected = False

    # --- the connection ---------------------------------------------------------------------------

    async def _run(self) -> None:
        delays: Iterator[float] = backoff_delays(self.config.reconnect_min, self.config.reconnect_max)
        while not self._stopping:
            try:
                if await self._session():
                    delays = backoff_delays(self.config.reconnect_min, self.config.reconnect_max)
            except (TimeoutError, OSError, MQTTError) as exc:
                cfg = self.config
                log.warning("MQTT connect to %s:%s failed: %s", cfg.host, cfg.port, exc or type(exc).__name__)
            if self._stopping:
                return
            await asyncio.sleep(max(self.config.reconnect_min, next(delays)))

    async def _session(self) -> bool:
        """One connection, from TCP connect to its loss. True when the broker accepted the CONNECT."""
        loop = asyncio.get_running_loop()
        cfg = self.config
        conn = _Connection(self)
        ctx = ssl_context(cfg)
        await asyncio.wait_for(
            loop.create_connection(
                lambda: conn, cfg.host, cfg.port, ssl=ctx, server_hostname=cfg.host if ctx else None
            ),
            CONNECT_TIMEOUT,
        )
        try:
            conn.write(self._connect_packet)
            ack = await asyncio.wait_for(asyncio.shield(conn.connack), CONNECT_TIMEOUT)
            if ack.reason:
                log.error("MQTT connect to %s:%s refused: reason code 0x%02x", cfg.host, cfg.port, ack.reason)
                return False
            await self._keepalive(conn)
            (log.info if self._stopping else log.warning)("MQTT disconnected: %s", conn.lost.result())
            return True
        finally:
            self.connected = False
            if self._conn is conn:
                self._conn = None
            if conn.transport is not None and not conn.transport.is_closing():
                conn.transport.abort()

    def _accepted(self, conn: _Connection, ack: mqtt5.Connack) -> None:
        """CONNACK 0, handled where it is read: PUBLISHes in the same chunk already belong to it."""
        cfg = self.config
        self.generation += 1
        conn.generation = self.generation
        self.unacked = 0
        self._conn = conn
        self.connected = True
        self.connects += 1
        log.info("MQTT connected to %s:%s (session present: %s)", cfg.host, cfg.port, ack.session_present)
        # Subscribing again on a resumed session is harmless and covers a session the broker lost.
        self._sub_pid = self._sub_pid % 0xFFFF + 1
        conn.write(mqtt5.encode_subscribe(self._sub_pid, topics(cfg)))

    async def _keepalive(self, conn: _Connection) -> None:
        """PINGREQ every keepalive; the connection is dead when nothing came for two keepalives
        (not counted while reading is paused: nothing can be read then, PINGRESP included)."""
        keepalive = max(5, int(self.config.keepalive))
        while not conn.lost.done():
            await asyncio.wait([conn.lost], timeout=keepalive)
            if conn.lost.done():
                return
            if not conn.paused and time.monotonic() - conn.rx_at > 2 * keepalive:
                log.warning("MQTT keepalive: nothing from the broker for %d s", 2 * keepalive)
                conn.close_now("keepalive timeout")
                return
            conn.write(mqtt5.PINGREQ_PACKET)

    # --- called by the connection on the loop -------------------------------------------------------

    def _deliver(self, conn: _Connection, messages: list[Message]) -> None:
        if conn is not self._conn:  # before a CONNACK or after the loss: not ours to acknowledge
            return
        gen = conn.generation
        qos1 = 0
        for m in messages:
            m.generation = gen
            qos1 += m.qos != 0
        self.unacked += qos1
        if self.unacked >= self.max_unacked and not conn.paused and conn.transport is not None:
            conn.transport.pause_reading()
            conn.paused = True
            self.pauses += 1
        self._on_messages(messages)

    def _flush_soon(self) -> None:
        if not self._flush_pending:
            self._flush_pending = True
            asyncio.get_running_loop().call_soon(self._flush_out)

    def _flush_out(self) -> None:
        self._flush_pending = False
        conn = self._conn
        if conn is None:
            return
        if conn.out:
            conn.write(bytes(conn.out))
            conn.out.clear()
        if conn.paused and self.unacked < self.max_unacked and conn.transport is not None:
            conn.paused = False
            conn.rx_at = time.monotonic()  # the keepalive clock restarts with reading
            conn.transport.resume_reading()

    def _control(self, conn: _Connection, kind: int, body: bytes) -> None:
        if kind == mqtt5.CONNACK:
            if not conn.connack.done():
                ack = mqtt5.decode_connack(body)
                if not ack.reason:
                    self._accepted(conn, ack)
                conn.connack.set_result(ack)
        elif kind == mqtt5.SUBACK:
            pid, codes = mqtt5.decode_suback(body)
            if pid != self._sub_pid:
                return
            if codes and all(c < 0x80 for c in codes):
                log.info("MQTT subscribed: %s", ", ".join(topics(self.config)))
                self.subscribed.set()
            else:
                log.error("MQTT subscription refused: %s", [f"0x{c:02x}" for c in codes])
        elif kind == mqtt5.DISCONNECT:
            reason = body[0] if body else 0
            log.warning("MQTT broker sent DISCONNECT (reason code 0x%02x)", reason)
            conn.close_now(f"broker DISCONNECT 0x{reason:02x}")
        # PINGRESP: its arrival (rx_at) is all the keepalive needs. PUBACK: we publish QoS 0 only.
