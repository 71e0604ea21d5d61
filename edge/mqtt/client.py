"""A small asyncio MQTT 3.1.1 client (QoS 0/1) for MicroPython boards and CPython gateways.

Why not umqtt or paho: umqtt blocks and forgets unacknowledged messages, paho is CPython only.
This client keeps every unacknowledged QoS 1 PUBLISH in a fixed in-flight table (references to the
caller's topic and payload, no copies) and sends them again, with the same packet ids, on the next
`connect()` of the same object. Reconnecting is the caller's job (see `backoff_delays`): the client
reports a lost connection as `ConnectionLost` and never retries on its own.

Memory: one receive buffer (`buffer_size`: the largest accepted packet) and one transmit buffer
for headers (`tx_size`, default the same), both allocated in the constructor; incoming payloads
are handed to `on_message` as a memoryview of the receive buffer. Packet bytes are made and
parsed in edge.mqtt.packets; this module moves them.
"""

import asyncio

from edge.compat import IS_MICROPYTHON, ticks_diff, ticks_ms
from edge.mqtt import packets as P
from edge.mqtt.errors import (
    ConnectionLost,
    KeepaliveTimeout,
    MQTTError,
    PacketTooLarge,
    ProtocolError,
    SubscribeRefused,
)


def backoff_delays(base=1.0, cap=60.0, rng=None):
    """Seconds to sleep before each reconnect attempt: exponential backoff with full jitter.

    Attempt n waits uniform(0, min(cap, base * 2**n)), so a thousand gateways that lost the same
    broker spread their reconnects over the whole window instead of arriving together. `rng`
    needs `.uniform(lo, hi)` (devices.common.rng.Rng); the default one is seeded from os.urandom.
    Start a new generator after a connection that stayed up, to reset the exponent.
    """
    if rng is None:
        from devices.common.rng import Rng

        rng = Rng(_seed())
    # xorshift's first outputs are nearly linear in a small seed (ticks_ms where os.urandom is
    # missing): discard them, or a fleet booted together would reconnect together.
    for _ in range(4):
        rng.next32()
    hi = base
    while True:
        yield rng.uniform(0.0, min(cap, hi))
        if hi < cap:
            hi *= 2


def _seed():
    try:
        import os

        b = os.urandom(4)
        return (b[0] << 24) | (b[1] << 16) | (b[2] << 8) | b[3]
    except (ImportError, AttributeError, OSError):
        return ticks_ms()


def _utf8(s):
    return s.encode() if isinstance(s, str) else s


class MQTTClient:
    """One MQTT 3.1.1 session; see docs/mqtt-client.md for the API and the delivery semantics."""

    def __init__(self, client_id, host, port=1883, *, username=None, password=None, keepalive=60,
                 will=None, clean_session=True, ssl=None, server_hostname=None, max_inflight=16,
                 on_message=None, buffer_size=1024, ping_timeout=None, tx_size=None):
        if max_inflight < 1:
            raise ValueError("max_inflight must be >= 1")
        self.client_id = client_id
        self.host = host
        self.port = port
        self._username = username
        self._password = password
        self._keepalive = keepalive
        self._ping_timeout_ms = 1000 * (ping_timeout if ping_timeout else max(1, keepalive // 2))
        self._will = will
        self._clean = clean_session
        self._ssl = ssl
        self._server_hostname = server_hostname
        self.on_message = on_message
        self._rx = bytearray(buffer_size)
        self._rxv = memoryview(self._rx)
        # Headers only (payloads are written after them): `tx_size` lets a board that publishes
        # large batches but receives small messages keep a small one.
        self._tx = bytearray(tx_size or buffer_size)
        self._txv = memoryview(self._tx)
        self._rpos = 0  # first unparsed byte in _rx
        self._rlen = 0  # end of received bytes in _rx
        self._b0 = self._body = 0  # byte 0 and body offset of the packet _whole() found
        # In-flight QoS 1 publishes: parallel preallocated lists, pid 0 = free slot.
        self._pids = [0] * max_inflight
        self._topics = [None] * max_inflight
        self._payloads = [None] * max_inflight
        self._retain = bytearray(max_inflight)
        self._order = [0] * max_inflight  # send order, so retransmission keeps it
        self._seq = 0
        self.inflight = 0
        self._next_pid = 0
        self._op_pid = 0  # the SUBSCRIBE/UNSUBSCRIBE waiting for its ack
        self._op_rc = -1
        self._r = None
        self._w = None
        self._tasks = []
        self._wtask = None  # the task inside drain(), cancelled by _fail on MicroPython
        self._busy = False  # a task is writing a packet (and owns _tx): see _take
        self._oplock = asyncio.Lock()
        self._ev = asyncio.Event()  # pulsed (set+clear) on every ack and on connection loss
        self.error = ConnectionLost("never connected")  # why we are not connected; None when up
        self._connecting = False
        self._last_rx = self._last_tx = self._ping_at = 0
        self._ping_out = False
        # Counters (the agent exports them): nothing the broker sends is dropped without a count.
        self.dropped = 0  # incoming PUBLISH larger than buffer_size: acked, not delivered
        self.handler_errors = 0  # on_message raised: counted, the message is still acked
        self.unknown_acks = 0  # PUBACK for a packet id not in flight (late duplicate)
        self.retransmitted = 0

    # -- public API ---------------------------------------------------------------------------

    @property
    def connected(self):
        return self.error is None and not self._connecting

    async def connect(self, timeout=10):
        """Open the connection, send CONNECT, await CONNACK; return the session-present flag.

        Then resend every unacknowledged QoS 1 publish (DUP set when the session is persistent).
        Raises ConnectionLost (refused, unreachable, timeout) or a ConnectRefused subclass.
        """
        if self.error is None or self._connecting:
            raise MQTTError("already connected")
        self._connecting = True  # publish() refuses until the retransmissions are out
        try:
            return await self._connect(timeout)
        finally:
            self._connecting = False
            self._pulse()

    async def _connect(self, timeout):
        self._rpos = self._rlen = 0
        self._ping_out = False
        try:
            if self._ssl is None:
                opening = asyncio.open_connection(self.host, self.port)
            else:
                opening = asyncio.open_connection(self.host, self.port, ssl=self._ssl,
                                                  server_hostname=self._server_hostname or self.host)
            self._r, self._w = await asyncio.wait_for(opening, timeout)
        except OSError as exc:
            self.error = ConnectionLost("connect to %s:%d failed: %s" % (self.host, self.port, exc))
            raise self.error from None
        except asyncio.TimeoutError:
            self.error = ConnectionLost("connect to %s:%d timed out" % (self.host, self.port))
            raise self.error from None
        self.error = None
        self._last_rx = self._last_tx = ticks_ms()
        try:
            await self._take()
            try:
                n = P.encode_connect(self._tx, self.client_id, self._clean, self._keepalive,
                                     self._username, self._password, self._will)
                await self._send(n)
            finally:
                self._give()
            try:
                present = await asyncio.wait_for(self._read_connack(), timeout)
            except asyncio.TimeoutError:
                raise KeepaliveTimeout("no CONNACK within %s s" % timeout) from None
            except OSError as exc:
                raise ConnectionLost("connect failed: %s" % exc) from None
            self._tasks = [asyncio.create_task(self._reader())]
            if self._keepalive:
                self._tasks.append(asyncio.create_task(self._pinger()))
            await self._retransmit()
        except MQTTError as exc:
            self._fail(exc)
            raise
        if self.error is not None:  # lost while retransmitting
            raise self.error
        return present

    async def publish(self, topic, payload, qos=1, retain=False, wait=True):
        """Send one message; with QoS 1 return its packet id (0 for QoS 0).

        QoS 1 takes a slot in the in-flight table first, waiting while all `max_inflight` slots are
        taken. wait=True returns once PUBACK arrived; wait=False returns after the write, and the
        caller follows the id with `acked(pid)` / `wait_ack(pid)`. Raising before the message got a
        slot means it was not queued; once it has a slot it stays until PUBACK (across reconnects).
        Topic and payload are kept by reference until acked: do not mutate them.
        """
        topic = _utf8(topic)
        payload = _utf8(payload)
        if qos == 0:
            self._check()
            await self._take()
            try:
                n = P.encode_publish(self._tx, topic, len(payload), 0, retain)
                await self._send(n, payload)
            finally:
                self._give()
            return 0
        if qos != 1:
            raise ValueError("qos must be 0 or 1")
        while True:
            self._check()
            if self.inflight < len(self._pids):
                break
            await self._ev.wait()
        pid = self._new_pid()
        i = self._pids.index(0)
        self._pids[i] = pid
        self._topics[i] = topic
        self._payloads[i] = payload
        self._retain[i] = 1 if retain else 0
        self._seq += 1
        self._order[i] = self._seq
        self.inflight += 1
        try:
            await self._take()
            try:
                n = P.encode_publish(self._tx, topic, len(payload), 1, retain, False, pid)
                await self._send(n, payload)
            finally:
                self._give()
        except PacketTooLarge:
            self._release(i)
            raise
        except MQTTError:
            if not wait:
                return pid  # queued: the next connect() sends it
            raise
        if wait:
            await self.wait_ack(pid)
        return pid

    def acked(self, pid):
        """True once the PUBACK for `pid` has arrived (pids repeat after 65535 messages)."""
        return pid == 0 or pid not in self._pids

    async def wait_ack(self, pid):
        """Return when `pid` is acknowledged; raise the connection's error if it is lost first."""
        while pid and pid in self._pids:
            self._check()
            await self._ev.wait()

    async def wait_inflight(self, limit=0):
        """Return once at most `limit` QoS 1 publishes await PUBACK (0: all acknowledged)."""
        while self.inflight > limit:
            self._check()
            await self._ev.wait()

    async def subscribe(self, topic, qos=1):
        """Subscribe to one topic filter; return the granted QoS. 0x80 raises SubscribeRefused."""
        if qos not in (0, 1):
            raise ValueError("qos must be 0 or 1 (QoS 2 is not implemented)")
        rc = await self._op(P.SUBSCRIBE, _utf8(topic), qos)
        if rc == P.SUBACK_FAILURE:
            raise SubscribeRefused("subscription to %r refused" % topic)
        return rc

    async def unsubscribe(self, topic):
        await self._op(P.UNSUBSCRIBE, _utf8(topic), 0)

    async def disconnect(self):
        """Send DISCONNECT (the broker discards the will) and close; in-flight messages are kept."""
        if self.error is None:
            try:
                await self._take()
                try:
                    self._tx[0:2] = P.DISCONNECT_PACKET
                    await self._send(2)
                finally:
                    self._give()
            except MQTTError:
                pass
        w = self._w
        self.close()
        if w is not None and not IS_MICROPYTHON:
            try:
                await w.wait_closed()
            except OSError:
                pass

    def close(self):
        """Drop the connection without DISCONNECT (the broker publishes the will)."""
        self._fail(ConnectionLost("closed by the client"))

    async def wait_lost(self):
        """Return the error that ended the connection, when it ends."""
        while self.error is None:
            await self._ev.wait()
        return self.error

    # -- internals ----------------------------------------------------------------------------

    def _check(self):
        if self.error is not None:
            raise self.error
        if self._connecting:
            raise ConnectionLost("connect() has not finished")

    def _new_pid(self):
        while True:
            self._next_pid = self._next_pid % 0xFFFF + 1
            pid = self._next_pid
            if pid != self._op_pid and pid not in self._pids:
                return pid

    def _release(self, i):
        self._pids[i] = 0
        self._topics[i] = None
        self._payloads[i] = None
        self.inflight -= 1

    async def _take(self):
        """Wait until no other task is writing, then own the wire and _tx until _give().

        MicroPython's Stream.drain() loses bytes written by another task while it waits, so writes
        must never overlap. A flag and the shared event cost nothing when the wire is free, where
        `async with asyncio.Lock()` allocates about 600 bytes per packet on MicroPython.
        """
        while self._busy:
            await self._ev.wait()
        self._busy = True

    def _give(self):
        self._busy = False
        self._pulse()

    def _pulse(self):
        self._ev.set()
        self._ev.clear()

    def _fail(self, exc):
        """End the connection once: keep the first cause, stop the tasks, wake every waiter."""
        if self.error is None:
            self.error = exc
        w = self._w
        self._r = self._w = None
        if w is not None:
            t = getattr(w, "transport", None)
            try:
                if t is not None:
                    t.abort()  # CPython: close now, do not flush
                else:
                    w.s.close()  # MicroPython: Stream.close() is a no-op, the socket is closed here
            except OSError:
                pass
        try:
            me = asyncio.current_task()
        except RuntimeError:  # CPython, called outside the event loop
            me = None
        for task in self._tasks:
            if task is not me:
                task.cancel()
        self._tasks = []
        # A drain() blocked on a stalled peer does not wake when MicroPython closes the socket.
        if IS_MICROPYTHON and self._wtask is not None and self._wtask is not me:
            self._wtask.cancel()
        self._pulse()
        return self.error

    async def _send(self, n, payload=None):
        """Write _tx[:n] (+ payload) and drain; the caller holds _take(). OSError -> ConnectionLost."""
        w = self._w
        if w is None:
            raise self.error or ConnectionLost("not connected")
        try:
            w.write(self._txv[:n] if IS_MICROPYTHON else bytes(self._txv[:n]))
            if payload is not None and len(payload):
                w.write(payload)
            self._wtask = asyncio.current_task()
            await w.drain()
        except (OSError, ValueError) as exc:  # MicroPython's tls: ValueError when verification fails
            raise self._fail(ConnectionLost("write failed: %s" % exc)) from None
        except asyncio.CancelledError:
            if self._w is w:
                raise
            raise self.error from None  # cancelled by _fail: the connection is gone
        finally:
            self._wtask = None
        self._last_tx = ticks_ms()

    async def _op(self, kind, topic, qos):
        async with self._oplock:
            self._check()
            pid = self._new_pid()
            self._op_pid = pid
            self._op_rc = -1
            try:
                await self._take()
                try:
                    if kind == P.SUBSCRIBE:
                        n = P.encode_subscribe(self._tx, pid, topic, qos)
                    else:
                        n = P.encode_unsubscribe(self._tx, pid, topic)
                    await self._send(n)
                finally:
                    self._give()
                while self._op_rc < 0:
                    self._check()
                    await self._ev.wait()
                return self._op_rc
            finally:
                self._op_pid = 0

    async def _retransmit(self):
        """Resend in-flight publishes in their original order, with their original packet ids."""
        last = 0
        for _ in range(self.inflight):
            best = -1
            for i in range(len(self._pids)):
                if self._pids[i] and self._order[i] > last and (
                        best < 0 or self._order[i] < self._order[best]):
                    best = i
            if best < 0:
                return
            last = self._order[best]
            payload = self._payloads[best]
            await self._take()
            try:
                n = P.encode_publish(self._tx, self._topics[best], len(payload), 1,
                                     self._retain[best], not self._clean, self._pids[best])
                await self._send(n, payload)
            finally:
                self._give()
            self.retransmitted += 1

    async def _fill(self, limit=0):
        """Read more bytes into _rx after _rlen (at most `limit` if given); EOF is ConnectionLost."""
        rx = self._rx
        if self._rlen == len(rx) and self._rpos:
            k = self._rlen - self._rpos  # move the partial packet to the front (no overlap-safe
            for j in range(k):  # slice copy on CPython, and this is rare: only at the buffer end)
                rx[j] = rx[self._rpos + j]
            self._rpos = 0
            self._rlen = k
        mv = self._rxv[self._rlen : self._rlen + limit] if limit else self._rxv[self._rlen :]
        r = self._r
        if r is None:
            raise self.error or ConnectionLost("not connected")
        if IS_MICROPYTHON:
            n = None
            while n is None:  # None: no data yet (TLS record incomplete)
                n = await r.readinto(mv)
        else:
            data = await r.read(len(mv))
            n = len(data)
            mv[:n] = data
        if not n:
            raise ConnectionLost("connection closed by the broker")
        self._rlen += n
        self._last_rx = ticks_ms()
        self._ping_out = False

    def _whole(self):
        """End of the complete packet at _rpos (byte 0 in _b0, body from _body), 0 if bytes are
        missing, -1 if it is larger than the buffer. Sync, so a packet costs no coroutine."""
        hl, b0, rem = P.decode_header(self._rx, self._rpos, self._rlen)
        if not hl:
            return 0
        if hl + rem > len(self._rx):
            return -1
        self._b0 = b0
        self._body = self._rpos + hl
        end = self._body + rem
        return end if end <= self._rlen else 0

    async def _skip(self):
        """Drop a packet larger than the buffer; ack it if it is a QoS 1 PUBLISH (no endless redelivery)."""
        hl, b0, rem = P.decode_header(self._rx, self._rpos, self._rlen)
        if b0 >> 4 != P.PUBLISH:
            raise PacketTooLarge("%d-byte packet type %d" % (hl + rem, b0 >> 4))
        while self._rpos or self._rlen < len(self._rx):
            await self._fill()  # compacts, then fills the whole buffer with this packet's head
        _, pid, _ = P.decode_publish(b0, self._rxv[hl:])
        left = hl + rem - self._rlen
        while left:
            self._rpos = self._rlen = 0
            await self._fill(min(left, len(self._rx)))
            left -= self._rlen
        self._rpos = self._rlen = 0
        self.dropped += 1
        if pid:
            await self._puback(pid)

    async def _read_connack(self):
        end = self._whole()
        while not end:
            await self._fill()
            end = self._whole()
        if end < 0 or self._b0 >> 4 != P.CONNACK:
            raise ProtocolError("expected CONNACK")
        present = P.decode_connack(self._rxv[self._body : end])
        self._consume(end)
        return present

    def _consume(self, end):
        self._rpos = end
        if end == self._rlen:
            self._rpos = self._rlen = 0

    async def _reader(self):
        try:
            while True:
                end = self._whole()
                if end > 0:
                    if self._b0 >> 4 == P.PUBLISH:
                        await self._incoming(self._b0, self._rxv[self._body : end])
                    else:
                        self._ack(self._b0 >> 4, self._rxv[self._body : end])
                    self._consume(end)
                elif end < 0:
                    await self._skip()
                else:
                    await self._fill()
        except asyncio.CancelledError:
            raise
        except MQTTError as exc:
            self._fail(exc)
        except OSError as exc:
            self._fail(ConnectionLost("read failed: %s" % exc))
        except Exception as exc:  # a bug must still end the connection visibly, not kill a task silently
            self._fail(MQTTError("reader failed: %r" % (exc,)))

    def _ack(self, kind, body):
        """Everything the broker sends except PUBLISH: acks and PINGRESP."""
        if kind == P.PUBACK:
            pid = P.decode_ack(body)
            for i in range(len(self._pids)):
                if self._pids[i] == pid:
                    self._release(i)
                    self._pulse()
                    return
            self.unknown_acks += 1
        elif kind == P.SUBACK or kind == P.UNSUBACK:
            if kind == P.SUBACK:
                pid, rc = P.decode_suback(body)
            else:
                pid, rc = P.decode_ack(body), 0
            if pid != self._op_pid:
                raise ProtocolError("ack for packet id %d, none pending" % pid)
            self._op_rc = rc
            self._pulse()
        elif kind == P.PINGRESP:
            if len(body):
                raise ProtocolError("malformed PINGRESP")
        else:
            raise ProtocolError("unexpected packet type %d" % kind)

    async def _incoming(self, b0, body):
        """Hand a PUBLISH to on_message, then PUBACK it: an ack means the application has it."""
        if (b0 >> 1) & 3 == 2:
            raise ProtocolError("PUBLISH QoS 2 (we never subscribe with QoS 2)")
        topic_end, pid, start = P.decode_publish(b0, body)
        handler = self.on_message
        if handler is not None:
            try:
                r = handler(bytes(body[2:topic_end]), body[start:], bool(b0 & 1))
                if r is not None and hasattr(r, "send"):  # a coroutine (a generator on MicroPython)
                    await r
            except asyncio.CancelledError:
                raise
            except Exception:
                self.handler_errors += 1
        else:
            self.dropped += 1
        if pid:
            await self._puback(pid)

    async def _puback(self, pid):
        await self._take()
        try:
            n = P.encode_puback(self._tx, pid)
            await self._send(n)
        finally:
            self._give()

    async def _pinger(self):
        """Send PINGREQ when either direction was idle for 3/4 keepalive; no answer = dead broker."""
        idle = self._keepalive * 750
        tick = min(idle, self._ping_timeout_ms) / 4000
        try:
            while True:
                await asyncio.sleep(tick)
                now = ticks_ms()
                if self._ping_out:
                    if ticks_diff(now, self._ping_at) >= self._ping_timeout_ms:
                        self._fail(KeepaliveTimeout("no answer from the broker for %d ms"
                                                    % ticks_diff(now, self._last_rx)))
                        return
                elif ticks_diff(now, self._last_tx) >= idle or ticks_diff(now, self._last_rx) >= idle:
                    self._ping_out = True
                    self._ping_at = now
                    try:
                        await asyncio.wait_for(self._ping(), self._ping_timeout_ms / 1000)
                    except asyncio.TimeoutError:
                        # A writer is stuck in drain(): the broker has stopped reading.
                        self._fail(KeepaliveTimeout("the broker stopped reading for %d ms"
                                                    % self._ping_timeout_ms))
                        return
        except MQTTError:
            pass  # _send has already failed the connection

    async def _ping(self):
        await self._take()
        try:
            self._tx[0:2] = P.PINGREQ_PACKET
            await self._send(2)
        finally:
            self._give()
