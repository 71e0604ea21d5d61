"""collector/mqtt5.py and the input's chunk handling, without a broker: PUBLISH streams with and
without MQTT 5 properties, fed whole, split at every offset, and byte by byte (the pymodbus habit);
CONNECT and SUBSCRIBE checked against the bytes paho-mqtt writes for the same settings."""

from __future__ import annotations

import asyncio
import socket

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from collector import mqtt5
from collector.config import MqttConfig
from collector.ingest import Message, MqttInput, _Connection
from edge.mqtt.errors import ProtocolError


def publish5(topic: str, payload: bytes, pid: int = 0, props: bytes = b"", dup: bool = False) -> bytes:
    """A PUBLISH as MQTT 5 puts it on the wire, built by hand from the spec (3.3)."""
    qos = 1 if pid else 0
    t = topic.encode()
    body = len(t).to_bytes(2, "big") + t + (pid.to_bytes(2, "big") if qos else b"")
    body += bytes([len(props)]) + props + payload
    head = bytearray(5)
    from edge.mqtt import packets

    n = packets.put_header(head, 0x30 | (qos << 1) | (0x08 if dup else 0), len(body), 0)
    return bytes(head[:n]) + body


STREAM = [
    ("city/gw-1/up", b"\xa1\x00\x01" * 50, 1, b"", False),
    ("city/gw-2/alarm", b"", 2, b"\x01\x01", True),  # payload format indicator property
    ("city/gw-3/status", b"x" * 300, 0, b"", False),  # QoS 0, a two-byte remaining length
    ("city/gw-4/up", bytes(range(256)) * 3, 65535, b"\x23\x00\x05", False),  # topic alias property
]
WIRE = b"".join(publish5(t, p, pid, props, dup) for t, p, pid, props, dup in STREAM)
EXPECTED = [(t, p, pid, 1 if pid else 0, dup) for t, p, pid, _props, dup in STREAM]


def make(topic: str, payload: bytes, pid: int, qos: int, dup: bool) -> tuple[str, bytes, int, int, bool]:
    return (topic, payload, pid, qos, dup)


def test_parse_packets_whole_and_incomplete() -> None:
    out: list[tuple[str, bytes, int, int, bool]] = []
    others: list[tuple[int, bytes]] = []
    assert mqtt5.parse_packets(WIRE + b"\xd0\x00", 0, make, out, others) == len(WIRE) + 2
    assert out == EXPECTED and others == [(mqtt5.PINGRESP, b"")]
    ends = []  # where each packet of WIRE ends
    for t, p, pid, props, dup in STREAM:
        ends.append((ends[-1] if ends else 0) + len(publish5(t, p, pid, props, dup)))
    for cut in range(len(WIRE)):
        out = []
        whole = [e for e in ends if e <= cut]  # packets wholly inside WIRE[:cut]
        assert mqtt5.parse_packets(WIRE[:cut], 0, make, out, []) == (whole[-1] if whole else 0)
        assert out == EXPECTED[: len(whole)]


@pytest.mark.parametrize(
    "bad",
    [
        b"\x34\x04\x00\x01a\x00",  # QoS 2
        b"\x32\x05\x00\x01a\x00\x00",  # QoS 1 with packet id 0
        b"\x30\x03\x00\x05a",  # topic running past the body
        b"\x30\x04\x00\x01a\x09",  # properties running past the body
        b"\x30\x04\x00\x01\xff\x00",  # topic not UTF-8
    ],
)
def test_parse_packets_refuses_bad_publish(bad: bytes) -> None:
    with pytest.raises(ProtocolError):
        mqtt5.parse_packets(bad, 0, make, [], [])


class FakeOwner:
    """What a _Connection calls on its input: the control packets and the delivered lists."""

    def __init__(self) -> None:
        self.delivered: list[list[Message]] = []
        self.control: list[tuple[int, bytes]] = []

    def _deliver(self, conn: _Connection, messages: list[Message]) -> None:
        self.delivered.append(messages)

    def _control(self, conn: _Connection, kind: int, body: bytes) -> None:
        self.control.append((kind, body))


def feed(chunks: list[bytes]) -> FakeOwner:
    async def run() -> FakeOwner:
        owner = FakeOwner()
        conn = _Connection(owner)  # type: ignore[arg-type]  # a stand-in with the two methods it calls
        for c in chunks:
            conn.data_received(c)
        assert not conn.rest
        return owner

    return asyncio.run(run())


def got(owner: FakeOwner) -> list[tuple[str, bytes, int, int, bool]]:
    return [(m.topic, m.payload, m.mid, m.qos, m.dup) for batch in owner.delivered for m in batch]


def test_chunks_whole_split_everywhere_and_byte_by_byte() -> None:
    whole = feed([WIRE])
    assert got(whole) == EXPECTED and len(whole.delivered) == 1  # one list per chunk
    for cut in range(1, len(WIRE)):
        assert got(feed([WIRE[:cut], WIRE[cut:]])) == EXPECTED, cut
    assert got(feed([WIRE[i : i + 1] for i in range(len(WIRE))])) == EXPECTED


def paho_bytes(action: str) -> bytes:
    """What paho (MQTT 5) writes for our CONNECT or SUBSCRIBE, read from a socket pair."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="col-1", protocol=mqtt.MQTTv5)
    c.username_pw_set("collector", "pw")
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 604800
    props.ReceiveMaximum = 1000
    try:
        c.connect("127.0.0.1", server.getsockname()[1], keepalive=30, clean_start=False, properties=props)
        peer, _ = server.accept()
        peer.settimeout(5)
        data = peer.recv(4096)
        if action == "subscribe":
            c._sock.setblocking(True)  # paho writes at once only on a blocking socket
            c.subscribe([("city/+/up", 1), ("city/+/status", 1)])
            c.loop_write()
            data = peer.recv(4096)
        peer.close()
        return data
    finally:
        c.socket().close() if c.socket() else None
        server.close()


def test_connect_and_subscribe_match_paho() -> None:
    ours = mqtt5.encode_connect(
        "col-1", keepalive=30, session_expiry=604800, receive_maximum=1000,
        username="collector", password="pw",
    )
    assert ours == paho_bytes("connect")
    sub = paho_bytes("subscribe")
    pid = (sub[2] << 8) | sub[3]
    assert mqtt5.encode_subscribe(pid, ["city/+/up", "city/+/status"]) == sub


def test_connack_suback_and_puback() -> None:
    assert mqtt5.decode_connack(b"\x01\x00\x00") == (True, 0)
    assert mqtt5.decode_connack(b"\x00\x86\x03\x21\x00\x0a") == (False, 0x86)  # bad credentials
    with pytest.raises(ProtocolError):
        mqtt5.decode_connack(b"\x00\x00\x05")  # properties running past the packet
    assert mqtt5.decode_suback(b"\x00\x07\x00\x01\x01\x80") == (7, [1, 1, 0x80])
    assert mqtt5.encode_puback(0x1234) == b"\x40\x02\x12\x34"
    # remaining length 18: topic length 2 + topic 13 + empty properties 1 + payload 2
    assert mqtt5.encode_publish("city/gw-1/ack", b"ok") == b"\x30\x12\x00\x0dcity/gw-1/ack\x00ok"


def test_input_encodes_its_connect_once_from_config() -> None:
    async def run() -> bytes:
        config = MqttConfig(client_id="c", username="u", password="p")
        return MqttInput(config, lambda ms: None)._connect_packet

    assert asyncio.run(run()) == mqtt5.encode_connect(
        "c", keepalive=30, session_expiry=7 * 86400, receive_maximum=1000, username="u", password="p"
    )
