"""The JetStream input (service.input = "nats"): the city's uplink stream and a durable pull consumer
shared by every collector. Moves bytes only, as the MQTT input does (collector/ingest.py).

Topic mapping. Gateways publish MQTT to any node's MQTT listener; NATS turns the topic into a
subject, one token per topic level: `/` becomes `.`, so `city/gw:7/up` is stored as `city.gw:7.up`
and `subject_topic()` turns it back. A `.` inside a level is NATS's separator: nats-server 2.9
refuses it in an MQTT topic and disconnects the client (later versions map it to `//`, which
`topic_subject`/`subject_topic` do too), so a gateway id has no `.` (docs/protocol.md) and, with this
input, neither has mqtt.topic_prefix (checked at load).

The stream (`stream_config`): subjects `<prefix>.*.up`, `.alarm`, `.status`, file storage,
`nats.replicas` copies (Raft), bounded by `nats.max_age` and `nats.max_bytes`. Discard policy: old.
When the stream is full the oldest messages are dropped, not the new ones, because a gateway cannot
see a refusal: its QoS 1 PUBACK comes from the MQTT listener, not from the stream (a `discard new`
stream would drop the newest readings just as silently). The bounds are sized so that they are
reached only when every collector has been down for longer than `max_age`; the stream's message
and byte counts (/jsz) show how close it is.

Delivery: batches and alarms through one durable pull consumer per channel (`<durable>-up`,
`<durable>-alarm`; NATS 2.9 gives a consumer one filter subject), explicit acks, `max_ack_pending`
as the bound on what is delivered and unacknowledged, shared by every collector that pulls from it.
A message is acknowledged only when the pipeline calls `ack()`: once its readings are durable or
dead-lettered, as the MQTT input's manual PUBACK. Unacknowledged after `ack_wait` (a collector
killed): JetStream redelivers it to whichever collector pulls next; a repeat is dropped by dedup.
Statuses go to every collector (each tracks liveness), through its own ordered consumer starting at
the last status of each gateway: what the MQTT input gets from retained messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.js import api

from collector.config import Config, NatsConfig
from collector.ingest import Message

log = logging.getLogger(__name__)

CHANNELS = ("up", "alarm", "status")
_STREAM_NAME_IN_USE = 10058  # JetStream's err_code: a stream of that name exists with another config


def topic_subject(topic: str) -> str:
    """The NATS subject of an MQTT topic: `/` -> `.`, a `.` inside a level -> `//`."""
    return ".".join(level.replace(".", "//") for level in topic.split("/"))


def subject_topic(subject: str) -> str:
    """The MQTT topic of a subject that NATS mapped from one (`topic_subject` reversed)."""
    return "/".join(token.replace("//", ".") for token in subject.split("."))


def stream_subjects(prefix: str) -> list[str]:
    p = topic_subject(prefix)
    return [f"{p}.*.{ch}" for ch in CHANNELS]


def stream_config(n: NatsConfig, prefix: str) -> api.StreamConfig:
    return api.StreamConfig(
        name=n.stream,
        subjects=stream_subjects(prefix),
        retention=api.RetentionPolicy.LIMITS,
        storage=api.StorageType.FILE,
        num_replicas=n.replicas,
        max_age=n.max_age,
        max_bytes=n.max_bytes,
        discard=api.DiscardPolicy.OLD,
    )


def consumer_config(n: NatsConfig, prefix: str, channel: str) -> api.ConsumerConfig:
    return api.ConsumerConfig(
        durable_name=f"{n.durable}-{channel}",
        filter_subject=f"{topic_subject(prefix)}.*.{channel}",
        ack_policy=api.AckPolicy.EXPLICIT,
        ack_wait=n.ack_wait,
        max_ack_pending=n.max_ack_pending,
        max_deliver=-1,
        deliver_policy=api.DeliverPolicy.ALL,
        num_replicas=n.replicas,
    )


async def ensure_stream(js: Any, n: NatsConfig, prefix: str) -> None:
    """Create the stream, or update it to this config (idempotent; any collector may run it)."""
    cfg = stream_config(n, prefix)
    try:
        await js.add_stream(cfg)
    except nats.js.errors.BadRequestError as exc:
        if exc.err_code != _STREAM_NAME_IN_USE:
            raise  # insufficient storage for max_bytes x replicas, say: said in the retry warning
        await js.update_stream(cfg)  # exists with another config: bring it to this one


def connect_options(n: NatsConfig) -> dict[str, Any]:
    opts: dict[str, Any] = {
        "servers": [u.strip() for u in n.servers.split(",") if u.strip()],
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "connect_timeout": 2,
        "allow_reconnect": True,
    }
    if n.user:
        opts["user"], opts["password"] = n.user, n.password
    return opts


class NatsInput:
    """Delivers `Message`s to `on_message` on the asyncio loop; `ack` them when they are safe.

    The same surface as `ingest.MqttInput` (start, ack, close, connected, subscribed), so the
    service wires either one.
    """

    def __init__(self, config: Config, on_message: Callable[[Message], None]) -> None:
        self.config = config
        self.n = config.nats
        self.prefix = config.mqtt.topic_prefix
        self._on_message = on_message
        self._nc: Any = None
        self._js: Any = None
        self._tasks: list[asyncio.Task[None]] = []  # connect and pull loops
        self._acks: set[asyncio.Task[None]] = set()
        self._pending: dict[int, Any] = {}  # mid -> the JetStream message, until acknowledged
        self._room = asyncio.Event()
        self._mid = 0
        self.connected = False
        self.subscribed = asyncio.Event()
        self.acks_sent = 0
        self.acks_stale = 0
        self.connects = 0
        self.fetch_errors = 0
        self.publishes = 0  # receipts handed to NATS
        self.publishes_dropped = 0  # receipts not sent (disconnected); the next heals them
        self._status_sub: Any = None
        self._closing = False

    async def start(self) -> None:
        """Connect in the background: a cluster that is down at start is retried, not fatal."""
        self._tasks.append(asyncio.get_running_loop().create_task(self._run()))

    async def _connected_cb(self) -> None:
        self.connected = True
        self.connects += 1
        log.info("NATS reconnected to %s", self._nc.connected_url.netloc if self._nc else "?")

    async def _disconnected_cb(self) -> None:
        self.connected = False
        (log.info if self._closing else log.warning)("NATS disconnected")

    async def _error_cb(self, exc: Exception) -> None:
        log.debug("NATS: %s", exc)

    async def _run(self) -> None:
        while self._nc is None:
            try:
                self._nc = await nats.connect(
                    **connect_options(self.n),
                    reconnected_cb=self._connected_cb,
                    disconnected_cb=self._disconnected_cb,
                    error_cb=self._error_cb,
                )
            except (OSError, nats.errors.Error) as exc:
                log.warning("NATS connect to %s failed: %s; retrying", self.n.servers, exc)
                await asyncio.sleep(1.0)
        self.connected = True
        self.connects += 1
        log.info("NATS connected to %s", self._nc.connected_url.netloc)
        self._js = self._nc.jetstream()
        subs = await self._subscribe()
        for channel, psub in subs:
            self._tasks.append(asyncio.get_running_loop().create_task(self._pull(channel, psub)))

    async def _subscribe(self) -> list[tuple[str, Any]]:
        """The stream and consumers (created if missing), retried while the cluster has no leader."""
        while True:
            try:
                if self.n.manage_stream:
                    await ensure_stream(self._js, self.n, self.prefix)
                subs = []
                for channel in ("up", "alarm"):
                    cc = consumer_config(self.n, self.prefix, channel)
                    psub = await self._js.pull_subscribe(
                        cc.filter_subject, durable=cc.durable_name, stream=self.n.stream, config=cc
                    )
                    subs.append((channel, psub))
                self._status_sub = await self._js.subscribe(
                    f"{topic_subject(self.prefix)}.*.status",
                    stream=self.n.stream,
                    ordered_consumer=True,
                    deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT,
                    cb=self._status,
                )
            except (TimeoutError, nats.errors.Error, OSError) as exc:
                log.warning("JetStream stream/consumer not ready (%s); retrying", exc)
                await asyncio.sleep(1.0)
                continue
            log.info("JetStream subscribed: stream %s, consumers %s-up/-alarm", self.n.stream, self.n.durable)
            self.subscribed.set()
            return subs

    async def _status(self, m: Any) -> None:
        # Not acknowledged (an ordered consumer has no acks); QoS 0 to the pipeline.
        self._deliver(m, qos=0)

    def _deliver(self, m: Any, qos: int) -> None:
        self._mid += 1
        try:
            dup = m.metadata.num_delivered > 1
        except Exception:
            dup = False
        if qos:
            self._pending[self._mid] = m
        self._on_message(Message(subject_topic(m.subject), m.data, self._mid, qos, dup, 0))

    async def _pull(self, channel: str, psub: Any) -> None:
        while True:
            room = self.n.max_ack_pending - len(self._pending)
            if room <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            try:
                msgs = await psub.fetch(min(room, self.n.fetch_batch), timeout=1.0)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            except (nats.errors.Error, OSError) as exc:
                # A node died, no leader yet, reconnecting: the client moves to another server.
                self.fetch_errors += 1
                log.debug("JetStream fetch (%s): %s", channel, exc)
                await asyncio.sleep(0.2)
                continue
            for m in msgs:
                self._deliver(m, qos=1)

    def ack(self, msg: Message) -> bool:
        """Acknowledge `msg` to JetStream (call from the loop); False if it is not ours to ack."""
        if msg.qos == 0:
            return True
        m = self._pending.pop(msg.mid, None)
        self._room.set()
        if m is None or self._nc is None or not self.connected:
            # Not acknowledged: JetStream redelivers it after ack_wait and dedup drops the repeat.
            self.acks_stale += 1
            return False
        task = asyncio.get_running_loop().create_task(self._ack(m))
        self._acks.add(task)
        task.add_done_callback(self._acks.discard)
        self.acks_sent += 1
        return True

    def publish(self, topic: str, payload: bytes) -> bool:
        """Publish a receipt on core NATS (call from the loop): MQTT topic `<prefix>/<gw>/ack` as
        subject `<prefix>.<gw>.ack`, which the nodes' MQTT listener delivers to the gateway's
        subscription (at QoS 0, as receipts go on Mosquitto). False while disconnected: nothing is
        buffered (a receipt is cumulative, the next one heals it), as `MqttInput.publish`."""
        if self._nc is None or not self.connected:
            self.publishes_dropped += 1
            return False
        task = asyncio.get_running_loop().create_task(self._publish(topic_subject(topic), payload))
        self._acks.add(task)
        task.add_done_callback(self._acks.discard)
        self.publishes += 1
        return True

    async def _publish(self, subject: str, payload: bytes) -> None:
        try:
            await self._nc.publish(subject, payload)
        except (nats.errors.Error, OSError) as exc:
            self.publishes_dropped += 1
            log.debug("receipt on %s lost (%s): the next one heals it", subject, exc)

    async def _ack(self, m: Any) -> None:
        try:
            await m.ack()
        except (nats.errors.Error, OSError) as exc:
            log.debug("JetStream ack lost (%s): redelivered after ack_wait", exc)

    async def close(self) -> None:
        """Stop pulling, let the acknowledgements already given go out, and disconnect."""
        self._closing = True
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._acks:
            await asyncio.gather(*self._acks, return_exceptions=True)
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.flush(timeout=2)
            with contextlib.suppress(Exception):
                await self._nc.close()
        self.connected = False
