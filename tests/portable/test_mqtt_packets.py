"""edge.mqtt.packets against exact MQTT 3.1.1 wire bytes, on CPython and MicroPython.

The vectors are worked from the 3.1.1 spec (sections 2.2.3 and 3.x); tests/unit/test_mqtt_packets_fuzz.py
checks the encoders against the bytes paho-mqtt puts on a socket and fuzzes the decoders.
"""

import binascii

from edge.mqtt import connect
from edge.mqtt import packets as P
from edge.mqtt.errors import (
    BadCredentials,
    ConnectRefused,
    IdentifierRejected,
    MQTTError,
    NotAuthorised,
    PacketTooLarge,
    ProtocolError,
    ServerUnavailable,
    UnacceptableProtocol,
)


def h(s):
    return binascii.unhexlify(s.replace(" ", ""))


def enc(fn, *args):
    buf = bytearray(256)
    n = fn(buf, *args)
    return bytes(buf[:n])


def raises(exc, fn, *args):
    try:
        fn(*args)
    except exc as e:
        return e
    raise AssertionError("%s not raised" % exc.__name__)


# (value, remaining-length bytes): the boundaries of spec table 2.4.
VARINTS = [
    (0, "00"),
    (127, "7f"),
    (128, "8001"),
    (16383, "ff7f"),
    (16384, "808001"),
    (2097151, "ffff7f"),
    (2097152, "80808001"),
    (268435455, "ffffff7f"),
]


def test_varint_vectors():
    for value, wire in VARINTS:
        buf = bytearray(5)
        n = P.put_header(buf, 0x30, value, 0)
        assert bytes(buf[:n]) == b"\x30" + h(wire), value
        hl, b0, rem = P.decode_header(buf, 0, n)
        assert (hl, b0, rem) == (n, 0x30, value)


def test_varint_too_big_and_malformed():
    raises(PacketTooLarge, P.put_header, bytearray(5), 0x30, 268435456, 0)
    raises(PacketTooLarge, P.put_header, bytearray(4), 0x30, 2097152, 0)  # 5 header bytes
    raises(PacketTooLarge, P.put_header, bytearray(4), 0x30, 2, 3)  # 2 header + 3 body bytes
    raises(ProtocolError, P.decode_header, h("30 80 80 80 80 01"), 0, 6)
    # Four continuation bytes so far is not yet malformed: need more.
    assert P.decode_header(h("30 ff ff ff"), 0, 4)[0] == 0
    assert P.decode_header(h("30"), 0, 1)[0] == 0
    assert P.decode_header(b"", 0, 0)[0] == 0


def test_fixed_header_flags_checked():
    for bad in ("00 00", "f0 00", "41 02", "92 03", "d1 00", "21 02"):
        e = raises(ProtocolError, P.decode_header, h(bad), 0, 2)
        assert isinstance(e, MQTTError)
    for good in ("20 02", "3f 00", "40 02", "90 03", "b0 02", "d0 00"):
        assert P.decode_header(h(good), 0, 2)[0] == 2


def test_connect_minimal():
    wire = enc(connect.encode_connect, "abc", True, 60)
    assert wire == h("10 0f 00 04 4d 51 54 54 04 02 00 3c 00 03 61 62 63")


def test_connect_full():
    will = connect.Will("s", b"off", qos=1, retain=True)
    wire = enc(connect.encode_connect, b"gw1", False, 30, "u", b"p", will)
    assert wire == h("10 1d 00 04 4d51 5454 04 ec 00 1e 0003 677731 0001 73 0003 6f6666 0001 75 0001 70")


def test_connect_no_clean_session_no_will():
    wire = enc(connect.encode_connect, "c", False, 0, "user")
    assert wire == h("10 13 0004 4d515454 04 80 0000 0001 63 0004 75736572")


def test_connect_misuse():
    raises(ValueError, enc, connect.encode_connect, "c", True, 60, None, "pw")
    raises(ValueError, enc, connect.encode_connect, "c", True, 70000)
    raises(ValueError, connect.Will, "t", b"", 3)
    raises(PacketTooLarge, connect.encode_connect, bytearray(16), "a-long-client-id", True, 60)


def test_publish_qos0():
    buf = bytearray(32)
    n = P.encode_publish(buf, "a/b", 2)
    assert bytes(buf[:n]) + b"hi" == h("30 07 0003 612f62 6869")


def test_publish_qos1_dup_retain():
    buf = bytearray(32)
    n = P.encode_publish(buf, b"a/b", 2, 1, True, True, 10)
    assert bytes(buf[:n]) + b"hi" == h("3b 09 0003 612f62 000a 6869")


def test_publish_utf8_topic_and_long_payload():
    buf = bytearray(32)
    n = P.encode_publish(buf, "城", 200, 1, False, False, 0x1234)
    # topic is 3 UTF-8 bytes; remaining = 2 + 3 + 2 + 200 = 207 = two varint bytes cf 01
    assert bytes(buf[:n]) == h("32 cf01 0003 e59f8e 1234")


def test_publish_limits():
    raises(PacketTooLarge, P.encode_publish, bytearray(8), "0123456789", 0)
    raises(PacketTooLarge, P.encode_publish, bytearray(32), "t", 268435455, 1, False, False, 1)
    raises(ValueError, P.encode_publish, bytearray(32), "t", 0, 1)  # QoS 1 without a packet id
    raises(ValueError, P.encode_publish, bytearray(32), "t", 0, 2, False, False, 1)


def test_acks_subscribe_unsubscribe():
    assert enc(P.encode_puback, 0x1234) == h("40 02 1234")
    assert enc(P.encode_subscribe, 1, "c/#", 1) == h("82 08 0001 0003 632f23 01")
    assert enc(P.encode_subscribe, 2, "c/#", None) == h("a2 07 0002 0003 632f23")  # UNSUBSCRIBE
    raises(ValueError, enc, P.encode_subscribe, 1, "c/#", 2)  # the client never asks for QoS 2
    # PINGREQ and DISCONNECT have no body, so nothing but a header (the client writes them as constants).
    assert enc(P.put_header, 0xC0, 0, 0) == h("c0 00")
    assert enc(P.put_header, 0xE0, 0, 0) == h("e0 00")


def test_connack():
    assert P.decode_connack(h("00 00")) is False
    assert P.decode_connack(h("01 00")) is True
    for code, cls in ((1, UnacceptableProtocol), (2, IdentifierRejected), (3, ServerUnavailable),
                      (4, BadCredentials), (5, NotAuthorised)):
        e = raises(cls, P.decode_connack, bytes((0, code)))
        assert isinstance(e, ConnectRefused) and e.code == code
    e = raises(ConnectRefused, P.decode_connack, h("00 06"))
    assert e.code == 6 and type(e) is ConnectRefused
    raises(ProtocolError, P.decode_connack, h("02 00"))
    raises(ProtocolError, P.decode_connack, h("00 00 00"))


def test_suback_unsuback_puback():
    # SUBACK (0x90): the packet id; the return code stays in body[2], checked.
    assert P.decode_ack(0x90, h("0001 01")) == 1
    assert P.decode_ack(0x90, h("ffff 80")) == 0xFFFF  # 0x80 refused: an answer, not an error
    raises(ProtocolError, P.decode_ack, 0x90, h("0001 03"))
    raises(ProtocolError, P.decode_ack, 0x90, h("0001"))
    raises(ProtocolError, P.decode_ack, 0x90, h("0000 01"))
    for b0 in (0x40, 0xB0):  # PUBACK, UNSUBACK
        assert P.decode_ack(b0, h("1234")) == 0x1234
        raises(ProtocolError, P.decode_ack, b0, h("0000"))
        raises(ProtocolError, P.decode_ack, b0, h("12"))
        raises(ProtocolError, P.decode_ack, b0, h("0001 01"))


def test_incoming_publish():
    body = h("0003 612f62 6869")
    assert P.decode_publish(0x31, body) == (5, 0, 5)
    body = h("0003 612f62 000a 6869")
    topic_end, pid, start = P.decode_publish(0x32, body)
    assert (bytes(body[2:topic_end]), pid, bytes(body[start:])) == (b"a/b", 10, b"hi")
    raises(ProtocolError, P.decode_publish, 0x32, h("0003 612f62 0000"))  # QoS 1, packet id 0
    raises(ProtocolError, P.decode_publish, 0x36, body)  # QoS 3
    raises(ProtocolError, P.decode_publish, 0x34, body)  # QoS 2: the client never subscribes with it
    raises(ProtocolError, P.decode_publish, 0x30, h("0009 61"))  # topic past the end
    raises(ProtocolError, P.decode_publish, 0x32, h("0003 612f62 00"))  # packet id cut
    raises(ProtocolError, P.decode_publish, 0x30, h("00"))


# What a broker might send back to back: CONNACK, SUBACK, PUBLISH QoS 1, PUBACK, PINGRESP.
STREAM = h("20 02 0000" "90 03 0001 01" "32 0c 0003 632f31 0007 68656c6c6f" "40 02 0005" "d0 00")
EXPECTED = [(0x20, h("0000")), (0x90, h("0001 01")), (0x32, h("0003 632f31 0007 68656c6c6f")),
            (0x40, h("0005")), (0xD0, b"")]


def _frames(chunks):
    """Split a byte stream into packets the way the client does: accumulate, parse what is whole."""
    buf = bytearray(64)
    have = 0
    out = []
    for chunk in chunks:
        buf[have : have + len(chunk)] = chunk
        have += len(chunk)
        pos = 0
        while True:
            hl, b0, rem = P.decode_header(buf, pos, have)
            if not hl or pos + hl + rem > have:
                break
            out.append((b0, bytes(buf[pos + hl : pos + hl + rem])))
            pos += hl + rem
        buf[0 : have - pos] = bytes(buf[pos:have])
        have -= pos
    return out, have


def test_stream_whole_split_bytewise():
    assert _frames([STREAM]) == (EXPECTED, 0)
    for cut in range(1, len(STREAM)):
        assert _frames([STREAM[:cut], STREAM[cut:]]) == (EXPECTED, 0), cut
    assert _frames([STREAM[i : i + 1] for i in range(len(STREAM))]) == (EXPECTED, 0)


def test_backoff_full_jitter_bounds():
    from devices.common.rng import Rng
    from edge.mqtt.client import backoff_delays

    gen = backoff_delays(0.5, 8.0, Rng(7))
    delays = [next(gen) for _ in range(12)]
    caps = [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0, 8.0, 8.0, 8.0, 8.0]
    for d, cap in zip(delays, caps):
        assert 0.0 <= d <= cap, (d, cap)
    other = backoff_delays(0.5, 8.0, Rng(8))
    assert [next(other) for _ in range(12)] != delays  # two gateways do not retry in step
    first = next(backoff_delays(1.0, 60.0))  # default seed from os.urandom
    assert 0.0 <= first <= 1.0


def test_connect_without_a_buffer_is_exactly_its_size():
    will = connect.Will("t/status", b"offline", 1, True)
    for args in (("abc", True, 60), ("a-long-client-id", False, 30, "user", "pw", will)):
        assert connect.encode_connect(None, *args) == enc(connect.encode_connect, *args)
