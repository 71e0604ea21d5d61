"""MQTT 3.1.1 packets, sans-I/O: encoders write into the caller's buffer, decoders read a view of it.

Every packet (MQTT 3.1.1 section 2.2):

    +--------+----------------------+------------------------------------------+
    | byte 0 | bytes 1..4           | remaining length bytes                   |
    | type<<4| remaining length:    | variable header, then payload            |
    | |flags | 7 bits per byte, low |                                          |
    |        | group first, bit 7 = |                                          |
    |        | "another byte"       |                                          |
    +--------+----------------------+------------------------------------------+

No module here imports a socket or asyncio, so every byte is tested without a broker. Encoders
return the number of bytes written and raise PacketTooLarge when the buffer is too small: the
client never grows a buffer on the heap. A PUBLISH payload is not copied: `encode_publish` writes
only the part before the payload, and the client sends the payload after it. Decoders take a view
of one packet's body (the bytes after the fixed header) and return ints or offsets into it, so
decoding allocates at most one small tuple. Bad wire data raises ProtocolError; the spec's answer
to a malformed packet is to close the connection, which is what the client does.

PINGREQ and DISCONNECT have no encoder: they are the constant bytes c0 00 and e0 00, which the
client writes as they are. CONNECT and its `Will` are in edge/mqtt/connect.py: a client encodes
its CONNECT once, when it is made, and a board drops that code again. The packet types are
private `const`s: on MicroPython a public module constant costs a global slot and a name on the
heap, and nothing outside reads them.
"""

from edge.compat import const
from edge.mqtt import errors

_PUBLISH = const(3)
_MAX_REMAINING = const(268435455)  # the largest length four varint bytes can say


def _utf8(s):
    return s.encode() if isinstance(s, str) else s


def put_header(buf, b0, n, count):
    """Write the fixed header (byte 0, then the remaining length `n` as a varint) at buf[0];
    return its length.

    Checks first that the header and the `count` bytes the caller writes after it fit `buf`, and
    that `n` fits the four varint bytes MQTT allows.
    """
    need = count + (2 if n < 128 else 3 if n < 16384 else 4 if n < 2097152 else 5)
    if n > _MAX_REMAINING or need > len(buf):
        raise errors.PacketTooLarge("packet > %d-byte buffer" % len(buf))  # or > MQTT's limit
    buf[0] = b0
    off = 1
    while n > 127:
        buf[off] = (n & 0x7F) | 0x80
        n >>= 7
        off += 1
    buf[off] = n
    return off + 1


def _uint(buf, off, n):
    """A two-byte big-endian integer (a length, a packet id, the keepalive)."""
    buf[off] = n >> 8
    buf[off + 1] = n & 0xFF
    return off + 2


def _put_str(buf, off, s):
    """A length-prefixed string (the caller has counted its 2 + len(s) bytes)."""
    n = len(s)
    if n > 0xFFFF:
        raise errors.PacketTooLarge("string longer than 65535 bytes")
    off = _uint(buf, off, n)
    buf[off : off + n] = s
    return off + n


def encode_publish(buf, topic, n, qos=0, retain=False, dup=False, pid=0):
    """PUBLISH up to (not including) the payload; the caller sends the `n` payload bytes after it."""
    if not 0 <= qos <= 1:
        raise ValueError("bad QoS")
    if qos and not 0 < pid <= 0xFFFF:
        raise ValueError("bad packet id")
    topic = _utf8(topic)
    head = 2 + len(topic) + 2 * qos
    b0 = 0x30 | (qos << 1) | (0x08 if dup else 0) | (0x01 if retain else 0)
    off = _put_str(buf, put_header(buf, b0, head + n, head), topic)
    return _uint(buf, off, pid) if qos else off


def encode_puback(buf, pid):
    buf[0] = 0x40
    buf[1] = 2
    return _uint(buf, 2, pid)


def encode_subscribe(buf, pid, topic, qos=1):
    """SUBSCRIBE to one topic filter at `qos` 0 or 1 (3.1.1 section 3.8), or with qos=None
    UNSUBSCRIBE from it (3.10): the same packet but for byte 0 and the requested QoS byte."""
    if qos is not None and not 0 <= qos <= 1:
        raise ValueError("bad QoS")
    topic = _utf8(topic)
    body = 4 + len(topic) + (qos is not None)
    off = _uint(buf, put_header(buf, 0xA2 if qos is None else 0x82, body, body), pid)
    off = _put_str(buf, off, topic)
    if qos is None:
        return off
    buf[off] = qos
    return off + 1


def decode_header(buf, start, end):
    """(header length, byte 0, remaining length) of the packet at buf[start:end].

    Header length 0 means "need more bytes". Raises ProtocolError for a fifth length byte, a
    reserved packet type or wrong fixed flags, so nothing after a bad header is trusted.
    """
    if end - start < 2:
        return 0, 0, 0
    b0 = buf[start]
    # Fixed-header flags by packet type (3.1.1 table 2.2): 2 for PUBREL, SUBSCRIBE and
    # UNSUBSCRIBE, 0 for the others; 0xff (never matches) for the reserved types 0 and 15.
    # PUBLISH (3) carries its own flags.
    if b0 >> 4 != _PUBLISH and b0 & 0x0F != b"\xff\0\0\0\0\0\x02\0\x02\0\x02\0\0\0\0\xff"[b0 >> 4]:
        raise errors.ProtocolError("malformed header")
    n = 0
    shift = 0
    i = start + 1
    while True:
        if i >= end:
            return 0, 0, 0
        b = buf[i]
        n |= (b & 0x7F) << shift
        i += 1
        if not b & 0x80:
            return i - start, b0, n
        shift += 7
        if shift == 28:
            raise errors.ProtocolError("malformed header")


def decode_connack(body):
    """Session-present flag of a CONNACK; a refusal raises its typed ConnectRefused subclass."""
    if len(body) != 2 or body[0] & 0xFE:
        raise errors.ProtocolError("malformed CONNACK")
    if body[1]:
        raise errors.refused(body[1])
    return bool(body[0])


def decode_ack(b0, body):
    """Packet id of a PUBACK, UNSUBACK or SUBACK (byte 0 says which).

    A SUBACK here answers one topic filter: its return code, body[2], is checked (0, 1, 2, or
    0x80 for refused, which is an answer, not an error here) and left to the caller to read.
    """
    suback = b0 == 0x90
    if len(body) != 2 + suback or not (body[0] or body[1]) or (suback and 2 < body[2] != 0x80):
        raise errors.ProtocolError("malformed ack")
    return (body[0] << 8) | body[1]


def decode_publish(b0, body):
    """(topic end, packet id, payload start) of an incoming PUBLISH; the topic is body[2:topic end].

    The packet id is 0 for QoS 0. QoS 2 (this client never subscribes with it), the reserved QoS 3
    or a topic running past the body raise ProtocolError.
    """
    qos = (b0 >> 1) & 3
    if qos > 1 or len(body) < 2:
        raise errors.ProtocolError("malformed PUBLISH")
    topic_end = 2 + ((body[0] << 8) | body[1])
    payload = topic_end + 2 * qos
    if payload > len(body):
        raise errors.ProtocolError("malformed PUBLISH")
    pid = (body[topic_end] << 8) | body[topic_end + 1] if qos else 0
    if qos and not pid:
        raise errors.ProtocolError("malformed PUBLISH")
    return topic_end, pid, payload
