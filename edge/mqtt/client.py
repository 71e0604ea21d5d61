"""A small asyncio MQTT 3.1.1 client (QoS 0/1) for MicroPython boards and CPython gateways.

Why not umqtt or paho: umqtt blocks and forgets unacknowledged messages, paho is CPython only.
This client keeps every unacknowledged QoS 1 PUBLISH in a bounded in-flight list (references to
the caller's topic and payload, no copies) and sends them again, with the same packet ids, on the
next `connect()` of the same object. Reconnecting is the caller's job (see `backoff_delays`): the
client reports a lost connection as `ConnectionLost` and never retries on its own.

Memory: one receive buffer (`buffer_size`: the largest accepted packet) and one transmit buffer
for headers (`tx_size`, default the same), both allocated in the constructor; incoming payloads
are handed to `on_message` as a memoryview of the receive buffer. While connected, two tasks
run: the reader and, with a keepalive, the pinger. Packet bytes are made and parsed in
edge.mqtt.packets; this module moves them.
"""

import asyncio

from edge.compat import IS_MICROPYTHON, const, ticks_diff, ticks_ms
from edge.mqtt import errors, packets
from edge.mqtt.errors import ConnectionLost, MQTTError

_CONNACK = const(2)
_PUBLISH = const(3)
_PUBACK = const(4)
_SUBACK = const(9)
_UNSUBACK = const(11)
_PINGRESP = const(13)


def backoff_delays(base=1, cap=60, rng=None):
    """Seconds to sleep before each reconnect attempt: exponential backoff with full jitter.

    Attempt n waits uniform(0, min(cap, base * 2**n)), so a thousand gateways that lost the same
    broker spread their reconnects over the whole window instead of arriving together. `rng`
    needs `.uniform(lo, hi)`; the default is the interpreter's `random` module, which both seed
    from a true random source at start (CPython from os.urandom, the unix port from the OS, an
    ESP32 from its hardware RNG), so gateways booted together do not draw together.
    Start a new generator after a connection that stayed up, to reset the exponent.
    """
    if rng is None:
        import random

        rng = random
    hi = base
    while True:
        yield rng.uniform(0, min(cap, hi))
        if hi < cap:
            hi *= 2


class MQTTClient:
    """One MQTT 3.1.1 session; see docs/mqtt-client.md for the API and the delivery semantics.

    The settings connect() and the pinger use stay readable as attributes named like the
    constructor's parameters (names that are interned anyway); change none of them after
    construction. The CONNECT packet is encoded once, here.
    """

    def __init__(
        self,
        client_id,
        host,
        port=1883,
        *,
        username=None,
        password=None,
        keepalive=60,
        will=None,
        clean_session=True,
        ssl=None,
        server_hostname=None,
        max_inflight=16,
        on_message=None,
        buffer_size=1024,
        ping_timeout=None,
        tx_size=None,
    ):
        if max_inflight < 1:
            raise ValueError("max_inflight must be >= 1")
        self.host = host
        self.port = port
        self.keepalive = keepalive
        self.clean_session = clean_session
        self.ssl = ssl
        self.server_hostname = (server_hostname or host) if ssl else None  # what TLS checks
        self.max_inflight = max_inflight
        self.on_message = on_message
        self.ping_timeout = ping_timeout or max(1, keepalive // 2)  # seconds
        self._buf = memoryview(bytearray(buffer_size))
        # PUBLISH/SUBSCRIBE headers only (payloads are written after them): `tx_size` lets a board
        # that publishes large batches but receives small messages keep a small one.
        self._head = memoryview(bytearray(tx_size or buffer_size))
        # The CONNECT, encoded once into bytes of its own size: fewer attributes than its parts,
        # no tx_size to fit, and a misused setting (a password without a username) fails here.
        # Its encoder is a module of its own, which a board drops once its clients are made.
        from edge.mqtt.connect import encode_connect

        self._connect_packet = encode_connect(
            None, client_id, clean_session, keepalive, username, password, will)
        self._rpos = self._rlen = 0  # unparsed bytes in _buf: _buf[_rpos:_rlen]
        # In-flight QoS 1 publishes, oldest first (the order retransmission keeps): one
        # (pid, topic, payload, retain) tuple each, at most max_inflight.
        self._inflight = []
        self._next_pid = 0
        # The packet id of the SUBSCRIBE/UNSUBSCRIBE awaiting its ack (one at a time); once the
        # ack came, ~its return code (so negative) until the caller took it; 0 when none is out.
        self._op = 0
        self._w = None  # the stream while connected (the reader task holds its read side)
        self._tasks = ()  # the reader and the pinger while connected
        self._wtask = None  # the task writing (and draining): the wire is busy while it is set
        self._ev = asyncio.Event()  # pulsed (set+clear) on every ack, write and connection loss
        # Why we are not connected; None while connected or connecting.
        self.error = ConnectionLost("never connected")
        self._connecting = False
        # ticks_ms of the last bytes read and written; _rx_at is None while a PINGREQ is out
        # and nothing has come since.
        self._rx_at = self._tx_at = 0
        # Counters (the agent exports them): nothing the broker sends is dropped without a count.
        self.dropped = 0  # incoming PUBLISH larger than buffer_size: acked, not delivered
        self.handler_errors = 0  # on_message raised: counted, the message is still acked
        self.unknown_acks = 0  # PUBACK for a packet id not in flight (late duplicate)
        self.retransmitted = 0

    # -- public API ---------------------------------------------------------------------------

    @property
    def connected(self):
        return self.error is None and not self._connecting

    @property
    def inflight(self):
        """QoS 1 publishes awaiting their PUBACK."""
        return len(self._inflight)

    async def connect(self, timeout=10):
        """Open the connection, send CONNECT, await CONNACK; return the session-present flag.

        Then start the reader and pinger tasks and resend every unacknowledged QoS 1 publish (DUP
        set when the session is persistent); until that is done `connected` is False and publish()
        refuses, so nothing new overtakes a retransmission. Raises ConnectionLost (refused,
        unreachable, timeout), KeepaliveTimeout (no CONNACK within `timeout`) or a ConnectRefused
        subclass.
        """
        if self.error is None:  # connected, or connecting
            raise MQTTError("already connected")
        self.error = None  # a failure from here on is this attempt's: close() keeps it
        self._connecting = True
        try:
            try:
                opening = asyncio.open_connection(
                    self.host, self.port, ssl=self.ssl, server_hostname=self.server_hostname
                )
                r, self._w = await asyncio.wait_for(opening, timeout)
            except asyncio.TimeoutError:  # first: on CPython it is an OSError too
                raise ConnectionLost(
                    "connect to %s:%d failed: %s" % (self.host, self.port, "timeout")
                ) from None
            except OSError as exc:
                raise ConnectionLost("connect to %s:%d failed: %s" % (self.host, self.port, exc)) from None
            # MicroPython's open_connection reports success before a refused connect fails: that
            # surfaces below, at the CONNECT write or the CONNACK read, as ConnectionLost.
            self._rpos = self._rlen = 0
            self._rx_at = self._tx_at = ticks_ms()
            await self._send(0, self._connect_packet)
            try:
                present = await asyncio.wait_for(self._reader(r, True), timeout)
            except asyncio.TimeoutError:
                raise errors.KeepaliveTimeout("no CONNACK within %s s" % timeout) from None
            # The tasks run during the retransmission: the reader takes the PUBACKs, the pinger
            # ends a retransmission stuck in drain() because the broker stalled.
            reader = asyncio.create_task(self._reader(r))
            self._tasks = (reader, asyncio.create_task(self._pinger())) if self.keepalive else (reader,)
            for pid, topic, payload, retain in self._inflight[:]:  # a copy: PUBACKs shorten the list
                n = packets.encode_publish(
                    self._head, topic, len(payload), 1, retain, not self.clean_session, pid
                )
                await self._send(n, payload)
                self.retransmitted += 1
            if self.error is not None:  # lost at the end of the retransmission
                raise self.error
            return present
        except MQTTError as exc:
            self.close(exc)
            raise
        except BaseException:  # cancelled mid-connect (the agent is stopping): closed, not connected
            self.close(ConnectionLost("connect interrupted"))
            raise
        finally:
            self._connecting = False

    async def publish(self, topic, payload, qos=1, retain=False, wait=True):
        """Send one message; with QoS 1 return its packet id (0 for QoS 0).

        QoS 1 takes a slot in the in-flight list first, waiting while all `max_inflight` slots are
        taken. wait=True returns once PUBACK arrived; wait=False returns after the write, and the
        caller follows the id with `acked(pid)` / `wait_ack(pid)`. Raising before the message got a
        slot means it was not queued; once it has a slot it stays until PUBACK (across reconnects).
        Topic and payload are kept by reference until acked: do not mutate them.
        """
        if isinstance(payload, str):
            payload = payload.encode()
        while qos and len(self._inflight) >= self.max_inflight:
            self._check()
            await self._ev.wait()
        pid = self._new_pid() if qos else 0
        # Encoded before the checks (QoS 2 is a ValueError even when not connected), and with no
        # await between the window check and taking the slot.
        n = packets.encode_publish(self._head, topic, len(payload), qos, retain, False, pid)
        self._check()
        if qos:
            self._inflight.append((pid, topic, payload, retain))
        try:
            await self._send(n, payload)
        except MQTTError:
            if qos and not wait:
                return pid  # queued: the next connect() sends it
            raise
        if wait:
            await self.wait_ack(pid)
        return pid

    def acked(self, pid):
        """True once the PUBACK for `pid` has arrived (pids repeat after 65535 messages)."""
        for m in self._inflight:
            if m[0] == pid:
                return False
        return True

    async def wait_ack(self, pid):
        """Return when `pid` is acknowledged; raise the connection's error if it is lost first."""
        while not self.acked(pid):
            self._check()
            await self._ev.wait()

    async def wait_inflight(self, limit=0):
        """Return once at most `limit` QoS 1 publishes await PUBACK (0: all acknowledged)."""
        while len(self._inflight) > limit:
            self._check()
            await self._ev.wait()

    async def subscribe(self, topic, qos=1):
        """Subscribe to one topic filter; return the granted QoS. 0x80 raises SubscribeRefused.

        qos=None unsubscribes instead (what `unsubscribe` does): the two requests differ by a byte
        and wait alike, one at a time, for their ack.
        """
        while self._op:
            self._check()
            await self._ev.wait()
        pid = self._new_pid()
        n = packets.encode_subscribe(self._head, pid, topic, qos)  # QoS 2: ValueError
        self._check()
        self._op = pid
        try:
            await self._send(n)
            while self._op > 0:
                self._check()
                await self._ev.wait()
            rc = ~self._op
        finally:
            self._op = 0
            self._wake()  # the next request may go
        if rc == 0x80:
            raise errors.SubscribeRefused("subscription to %r refused" % topic)
        return rc

    async def unsubscribe(self, topic):
        await self.subscribe(topic, None)

    async def disconnect(self):
        """Send DISCONNECT (the broker discards the will) and close; in-flight messages are kept."""
        if self.connected:
            try:
                await self._send(0, b"\xe0\x00")
            except MQTTError:
                pass
        w = self._w
        self.close()
        if w is not None and not IS_MICROPYTHON:
            try:
                await w.wait_closed()
            except OSError:
                pass

    def close(self, exc=None):
        """Drop the connection without DISCONNECT (the broker publishes the will); return `error`.

        `exc` is the reason, kept in `error` unless the connection already ended for another
        (the first cause is the one to report). Stops the tasks and wakes every waiter.
        """
        if self.error is None:
            self.error = exc or ConnectionLost("closed by the client")
        w = self._w
        self._w = None
        if w is not None:
            try:
                if IS_MICROPYTHON:
                    w.s.close()  # Stream.close() is a no-op there: the socket is closed here
                else:
                    w.transport.abort()  # close now, do not flush
            except OSError:
                pass
        try:
            me = asyncio.current_task()
        except RuntimeError:  # CPython, called outside the event loop
            me = None
        for task in self._tasks:
            if task is not me:
                task.cancel()
        self._tasks = ()
        # A drain() blocked on a stalled peer does not wake when MicroPython closes the socket.
        if IS_MICROPYTHON and self._wtask is not None and self._wtask is not me:
            self._wtask.cancel()
        self._wake()
        return self.error

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
            if pid != self._op and self.acked(pid):
                return pid

    def _wake(self):
        self._ev.set()
        self._ev.clear()

    async def _send(self, n, payload=None):
        """Write the header the caller just encoded in _head[:n] (n may be 0), then `payload`, and drain.

        Writes must never overlap: MicroPython's Stream.drain() loses bytes that another task
        writes while it waits. A task that finds the wire busy waits its turn on the shared event
        with a copy of its header, leaving _head to the next encoder (a flag and the event cost
        nothing when the wire is free, where asyncio.Lock allocates ~600 B per acquisition on
        MicroPython). OSError becomes ConnectionLost.
        """
        head = self._head[:n]
        if self._wtask is not None or not IS_MICROPYTHON:
            head = bytes(head)  # CPython's transport may keep the view it is given
        while self._wtask is not None:
            await self._ev.wait()
        w = self._w
        if w is None:
            self._check()  # raises: _w is None only while not connected
        self._wtask = asyncio.current_task()
        try:
            if n:
                w.write(head)
            if payload:
                w.write(payload)
            await w.drain()
        except (OSError, ValueError) as exc:  # MicroPython's tls: ValueError when verification fails
            raise self.close(ConnectionLost("socket error: %s" % exc)) from None
        except asyncio.CancelledError:
            if self._w is w:
                raise
            raise self.error from None  # cancelled by close(): the connection is gone
        finally:
            self._wtask = None
            self._wake()
        self._tx_at = ticks_ms()

    async def _fill(self, r, n=0):
        """Read more bytes from `r` into _buf after _rlen (at most `n` if given); EOF is ConnectionLost."""
        rx = self._buf
        if self._rlen == len(rx) and self._rpos:
            k = self._rlen - self._rpos  # move the partial packet to the front (no overlap-safe
            for j in range(k):  # slice copy on CPython, and this is rare: only at the buffer end)
                rx[j] = rx[self._rpos + j]
            self._rpos = 0
            self._rlen = k
        mv = rx[self._rlen : self._rlen + n] if n else rx[self._rlen :]
        try:
            if IS_MICROPYTHON:
                got = None
                while got is None:  # None: no data yet (TLS record incomplete)
                    got = await r.readinto(mv)
            else:
                data = await r.read(len(mv))
                got = len(data)
                mv[:got] = data
        except (OSError, ValueError) as exc:
            raise ConnectionLost("socket error: %s" % exc) from None
        if not got:
            raise ConnectionLost("connection closed by the broker")
        self._rlen += got
        self._rx_at = ticks_ms()  # (not None: any byte answers a PINGREQ)

    async def _reader(self, r, connect=False):
        """Read packets from `r` and act on each until the connection ends (then close it).

        connect() first runs it with `connect` set, under its timeout: it then expects a CONNACK
        first, returns its session-present flag, and raises instead of closing. Parsing a packet
        is synchronous, so a packet costs no coroutine; only PUBLISH (the handler, PUBACK) awaits.
        """
        rx = self._buf
        try:
            while True:
                start = self._rpos
                hl, b0, rem = packets.decode_header(rx, start, self._rlen)
                size = hl + rem
                if not hl or (start + size > self._rlen and size <= len(rx)):
                    await self._fill(r)  # the packet is not whole yet
                    continue
                kind = b0 >> 4
                if connect != (kind == _CONNACK):
                    raise errors.ProtocolError("unexpected packet 0x%02x" % b0)
                body = None  # a packet larger than _buf is never whole in it
                if size <= len(rx):
                    body = rx[start + hl : start + size]
                    self._rpos = start + size  # consumed: the body stays valid until the next _fill
                    if self._rpos == self._rlen:
                        self._rpos = self._rlen = 0
                if kind == _PUBLISH or body is None:
                    await self._on_message(r, b0, body, hl, size)
                elif kind == _CONNACK:
                    return packets.decode_connack(body)
                elif kind == _PUBACK:
                    pid = packets.decode_ack(b0, body)
                    sent = self._inflight
                    for i in range(len(sent)):
                        if sent[i][0] == pid:
                            del sent[i]
                            self._wake()
                            break
                    else:
                        self.unknown_acks += 1
                elif kind == _SUBACK or kind == _UNSUBACK:
                    if packets.decode_ack(b0, body) != self._op:
                        raise errors.ProtocolError("unexpected packet 0x%02x" % b0)
                    self._op = ~body[2] if kind == _SUBACK else -1  # -1 = ~0: code 0
                    self._wake()
                elif kind != _PINGRESP or rem:
                    raise errors.ProtocolError("unexpected packet 0x%02x" % b0)
        except Exception as exc:  # a bug must still end the connection visibly, not kill a task silently
            if not isinstance(exc, MQTTError):
                exc = MQTTError(repr(exc))
            if connect:
                raise exc from None
            self.close(exc)

    async def _on_message(self, r, b0, body, off, n):
        """Hand a PUBLISH to on_message, then PUBACK it: an ack means the application has it.

        `body` is None for a packet larger than _buf (`n` bytes, the body from `off`): a PUBLISH
        is then read and thrown away in chunks (never allocated), counted in `dropped` and still
        acked, or the broker would send it again forever; any other packet that large is
        PacketTooLarge.
        """
        if body is not None:
            topic_end, pid, start = packets.decode_publish(b0, body)
            handler = self.on_message
            if handler is None:
                self.dropped += 1
            else:
                try:
                    ret = handler(bytes(body[2:topic_end]), body[start:], bool(b0 & 1))
                    if ret is not None and hasattr(ret, "send"):  # a coroutine (a generator on MicroPython)
                        await ret
                except Exception:
                    self.handler_errors += 1
        else:
            if b0 >> 4 != _PUBLISH:
                raise errors.PacketTooLarge("%d-byte packet 0x%02x" % (n, b0))
            rx = self._buf
            while self._rpos or self._rlen < len(rx):
                await self._fill(r)  # compacts, then fills the whole buffer with this packet's head
            pid = packets.decode_publish(b0, rx[off:])[1]
            left = n - self._rlen
            while left:
                self._rpos = self._rlen = 0
                await self._fill(r, min(left, len(rx)))
                left -= self._rlen
            self._rpos = self._rlen = 0
            self.dropped += 1
        if pid:
            await self._send(packets.encode_puback(self._head, pid))

    async def _pinger(self):
        """Send PINGREQ when either direction was idle for 3/4 keepalive; no answer = dead broker.

        A PINGREQ that cannot even be written within ping_timeout means a writer is stuck in
        drain(): the broker has stopped reading. Both end the connection with KeepaliveTimeout.
        """
        idle = self.keepalive * 750
        timeout = int(self.ping_timeout * 1000)
        tick = min(idle, timeout) / 4000
        ping_at = 0
        try:
            while True:
                await asyncio.sleep(tick)
                now = ticks_ms()
                if self._rx_at is None:  # our PINGREQ is out, and nothing came since
                    if ticks_diff(now, ping_at) >= timeout:
                        raise errors.KeepaliveTimeout("no answer for %d ms" % timeout)
                elif ticks_diff(now, self._tx_at) >= idle or ticks_diff(now, self._rx_at) >= idle:
                    ping_at = now
                    self._rx_at = None
                    try:
                        await asyncio.wait_for(self._send(0, b"\xc0\x00"), timeout / 1000)
                    except asyncio.TimeoutError:
                        raise errors.KeepaliveTimeout("no answer for %d ms" % timeout) from None
        except MQTTError as exc:
            self.close(exc)
