"""Register words to values (devices.common.regmap): every type, both word orders, negatives,
scale and offset, and a compiled map decoded from one answer. The same vectors are checked
against pymodbus' own conversion in tests/unit/test_regmap_pymodbus.py."""

from devices.common import regmap
from devices.water.codec import WORD_ABCD, WORD_CDAB
from edge import config

# Type codes: the index of the type's name in edge.config.TYPES (pinned by test_type_codes).
T_FLOAT32, T_INT16, T_UINT16, T_INT32, T_UINT32 = 0, 1, 2, 3, 4

# (name, register bytes hex, type, word order, (mul, div, off), expected float)
VECTORS = [
    ("float32 ABCD 7.25", "40e80000", T_FLOAT32, WORD_ABCD, (1, 1, 0), 7.25),
    ("float32 CDAB 7.25", "000040e8", T_FLOAT32, WORD_CDAB, (1, 1, 0), 7.25),
    ("float32 ABCD -120", "c2f00000", T_FLOAT32, WORD_ABCD, (1, 1, 0), -120.0),
    ("float32 CDAB -2.5", "0000c020", T_FLOAT32, WORD_CDAB, (1, 1, 0), -2.5),
    ("float32 zero", "00000000", T_FLOAT32, WORD_ABCD, (1, 1, 0), 0.0),
    ("int16 positive", "02d5", T_INT16, WORD_ABCD, (1, 1, 0), 725.0),
    ("int16 -1", "ffff", T_INT16, WORD_ABCD, (1, 1, 0), -1.0),
    ("int16 most negative", "8000", T_INT16, WORD_ABCD, (1, 1, 0), -32768.0),
    ("int16 -2.5 degC x0.1", "ffe7", T_INT16, WORD_ABCD, (1, 10, 0), -2.5),
    ("int16 word order is moot", "ffe7", T_INT16, WORD_CDAB, (1, 10, 0), -2.5),
    ("uint16 0xffff is not negative", "ffff", T_UINT16, WORD_ABCD, (1, 1, 0), 65535.0),
    ("uint16 pH x0.01", "02d5", T_UINT16, WORD_ABCD, (1, 100, 0), 7.25),
    ("uint16 x0.1 is exact", "0003", T_UINT16, WORD_ABCD, (1, 10, 0), 0.3),
    ("uint16 scale 10", "002d", T_UINT16, WORD_ABCD, (10, 1, 0), 450.0),
    ("uint16 mm with offset -0.5 m", "05dc", T_UINT16, WORD_ABCD, (1, 1000, -0.5), 1.0),
    ("uint16 scale 0.5 plus offset 40", "0010", T_UINT16, WORD_ABCD, (1, 2, 40.0), 48.0),
    ("int32 ABCD", "0001e240", T_INT32, WORD_ABCD, (1, 1, 0), 123456.0),
    ("int32 CDAB", "e2400001", T_INT32, WORD_CDAB, (1, 1, 0), 123456.0),
    ("int32 ABCD -120 m3/h in L/h", "fffe2b40", T_INT32, WORD_ABCD, (1, 1000, 0), -120.0),
    ("int32 CDAB -120 m3/h in L/h", "2b40fffe", T_INT32, WORD_CDAB, (1, 1000, 0), -120.0),
    ("int32 most negative", "80000000", T_INT32, WORD_ABCD, (1, 1, 0), -2147483648.0),
    ("int32 -1", "ffffffff", T_INT32, WORD_ABCD, (1, 1, 0), -1.0),
    ("uint32 all ones", "ffffffff", T_UINT32, WORD_ABCD, (1, 1, 0), 4294967295.0),
    ("uint32 CDAB x0.01", "d4c00001", T_UINT32, WORD_CDAB, (1, 100, 0), 1200.0),
    ("uint32 ABCD mm with offset", "000005dc", T_UINT32, WORD_ABCD, (1, 1000, -0.5), 1.0),
]


def test_vectors():
    for name, hx, typ, order, (mul, div, off), want in VECTORS:
        b = bytes.fromhex(hx)
        got = regmap.value(b, 0, typ, order, mul, div, off)
        assert type(got) is float, (name, got)
        assert got == want, (name, got, want)
        # at an offset inside a larger answer, and from a memoryview as the master hands it over
        buf = bytearray(b"\xaa" * 3) + b + b"\x55"
        assert regmap.value(memoryview(buf), 3, typ, order, mul, div, off) == want, name


def test_unscaled_defaults():
    assert regmap.value(bytes.fromhex("ffe7"), 0, T_INT16) == -25.0
    assert regmap.value(bytes.fromhex("40e80000"), 0, T_FLOAT32) == 7.25


def test_type_codes():
    assert config.TYPES == ("float32", "int16", "uint16", "int32", "uint32")
    assert config.WIDTHS == (2, 1, 1, 2, 2)
    assert (WORD_ABCD, WORD_CDAB) == (0, 1)


def test_decode_compiled_map_from_one_answer():
    # A read of registers 10..15: int16 temp x0.1 at 10, (11 unmapped), uint16 pH x0.01 at 12,
    # int32 CDAB flow in L/h at 13..14, (15 unmapped); then a second read: float32 ABCD DO.
    data = bytes.fromhex("00b9" "1234" "02d5" "2b40fffe" "0000")
    codes = bytes([8, 0, T_INT16, 0,  0, 4, T_UINT16, 0,  7, 6, T_INT32, WORD_CDAB,  4, 0, T_FLOAT32, 0])
    scales = [1, 10, 0,  1, 100, 0,  1, 1000, 0,  1, 1, 0]
    out = [None] * 9
    assert regmap.decode(data, 0, codes, scales, 0, 3, out) == 3
    assert out == [7.25, None, None, None, None, None, None, -120.0, 18.5]
    assert regmap.decode(bytes.fromhex("41040000"), 0, codes, scales, 3, 4, out) == 4
    assert out[4] == 8.25
    # without scales: every entry plain
    out = [None] * 9
    codes = bytes([0, 0, T_FLOAT32, WORD_CDAB, 1, 4, T_UINT16, 0])
    regmap.decode(bytes.fromhex("000040e8" "0011"), 0, codes, None, 0, 2, out)
    assert out[:2] == [7.25, 17.0]
