"""Validate stage: each reading becomes a point or a reject with a reason; a bad reading never costs
its neighbours; types stay apart; ids and tags that would break line protocol are refused."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector import lineproto
from collector.config import DecodeConfig, GatewayInfo
from collector.decode import Batch
from collector.model import Point
from collector.validate import Kind, Reject, Validator, check_text, load_kinds

NOW_MS = 1_780_000_000_000
KINDS = {
    1: Kind(1, "parking", ("occupied", "event", "seq", "mag_x")),
    4: Kind(4, "thermometer", ("temp_c", "skin", "battery_mv")),
}
GATEWAYS = {"gw-1": GatewayInfo(site="wulin-p3", district="xihu")}


def v() -> Validator:
    return Validator(DecodeConfig(), KINDS, GATEWAYS)


def test_good_reading_becomes_a_point() -> None:
    p = v().reading("gw-1", NOW_MS, ["T-1", 4, -500, {2: 3600, 0: 36.6, 1: True}], NOW_MS)
    assert p == Point(
        "thermometer",
        (("district", "xihu"), ("gw", "gw-1"), ("sensor", "T-1"), ("site", "wulin-p3")),
        (("temp_c", 36.6), ("skin", True), ("battery_mv", 3600)),
        NOW_MS - 500,
    )
    assert isinstance(p, Point)
    assert lineproto.line(p)  # representable


def test_types_stay_apart() -> None:
    p = v().reading("gw-9", NOW_MS, ["P-1", 1, 0, {0: True, 2: 1, 3: 1.0}], NOW_MS)
    assert isinstance(p, Point)
    values = dict(p.fields)
    assert type(values["occupied"]) is bool and type(values["seq"]) is int and type(values["mag_x"]) is float
    assert dict(p.tags) == {"gw": "gw-9", "sensor": "P-1"}  # unregistered gateway: no site/district


def test_alarm_point() -> None:
    p = v().reading("gw-1", NOW_MS, ["T-1", 4, 0, {0: 39.2}], NOW_MS, alarm="fever")
    assert isinstance(p, Point)
    assert p.measurement == "alarm"
    assert dict(p.tags) == {
        "code": "fever",
        "district": "xihu",
        "gw": "gw-1",
        "kind": "thermometer",
        "sensor": "T-1",
        "site": "wulin-p3",
    }


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        ("nope", "bad_reading"),
        (["T-1", 4, 0], "bad_reading"),
        (["T-1", 4, 0, [36.6]], "bad_reading"),
        (["T-1", "4", 0, {0: 1.0}], "bad_reading"),
        (["T-1", 4, 0.5, {0: 1.0}], "bad_reading"),
        (["T-1", 9, 0, {0: 1.0}], "unknown_kind"),
        (["T-1", 4, 0, {}], "no_fields"),
        (["T-1", 4, 0, {3: 1.0}], "bad_field"),
        (["T-1", 4, 0, {-1: 1.0}], "bad_field"),
        (["T-1", 4, 0, {"temp_c": 1.0}], "bad_field"),
        (["T-1", 4, 0, {0: math.nan}], "not_finite"),
        (["T-1", 4, 0, {0: math.inf}], "not_finite"),
        (["T-1", 4, 0, {0: -math.inf}], "not_finite"),
        (["T-1", 4, 0, {2: 1 << 63}], "out_of_range"),
        (["T-1", 4, 0, {2: -(1 << 63) - 1}], "out_of_range"),
        (["T-1", 4, 0, {0: None}], "bad_type"),
        (["T-1", 4, 0, {0: b"\x01"}], "bad_type"),
        (["T-1", 4, 0, {0: [1]}], "bad_type"),
        (["T-1", 4, 0, {0: "a\nb"}], "bad_string"),
        (["T-1", 4, 0, {0: "x" * 257}], "bad_string"),
        (["T-1", 4, 6 * 60_000, {0: 1.0}], "time_in_future"),
        (["T-1", 4, -NOW_MS + 1_577_836_799_999, {0: 1.0}], "time_too_old"),
        ([1, 4, 0, {0: 1.0}], "bad_sensor_id"),
        (["", 4, 0, {0: 1.0}], "bad_sensor_id"),
        (["T-1\nweather,gw=x t=1", 4, 0, {0: 1.0}], "bad_sensor_id"),
        (["T\r1", 4, 0, {0: 1.0}], "bad_sensor_id"),
        (["T\x001", 4, 0, {0: 1.0}], "bad_sensor_id"),
        (["T\u20281", 4, 0, {0: 1.0}], "bad_sensor_id"),
        (["T-1\\", 4, 0, {0: 1.0}], "bad_sensor_id"),
        (["T-1 ", 4, 0, {0: 1.0}], "bad_sensor_id"),
        (["T" * 65, 4, 0, {0: 1.0}], "bad_sensor_id"),
    ],
)
def test_rejects(item: object, reason: str) -> None:
    r = v().reading("gw-1", NOW_MS, item, NOW_MS)
    assert isinstance(r, Reject)
    assert r.reason == reason
    assert r.detail


def test_time_bounds_are_inclusive() -> None:
    val = v()
    assert isinstance(val.reading("g", NOW_MS, ["a", 4, 5 * 60_000, {0: 1.0}], NOW_MS), Point)
    assert isinstance(val.reading("g", 1_577_836_800_000, ["a", 4, 0, {0: 1.0}], NOW_MS), Point)


def test_ids_that_line_protocol_escapes_are_kept() -> None:
    """Commas, spaces inside, '=' and Chinese are escaped by line protocol, not refused."""
    for sensor in ("停车位 A,3=西", "a=b", "x,y"):
        p = v().reading("gw-1", NOW_MS, [sensor, 1, 0, {0: True}], NOW_MS)
        assert isinstance(p, Point), sensor
        assert b"\n" not in lineproto.line(p)


def test_partly_bad_batch_keeps_the_good_readings() -> None:
    readings: list[object] = [
        ["P-1", 1, 0, {0: True}],
        ["P-2", 1, 0, {0: math.nan}],
        ["P-3", 77, 0, {0: True}],
        ["P-4", 1, 10, {0: False, 2: 5}],
    ]
    points, rejects = v().batch("gw-1", Batch(1, 1, 1, NOW_MS, readings), NOW_MS)
    assert [dict(p.tags)["sensor"] for p in points] == ["P-1", "P-4"]
    assert [(i, r.reason) for i, r in rejects] == [(1, "not_finite"), (2, "unknown_kind")]


def test_gateway_id() -> None:
    val = v()
    assert val.check_gateway("gw-1") is None
    assert val.check_gateway("网关-1") is None
    for bad in ("g\nw", "g" * 65, "g\\", " g"):
        r = val.check_gateway(bad)
        assert r is not None and r.reason == "bad_gateway_id"


def test_status_point_like_the_edge_sends_it() -> None:
    status = {
        "v": 1,
        "state": "online",
        "fw": "0.3.1",
        "boot": 7,
        "uptime_s": 3600,
        "heap_free": None,
        "spool_bytes": 0,
        "spool_records": 0,
        "spool_dropped": 0,
        "clock_synced": True,
        "ts": NOW_MS - 1000,
        "errors": {"P-1": {"bad_crc": 2, "timeout": 1}, "温-2": {"bad_value": 4}},
    }
    points, rejects = v().status("gw-1", status, NOW_MS)
    assert rejects == []
    head, *errors = points
    assert head.measurement == "gateway_status" and head.ts_ms == NOW_MS - 1000
    fields = dict(head.fields)
    assert fields["state"] == "online" and fields["clock_synced"] is True and fields["errors_total"] == 7
    assert "heap_free" not in fields and "ts" not in fields
    assert sorted((dict(p.tags)["sensor"], dict(p.tags)["code"], p.fields) for p in errors) == [
        ("P-1", "bad_crc", (("count", 2),)),
        ("P-1", "timeout", (("count", 1),)),
        ("温-2", "bad_value", (("count", 4),)),
    ]


def test_status_unsynced_clock_and_bad_entries() -> None:
    points, rejects = v().status("gw-1", {"state": "offline", "ts": None, "x y": 1, "n": math.nan}, NOW_MS)
    assert points[0].ts_ms == NOW_MS and dict(points[0].fields) == {"state": "offline"}
    assert [r.reason for r in rejects] == ["bad_status", "bad_status"]
    points, rejects = v().status("gw-1", {"ts": 5}, NOW_MS)
    assert points == [] and len(rejects) == 2


def test_check_text() -> None:
    assert check_text("ok", 8) is None
    assert check_text("", 8, is_id=False) is None
    assert check_text("a\\b", 8, is_id=False) is None
    assert check_text("a\\b", 8) == "backslash"


def test_real_kind_table() -> None:
    kinds = load_kinds()
    for code, kind in kinds.items():
        assert (
            kind.code == code
            and kind.fields
            and {"parking": 1, "manhole": 2, "water": 3, "thermometer": 4}[kind.name] == code
        )


scalars = st.one_of(
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=300),
    st.none(),
    st.binary(max_size=4),
    st.lists(st.integers(), max_size=2),
)
items = st.one_of(
    st.tuples(
        st.text(max_size=70),
        st.sampled_from([1, 4]),
        st.integers(-(10**6), 10**6),
        st.dictionaries(st.integers(0, 3), scalars, max_size=4),
    ).map(list),
    st.lists(
        st.one_of(
            st.text(max_size=80),
            st.integers(),
            scalars,
            st.dictionaries(st.integers(-2, 6), scalars, max_size=4),
        ),
        max_size=5,
    ),
    scalars,
)


@settings(max_examples=300, deadline=None)
@given(items)
def test_any_reading_is_a_point_or_a_reject(item: object) -> None:
    r = v().reading("gw-1", NOW_MS, item, NOW_MS)
    if isinstance(r, Reject):
        assert r.reason and r.detail
    else:
        # Whatever passes validation can be written as exactly one line.
        line = lineproto.line(r)
        assert line.count(b"\n") <= 1 and b"\r" not in line
