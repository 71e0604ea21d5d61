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
from collector.validate import FieldSpec as F
from collector.validate import Kind, Reject, Validator, check_text, load_kinds

NOW_MS = 1_780_000_000_000
KINDS = {
    1: Kind(1, "parking", (F("occupied", bool), F("event", int), F("seq", int), F("mag_x", float))),
    4: Kind(
        4, "thermometer", (F("temp_c", float, -50.0, 60.0), F("skin", bool), F("battery_mv", int, 0, 5000))
    ),
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
        (["T-1", 4, 0, {0: 1 << 63}], "field_type"),  # an int outside int64 is not widened
        (["P-1", 1, 0, {2: 1 << 63}], "out_of_range"),
        (["P-1", 1, 0, {2: -(1 << 63) - 1}], "out_of_range"),
        (["T-1", 4, 0, {0: None}], "field_type"),
        (["T-1", 4, 0, {0: b"\x01"}], "field_type"),
        (["T-1", 4, 0, {0: [1]}], "field_type"),
        (["T-1", 4, 0, {0: "a\nb"}], "field_type"),
        (["T-1", 4, 0, {0: "x" * 257}], "field_type"),
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
        ["P-2", 1, 0, {3: math.nan}],
        ["P-3", 77, 0, {0: True}],
        ["P-4", 1, 10, {0: False, 2: 5}],
    ]
    points, rejects = v().batch("gw-1", Batch(1, 1, 1, NOW_MS, readings), NOW_MS)
    assert [dict(p.tags)["sensor"] for p in points] == ["P-1", "P-4"]
    assert [(i, r.reason) for i, r in rejects] == [(1, "not_finite"), (2, "unknown_kind")]


def test_gateway_id() -> None:
    val = Validator(DecodeConfig(), KINDS, {})  # no registry: any id in the alphabet
    for good in ("gw-1", "GW_2:b", "g" * 64):
        assert val.check_gateway(good) is None
    # "." is NATS's subject separator: nats-server 2.9 drops an MQTT client publishing it in a topic.
    for bad in ("g\nw", "g" * 65, "g\\", " g", "", "网关-1", "GW_2.a:b"):
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
    points, rejects, ignored = v().status("gw-1", status, NOW_MS)
    assert rejects == [] and ignored == 0
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
    points, rejects, ignored = v().status(
        "gw-1", {"state": "offline", "ts": None, "x y": 1, "n": math.nan, "boot": -1, "fw": 3}, NOW_MS
    )
    assert points[0].ts_ms == NOW_MS and dict(points[0].fields) == {"state": "offline"}
    assert ignored == 2  # "x y" and "n": not status keys
    assert [r.reason for r in rejects] == ["bad_status"] and "(and 1 more)" in rejects[0].detail
    points, rejects, ignored = v().status("gw-1", {"ts": 5}, NOW_MS)
    assert points == [] and [r.reason for r in rejects] == ["bad_status"]


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


# --- the kind registry's types and ranges (issue 8, finding 1) --------------------------------------


def real(config: DecodeConfig | None = None, gateways: dict[str, GatewayInfo] | None = None) -> Validator:
    return Validator(config or DecodeConfig(), load_kinds(), GATEWAYS if gateways is None else gateways)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({0: "36.6"}, "field_type"),  # body_c as text
        ({0: True}, "field_type"),  # bool where a float is due
        ({0: 36.6, 2: 7.0}, "field_type"),  # seq: float where an int is due
        ({0: 36.6, 2: True}, "field_type"),  # bool where an int is due
        ({0: 36.6, 4: 1}, "field_type"),  # mask: int where a bool is due
        ({0: 36.6, 4: "true"}, "field_type"),
        ({0: 50.0}, "out_of_range"),  # body_c above the codec's 45.0
        ({0: 36.6, 2: 70000}, "out_of_range"),  # seq above 0xFFFF
        ({0: 46}, "out_of_range"),  # widened, then out of range
        ({0: math.nan}, "not_finite"),
    ],
)
def test_field_types_and_ranges_from_the_registry(fields: dict[int, object], reason: str) -> None:
    item = ["T-1", 4, 0, fields]
    r = real().reading("gw-1", NOW_MS, item, NOW_MS)
    assert isinstance(r, Reject) and r.reason == reason, r
    assert r.detail.startswith("thermometer.")
    # The hot path refuses it the same way.
    lines, rejects = real().batch_lines("gw-1", Batch(1, 1, 1, NOW_MS, [item]), NOW_MS)
    assert lines == [] and [(i, x.reason) for i, x in rejects] == [(0, reason)]


def test_int_where_a_float_is_due_is_widened() -> None:
    p = real().reading("gw-1", NOW_MS, ["T-1", 4, 0, {0: 36, 1: -4, 2: 9}], NOW_MS)
    assert isinstance(p, Point)
    values = dict(p.fields)
    assert type(values["body_c"]) is float and values["body_c"] == 36.0
    assert type(values["ambient_c"]) is float and type(values["seq"]) is int
    assert lineproto.line(p).split(b" ")[1] == b"body_c=36,ambient_c=-4,seq=9i"  # no `i`: a float


def test_every_registered_field_has_the_type_influx_will_get() -> None:
    """A good reading of each kind, every field present, becomes one line with the types of the
    registry: bool true/false, int `i`, float bare."""
    samples = {
        1: (True, 1, 305, 212, -268, -731, 3612, -97),
        2: (2.5, False, False, 35.0, 12.0, 0.4, 3520, -87),
        3: (7.25, 8.5, 18.0, 0.5, 8.25, 450.0, 1.5, 320.0, 18.5),
        4: (36.6, 21.25, 88, 42, True),
    }
    kinds = load_kinds()
    for code, values in samples.items():
        item = ["S-1", code, 0, dict(enumerate(values))]
        lines, rejects = real().batch_lines("gw-1", Batch(1, 1, 1, NOW_MS, [item]), NOW_MS)
        assert rejects == [], rejects
        text = lines[0].split(" ")[1]
        for spec, value, part in zip(kinds[code].fields, values, text.split(","), strict=True):
            assert type(value) is spec.type
            assert part.endswith("i") == (spec.type is int), part
            assert (part.split("=")[1] in ("true", "false")) == (spec.type is bool), part


# --- status keys (finding 2) --------------------------------------------------------------------------


def test_status_cannot_spoof_tags_and_unknown_keys_are_ignored() -> None:
    status = {"gw": "gw-victim", "site": "elsewhere", "district": "x", "sensor": "s", "state": "online"}
    points, rejects, ignored = v().status("gw-1", status, NOW_MS)
    assert rejects == [] and ignored == 4
    assert [p.fields for p in points] == [(("state", "online"),)]
    assert dict(points[0].tags) == {"gw": "gw-1", "site": "wulin-p3", "district": "xihu"}
    lines, _, _ = v().status_lines("gw-1", status, NOW_MS)
    assert lines == [f'gateway_status,district=xihu,gw=gw-1,site=wulin-p3 state="online" {NOW_MS}']


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("boot", "7"),
        ("boot", -1),
        ("boot", 1.0),
        ("boot", True),
        ("clock_synced", 1),
        ("state", 3),
        ("fw", b"1"),
    ],
)
def test_status_keys_have_their_documented_types(key: str, value: object) -> None:
    points, rejects, _ = v().status(
        "gw-1", {"state": "online", key: value} if key != "state" else {key: value, "boot": 1}, NOW_MS
    )
    assert [r.reason for r in rejects] == ["bad_status"] and key in rejects[0].detail
    assert key not in dict(points[0].fields)


# --- ids (finding 4) ----------------------------------------------------------------------------------

HOSTILE_IDS = [
    "gw 1",  # space
    "gw,1",  # comma
    "gw=1",  # equals
    'gw"1',  # quote
    "gw-1\U0001f600",  # emoji
    "gw-\u200b1",  # zero-width space: looks like gw-1
    "gw-\u202e1",  # RTL override
    "gw-1\u00a0",  # no-break space
]


@pytest.mark.parametrize("gw", HOSTILE_IDS)
def test_gateway_ids_outside_the_alphabet_are_refused(gw: str) -> None:
    r = real(gateways={}).check_gateway(gw)
    assert r is not None and r.reason == "bad_gateway_id"


@pytest.mark.parametrize(
    "sensor", ["T-\u200b1", "T-\u202e1", "T-\u2066x", "T-\ue000", "T-\U000e0041", "T\u00ad1"]
)
def test_sensor_ids_with_invisible_characters_are_refused(sensor: str) -> None:
    r = real().reading("gw-1", NOW_MS, [sensor, 4, 0, {0: 36.6}], NOW_MS)
    assert isinstance(r, Reject) and r.reason == "bad_sensor_id" and "U+" in r.detail


def test_chinese_and_escaped_sensor_ids_are_kept() -> None:
    for sensor in ("体温-东门-2", "停车位 A,3=西"):
        assert isinstance(real().reading("gw-1", NOW_MS, [sensor, 4, 0, {0: 36.6}], NOW_MS), Point)


def test_unknown_gateway_with_a_registry_and_the_switch() -> None:
    registry = {"gw-1": GatewayInfo(site="s")}
    r = real(gateways=registry).check_gateway("gw-2")
    assert r is not None and r.reason == "unknown_gateway"
    assert real(gateways=registry).check_gateway("gw-1") is None
    assert real(DecodeConfig(accept_unregistered=True), registry).check_gateway("gw-2") is None
    assert real(gateways={}).check_gateway("gw-2") is None  # no registry: nothing to check against


# --- cardinality (finding 5) --------------------------------------------------------------------------


def test_sensors_per_gateway_are_bounded_on_both_paths() -> None:
    config = DecodeConfig(max_sensors_per_gateway=3)
    items: list[object] = [[f"T-{i}", 4, i, {0: 36.6}] for i in range(5)] + [["T-0", 4, 9, {0: 36.7}]]
    for path in ("fast", "general"):
        val = real(config)
        if path == "fast":
            lines, rejects = val.batch_lines("gw-1", Batch(1, 1, 1, NOW_MS, items), NOW_MS)
            kept = len(lines)
        else:
            points, rejects = val.batch("gw-1", Batch(1, 1, 1, NOW_MS, items), NOW_MS)
            kept = len(points)
        assert kept == 4  # T-0, T-1, T-2 and T-0 again
        assert [(i, r.reason) for i, r in rejects] == [(3, "too_many_sensors"), (4, "too_many_sensors")]
        # Another gateway has its own budget.
        assert isinstance(val.reading("gw-2", NOW_MS, ["T-9", 4, 0, {0: 36.6}], NOW_MS), Point)


def test_alarm_and_error_codes_per_gateway_are_bounded() -> None:
    val = real(DecodeConfig(max_alarm_codes_per_gateway=2, max_error_codes_per_gateway=2))
    got = [
        val.reading("gw-1", NOW_MS, ["T-1", 4, 0, {0: 39.0}], NOW_MS, alarm=c) for c in ("a", "b", "c", "a")
    ]
    assert [type(x).__name__ for x in got] == ["Point", "Point", "Reject", "Point"]
    assert isinstance(got[2], Reject) and got[2].reason == "too_many_alarm_codes"
    bad = val.reading("gw-1", NOW_MS, ["T-1", 4, 0, {0: 39.0}], NOW_MS, alarm="fever now")
    assert isinstance(bad, Reject) and bad.reason == "bad_alarm"
    errors = {"P-1": {f"e{i}": 1 for i in range(50)}}
    points, rejects, _ = val.status("gw-1", {"state": "online", "errors": errors}, NOW_MS)
    assert len([p for p in points if p.measurement == "sensor_errors"]) == 2
    assert dict(points[0].fields)["errors_total"] == 2
    assert [r.reason for r in rejects] == ["too_many_error_codes"] and "(and 47 more)" in rejects[0].detail


def test_every_key_the_edge_sends_becomes_a_field() -> None:
    """The collector's status keys follow what edge.protocol.encode_status writes (the board image's
    `img` included): a key the gateway sends must not be ignored as unknown."""
    import cbor2

    from edge import protocol

    w = bytearray()
    protocol.encode_status(w, "online", "1.0.0", 3, 5, 1000, 0, 0, 0, True, NOW_MS - 1000,
                           {"P-1": {"bad_crc": 2}}, "3f2a9c1d0e12")
    status = cbor2.loads(bytes(w))
    points, rejects, ignored = v().status("gw-1", status, NOW_MS)
    assert rejects == [] and ignored == 0
    fields = dict(points[0].fields)
    assert fields["img"] == "3f2a9c1d0e12" and fields["fw"] == "1.0.0"
    assert set(status) - {"ts", "errors"} == set(fields) - {"errors_total"}
