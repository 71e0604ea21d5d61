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
