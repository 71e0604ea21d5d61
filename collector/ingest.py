"""Input stage: MQTT v5 messages in, acknowledgements out. Moves bytes only; parsing is elsewhere.

Threading model (the choice, and why): paho's network loop runs in its own thread (`loop_start`).
paho's socket callbacks could be driven from asyncio instead, but that re-implements paho's
reconnect/keepalive timing by hand; one thread with a narrow hand-off is simpler to get right. The
hand-off is one-way and small:
  - paho thread -> asyncio loop: every callback only calls `loop.call_soon_threadsafe(...)`;
  - asyncio loop -> paho: `Client.ack()` and `subscribe()` (each appends a packet to paho's outgoing
    `deque`, atomic under the GIL, and wakes paho's select() through its socket pair; with the loop
    thread running, paho never writes to the socket from the caller's thread) and `disconnect()`.

Delivery: QoS 1, a fixed client id, `clean_start=False` and a long session expiry, so the broker
keeps our subscriptions and queues messages while the collector is down. `manual_ack=True`: the
PUBACK is sent only when the pipeline says the message's readings are durable or dead-lettered. The
MQTT 5 Receive Maximum caps how many unacknowledged messages the broker sends us, which bounds the
work in flight without a buffer of our own.

A message carries the connection generation it arrived on; an acknowledgement for a message from an
earlier connection is not sent (that packet id may be reused), the broker redelivers the message on
the resumed session and the dedup stage skips it.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from collector.config import MqttConfig

log = logging.getLogger(__name__)

MAX_SESSION_EXPIRY = 0xFFFFFFFF


@dataclass(eq=False)
class Message:
    topic: str
    payload: bytes
    mid: int
    qos: int
    dup: bool
    generation: int
    received: float = field(default_factory=time.monotonic)


def topics(config: MqttConfig) -> list[str]:
    """Batches and alarms through the shared group (load split across collectors); statuses are
    subscribed by every collector without sharing, because MQTT 5 does not send retained messages to
    shared subscriptions and each collector tracks gateway liveness itself."""
    share = f"$share/{config.share_group}/" if config.share_group else ""
    p = config.topic_prefix
    return [f"{share}{p}/+/up", f"{share}{p}/+/alarm", f"{p}/+/status"]


ClientFactory = Callable[[MqttConfig], mqtt.Client]


def make_client(config: MqttConfig) -> mqtt.Client:
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=config.client_id,
        protocol=mqtt.MQTTv5,
        manual_ack=True,
        reconnect_on_failure=True,
    )
    if config.username:
        client.username_pw_set(config.username, config.password or None)
    if config.tls:
        ctx = ssl.create_default_context(cafile=config.ca_file or None)
        client.tls_set_context(ctx)
    client.reconnect_delay_set(max(1, int(config.reconnect_min)), max(1, int(config.reconnect_max)))
    return client


class MqttInput:
    """Delivers `Message`s to `on_message` on the asyncio loop; `ack` them when they are safe."""

    def __init__(
        self,
        config: MqttConfig,
        on_message: Callable[[Message], None],
        *,
        client_factory: ClientFactory = make_client,
    ) -> None:
        self.config = config
        self._on_message = on_message
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client = client_factory(config)
        self._client.on_connect = self._paho_connect
        self._client.on_disconnect = self._paho_disconnect
        self._client.on_message = self._paho_message
        self._client.on_subscribe = self._paho_subscribe
        self.generation = 0
        self.connected = False
        self.subscribed = asyncio.Event()
        self.acks_sent = 0
        self.acks_stale = 0
        self.publishes = 0
        self.publishes_dropped = 0
        self.connects = 0
        self._started = False

    async def start(self) -> None:
        """Connect in the background: a broker that is down at start is retried, not fatal."""
        self._loop = asyncio.get_running_loop()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = min(MAX_SESSION_EXPIRY, int(self.config.session_expiry))
        props.ReceiveMaximum = self.config.receive_maximum
        self._client.connect_async(
            self.config.host,
            self.config.port,
            keepalive=max(5, int(self.config.keepalive)),
            clean_start=False,
            properties=props,
        )
        self._client.loop_start()
        self._started = True

    def ack(self, msg: Message) -> bool:
        """Send the PUBACK for `msg` (call from the loop). False when it arrived on an older connection."""
        if msg.qos == 0:
            return True
        if msg.generation != self.generation or not self.connected:
            self.acks_stale += 1
            return False
        self._client.ack(msg.mid, msg.qos)
        self.acks_sent += 1
        return True

    def publish(self, topic: str, payload: bytes) -> bool:
        """Publish QoS 0, not retained (call from the loop; paho queues it like an ack). False while
        disconnected: the message is not queued. QoS 0 because a receipt is cumulative: a lost one
        is healed by the next, and by the gateway's re-send of what stays unreceipted; QoS 1 cost a
        PUBACK and paho's in-flight bookkeeping per receipt (docs/benchmarks.md)."""
        if not self.connected:
            self.publishes_dropped += 1
            return False
        self._client.publish(topic, payload, qos=0, retain=False)
        self.publishes += 1
        return True

    async def close(self) -> None:
        """Disconnect cleanly (queued PUBACKs go out before the DISCONNECT) and join paho's thread."""
        if not self._started:
            return
        self._started = False
        self._client.disconnect()
        await asyncio.to_thread(self._client.loop_stop)
        self.connected = False

    # --- paho thread: hand everything to the loop, do nothing else here ---------------------------

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop closed between the check and the call (shutdown)
            pass

    def _paho_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self._post(
            self._connected, bool(getattr(flags, "session_present", False)), str(rc), not rc.is_failure
        )

    def _paho_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self._post(self._disconnected, str(rc))

    def _paho_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, rcs: Any, props: Any) -> None:
        self._post(self._suback, [str(r) for r in rcs], all(not r.is_failure for r in rcs))

    def _paho_message(self, client: mqtt.Client, userdata: Any, m: mqtt.MQTTMessage) -> None:
        self._post(self._deliver, m.topic, bytes(m.payload), m.mid, m.qos, bool(m.dup))

    # --- asyncio loop ---------------------------------------------------------------------------

    def _connected(self, session_present: bool, rc: str, ok: bool) -> None:
        if not ok:
            log.error("MQTT connect to %s:%s refused: %s", self.config.host, self.config.port, rc)
            return
        self.generation += 1
        self.connected = True
        self.connects += 1
        log.info(
            "MQTT connected to %s:%s (session present: %s)",
            self.config.host,
            self.config.port,
            session_present,
        )
        # Subscribing again on a resumed session is harmless and covers a session the broker lost.
        self._client.subscribe([(t, 1) for t in topics(self.config)])

    def _disconnected(self, rc: str) -> None:
        self.connected = False
        (log.warning if self._started else log.info)("MQTT disconnected: %s", rc)

    def _suback(self, codes: list[str], ok: bool) -> None:
        if ok:
            log.info("MQTT subscribed: %s", ", ".join(topics(self.config)))
            self.subscribed.set()
        else:
            log.error("MQTT subscription refused: %s", codes)

    def _deliver(self, topic: str, payload: bytes, mid: int, qos: int, dup: bool) -> None:
        self._on_message(Message(topic, payload, mid, qos, dup, self.generation))
