"""A TCP proxy between a gateway and the broker that the rig controls: the `uplink_impair` fault.

    agent --TCP--> ImpairedLink (127.0.0.1:port) --TCP--> Mosquitto

Each direction of each connection is a reader thread and a writer thread with a queue between
them; the writer holds each chunk until it is due. Impairments, changed at any moment:

  latency, jitter  every chunk is delayed by latency + uniform(0, jitter) seconds, order kept
                   (a chunk is never due before the one read before it: TCP delivers in order)
  drop             that share of chunks is "lost and retransmitted": delayed by RETRANSMIT_S
                   more. Bytes are never removed: TCP does not lose bytes, it delays them, and a
                   proxy that removed some would hand the broker a corrupted stream TCP never would
  partition        nothing is forwarded either way while it holds; bytes wait (as unacknowledged
                   segments wait in a real partition) and flow again after it, unless an end gave
                   up first (MQTT keepalive) and closed the connection

Closing either side closes both. `close()` stops the listener and every connection.

One impairment does remove bytes, whole MQTT packets only: `lose_receipts` (set at construction,
changed with `impair(lose_receipts=...)`) is the share of QoS 0 PUBLISH packets on a topic ending
in `/ack` (the collector's receipts, docs/protocol.md) that the broker -> gateway direction
swallows, as a proxy or an ACL that eats some would. That direction is then read packet by packet;
a QoS 0 PUBLISH has no packet id, so the stream stays a valid MQTT stream without it.
"""

from __future__ import annotations

import contextlib
import queue
import random
import socket
import threading
import time

RETRANSMIT_S = 0.3  # a first TCP retransmission on a LAN-ish path (Linux's minimum RTO is 200 ms)
_CHUNK = 65536
_Queue = queue.Queue[tuple[float, bytes] | None]  # (due, chunk); None: the reader's side closed


class ImpairedLink:
    def __init__(self, upstream_port: int, *, seed: int = 1, lose_receipts: float | None = None) -> None:
        """`lose_receipts`: None, the stream is never parsed; else the share of receipts swallowed."""
        self.upstream_port = upstream_port
        self.rng = random.Random(seed)
        self.latency = 0.0
        self.jitter = 0.0
        self.drop = 0.0
        self.partition = False
        self.parse_down = lose_receipts is not None
        self.lose_receipts = lose_receipts or 0.0
        self.receipts_lost = 0  # receipts swallowed
        self.receipts_passed = 0
        self.forwarded = 0  # bytes, both directions
        self.retransmitted = 0  # chunks delayed as lost
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        self._closed = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._spawn(self._accept_loop)

    def impair(self, *, latency: float = 0.0, jitter: float = 0.0, drop: float = 0.0,
               partition: bool = False, lose_receipts: float = 0.0) -> None:
        if lose_receipts and not self.parse_down:
            raise ValueError("lose_receipts needs an ImpairedLink made with lose_receipts=")
        with self._lock:
            self.latency, self.jitter, self.drop, self.partition = latency, jitter, drop, partition
            self.lose_receipts = lose_receipts

    def clear(self) -> None:
        self.impair()

    def _spawn(self, target: object, *args: object) -> None:
        th = threading.Thread(target=target, args=args, daemon=True, name="impaired-link")  # type: ignore[arg-type]
        th.start()
        self._threads.append(th)

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
            except OSError:
                client.close()  # the broker is down: the gateway sees a refused connection, as it would
                continue
            for s in (client, upstream):
                s.settimeout(None)
                with self._lock:
                    self._socks.add(s)
            for src, dst in ((client, upstream), (upstream, client)):
                q: _Queue = queue.Queue()
                down = src is upstream and self.parse_down
                self._spawn(self._read_packets if down else self._read, src, dst, q)
                self._spawn(self._write, dst, src, q)

    def _due(self, last: float) -> float:
        with self._lock:
            delay = self.latency + (self.rng.uniform(0, self.jitter) if self.jitter else 0.0)
            if self.drop and self.rng.random() < self.drop:
                delay += RETRANSMIT_S
                self.retransmitted += 1
        return max(time.monotonic() + delay, last)

    def _read(self, src: socket.socket, dst: socket.socket, q: _Queue) -> None:
        last = 0.0
        try:
            while True:
                data = src.recv(_CHUNK)
                if not data:
                    break
                last = self._due(last)
                q.put((last, data))
        except OSError:
            pass
        q.put(None)

    def _read_packets(self, src: socket.socket, dst: socket.socket, q: _Queue) -> None:
        """Broker -> gateway, whole MQTT packets: each is forwarded unless it is a receipt the
        `lose_receipts` draw swallows."""
        last = 0.0
        buf = bytearray()
        try:
            while True:
                data = src.recv(_CHUNK)
                if not data:
                    break
                buf += data
                out = bytearray()
                while True:
                    end = _packet_end(buf)
                    if end is None:
                        break
                    packet = bytes(buf[:end])
                    del buf[:end]
                    if not self._swallowed(packet):
                        out += packet
                if out:
                    last = self._due(last)
                    q.put((last, bytes(out)))
        except OSError:
            pass
        q.put(None)

    def _swallowed(self, packet: bytes) -> bool:
        if packet[0] >> 4 != 3 or packet[0] & 0x06:
            return False  # not a PUBLISH, or QoS 1/2 (its packet id would be answered)
        head = _packet_head(packet)
        n = packet[head] << 8 | packet[head + 1]
        if not packet[head + 2 : head + 2 + n].endswith(b"/ack"):
            return False
        with self._lock:
            lose = self.rng.random() < self.lose_receipts
            if lose:
                self.receipts_lost += 1
            else:
                self.receipts_passed += 1
        return lose

    def _write(self, dst: socket.socket, src: socket.socket, q: _Queue) -> None:
        try:
            while True:
                item = q.get()
                if item is None:
                    break
                due, data = item
                while not self._closed.is_set():
                    wait = due - time.monotonic()
                    if wait <= 0 and not self.partition:
                        break
                    time.sleep(min(max(wait, 0.01), 0.05))
                if self._closed.is_set():
                    break
                dst.sendall(data)
                with self._lock:
                    self.forwarded += len(data)
        except OSError:
            pass
        for s in (dst, src):  # one side gone: both go, as a proxy (or a NAT timing out) does
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            socks = list(self._socks)
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()
        for th in self._threads:
            th.join(2)


def _packet_head(buf: bytes | bytearray) -> int:
    """Bytes of the fixed header (type byte + remaining length) at the start of `buf`, or 0 if
    they are not all there yet."""
    for i in range(1, min(len(buf), 5)):
        if not buf[i] & 0x80:
            return i + 1
    return 0


def _packet_end(buf: bytes | bytearray) -> int | None:
    """Length of the first whole MQTT packet in `buf`, or None if it has not all arrived."""
    head = _packet_head(buf)
    if not head:
        return None
    n = 0
    for i in range(head - 1, 0, -1):
        n = (n << 7) | (buf[i] & 0x7F)
    end = head + n
    return end if len(buf) >= end else None
