"""edge.mqtt.packets against paho-mqtt's bytes, and fuzzed: bad input raises only ProtocolError.

paho is the reference: it connects to a listening socket in this process (no broker, no thread),
and the bytes it writes are compared with our encoders' for the same CONNECT, PUBLISH, SUBSCRIBE,
UNSUBSCRIBE, PINGREQ and DISCONNECT.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.mqtt import connect
from edge.mqtt import packets as P
from edge.mqtt.errors import ConnectRefused, PacketTooLarge, ProtocolError

SETTINGS = settings(max_examples=300, deadline=None)
MAX_REMAINING = 268435455  # the largest length four varint bytes can say (3.1.1 section 2.2.3)


def enc(fn: object, *args: object) -> bytes:
    buf = bytearray(512)
    n = fn(buf, *args)  # type: ignore[operator]
    return bytes(buf[:n])


def read_packet(sock: socket.socket) -> bytes:
    """One whole MQTT packet from a blocking socket (fixed header parsed with our decoder)."""
    data = b""
    while True:
        hl, _, rem = P.decode_header(data, 0, len(data))
        if hl and len(data) >= hl + rem:
            assert len(data) == hl + rem, "paho wrote more than one packet"
            return data
        chunk = sock.recv(4096)
        assert chunk, "paho closed the socket"
        data += chunk


class PahoPeer:
    """A paho client connected to a socket we hold: what paho writes, we read."""

    def __init__(self, client: mqtt.Client, server: socket.socket) -> None:
        self.client = client
        self.server = server
        self.conn: socket.socket | None = None

    def connect(self, keepalive: int) -> bytes:
        port = self.server.getsockname()[1]
        self.client.connect("127.0.0.1", port, keepalive=keepalive)
        self.conn, _ = self.server.accept()
        self.conn.settimeout(5)
        packet = read_packet(self.conn)
        self.conn.sendall(b"\x20\x02\x00\x00")
        for _ in range(20):
            self.client.loop(0.05)
            if self.client.is_connected():
                break
        assert self.client.is_connected()
        return packet

    def next_packet(self) -> bytes:
        assert self.conn is not None
        self.client.loop(0.01)
        return read_packet(self.conn)


@pytest.fixture
def paho_peer() -> Iterator[PahoPeer]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="gw1", clean_session=False,
                         protocol=mqtt.MQTTv311)
    peer = PahoPeer(client, server)
    try:
        yield peer
    finally:
        sock = client.socket()
        if sock is not None:
            sock.close()
        if peer.conn is not None:
            peer.conn.close()
        server.close()


def test_connect_publish_subscribe_match_paho(paho_peer: PahoPeer) -> None:
    c = paho_peer.client
    c.username_pw_set("user", "pässword")
    c.will_set("city/gw1/status", b"\xa1\x66online\xf4", qos=1, retain=True)
    will = connect.Will("city/gw1/status", b"\xa1\x66online\xf4", qos=1, retain=True)
    assert paho_peer.connect(45) == enc(connect.encode_connect, "gw1", False, 45, "user", "pässword", will)

    info = c.publish("city/gw1/up", b"\x00" * 300, qos=1, retain=False)
    buf = bytearray(64)
    n = P.encode_publish(buf, "city/gw1/up", 300, 1, False, False, info.mid)
    assert paho_peer.next_packet() == bytes(buf[:n]) + b"\x00" * 300

    c.publish("城市/状态", b"on", qos=0, retain=True)
    n = P.encode_publish(buf, "城市/状态", 2, 0, True)
    assert paho_peer.next_packet() == bytes(buf[:n]) + b"on"

    _, mid = c.subscribe("city/gw1/cmd", qos=1)
    assert paho_peer.next_packet() == enc(P.encode_subscribe, mid, "city/gw1/cmd", 1)
    _, mid = c.unsubscribe("city/gw1/cmd")
    assert paho_peer.next_packet() == enc(P.encode_subscribe, mid, "city/gw1/cmd", None)
    c.disconnect()
    assert paho_peer.next_packet() == b"\xe0\x00"  # what MQTTClient.disconnect writes


def test_anonymous_clean_connect_matches_paho() -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="", clean_session=True,
                         protocol=mqtt.MQTTv311)
    peer = PahoPeer(client, server)
    try:
        assert peer.connect(0) == enc(connect.encode_connect, "", True, 0)
    finally:
        sock = client.socket()
        if sock is not None:
            sock.close()
        if peer.conn is not None:
            peer.conn.close()
        server.close()


@SETTINGS
@given(st.integers(min_value=0, max_value=MAX_REMAINING))
def test_varint_round_trip(n: int) -> None:
    buf = bytearray(5)
    end = P.put_header(buf, 0xD0, n, 0)
    assert P.decode_header(buf, 0, end) == (end, 0xD0, n)
    for cut in range(end):  # every prefix is "need more", never an error
        assert P.decode_header(buf, 0, cut)[0] == 0


@SETTINGS
@given(st.binary(max_size=12))
def test_header_garbage_raises_only_protocol_error(data: bytes) -> None:
    try:
        hl, _, rem = P.decode_header(data, 0, len(data))
    except ProtocolError:
        return
    assert 0 <= hl <= 5 and 0 <= rem <= MAX_REMAINING


@SETTINGS
@given(st.integers(min_value=0, max_value=15), st.binary(max_size=40))
def test_body_garbage_raises_only_typed_errors(flags: int, body: bytes) -> None:
    for decode in (P.decode_connack, lambda b: P.decode_ack(0x40, b), lambda b: P.decode_ack(0x90, b)):
        try:
            decode(body)
        except (ProtocolError, ConnectRefused):
            pass
    try:
        topic_end, pid, start = P.decode_publish(0x30 | flags, body)
    except ProtocolError:
        return
    assert 2 <= topic_end <= start <= len(body)
    assert (flags >> 1) & 3 < 2  # QoS 2 and 3 are errors for this client
    assert (pid == 0) == ((flags >> 1) & 3 == 0)


@SETTINGS
@given(
    st.text(max_size=40),
    st.binary(max_size=300),
    st.sampled_from([0, 1]),
    st.booleans(),
    st.booleans(),
    st.integers(min_value=1, max_value=0xFFFF),
)
def test_publish_round_trip(topic: str, payload: bytes, qos: int, retain: bool, dup: bool, pid: int) -> None:
    buf = bytearray(512)
    n = P.encode_publish(buf, topic, len(payload), qos, retain, dup, pid)
    wire = bytes(buf[:n]) + payload
    hl, b0, rem = P.decode_header(wire, 0, len(wire))
    assert hl + rem == len(wire)
    assert (b0 >> 4, (b0 >> 1) & 3, bool(b0 & 1), bool(b0 & 8)) == (3, qos, retain, dup)  # 3: PUBLISH
    body = memoryview(wire)[hl:]
    topic_end, got_pid, start = P.decode_publish(b0, body)
    assert bytes(body[2:topic_end]).decode() == topic
    assert got_pid == (pid if qos else 0)
    assert bytes(body[start:]) == payload


@SETTINGS
@given(st.text(min_size=1, max_size=60), st.integers(min_value=8, max_value=80))
def test_small_buffer_is_packet_too_large_not_overflow(topic: str, size: int) -> None:
    buf = bytearray(size)
    try:
        n = P.encode_subscribe(buf, 1, topic, 1)
    except PacketTooLarge:
        assert len(topic.encode()) + 7 > size
        return
    assert n == len(topic.encode()) + 7 <= size
