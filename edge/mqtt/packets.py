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
"""

from edge.compat import const
from edge.mqtt.errors import PacketTooLarge, ProtocolError, refused

CONNECT = const(1)
CONNACK = const(2)
PUBLISH = const(3)
PUBACK = const(4)
PUBREC = const(5)
PUBREL = const(6)
PUBCOMP = const(7)
SUBSCRIBE = const(8)
SUBACK = const(9)
UNSUBSCRIBE = const(10)
UNSUBACK = const(11)
PINGREQ = const(12)
PINGRESP = const(13)
DISCONNECT = const(14)

MAX_REMAINING = const(268435455)  # the largest length four varint bytes can say
SUBACK_FAILURE = const(0x80)

PINGREQ_PACKET = b"\xc0\x00"
DISCONNECT_PACKET = b"\xe0\x00"

# Fixed-header flags every type except PUBLISH must carry (3.1.1 table 2.2); None = reserved type.
_FLAGS = (None, 0, 0, None, 0, 0, 2, 0, 2, 0, 2, 0, 0, 0, 0, None)


class Will:
    """The message the broker publishes for us if we vanish without DISCONNECT (the offline status)."""

    __slots__ = ("topic", "payload", "qos", "retain")

    def __init__(self, topic, payload, qos=0, retain=False):
        if qos not in (0, 1, 2):
            raise ValueError("will qos must be 0, 1 or 2")
        self.topic = _utf8(topic)
        self.payload = _utf8(payload)
        self.qos = qos
        self.retain = retain


def _utf8(s):
    return s.encode() if isinstance(s, str) else s


def varint_size(n):
    if n < 128:
        return 1
    if n < 16384:
        return 2
    if n < 2097152:
        return 3
    return 4


def put_varint(buf, off, n):
    """Write the remaining length `n` at `off`; return the offset after it."""
    if n < 0 or n > MAX_REMAINING:
        raise PacketTooLarge("remaining length %d" % n)
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            buf[off] = b | 0x80
            off += 1
        else:
            buf[off] = b
            return off + 1


def _start(buf, b0, remaining, in_buf):
    """Write the fixed header; check that it and the next `in_buf` body bytes fit `buf`."""
    if remaining > MAX_REMAINING:
        raise PacketTooLarge("remaining length %d" % remaining)
    need = 1 + varint_size(remaining) + in_buf
    if need > len(buf):
        raise PacketTooLarge("packet needs %d bytes, buffer has %d" % (need, len(buf)))
    buf[0] = b0
    return put_varint(buf, 1, remaining)


def _put_u16(buf, off, n):
    buf[off] = n >> 8
    buf[off + 1] = n & 0xFF
    return off + 2


def _put_str(buf, off, s):
    n = len(s)
    buf[off] = n >> 8
    buf[off + 1] = n & 0xFF
    buf[off + 2 : off + 2 + n] = s
    return off + 2 + n


def _check_str(s, what):
    if len(s) > 0xFFFF:
        raise PacketTooLarge(what + " longer than 65535 bytes")
    return 2 + len(s)


def encode_connect(buf, client_id, clean_session=True, keepalive=60, username=None, password=None,
                   will=None):
    """CONNECT (3.1.1 section 3.1); returns its length in `buf`."""
    if not 0 <= keepalive <= 0xFFFF:
        raise ValueError("keepalive must be 0..65535 s")
    if password is not None and username is None:
        raise ValueError("MQTT 3.1.1 needs a username with a password")
    client_id = _utf8(client_id)
    flags = 0x02 if clean_session else 0
    body = 10 + _check_str(client_id, "client id")
    if will is not None:
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
        body += _check_str(will.topic, "will topic") + _check_str(will.payload, "will payload")
    if username is not None:
        username = _utf8(username)
        flags |= 0x80
        body += _check_str(username, "username")
    if password is not None:
        password = _utf8(password)
        flags |= 0x40
        body += _check_str(password, "password")
    off = _start(buf, 0x10, body, body)
    off = _put_str(buf, off, b"MQTT")
    buf[off] = 4  # protocol level 4 = 3.1.1
    buf[off + 1] = flags
    off = _put_u16(buf, off + 2, keepalive)
    off = _put_str(buf, off, client_id)
    if will is not None:
        off = _put_str(buf, off, will.topic)
        off = _put_str(buf, off, will.payload)
    if username is not None:
        off = _put_str(buf, off, username)
    if password is not None:
        off = _put_str(buf, off, password)
    return off


def encode_publish(buf, topic, payload_len, qos=0, retain=False, dup=False, pid=0):
    """PUBLISH up to (not including) the payload; the caller sends `payload_len` bytes after it."""
    if qos not in (0, 1):
        raise ValueError("publish qos must be 0 or 1")
    if qos and not 0 < pid <= 0xFFFF:
        raise ValueError("qos 1 needs a packet id 1..65535")
    topic = _utf8(topic)
    head = _check_str(topic, "topic") + (2 if qos else 0)
    b0 = 0x30 | (qos << 1) | (0x08 if dup else 0) | (0x01 if retain else 0)
    off = _start(buf, b0, head + payload_len, head)
    off = _put_str(buf, off, topic)
    if qos:
        off = _put_u16(buf, off, pid)
    return off


def encode_puback(buf, pid):
    buf[0] = 0x40
    buf[1] = 2
    return _put_u16(buf, 2, pid)


def encode_subscribe(buf, pid, topic, qos=1):
    """SUBSCRIBE for one topic filter (the agent subscribes to one command topic)."""
    if qos not in (0, 1, 2):
        raise ValueError("subscribe qos must be 0, 1 or 2")
    topic = _utf8(topic)
    body = 2 + _check_str(topic, "topic filter") + 1
    off = _start(buf, 0x82, body, body)
    off = _put_u16(buf, off, pid)
    off = _put_str(buf, off, topic)
    buf[off] = qos
    return off + 1


def encode_unsubscribe(buf, pid, topic):
    topic = _utf8(topic)
    body = 2 + _check_str(topic, "topic filter")
    off = _start(buf, 0xA2, body, body)
    off = _put_u16(buf, off, pid)
    return _put_str(buf, off, topic)


def decode_header(buf, start, end):
    """(header length, byte 0, remaining length) of the packet at buf[start:end].

    Header length 0 means "need more bytes". Raises ProtocolError for a fifth length byte, a
    reserved packet type or wrong fixed flags, so nothing after a bad header is trusted.
    """
    if end - start < 2:
        return 0, 0, 0
    b0 = buf[start]
    expected = _FLAGS[b0 >> 4]
    if b0 >> 4 != PUBLISH and expected != b0 & 0x0F:
        raise ProtocolError("bad fixed header 0x%02x" % b0)
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
            raise ProtocolError("remaining length longer than 4 bytes")


def _u16(body, off):
    return (body[off] << 8) | body[off + 1]


def decode_connack(body):
    """Session-present flag of a CONNACK; a refusal raises its typed ConnectRefused subclass."""
    if len(body) != 2 or body[0] & 0xFE:
        raise ProtocolError("malformed CONNACK")
    if body[1]:
        raise refused(body[1])
    return bool(body[0])


def decode_ack(body):
    """Packet id of a PUBACK or UNSUBACK."""
    if len(body) != 2:
        raise ProtocolError("malformed ack")
    pid = _u16(body, 0)
    if not pid:
        raise ProtocolError("ack for packet id 0")
    return pid


def decode_suback(body):
    """(packet id, return code) of a SUBACK for one topic; 0x80 is SUBACK_FAILURE, not an error here."""
    if len(body) != 3:
        raise ProtocolError("malformed SUBACK")
    rc = body[2]
    if rc > 2 and rc != SUBACK_FAILURE:
        raise ProtocolError("bad SUBACK return code 0x%02x" % rc)
    return _u16(body, 0), rc


def decode_publish(b0, body):
    """(topic end, packet id, payload start) of an incoming PUBLISH; the topic is body[2:topic end].

    The packet id is 0 for QoS 0. QoS 3 (reserved) or a topic running past the body raise.
    """
    qos = (b0 >> 1) & 3
    if qos == 3:
        raise ProtocolError("PUBLISH with QoS 3")
    n = len(body)
    if n < 2:
        raise ProtocolError("PUBLISH too short")
    topic_end = 2 + _u16(body, 0)
    payload = topic_end + (2 if qos else 0)
    if payload > n:
        raise ProtocolError("PUBLISH topic past the end")
    pid = 0
    if qos:
        pid = _u16(body, topic_end)
        if not pid:
            raise ProtocolError("PUBLISH QoS %d with packet id 0" % qos)
    return topic_end, pid, payload
