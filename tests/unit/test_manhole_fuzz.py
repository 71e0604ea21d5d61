"""Manhole codec under random and mutated payloads: never raise, never invent, round-trip exactly."""

from __future__ import annotations

import json
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from devices.common.errors import DecodeError
from devices.manhole import codec, sim_encode, vectors

GOOD = bytes.fromhex(vectors.VECTORS[0][1])
SETTINGS = settings(max_examples=300, deadline=None)
RANGES = {
    0: (0.0, 180.0),
    3: (0.0, 1000.0),
    4: (0.0, 1000000.0),
    5: (0.0, 2000.0),
    6: (0, 5000),
    7: (-150, 0),
}


def _check(buf: bytes) -> None:
    n, r = codec.decode(buf)
    if not buf:
        assert (n, r) == (0, None)
        return
    assert n == len(buf)
    if isinstance(r, DecodeError):
        return
    assert isinstance(r, tuple)
    dev, fields = r
    assert isinstance(dev, str) and 0 < len(dev) <= sim_encode.MAX_ID_CHARS
    assert len(fields) == len(codec.FIELDS)
    assert type(fields[1]) is bool and type(fields[2]) is bool
    for i, (lo, hi) in RANGES.items():
        v = fields[i]
        if v is None:
            assert i not in (0, 6)
            continue
        assert type(v) is (int if i in (6, 7) else float)
        assert math.isfinite(v) and lo <= v <= hi


@SETTINGS
@given(st.binary(max_size=1100))
def test_random_bytes(data: bytes) -> None:
    _check(data)


@SETTINGS
@given(st.data())
def test_mutated_payload(data: st.DataObject) -> None:
    buf = bytearray(GOOD)
    for _ in range(data.draw(st.integers(1, 5))):
        buf[data.draw(st.integers(0, len(buf) - 1))] = data.draw(st.integers(0, 255))
    _check(bytes(buf))


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@SETTINGS
@given(st.dictionaries(st.sampled_from(["devId", "tilt", "open", "displaced", "water_cm", "ch4_ppm",
                                        "h2s_ppm", "bat_mv", "rssi", "ts"]), JSONISH, max_size=10))
def test_wrong_types_and_values(obj: dict[str, object]) -> None:
    _check(json.dumps(obj).encode())


def _q(lo: float, hi: float, d: int) -> st.SearchStrategy[float]:
    scale = 10**d
    return st.integers(int(lo * scale), int(hi * scale)).map(lambda n: n / scale)


@SETTINGS
@given(
    st.text(min_size=1, max_size=sim_encode.MAX_ID_CHARS),
    st.tuples(
        _q(0, 180, 1),
        st.booleans(),
        st.booleans(),
        st.none() | _q(0, 1000, 1),
        st.none() | _q(0, 1000000, 1),
        st.none() | _q(0, 2000, 2),
        st.integers(0, 5000),
        st.none() | st.integers(-150, 0),
    ),
)
def test_encode_decode_round_trip(dev: str, fields: tuple[object, ...]) -> None:
    n, r = codec.decode(sim_encode.encode(dev, fields, ts=1764140000))
    assert n > 0
    assert r == (dev, fields)
    assert [type(x) for x in r[1]] == [type(x) for x in fields]
