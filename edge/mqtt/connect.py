"""MQTT 3.1.1 CONNECT (section 3.1) and its will, sans-I/O like edge/mqtt/packets.py.

A module of its own because a client encodes its CONNECT once, when it is made (MQTTClient keeps
the bytes and sends them at every connect): a board drops this code again after building its
clients (edge.compat.unload), so it does not sit in the heap for the whole run.
"""

from edge.mqtt import packets


class Will:
    """The message the broker publishes for us if we vanish without DISCONNECT (the offline status)."""

    def __init__(self, topic, payload, qos=0, retain=False):
        if not 0 <= qos <= 2:
            raise ValueError("bad QoS")
        self.topic = packets._utf8(topic)
        self.payload = packets._utf8(payload)
        self.qos = qos
        self.retain = retain


def encode_connect(buf, client_id, clean_session=True, keepalive=60, username=None, password=None, will=None):
    """CONNECT (3.1.1 section 3.1); returns its length in `buf`, or with `buf` None the packet as
    bytes of exactly its size (a client encodes its CONNECT once: see MQTTClient)."""
    if not 0 <= keepalive <= 0xFFFF:
        raise ValueError("bad keepalive")
    if password is not None and username is None:
        raise ValueError("password needs a username")  # in MQTT 3.1.1
    client_id = packets._utf8(client_id)
    flags = 0x02 if clean_session else 0
    body = 12 + len(client_id)  # protocol name, level, flags, keepalive, client id
    if will is not None:
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
        body += 4 + len(will.topic) + len(will.payload)
    if username is not None:
        username = packets._utf8(username)
        flags |= 0x80
        body += 2 + len(username)
    if password is not None:
        password = packets._utf8(password)
        flags |= 0x40
        body += 2 + len(password)
    whole = buf is None
    if whole:
        buf = bytearray(5 + body)  # the fixed header takes at most 5 bytes
    off = packets.put_header(buf, 0x10, body, body)
    buf[off : off + 7] = b"\x00\x04MQTT\x04"  # protocol name, then level 4 = 3.1.1
    buf[off + 7] = flags
    off = packets._uint(buf, off + 8, keepalive)
    off = packets._put_str(buf, off, client_id)
    if will is not None:
        off = packets._put_str(buf, off, will.topic)
        off = packets._put_str(buf, off, will.payload)
    if username is not None:
        off = packets._put_str(buf, off, username)
    if password is not None:
        off = packets._put_str(buf, off, password)
    return bytes(buf[:off]) if whole else off
