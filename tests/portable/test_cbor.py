"""edge.cbor against fixed vectors (RFC 8949 appendix A and cbor2 canonical output), both interpreters.

The vectors were produced by `cbor2.dumps(value, canonical=True)`; tests/unit/test_cbor_vs_cbor2.py
checks the same rule against cbor2 on generated values.
"""

import binascii
import math

from edge import cbor

INF = float("inf")

VECTORS = [
    (0, "00"),
    (1, "01"),
    (23, "17"),
    (24, "1818"),
    (255, "18ff"),
    (256, "190100"),
    (65535, "19ffff"),
    (65536, "1a00010000"),
    (4294967295, "1affffffff"),
    (4294967296, "1b0000000100000000"),
    (18446744073709551615, "1bffffffffffffffff"),
    (18446744073709551616, "c249010000000000000000"),
    (-1, "20"),
    (-24, "37"),
    (-25, "3818"),
    (-256, "38ff"),
    (-257, "390100"),
    (-18446744073709551616, "3bffffffffffffffff"),
    (-18446744073709551617, "c349010000000000000000"),
    (1267650600228229401496703205376, "c24d10000000000000000000000000"),
    (0.0, "f90000"),
    (-0.0, "f98000"),
    (1.0, "f93c00"),
    (1.5, "f93e00"),
    (-4.0, "f9c400"),
    (65504.0, "f97bff"),
    (65520.0, "fa477ff000"),
    (100000.0, "fa47c35000"),
    (1.1, "fb3ff199999999999a"),
    (5.960464477539063e-08, "f90001"),
    (6.103515625e-05, "f90400"),
    # 2.9802322387695312e-08 (2**-25), 1.401298464324817e-45 (2**-149) and 3.4028234663852886e38
    # (the largest float32) made at run time: a float constant in a .mpy file is text the interpreter
    # parses when it loads it, and MicroPython 1.25 (the 32-bit build) parses these 1 ulp off.
    (math.ldexp(1.0, -25), "fa33000000"),
    (math.ldexp(1.0, -149), "fa00000001"),
    (math.ldexp(0xFFFFFF, 104), "fa7f7fffff"),
    (1e300, "fb7e37e43c8800759c"),
    (INF, "f97c00"),
    (-INF, "f9fc00"),
    (True, "f5"),
    (False, "f4"),
    (None, "f6"),
    ("", "60"),
    ("a", "6161"),
    ("IETF", "6449455446"),
    ("ü", "62c3bc"),
    ("水", "63e6b0b4"),
    ("杭州市西湖区", "72e69dade5b79ee5b882e8a5bfe6b996e58cba"),
    (b"", "40"),
    (b"\x01\x02\x03\x04", "4401020304"),
    ([], "80"),
    ([1, 2, 3], "83010203"),
    ([1, [2, 3], [4, 5]], "8301820203820405"),
    ({}, "a0"),
    ({1: 2, 3: 4}, "a201020304"),
    ({"a": 1, "b": [2, 3]}, "a26161016162820203"),
    ({"a": "A", "b": "B"}, "a26161614161626142"),
]

# Inputs the decoder must reject with CBORError (and nothing else).
MALFORMED = [
    "",  # empty
    "18",  # truncated argument
    "1b00000000",  # truncated 8-byte argument
    "1c",  # reserved additional info
    "62c3",  # text shorter than its length
    "5bffffffffffffffff",  # hostile byte-string length
    "9bffffffffffffffff",  # hostile array length
    "bbffffffffffffffff",  # hostile map length
    "8301",  # array missing items
    "a101",  # map missing a value
    "62c328",  # invalid UTF-8
    "ff",  # lone break
    "0102",  # trailing bytes
    "f7",  # undefined: not in this protocol
    "f0",  # unassigned simple value
    "f820",  # two-byte simple value
    "c074323031332d30332d32315432303a30343a30305a",  # tag 0 (date): unsupported
    "c201",  # bignum tag over a non-byte-string
    "a1800102",  # unhashable key
    "a201020103",  # duplicate key
    "1f",  # indefinite unsigned int
    "5f4101",  # indefinite bytes without break
    "5f6101ff",  # indefinite bytes with a text chunk
    "9f01",  # indefinite array without break
    "bf01ff",  # indefinite map with a key and no value
    "f9",  # truncated half
]


def _same(a, b):
    if isinstance(a, float) and a != a:
        return isinstance(b, float) and b != b
    return a == b and type(a) is type(b)


def _encode(value):
    if isinstance(value, dict) and len(value) > 1:
        # MicroPython dicts do not keep insertion order: fix the order through pairs.
        buf = bytearray()
        cbor.enc_map_pairs(buf, sorted(value.items()), len(value))
        return bytes(buf)
    return cbor.dumps(value)


def test_encode_vectors():
    for value, hexs in VECTORS:
        got = binascii.hexlify(_encode(value)).decode()
        assert got == hexs, (value, got, hexs)


def test_decode_vectors():
    for value, hexs in VECTORS:
        got = cbor.loads(binascii.unhexlify(hexs))
        assert _same(got, value), (hexs, got, value)


def test_nan_is_canonical_half():
    assert cbor.dumps(float("nan")) == b"\xf9\x7e\x00"
    for hexs in ("f97e00", "fa7fc00000", "fb7ff8000000000000"):
        v = cbor.loads(binascii.unhexlify(hexs))
        assert v != v


def test_half_decode_without_struct_e():
    assert cbor.loads(b"\xf9\x3c\x00") == 1.0
    assert cbor.loads(b"\xf9\x00\x01") == 5.960464477539063e-08  # smallest subnormal
    assert cbor.loads(b"\xf9\x03\xff") == 6.097555160522461e-05  # largest subnormal
    assert cbor.loads(b"\xf9\xc4\x00") == -4.0
    assert cbor.loads(b"\xf9\x7c\x00") == INF
    v = cbor.loads(b"\xf9\x80\x00")
    assert v == 0.0 and cbor.dumps(v) == b"\xf9\x80\x00"  # -0.0 keeps its sign


def test_shortest_float_is_exact():
    # 0.1 is not exact in half or single: it must stay a double.
    assert cbor.dumps(0.1)[0] == 0xFB
    assert cbor.dumps(21.5) == b"\xf9\x4d\x60"
    assert cbor.dumps(-12.375)[0] == 0xF9
    assert cbor.dumps(3.0e-8)[0] == 0xFB


def test_indefinite_lengths():
    assert cbor.loads(binascii.unhexlify("5f42010243030405ff")) == b"\x01\x02\x03\x04\x05"
    assert cbor.loads(binascii.unhexlify("7f657374726561646d696e67ff")) == "streaming"
    assert cbor.loads(binascii.unhexlify("9f018202039f0405ffff")) == [1, [2, 3], [4, 5]]
    assert cbor.loads(binascii.unhexlify("bf61610161629f0203ffff")) == {"a": 1, "b": [2, 3]}


def test_malformed_raises_cbor_error_only():
    for hexs in MALFORMED:
        try:
            cbor.loads(binascii.unhexlify(hexs))
        except cbor.CBORError:
            continue
        raise AssertionError("accepted " + hexs)


def test_depth_and_item_limits():
    deep = b"\x81" * 20 + b"\x00"
    try:
        cbor.loads(deep)
        raise AssertionError("deep nesting accepted")
    except cbor.CBORError:
        pass
    assert cbor.loads(deep, 32) is not None
    many = b"\x98\x64" + b"\x00" * 100
    try:
        cbor.loads(many, 16, 50)
        raise AssertionError("item limit ignored")
    except cbor.CBORError:
        pass
    assert len(cbor.loads(many)) == 100


def test_writer_is_bounded():
    w = cbor.Writer(4)
    cbor.enc(w, [1, 2])
    assert bytes(w.view()) == b"\x82\x01\x02"
    try:
        cbor.enc(w, "ab")
        raise AssertionError("overflow accepted")
    except cbor.BufferFull:
        pass
    w.reset()
    cbor.enc_text(w, b"ab")  # pre-encoded text
    assert bytes(w.view()) == b"\x62ab"


def test_headers_and_pairs():
    buf = bytearray()
    cbor.enc_head(buf, 4, 2)  # array(2)
    cbor.enc_map_pairs(buf, ((0, 1), (2, "x")), 2)
    cbor.enc_head(buf, 5, 0)  # map(0)
    assert cbor.loads(buf) == [{0: 1, 2: "x"}, {}]


def test_unsupported_type():
    try:
        cbor.dumps(object())
        raise AssertionError("object encoded")
    except cbor.CBORError:
        pass
