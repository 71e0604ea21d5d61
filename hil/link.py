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
    def __init__(self, upstream_port: int, *, seed: int = 1) -> None:
        self.upstream_port = upstream_port
        self.rng = random.Random(seed)
        self.latency = 0.0
        self.jitter = 0.0
        self.drop = 0.0
        self.partition = False
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
               partition: bool = False) -> None:
        with self._lock:
            self.latency, self.jitter, self.drop, self.partition = latency, jitter, drop, partition

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
                self._spawn(self._read, src, dst, q)
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
