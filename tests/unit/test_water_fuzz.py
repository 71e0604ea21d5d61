"""Water codec and Modbus RTU parser under random and mutated input: never raise, never invent."""

from __future__ import annotations

import math
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from devices.common import modbus
from devices.common.errors import DecodeError
from devices.water import codec, vectors

GOOD = bytes.fromhex(vectors.VECTORS[0][1])
FRAME = modbus.build_response(1, 3, GOOD)
SETTINGS = settings(max_examples=300, deadline=None)


def _check_reading(result: object) -> None:
    assert isinstance(result, tuple)
    fields = result[1]
    assert len(fields) == len(codec.FIELDS)
    for v, (lo, hi) in zip(fields, codec.RANGES, strict=True):
        assert type(v) is float and math.isfinite(v) and lo <= v <= hi
        assert v == 0.0 or abs(v) >= 1e-30


def _check(buf: bytes, start: int = 0, end: int = -1, word_order: int = codec.WORD_ABCD) -> None:
    n, r = codec.decode(buf, start, end, word_order=word_order)
    stop = len(buf) if end < 0 else end
    assert 0 <= n <= stop - start
    if n == 0:
        assert r is None
    elif not isinstance(r, DecodeError):
        assert n == codec.DATA_LEN
        _check_reading(r)


@SETTINGS
@given(st.binary(max_size=100), st.sampled_from([codec.WORD_ABCD, codec.WORD_CDAB]))
def test_random_bytes(data: bytes, wo: int) -> None:
    _check(data, word_order=wo)


@SETTINGS
@given(st.data())
def test_mutated_block(data: st.DataObject) -> None:
    buf = bytearray(GOOD)
    for _ in range(data.draw(st.integers(1, 6))):
        buf[data.draw(st.integers(0, len(buf) - 1))] = data.draw(st.integers(0, 255))
    start = data.draw(st.integers(0, 4))
    _check(bytes(buf), start, len(buf))


def _f32(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.floats(lo, hi, width=32).filter(lambda v: v == 0.0 or abs(v) >= 1e-30)


@SETTINGS
@given(st.tuples(*(_f32(lo, hi) for lo, hi in codec.RANGES)), st.sampled_from([0, 1]))
def test_encode_decode_round_trip(fields: tuple[float, ...], wo: int) -> None:
    fields = tuple(0.0 if v == 0.0 else v for v in fields)  # -0.0 == 0.0, fine either way
    n, r = codec.decode(codec.encode(3, fields, wo), sensor_id=3, word_order=wo)
    assert n == 36 and r == (3, fields)


@SETTINGS
@given(st.floats(allow_nan=True, allow_infinity=True, width=32), st.integers(0, 8))
def test_every_float_is_checked(v: float, i: int) -> None:
    buf = bytearray(GOOD)
    struct.pack_into(">f", buf, 4 * i, v)
    n, r = codec.decode(buf)
    assert n == 36
    lo, hi = codec.RANGES[i]
    if math.isfinite(v) and lo <= v <= hi and (v == 0.0 or abs(v) >= 1e-30):
        _check_reading(r)
    else:
        assert isinstance(r, DecodeError)


@SETTINGS
@given(st.binary(max_size=300), st.integers(1, 247), st.sampled_from([3, 4]), st.integers(1, 125))
def test_rtu_parser_random(data: bytes, slave: int, fn: int, count: int) -> None:
    n, r = modbus.parse_response(data, 0, len(data), slave, fn, count)
    assert 0 <= n <= len(data)
    if n == 0:
        assert r is None
    elif isinstance(r, int):
        assert n == 5 + 2 * count and r == 3


@SETTINGS
@given(st.data())
def test_rtu_parser_mutated(data: st.DataObject) -> None:
    buf = bytearray(FRAME)
    flips = data.draw(st.integers(1, 4))
    for _ in range(flips):
        buf[data.draw(st.integers(0, len(buf) - 1))] ^= 1 << data.draw(st.integers(0, 7))
    n, r = modbus.parse_response(buf, 0, len(buf), 1, 3, 18)
    assert 0 <= n <= len(buf)
    if isinstance(r, int):
        # CRC-16 detects every error of up to 3 flipped bits in a frame this short
        assert bytes(buf) == FRAME or flips > 3
