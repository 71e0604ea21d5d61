"""Line protocol: exact bytes for known points, and agreement with influxdb-client's serializer."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from influxdb_client import Point as RefPoint
from influxdb_client import WritePrecision

from collector import lineproto
from collector.lineproto import LineProtocolError, encode, line
from collector.model import Point


def ref_line(p: Point) -> bytes:
    """influxdb-client's rendering of the same point (it sorts fields; we give them sorted)."""
    r = RefPoint(p.measurement)
    for k, v in p.tags:
        r.tag(k, v)
    for k, fv in p.fields:
        r.field(k, fv)
    r.time(p.ts_ms, WritePrecision.MS)
    return r.to_line_protocol().encode()


def test_escaping_of_every_element() -> None:
    p = Point(
        "my meas,x",
        (("a b", "c,d"), ("e=f", "g h=i")),
        (("s p", 'say "hi" \\o/'), ("f", 1.5), ("i", -3), ("b", False)),
        1700000000123,
    )
    assert line(p) == (
        b"my\\ meas\\,x,a\\ b=c\\,d,e\\=f=g\\ h\\=i "
        b's\\ p="say \\"hi\\" \\\\o/",f=1.5,i=-3i,b=false 1700000000123'
    )


def test_value_types_are_kept_apart() -> None:
    p = Point("m", (), (("t", True), ("one", 1), ("onef", 1.0), ("neg0", -0.0)), 0)
    assert line(p) == b"m t=true,one=1i,onef=1,neg0=-0 0"


def test_float_formatting_matches_repr_without_trailing_dot_zero() -> None:
    cases = [(0.1, b"0.1"), (1e21, b"1e+21"), (1.5e-7, b"1.5e-07"), (-2.0, b"-2"), (12345678.0, b"12345678")]
    for v, text in cases:
        assert line(Point("m", (), (("v", v),), 1)) == b"m v=" + text + b" 1"


def test_utf8_names_and_values() -> None:
    p = Point("停车", (("区", "西湖 区"),), (("状态", "空闲"),), 5)
    assert line(p) == "停车,区=西湖\\ 区 状态=\"空闲\" 5".encode()


@pytest.mark.parametrize(
    "point",
    [
        Point("m", (("k", "a\nb"),), (("v", 1),), 1),  # newline in a tag value
        Point("m", (("k", "a\\"),), (("v", 1),), 1),  # trailing backslash eats the separator
        Point("m", (("k", "a\\,b"),), (("v", 1),), 1),  # backslash before an escaped comma
        Point("m", (("k", "a\\\\b"),), (("v", 1),), 1),  # servers disagree on a double backslash
        Point("m", (("k", ""),), (("v", 1),), 1),  # empty tag value
        Point("m\tx", (), (("v", 1),), 1),  # control character in the measurement
        Point("#m", (), (("v", 1),), 1),  # would be a comment line
        Point("", (), (("v", 1),), 1),
        Point("m", (), (), 1),  # no fields
        Point("m", (), (("", 1),), 1),
        Point("m", (), (("v", math.nan),), 1),
        Point("m", (), (("v", math.inf),), 1),
        Point("m", (), (("v", -math.inf),), 1),
        Point("m", (), (("v", 2**63),), 1),
        Point("m", (), (("v", -(2**63) - 1),), 1),
        Point("m", (), (("v", "line\nbreak"),), 1),
        Point("m", (), (("v", b"bytes"),), 1),  # type: ignore[arg-type]
        Point("m", (), (("v", None),), 1),  # type: ignore[arg-type]
        Point("m", (), (("v", 1),), 1.5),  # type: ignore[arg-type]
        Point("m", (("k", 1),), (("v", 1),), 1),  # type: ignore[arg-type]
        Point("m", ((2, "x"),), (("v", 1),), 1),  # type: ignore[arg-type]
        Point("m", (), ((3, 1),), 1),  # type: ignore[arg-type]
        Point(None, (), (("v", 1),), 1),  # type: ignore[arg-type]
        Point("m", (("k", "\ud800"),), (("v", 1),), 1),  # a lone surrogate has no UTF-8
        Point("m", (), (("v", "x\udfff"),), 1),
    ],
)
def test_unrepresentable_points_raise_a_typed_error(point: Point) -> None:
    with pytest.raises(LineProtocolError):
        line(point)


def test_int64_bounds_are_accepted() -> None:
    p = Point("m", (), (("lo", -(2**63)), ("hi", 2**63 - 1)), 1)
    assert line(p) == b"m lo=-9223372036854775808i,hi=9223372036854775807i 1"


def test_encode_keeps_good_points_and_reports_bad_ones() -> None:
    good1 = Point("m", (("s", "1"),), (("v", 1.0),), 1)
    bad = Point("m", (("s", "2"),), (("v", math.nan),), 2)
    good2 = Point("m", (("s", "3"),), (("v", 3),), 3)
    body, n, errors = encode([good1, bad, good2])
    assert body == b"m,s=1 v=1 1\nm,s=3 v=3i 3"
    assert n == 2
    assert [(p, type(e)) for p, e in errors] == [(bad, LineProtocolError)]
    assert encode([]) == (b"", 0, [])
    surrogate = Point("m", (("s", "\ud800"),), (("v", 1),), 4)
    body, n, errors = encode([good1, surrogate, good2])
    assert (body, n, [p for p, _ in errors]) == (b"m,s=1 v=1 1\nm,s=3 v=3i 3", 2, [surrogate])


def test_subclassed_values_take_the_slow_path_with_the_same_result() -> None:
    class MyFloat(float):
        pass

    assert line(Point("m", (), (("v", MyFloat(2.5)),), 1)) == b"m v=2.5 1"


def test_series_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lineproto, "_CACHE_MAX", 4)
    lineproto._series_cache.clear()
    for i in range(10):
        assert line(Point("m", (("s", str(i)),), (("v", 1),), 1)) == f"m,s={i} v=1i 1".encode()
    assert len(lineproto._series_cache) <= 4


# Mostly text that needs escaping but is representable (a backslash only before a letter); one
# name in ten is any text at all, including the characters we refuse.
_safe = st.lists(st.sampled_from([*"ab ,=\"'#停车é", "\\x"]), min_size=1, max_size=8).map("".join)
_any = st.text(alphabet=st.sampled_from(list("ab ,=\"'\\#\n\t\r停车é")) | st.characters(), max_size=8)
names = st.integers(0, 9).flatmap(lambda k: _any if k == 0 else _safe)
values = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=10),
)


@st.composite
def points(draw: st.DrawFn) -> Point:
    tags = draw(st.dictionaries(names, names, max_size=3))
    fields = draw(st.dictionaries(names, values, min_size=1, max_size=4))
    return Point(
        draw(names),
        tuple(sorted(tags.items())),
        tuple(sorted(fields.items())),
        draw(st.integers(min_value=0, max_value=2**50)),
    )


@settings(max_examples=400, deadline=None)
@given(points())
def test_same_line_as_influxdb_client_or_a_typed_refusal(p: Point) -> None:
    try:
        ours = line(p)
    except LineProtocolError:
        return  # the client would write a lossy or broken line here: see the module docstring
    assert ours == ref_line(p)
    assert b"\n" not in ours


@settings(max_examples=100, deadline=None)
@given(st.lists(points(), max_size=6))
def test_encode_is_the_join_of_line(ps: list[Point]) -> None:
    body, n, bad = encode(ps)
    good = []
    for p in ps:
        try:
            good.append(line(p))
        except LineProtocolError:
            continue
    assert body == b"\n".join(good)
    assert n == len(good) == len(ps) - len(bad)
