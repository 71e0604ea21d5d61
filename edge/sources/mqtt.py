"""Sensors that speak MQTT to a site broker (manhole lids' NB-IoT modules): one subscription.

Messages are copied out of the client's receive buffer into a small bounded queue by the client's
callback and decoded on this task. The client acknowledges a message once the callback returned,
so a full queue must not drop: a broker that queued lid messages during an outage delivers them
all at once on reconnect (41 were seen, against a queue of 32), before the SUBACK, so before this
task even runs. A message that finds the queue full has the callback decode the queue itself
first (counted in `bursts`); nothing is dropped and nothing waits on a task that cannot run yet.
"""

import asyncio
from binascii import crc32

from devices.common.errors import DecodeError
from edge.compat import const, ticks_ms
from edge.mqtt.client import MQTTClient
from edge.sources import Source

_QUEUE = const(32)
_TOPIC_ROOM = const(256)
_TX_ROOM = const(16)  # a SUBSCRIBE header beside its topic
_TOPICS = const(8)  # topics tracked for redeliveries beyond the configured sensors (unlisted: 64)
# crc32s cut to 30 bits: a small int on a 32-bit board (a full crc32 is a 32-byte heap integer
# three times in four). A false "redelivered" needs the same topic key and a payload with the
# same 30-bit crc as that topic's last one: ~1e-9 per message, and a lid's report carries its time.
_MASK = const(0x3FFFFFFF)


class MqttSource(Source):
    def __init__(self, cfg, port, accept, site_broker, client_id):
        Source.__init__(self, cfg, port, accept)
        b = site_broker
        self.path = self.topic = cfg["topic"]  # the "port" of this source, in logs and error counts
        # Receive: the kind's largest message and its topic; transmit: the SUBSCRIBE (the client
        # sizes its CONNECT itself).
        tx = _TX_ROOM + len(self.topic.encode())
        self.client = MQTTClient(
            client_id, b["host"], b["port"], username=b["username"], password=b["password"],
            keepalive=b["keepalive_s"], clean_session=False, ssl=port.ssl_context(b),
            on_message=self._on_message,
            buffer_size=getattr(self.codec, "MAX_PAYLOAD", 1024) + _TOPIC_ROOM, tx_size=tx)
        self.queue = []
        self.bursts = 0  # times the queue was full and the callback decoded it (see above)
        self.redelivered = 0  # duplicate deliveries skipped (see _on_message)
        # crc of a topic -> crc of its last payload (both 30 bits, _MASK). One topic per lid: the
        # configured lids and _TOPICS more (64 without a sensors list); messages on further topics
        # are not checked for redelivery, only counted (`untracked`), so a stream of strange topics
        # cannot grow it. Keyed by the topic's crc, not the topic: at 40 lids the topics' copies
        # and the big-integer crcs held ~3 KB of a board's heap, made while the run fragments it.
        self._last = {}
        self.untracked = 0
        self._ev = asyncio.Event()

    def _on_message(self, topic, payload, retain=False):
        msg = bytes(payload)
        h = crc32(msg) & _MASK  # crc32, not hash(): hash() of bytes is narrower on MicroPython
        topic = crc32(topic) & _MASK  # `topic` is bytes (the client's copy)
        if self._last.get(topic) == h:
            # A QoS 1 redelivery (our PUBACK was lost with the connection): the same bytes on the
            # same topic again. A lid's report carries its own time, so a real repeat differs.
            self.redelivered += 1
            return
        last = self._last
        ids = self.filter.sensors
        most = 8 * _TOPICS if ids is None else ids.count("\n") - 1 + _TOPICS
        if topic in last or len(last) < most:
            last[topic] = h
        else:
            self.untracked += 1
        if len(self.queue) >= _QUEUE:
            self.bursts += 1
            self._drain()
        self.queue.append(msg)
        self._ev.set()

    def _drain(self):
        while self.queue:
            msg = self.queue.pop(0)
            result = self.codec.decode(msg, 0, len(msg))[1]
            if isinstance(result, DecodeError):
                self.error(self.topic, result.code)
            else:
                self.take(result[0], result[1], ticks_ms())

    def housekeep(self, now_ticks):
        if not self.client.connected:
            self._ev.set()

    async def open(self):
        client = self.client
        try:
            await client.connect()
            await client.subscribe(self.topic, 1)
        except BaseException:
            client.close()  # a CONNACK without the SUBACK: the next connect starts afresh
            raise
        return client

    async def pump(self, client):
        while True:
            self._drain()
            self._ev.clear()
            if not client.connected:
                raise client.error
            await self._ev.wait()  # set by a message, or by housekeep on a lost link
