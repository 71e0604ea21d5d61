"""The uplink proxy (hil/link.py) on real sockets: bytes pass unchanged and in order; latency,
retransmission delays and a partition hold them back but never lose or reorder them."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from hil.link import RETRANSMIT_S, ImpairedLink


@pytest.fixture
def echo() -> Iterator[int]:
    """An echo server on a free port (the broker's stand-in); stopped after the test."""
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        conns = []
        while not stop.is_set():
            try:
                c, _ = srv.accept()
            except TimeoutError:
                continue
            conns.append(c)
            threading.Thread(target=lambda c=c: _pump(c), daemon=True).start()
        for c in conns:
            c.close()

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    yield srv.getsockname()[1]
    stop.set()
    th.join(5)
    srv.close()


def _pump(c: socket.socket) -> None:
    try:
        while data := c.recv(65536):
            c.sendall(data)
    except OSError:
        pass


def roundtrip(sock: socket.socket, payload: bytes) -> tuple[bytes, float]:
    t = time.monotonic()
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        got += sock.recv(65536)
    return got, time.monotonic() - t


@pytest.fixture
def link(echo: int) -> Iterator[ImpairedLink]:
    lk = ImpairedLink(echo, seed=3)
    yield lk
    lk.close()


def test_bytes_pass_unchanged_and_in_order(link: ImpairedLink) -> None:
    with socket.create_connection(("127.0.0.1", link.port), timeout=10) as s:
        payload = bytes(range(256)) * 400
        got, _ = roundtrip(s, payload)
        assert got == payload


def test_latency_delays_each_way(link: ImpairedLink) -> None:
    link.impair(latency=0.2)
    with socket.create_connection(("127.0.0.1", link.port), timeout=10) as s:
        got, took = roundtrip(s, b"ping")
    assert got == b"ping" and took >= 0.4  # 0.2 s to the server and 0.2 s back


def test_drop_delays_by_a_retransmission_and_keeps_order(link: ImpairedLink) -> None:
    link.impair(drop=1.0)
    with socket.create_connection(("127.0.0.1", link.port), timeout=10) as s:
        got, took = roundtrip(s, b"x" * 1000)
    assert got == b"x" * 1000 and took >= 2 * RETRANSMIT_S and link.retransmitted >= 2


def test_partition_holds_bytes_until_it_ends(link: ImpairedLink) -> None:
    with socket.create_connection(("127.0.0.1", link.port), timeout=10) as s:
        assert roundtrip(s, b"before")[0] == b"before"
        link.impair(partition=True)
        s.sendall(b"during")
        s.settimeout(0.5)
        with pytest.raises(TimeoutError):
            s.recv(100)
        link.clear()
        s.settimeout(10)
        got = b""
        while len(got) < 6:
            got += s.recv(100)
        assert got == b"during"


def _publish(topic: bytes, payload: bytes, qos: int = 0) -> bytes:
    """An MQTT 3.1.1 PUBLISH packet (packet id 7 at QoS 1), with a two-byte remaining length when
    the payload is long."""
    body = len(topic).to_bytes(2, "big") + topic + (b"\x00\x07" if qos else b"") + payload
    n, rem = len(body), bytearray()
    while True:
        rem.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            break
    return bytes([0x30 | qos << 1]) + bytes(rem) + body


def test_lose_receipts_swallows_only_qos0_publishes_on_ack_topics(echo: int) -> None:
    """The broker -> gateway direction (the echo's answer here) is read packet by packet: the QoS 0
    receipts on `.../ack` are removed whole; other topics, a QoS 1 ack (its packet id would be
    answered) and other packets pass unchanged and in order, even when they arrive byte by byte."""
    lk = ImpairedLink(echo, seed=3, lose_receipts=1.0)
    keep = [_publish(b"city/gw-1/cmd", b"c" * 300), _publish(b"city/gw-1/ack", b"q1", qos=1),
            b"\xd0\x00", _publish(b"city/gw-1/acks", b"x")]  # PINGRESP; a topic that only starts so
    lose = [_publish(b"city/gw-1/ack", b"r" * 200), _publish(b"city/gw-1/ack", b"r2")]
    stream = lose[0] + keep[0] + keep[1] + lose[1] + keep[2] + keep[3]
    try:
        with socket.create_connection(("127.0.0.1", lk.port), timeout=10) as s:
            for i in range(len(stream)):
                s.sendall(stream[i : i + 1])
            want = b"".join(keep)
            got = b""
            while len(got) < len(want):
                got += s.recv(65536)
            s.settimeout(0.3)
            with pytest.raises(TimeoutError):
                got += s.recv(65536)
        assert got == want and lk.receipts_lost == 2 and lk.receipts_passed == 0
    finally:
        lk.close()
    plain = ImpairedLink(echo)
    try:
        with pytest.raises(ValueError, match="lose_receipts"):
            plain.impair(lose_receipts=0.5)
    finally:
        plain.close()
