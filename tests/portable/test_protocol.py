"""edge.protocol: exact wire bytes of each payload (docs/protocol.md), both interpreters.

The batch and alarm vectors equal `cbor2.dumps(<same map>, canonical=True)`; that cross-check runs on
generated batches in tests/unit/test_cbor_vs_cbor2.py.
"""

import binascii
import gc

from edge import cbor, command, protocol

T0 = 1767225600000  # 2026-01-01T00:00:00Z

BATCH_HEX = (
    "a50001010302182a031b0000019b76daa80004828466502d303030310100a200f502190e108470e8a5bfe6b9962de4ba95"
    "e79b962d30370238f9a300f401f94a4002fb3e601b2b29a4692b"
)
ALARM_HEX = "a6000101030205031b0000019b76daacd204818464542d31320400a200f950d002190b8605656665766572"
WILL_HEX = "a4617601657374617465676f66666c696e6562667765312e302e3064626f6f7403"
REPLY_HEX = "a462696463632d31626f6bf5656572726f72f666726573756c74f6"


def _hex(view):
    return binascii.hexlify(bytes(view)).decode()


def test_topics():
    assert protocol.topic("gw-01", protocol.UP) == "city/gw-01/up"
    assert protocol.topic("gw-01", "status", "hz/city") == "hz/city/gw-01/status"
    assert protocol.parse_topic("city/gw-01/alarm") == ("gw-01", "alarm")
    assert protocol.parse_topic("hz/city/gw-01/cmd", "hz/city") == ("gw-01", "cmd")
    for bad in ("city/gw-01", "city//up", "town/gw-01/up", "city/gw-01/up/x", "city/gw-01/down"):
        assert protocol.parse_topic(bad) is None, bad
    for gw in ("", "a/b", "a+", "#"):
        try:
            protocol.topic(gw, "up")
            raise AssertionError("accepted gateway id %r" % gw)
        except ValueError:
            pass


def test_batch_vector():
    e = protocol.BatchEncoder(512)
    e.begin(3, 42, T0)
    assert e.add("P-0001", 1, T0, (True, None, 3600))
    assert e.add("西湖-井盖-07".encode(), 2, T0 - 250, (False, 12.5, 3.0e-8))  # pre-encoded id
    assert _hex(e.finish()) == BATCH_HEX


def test_batch_count_header_is_shortest():
    e = protocol.BatchEncoder(8192)
    for n in (0, 1, 23, 24, 255, 256):
        gc.collect()  # decoding 256 readings is the biggest heap user of these tests
        e.begin(1, 7, T0)
        for i in range(n):
            assert e.add("s", 4, T0 + i, (None, 20.5) if i == n - 1 else (None, None))
        view = e.finish()
        head = 18  # a5, 00 01, 01 01, 02 07, 03 1b <8 bytes>, 04
        first = view[head]
        if n < 24:
            assert first == 0x80 | n
        elif n < 256:
            assert first == 0x98 and view[head + 1] == n
        else:
            assert first == 0x99 and (view[head + 1] << 8 | view[head + 2]) == n
        d = cbor.loads(view)
        assert d[2] == 7 and len(d[4]) == n
        if n:
            assert d[4][-1] == ["s", 4, n - 1, {1: 20.5}]
        d = view = None


def test_batch_full_rolls_back():
    e = protocol.BatchEncoder(64)
    e.begin(1, 0, T0)
    added = 0
    while e.add("sensor-%d" % added, 3, T0 + added, (True, 1234, 0.1)):
        added += 1
    assert added > 0
    d = cbor.loads(e.finish())
    assert len(d[4]) == added  # the reading that did not fit left nothing behind


def test_bad_field_type_rolls_back():
    e = protocol.BatchEncoder(256)
    e.begin(1, 0, T0)
    assert e.add("a", 1, T0, (1,))
    try:
        e.add("b", 1, T0, (object(),))
        raise AssertionError("object encoded")
    except cbor.CBORError:
        pass
    assert cbor.loads(e.finish())[4] == [["a", 1, 0, {0: 1}]]


def test_alarm_vector():
    e = protocol.BatchEncoder(256)
    view = protocol.encode_alarm(e, 3, 5, "fever", "T-12", 4, T0 + 1234, (38.5, None, 2950))
    assert _hex(view) == ALARM_HEX
    d = cbor.loads(view)
    assert d[5] == "fever" and d[3] == T0 + 1234 and d[4] == [["T-12", 4, 0, {0: 38.5, 2: 2950}]]


def test_alarm_needs_one_reading():
    e = protocol.BatchEncoder(256)
    e.begin(1, 1, T0, "gas")
    try:
        e.finish()
        raise AssertionError("empty alarm")
    except cbor.CBORError:
        pass


def test_will_and_status():
    assert _hex(protocol.will_payload("1.0.0", 3)) == WILL_HEX
    w = bytearray()
    protocol.encode_status(
        w, "online", "1.0.0", 3, 3600, 81234, 10, 2, 0, True, T0, {"P-0001": {"bad_crc": 2}}
    )
    d = cbor.loads(w)
    assert d["v"] == 1 and d["state"] == "online" and d["boot"] == 3 and d["uptime_s"] == 3600
    assert d["spool_bytes"] == 10 and d["spool_records"] == 2 and d["spool_dropped"] == 0
    assert d["clock_synced"] is True and d["ts"] == T0 and d["errors"] == {"P-0001": {"bad_crc": 2}}
    assert len(d) == 12
    w = bytearray()
    protocol.encode_status(w, "online", "1.0.0", 3, 5, 1000, 0, 0, 0, False, None, {})
    d = cbor.loads(w)
    assert d["ts"] is None and d["clock_synced"] is False
    # A board's image hash (what `provision flash` installed) rides along as `img`; no key without one.
    w = bytearray()
    protocol.encode_status(w, "online", "1.0.0", 3, 5, 1000, 0, 0, 0, False, None, {}, "3f2a9c1d0e12")
    d = cbor.loads(w)
    assert d["img"] == "3f2a9c1d0e12" and len(d) == 13
    # With receipts on: readings awaiting a receipt and the age of the oldest, in seconds.
    w = bytearray()
    protocol.encode_status(w, "online", "1.0.0", 3, 5, 1000, 0, 0, 0, False, None, {}, None, (120, 4999))
    d = cbor.loads(w)
    assert d["unreceipted"] == 120 and d["unreceipted_age_s"] == 4 and "img" not in d and len(d) == 14


def _cmd(m):
    buf = bytearray()
    cbor.enc_map_pairs(buf, m, len(m))
    return command.decode_command(buf)


def test_command_ok():
    c = _cmd((("id", "c-1"), ("op", "set"), ("args", {"deadband": 0.5})))
    assert isinstance(c, command.Command)
    assert (c.id, c.op, c.args) == ("c-1", "set", {"deadband": 0.5})
    c = _cmd((("v", 1), ("id", "c-2"), ("op", "flush")))
    assert isinstance(c, command.Command) and c.args == {}


def test_command_errors():
    """The error codes are the reply texts of docs/protocol.md, "Command (`/cmd`) and reply"."""
    cases = (
        (b"\xff", "bad_cbor", None),
        (b"\x83\x01\x02\x03", "bad_command", None),
        (cbor.dumps({"op": "status"}), "bad_command", None),
        (cbor.dumps({"id": 7, "op": "status"}), "bad_command", None),
        (cbor.dumps({"id": "x" * 65, "op": "status"}), "bad_command", None),
        (cbor.dumps({"id": "c", "op": "dance"}), "unknown_op", "c"),
        (cbor.dumps({"id": "c", "op": 1}), "bad_command", "c"),
        (cbor.dumps({"id": "c", "op": "set", "args": [1]}), "bad_command", "c"),
        (cbor.dumps({"id": "c", "op": "set", "args": {1: 2}}), "bad_command", "c"),
        (cbor.dumps({"id": "c", "op": "set", "extra": 1}), "bad_command", "c"),
        (cbor.dumps({"id": "c", "op": "set", "v": 2}), "unsupported_version", "c"),
        (b"\xa1\x62id" + b"\x81" * 40 + b"\x00", "bad_cbor", None),
    )
    for data, code, cid in cases:
        r = command.decode_command(data)
        assert isinstance(r, command.CommandError), (data, r)
        assert r.code == code and r.id == cid, (data, r)


def test_reply():
    w = bytearray()
    command.encode_reply(w, "c-1")
    assert _hex(w) == REPLY_HEX
    w = bytearray()
    command.encode_reply(w, None, "bad_cbor")
    assert cbor.loads(w) == {"id": None, "ok": False, "error": "bad_cbor", "result": None}


RECEIPT_HEX = "a40001010702841828182a182d182d03820303"  # boot 7: batches 40-42 and 45, alarm 3


def test_receipt_vector():
    """The gateway reads receipts (the collector writes them: tests/unit/test_cbor_vs_cbor2.py)."""
    assert protocol.decode_receipt(binascii.unhexlify(RECEIPT_HEX)) == (7, [40, 42, 45, 45], [3, 3])
    assert protocol.decode_receipt(binascii.unhexlify("a40001010002800380")) == (0, [], [])
    # 4- and 8-byte arguments: boot 65536, batches 0..2**32 + 5
    data = binascii.unhexlify("a4000101" + "1a00010000" + "0282" + "00" + "1b0000000100000005" + "0380")
    assert protocol.decode_receipt(data) == (65536, [0, 2**32 + 5], [])
    assert protocol.topic("gw-01", protocol.ACK) == "city/gw-01/ack"


def test_receipt_every_prefix_refused():
    data = binascii.unhexlify(RECEIPT_HEX)
    for cut in range(len(data)):  # every proper prefix is short: an error, never a partial receipt
        try:
            protocol.decode_receipt(data[:cut])
            raise AssertionError("prefix of %d bytes accepted" % cut)
        except cbor.CBORError:
            pass


def test_receipt_unknown_keys_skipped():
    # A later compatible key (9: uint, 10: array of uints) is skipped.
    data = binascii.unhexlify("a6" + RECEIPT_HEX[2:] + "0901" + "0a820102")
    assert protocol.decode_receipt(data) == (7, [40, 42, 45, 45], [3, 3])


def test_receipt_refusals():
    bad = (
        "a40002010702800380",  # version 2
        "a3000102800380",  # no boot
        "a40001010702830102030380",  # odd range count
        "a400010107028202010380",  # lo > hi
        "a400010107020103800380",  # ranges not an array
        "a4000101070280038000",  # trailing byte
        "a400010107026161" + "0380",  # text where ranges are due
        "a40001010702800380a0",  # trailing map
        "a5000101070280038003",  # key 3 twice
        "820102",  # not a map
        "a400010107029f0102ff0380",  # indefinite array
        "a40001010702" + "98" + "42" + "00" * 66 + "0380",  # 33 ranges: over the cap
        "",
    )
    for h in bad:
        try:
            protocol.decode_receipt(binascii.unhexlify(h))
            raise AssertionError("accepted %s" % h)
        except cbor.CBORError:
            pass
