"""The collector's hot path (`Validator.batch_lines`) judges and writes exactly what the general path
(`Validator.batch` + `lineproto.encode`) does: the same lines byte for byte, the same rejects with the
same reasons, for good, unusual and hostile readings alike."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector import lineproto, validate
from collector.config import DecodeConfig, GatewayInfo
from collector.decode import Batch
from collector.validate import FieldSpec as F
from collector.validate import Kind, Reject, Validator, load_kinds

NOW_MS = 1_780_000_000_000
KINDS = {
    1: Kind(1, "parking", (F("occupied", bool), F("event", int), F("seq", int), F("mag_x", float))),
    4: Kind(
        4, "thermometer", (F("temp_c", float, -50.0, 60.0), F("skin", bool), F("battery_mv", int, 0, 5000))
    ),
}
GATEWAYS = {"gw-1": GatewayInfo(site="wulin p3", district="xi,hu")}  # tags that need escaping


@pytest.fixture(autouse=True, scope="module", params=["as imported", "pure Python"])
def hotpath(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every test twice: with the hot path's inner loops as the collector imported them (the mypyc
    build of collector/hotpath.py when scripts/setup made one) and with their source run as Python."""
    active = validate.readings_lines
    if request.param == "pure Python":
        validate.readings_lines = validate.load_pure_hotpath().readings_lines
    try:
        yield request.param
    finally:
        validate.readings_lines = active


def general(v: Validator, gw: str, batch: Batch) -> tuple[list[str], list[tuple[int, Reject]]]:
    points, rejects = v.batch(gw, batch, NOW_MS)
    body, n, bad = lineproto.encode(points)
    assert not bad  # the validator lets through nothing line protocol cannot carry
    return (body.decode().split("\n") if n else []), rejects


def same(v: Validator, gw: str, readings: list[object], t0: int = NOW_MS) -> list[str]:
    batch = Batch(1, 1, 1, t0, readings)
    fast = v.batch_lines(gw, batch, NOW_MS)
    assert fast == general(v, gw, batch)
    return fast[0]


def test_good_readings_byte_for_byte() -> None:
    v = Validator(DecodeConfig(), KINDS, GATEWAYS)
    lines = same(
        v,
        "gw-1",
        [
            ["P 1", 1, -5, {0: True, 1: 3, 2: -7, 3: 1.0}],
            ["T=1", 4, 0, {0: 36.6, 1: False, 2: 3600}],
            ["P 1", 1, -4, {3: 1e16, 0: False}],  # out of index order: sorted like the general path
        ],
    )
    assert lines[0] == (
        "parking,district=xi\\,hu,gw=gw-1,sensor=P\\ 1,site=wulin\\ p3 "
        f"occupied=true,event=3i,seq=-7i,mag_x=1 {NOW_MS - 5}"
    )
    assert lines[2].split(" ")[-2] == "occupied=false,mag_x=1e+16"


def test_unusual_and_bad_readings_take_the_general_verdict() -> None:
    v = Validator(DecodeConfig(max_string_len=8), KINDS, GATEWAYS)
    same(
        v,
        "gw-1",
        [
            ["P-1", 1, 0, {0: "text"}],  # a text value: general path, kept
            ["P-1", 1, 1, {0: "much too long a text"}],
            ["P-1", 1, 2, {0: math.nan}],
            ["P-1", 1, 3, {0: 1 << 63}],
            ["P-1", 1, 4, {9: 1}],
            ["P-1", 1, 5, {}],
            ["P-1", 1, 6, {0: b"bytes"}],
            ["P-1", 1, 7, {0: None}],
            ["P-1", 9, 8, {0: 1}],
            ["bad\nid", 1, 9, {0: 1}],
            [["list"], 1, 10, {0: 1}],
            ["P-1", [1], 11, {0: 1}],
            ["P-1", 1, 10**12, {0: 1}],  # in the future
            ["P-1", 1, -(10**13), {0: 1}],  # before min_time
            ["P-1", 1, 1.5, {0: 1}],
            ["P-1", 1, 12, [0, 1]],
            ["P-1", 1, 13],
            "not a reading",
            ["P-1", True, 14, {0: 1}],
            ["P-1", 1, 15, {True: 1}],
        ],
    )


def test_int64_edges_judged_alike() -> None:
    """2**63 and -2**63 - 1 are refused by both paths, the int64 extremes written by both."""
    v = Validator(DecodeConfig(), KINDS, GATEWAYS)
    edges = [(1 << 63) - 1, 1 << 63, -(1 << 63), -(1 << 63) - 1]
    lines = same(v, "gw-1", [["P-1", 1, i, {1: x}] for i, x in enumerate(edges)])
    assert len(lines) == 2


def test_alarm_batches_use_the_general_path() -> None:
    v = Validator(DecodeConfig(), KINDS, GATEWAYS)
    batch = Batch(1, 1, 1, NOW_MS, [["T-1", 4, 0, {0: 39.5}]], alarm="fever")
    lines, rejects = v.batch_lines("gw-1", batch, NOW_MS)
    assert not rejects and lines[0].startswith("alarm,code=fever,district=xi\\,hu,gw=gw-1,kind=thermometer,")


def test_real_kind_table() -> None:
    v = Validator(DecodeConfig(), load_kinds(), {})
    same(v, "gw-9", [["MH-1", 2, 0, {0: 0.5, 1: False, 6: 3600}], ["W-1", 3, 1, {0: 7.25}]])


values = st.one_of(
    st.booleans(),
    st.integers(min_value=-(1 << 64), max_value=1 << 64),
    st.sampled_from([(1 << 63) - 1, 1 << 63, (1 << 63) + 1, -(1 << 63), -(1 << 63) - 1]),  # int64's edges
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=10),
    st.none(),
    st.binary(max_size=3),
)
readings = st.one_of(
    st.lists(
        st.one_of(st.text(max_size=6), st.integers(0, 5), st.none()),
        min_size=0,
        max_size=5,
    ),
    st.tuples(
        st.one_of(st.sampled_from(["P-1", "T-2", "x y", "a,b", "c=d"]), st.text(max_size=4)),
        st.one_of(st.sampled_from([1, 4, 2]), st.integers(-2, 9), st.booleans()),
        st.one_of(st.integers(-(10**13), 10**12), st.floats(allow_nan=False)),
        st.one_of(
            st.dictionaries(st.one_of(st.integers(-1, 5), st.booleans()), values, max_size=5), st.none()
        ),
    ).map(list),
)


@settings(max_examples=300, deadline=None)
@given(gw=st.sampled_from(["gw-1", "gw-2", "g w"]), items=st.lists(readings, max_size=8))
def test_fast_path_equals_general_path(gw: str, items: list[object]) -> None:
    same(Validator(DecodeConfig(), KINDS, GATEWAYS), gw, items)


real_readings = st.tuples(
    st.sampled_from(["P-1", "T-2", "W-3", "M-4", "x y", "T-\u200b2"]),
    st.sampled_from([1, 2, 3, 4]),
    st.integers(-1000, 1000),
    st.dictionaries(
        st.integers(0, 9),
        st.one_of(
            st.booleans(),
            st.integers(-10_000, 300_000),
            st.floats(-1000.0, 300_000.0),
            st.sampled_from([36.6, 7.25, 0.0, -0.0, 45.0, 45.000001, math.nan]),
            st.text(max_size=3),
        ),
        max_size=9,
    ),
).map(list)


@settings(max_examples=300, deadline=None)
@given(items=st.lists(real_readings, max_size=10), bound=st.integers(1, 4))
def test_fast_path_equals_general_path_on_the_registry(items: list[object], bound: int) -> None:
    """The real kinds' types and ranges, and a small sensor bound, judged alike by both paths."""
    config = DecodeConfig(max_sensors_per_gateway=bound)
    fast = Validator(config, load_kinds(), GATEWAYS)
    slow = Validator(config, load_kinds(), GATEWAYS)
    batch = Batch(1, 1, 1, NOW_MS, items)
    assert fast.batch_lines("gw-1", batch, NOW_MS) == general(slow, "gw-1", batch)
