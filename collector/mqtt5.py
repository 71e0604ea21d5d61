"""The MQTT 5 packets the collector's input speaks, sans-I/O (no socket, no asyncio).

The gateway's codec, edge/mqtt/packets.py (MQTT 3.1.1), is reused wherever MQTT 5 puts the same
bytes on the wire: the fixed header (`put_header`, `decode_header`), the start of a PUBLISH
(`encode_publish`, `decode_publish`: in MQTT 5 a properties block follows the packet id, skipped
here) and PUBACK (`encode_puback`: MQTT 5 allows the 3.1.1 form, remaining length 2, for reason
code 0 "success", 3.4.2.1). Only what differs lives here: CONNECT with the session expiry and
Receive Maximum properties, SUBSCRIBE with subscription options, CONNACK and SUBACK with their
reason codes and properties, and `parse_publishes`, which cuts every complete packet out of a
chunk read from the socket in one pass.

MQTT 5 CONNECT (3.1), as the collector sends it:

    +------+----+-------------+-------+------+-----------+-------------+---------+----------+
    | 0x10 | RL | 00 04 MQTT  | 05    | flags| keepalive | properties  | client  | username,|
    |      |    | (name)      | level |      | 2 bytes   | len, 0x11 s.| id      | password |
    |      |    |             |       |      |           | expiry, 0x21|         | if given |
    |      |    |             |       |      |           | recv. max.  |         |          |
    +------+----+-------------+-------+------+-----------+-------------+---------+----------+

Bad wire data raises `edge.mqtt.errors.ProtocolError`; the input closes the connection then, as
the spec says (4.13).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, TypeVar

from edge.mqtt import errors, packets

CONNACK = 2
PUBLISH = 3
PUBACK = 4
SUBACK = 9
PINGRESP = 13
DISCONNECT = 14
PINGREQ_PACKET = b"\xc0\x00"
DISCONNECT_PACKET = b"\xe0\x00"  # reason 0, normal disconnection: the session stays (3.14.2.1)
MAX_PACKET = 268_435_455 + 5  # the largest packet four length bytes can say


def _string(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    if len(b) > 0xFFFF:
        raise ValueError("string longer than 65535 bytes")
    return len(b).to_bytes(2, "big") + b


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def _packet(b0: int, body: bytes) -> bytes:
    head = bytearray(5)
    n = packets.put_header(head, b0, len(body), 0)
    return bytes(head[:n]) + body


def encode_connect(
    client_id: str,
    *,
    keepalive: int,
    session_expiry: int,
    receive_maximum: int,
    username: str = "",
    password: str = "",
) -> bytes:
    """CONNECT with clean start off: the broker keeps the session (subscriptions and queued QoS 1
    messages) for `session_expiry` seconds after we vanish."""
    if not 0 <= keepalive <= 0xFFFF or not 1 <= receive_maximum <= 0xFFFF:
        raise ValueError("bad keepalive or receive maximum")
    if password and not username:
        raise ValueError("password needs a username")
    flags = (0x80 if username else 0) | (0x40 if password else 0)  # clean start (0x02) off
    expiry = min(session_expiry, 0xFFFFFFFF).to_bytes(4, "big")
    props = b"\x11" + expiry + b"\x21" + receive_maximum.to_bytes(2, "big")  # session expiry, receive max.
    body = b"\x00\x04MQTT\x05" + bytes([flags]) + keepalive.to_bytes(2, "big")
    body += _varint(len(props)) + props + _string(client_id)
    if username:
        body += _string(username)
    if password:
        body += _string(password)
    return _packet(0x10, body)


def encode_subscribe(pid: int, filters: list[str], qos: int = 1) -> bytes:
    """One SUBSCRIBE for every filter at `qos` (subscription options: no-local off, retain as
    published off, send retained messages at subscribe)."""
    if not 0 < pid <= 0xFFFF or not 0 <= qos <= 2:
        raise ValueError("bad packet id or QoS")
    body = pid.to_bytes(2, "big") + b"\x00" + b"".join(_string(f) + bytes([qos]) for f in filters)
    return _packet(0x82, body)


def encode_publish(topic: str, payload: bytes) -> bytes:
    """A QoS 0 PUBLISH, not retained, no properties (the receipts)."""
    head = bytearray(8 + len(topic.encode()))
    n = packets.encode_publish(head, topic, len(payload) + 1)  # +1: the empty properties block
    return bytes(head[:n]) + b"\x00" + payload


def encode_puback(pid: int) -> bytes:
    buf = bytearray(4)
    packets.encode_puback(buf, pid)
    return bytes(buf)


def _skip_varint(body: bytes | memoryview, off: int) -> int:
    """Offset after the variable byte integer at body[off] plus the length it says."""
    n = shift = 0
    while True:
        if off >= len(body) or shift > 21:
            raise errors.ProtocolError("malformed property length")
        b = body[off]
        off += 1
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return off + n
        shift += 7


class Connack(NamedTuple):
    session_present: bool
    reason: int  # 0 success; >= 0x80 refused (0x86 bad user name or password, 0x87 not authorized)


def decode_connack(body: bytes | memoryview) -> Connack:
    if len(body) < 3 or body[0] & 0xFE or _skip_varint(body, 2) != len(body):
        raise errors.ProtocolError("malformed CONNACK")
    return Connack(bool(body[0] & 1), body[1])


def decode_suback(body: bytes | memoryview) -> tuple[int, list[int]]:
    """(packet id, one reason code per filter: 0-2 the granted QoS, >= 0x80 refused)."""
    if len(body) < 4:
        raise errors.ProtocolError("malformed SUBACK")
    off = _skip_varint(body, 2)
    if off >= len(body):
        raise errors.ProtocolError("malformed SUBACK")
    return (body[0] << 8) | body[1], list(body[off:])


T = TypeVar("T")


def parse_packets(
    data: bytes,
    start: int,
    make: Callable[[str, bytes, int, int, bool], T],
    publishes: list[T],
    others: list[tuple[int, bytes]],
) -> int:
    """Cut every complete packet out of data[start:]: each PUBLISH becomes `make(topic, payload,
    packet id (0 for QoS 0), qos, dup)` appended to `publishes` (the topic decoded, the payload
    copied out of `data`), any other packet (type, body) appended to `others`.
    Returns the offset of the first byte not consumed (a packet still incomplete starts there).

    One call per chunk the socket gave: the loop is the per-message cost of the input, so it calls
    only `decode_header` and `decode_publish` of the shared codec and skips MQTT 5 properties
    inline (the broker sends none on these PUBLISHes unless the publisher set some).
    """
    end = len(data)
    off = start
    header = packets.decode_header
    publish = packets.decode_publish
    append = publishes.append
    mv = memoryview(data)
    while off < end:
        hl, b0, n = header(data, off, end)
        if not hl or off + hl + n > end:
            return off
        body_at = off + hl
        nxt = body_at + n
        if b0 >> 4 == PUBLISH:
            body = mv[body_at:nxt]
            topic_end, pid, props = publish(b0, body)
            if props >= n:
                raise errors.ProtocolError("malformed PUBLISH")
            plen = data[body_at + props]
            at = props + 1 + plen if plen < 0x80 else _skip_varint(body, props)
            if at > n:
                raise errors.ProtocolError("malformed PUBLISH")
            try:
                topic = data[body_at + 2 : body_at + topic_end].decode()
            except UnicodeDecodeError:
                raise errors.ProtocolError("PUBLISH topic is not UTF-8") from None
            append(make(topic, data[body_at + at : nxt], pid, (b0 >> 1) & 3, bool(b0 & 8)))
        else:
            others.append((b0 >> 4, data[body_at:nxt]))
        off = nxt
    return off
