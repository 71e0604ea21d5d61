"""Hostile gateways alongside good ones, through real Mosquitto and InfluxDB 1.x (issue 8).

A poisoning gateway sends thermometer `body_c` as text, as a bool (and `seq` as a float, `mask` as
an int) *before* any good thermometer reading, so the first type to reach the shard would be the
wrong one; a spoofing status claims `gw: gw-victim`; payloads hold a map key twice; gateway ids
carry spaces, commas, `=`, quotes, an emoji, a zero-width space and an RTL override, or are not in
the registry; one gateway creates more sensors and error names than its bounds allow. Every good
reading must be stored exactly once with its kind's types (SHOW FIELD KEYS against the kind
registry), nothing of the hostile cases may be in InfluxDB, and each refusal is counted.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import cbor2
import pytest

from collector import config as cfg
from collector.deadletter import DeadLetters
from collector.service import Collector
from collector.validate import load_kinds
from hil.services import InfluxDB, Mosquitto
from tests.integration.test_collector_e2e import (
    DB,
    Publisher,
    collector_process,
    encode_batch,
    field_types,
    run_collector,
)
from tests.integration.waiting import wait_until

pytestmark = pytest.mark.integration

NOW_MS = int(time.time() * 1000) - 60_000
GOOD = ("gw-good-1", "gw-good-2")
REGISTRY = {
    gw: {"site": "s", "district": "d"}
    for gw in (*GOOD, "gw-poison", "gw-spec", "gw-victim", "gw-flood", "gw-dup")
}
BAD_IDS = ("gw 1", "gw,1", "gw=1", 'gw"1', "gw-1\U0001f600", "gw-\u200b1", "gw-\u202e1")
INFLUX_TYPE = {bool: "boolean", int: "integer", float: "float"}


def raw_map(*pairs: tuple[object, bytes]) -> bytes:
    """A CBOR map from (key, encoded value) pairs: it may hold a key twice (cbor2 cannot write that)."""
    return bytes([0xA0 + len(pairs)]) + b"".join(cbor2.dumps(k) + v for k, v in pairs)


def header(seq: int, t0: int) -> list[tuple[object, bytes]]:
    return [(0, cbor2.dumps(1)), (1, cbor2.dumps(1)), (2, cbor2.dumps(seq)), (3, cbor2.dumps(t0))]


def good_readings(gw: str, seq: int) -> list[tuple[str, int, int, tuple[Any, ...]]]:
    t = NOW_MS + seq * 1000
    return [
        (f"{gw}-P", 1, t, (seq % 2 == 1, 1, seq, 212, -268, -731, 3612, -97)),
        (f"{gw}-M", 2, t + 1, (2.5, False, False, 35.0, 12.0, 0.4, 3520, -87)),
        (f"{gw}-W", 3, t + 2, (7.25, 8.5, 18.0, 0.5, 8.25, 450.0, 1.5, 320.0, 18.5)),
        (f"{gw}-T", 4, t + 3, (36.6, 21.25, seq, 42, True)),
    ]


def test_hostile_gateways_do_not_spoil_good_ones(
    tmp_path: Path, mosquitto: Mosquitto, influxdb: InfluxDB
) -> None:
    influxdb.create_database(DB)
    launcher = collector_process(tmp_path, mosquitto, influxdb, "hostile-collector")
    launcher.tables["gateways"] = REGISTRY
    launcher.tables["decode"] = {"max_sensors_per_gateway": 20}
    config = cfg.load(launcher.write_config(), env={})
    poison = [
        cbor2.dumps({0: 1, 1: 1, 2: 0, 3: NOW_MS, 4: [["BAD-text", 4, 0, {0: "36.6"}]]}),
        cbor2.dumps({0: 1, 1: 1, 2: 1, 3: NOW_MS, 4: [["BAD-bool", 4, 0, {0: True}]]}),
        cbor2.dumps({0: 1, 1: 1, 2: 2, 3: NOW_MS, 4: [["BAD-seq", 4, 0, {0: 36.6, 2: 7.5}]]}),
        cbor2.dumps({0: 1, 1: 1, 2: 3, 3: NOW_MS, 4: [["BAD-mask", 4, 0, {0: 36.6, 4: 1}]]}),
        # An int where a float is due is widened, not refused: stored as the float 36.0.
        cbor2.dumps({0: 1, 1: 1, 2: 4, 3: NOW_MS, 4: [["WIDE-int", 4, 0, {0: 36}]]}),
    ]
    # Water readings from a gateway of their own, so no other finding can hide these (kind 3: ph).
    one_reading = b"\x81\x84" + cbor2.dumps("DUP-fields") + b"\x03\x00"
    duplicates = [
        # t0 twice
        raw_map(
            *header(10, NOW_MS), (3, cbor2.dumps(NOW_MS + 5)), (4, cbor2.dumps([["DUP-t0", 3, 0, {0: 7.0}]]))
        ),
        # a fields map {0: 7.5, 0: 8.5}
        raw_map(
            *header(11, NOW_MS), (4, one_reading + raw_map((0, cbor2.dumps(7.5)), (0, cbor2.dumps(8.5))))
        ),
    ]
    dup_status = raw_map(("v", cbor2.dumps(1)), ("state", cbor2.dumps("online")), ("state", cbor2.dumps("x")))
    spoof = cbor2.dumps(
        {"gw": "gw-victim", "site": "elsewhere", "district": "x", "state": "online", "boot": 3}
    )
    flood = cbor2.dumps(
        {0: 1, 1: 1, 2: 0, 3: NOW_MS, 4: [[f"F-{i:02d}", 4, i, {0: 36.6}] for i in range(30)]}
    )
    flood_status = cbor2.dumps({"state": "online", "errors": {"F-00": {f"e{i}": 1 for i in range(40)}}})
    n_good = 10
    sent = 0

    def scenario(collector: Collector) -> None:
        nonlocal sent
        pub = Publisher(mosquitto.port, "hostile-gateways")
        try:
            for payload in poison:  # first: the wrong types would fix the thermometer shard's types
                pub.publish("city/gw-poison/up", payload)
            wait_until(lambda: collector.input.acks_sent >= len(poison), 30, "poison handled")
            for seq in range(n_good):
                for gw in GOOD:
                    pub.publish(f"city/{gw}/up", encode_batch(1, seq, good_readings(gw, seq)))
                if seq == 2:
                    for payload in duplicates:
                        pub.publish("city/gw-dup/up", payload)
                    pub.publish("city/gw-spec/status", spoof)
                    pub.publish("city/gw-dup/status", dup_status)
                    for bad in BAD_IDS:
                        pub.publish(f"city/{bad}/up", encode_batch(1, 0, good_readings("X", 0)))
                    pub.publish("city/gw-stranger/up", encode_batch(1, 0, good_readings("Y", 0)))
                    pub.publish("city/gw-flood/up", flood)
                    pub.publish("city/gw-flood/status", flood_status)
            sent = len(poison) + n_good * len(GOOD) + len(duplicates) + 2 + len(BAD_IDS) + 1 + 2
            wait_until(lambda: collector.input.acks_sent >= sent, 60, "every message acknowledged")
        finally:
            pub.close()

    collector = run_collector(config, scenario)
    m = collector.metrics
    assert collector.input.acks_sent == sent
    # Every check runs and each failure names its finding, so one run shows all that is wrong.
    problems: list[str] = []

    def check(ok: bool, finding: str, what: object) -> None:
        if not ok:
            problems.append(f"{finding}: {what}")

    # Every good reading exactly once, value for value (finding 1: the poison sent first must not
    # have fixed a wrong type that makes InfluxDB refuse them).
    kinds = {k.name: k for k in load_kinds().values()}
    for gw in GOOD:
        for seq in range(n_good):
            for sensor, code, ts, values in good_readings(gw, seq):
                kind = next(k for k in kinds.values() if k.code == code)
                rows = influxdb.points(
                    DB, f"SELECT * FROM \"{kind.name}\" WHERE sensor = '{sensor}' AND time = {ts}ms"
                )
                check(len(rows) == 1, "1 good reading stored once", (sensor, ts, rows))
                for name, v in zip(kind.names, values, strict=True):
                    # (InfluxDB's JSON writes the float 18.0 as 18: the types are checked below.)
                    got = rows[0].get(name) if rows else None
                    check(got == v, "1 good value", (sensor, name, got, v))
                    check(type(v) is float or type(got) is type(v), "1 good value's type", (sensor, name))
        for kind in kinds.values():
            rows = influxdb.points(DB, f"SELECT count(*) FROM \"{kind.name}\" WHERE gw = '{gw}'")
            count = max((v for k, v in rows[0].items() if k.startswith("count_")), default=0) if rows else 0
            check(count == n_good, "1 good readings counted", (gw, kind.name, count))
    # Each measurement's field types are the registry's, for every field a good reading carried.
    for kind in kinds.values():
        want = {f.name: INFLUX_TYPE[f.type] for f in kind.fields}
        check(
            field_types(influxdb, kind.name) == want,
            "1 field types",
            (kind.name, field_types(influxdb, kind.name)),
        )
    bad = influxdb.points(DB, 'SELECT * FROM "thermometer" WHERE sensor =~ /^BAD-/')
    check(bad == [], "1 poisoned readings stored", bad)
    widened = influxdb.points(DB, "SELECT * FROM \"thermometer\" WHERE sensor = 'WIDE-int'")
    check([(r.get("body_c"), r["gw"]) for r in widened] == [(36, "gw-poison")], "1 widened int", widened)

    # Finding 2: the spoofed status is gw-spec's, with no gw/site/district field.
    victim = influxdb.points(DB, "SELECT * FROM \"gateway_status\" WHERE gw = 'gw-victim'")
    check(victim == [], "2 WHERE gw='gw-victim' finds the spoof", victim)
    spec = influxdb.points(DB, "SELECT * FROM \"gateway_status\" WHERE gw = 'gw-spec'")
    check(
        [(r.get("state"), r.get("boot"), r.get("site")) for r in spec] == [("online", 3, "s")], "2 spec", spec
    )
    status_fields = set(field_types(influxdb, "gateway_status"))
    check(status_fields == {"state", "boot", "errors_total"}, "2 status fields", status_fields)

    # Finding 3: nothing of a payload with a duplicate key.
    dup = influxdb.points(DB, 'SELECT * FROM "water" WHERE sensor =~ /^DUP-/')
    check(dup == [], "3 duplicate-key readings stored", dup)
    # (`::tag`: on the code before the fix the spoof's `gw` field shadowed the tag.)
    dup_rows = influxdb.points(DB, 'SELECT * FROM "gateway_status" WHERE "gw"::tag = \'gw-dup\'')
    check(dup_rows == [], "3 duplicate-key status stored", dup_rows)

    # Finding 4: no gateway outside the alphabet or the registry.
    gateways = {r["value"] for r in influxdb.points(DB, 'SHOW TAG VALUES WITH KEY = "gw"')}
    check(gateways == {*GOOD, "gw-poison", "gw-spec", "gw-flood"}, "4 gateways stored", sorted(gateways))

    # Finding 5: the flood stops at its bounds.
    flood_sensors = {
        r["value"]
        for r in influxdb.points(
            DB, 'SHOW TAG VALUES FROM "thermometer" WITH KEY = "sensor" WHERE gw = \'gw-flood\''
        )
    }
    check(len(flood_sensors) == 20, "5 flood sensors (max_sensors_per_gateway 20)", len(flood_sensors))
    errors = influxdb.points(DB, 'SELECT count("count") FROM "sensor_errors" WHERE gw = \'gw-flood\'')
    n_errors = errors[0]["count"] if errors else 0
    check(n_errors == 32, "5 flood error names (max_error_codes_per_gateway 32)", n_errors)

    # Each refusal counted, by reason, in the dead-letter store and the metrics.
    dead = DeadLetters(config.storage.dead_letter_path)
    try:
        counts = dict(dead.counts)
    finally:
        dead.close()
    want_counts = {
        "field_type": 4,
        "duplicate_key": 3,
        "bad_gateway_id": len(BAD_IDS),
        "unknown_gateway": 1,
        "too_many_sensors": 10,  # the flood's F-20..F-29
        "too_many_error_codes": 1,  # one dead letter for the status: 8 names over the bound
    }
    check(counts == want_counts, "refusals counted", counts)
    for reason, n in counts.items():
        check(m.dead_letters.get(reason=reason) == n, "refusal metric", reason)
    ignored = m.ignored.get(reason="unknown_status_key")
    check(ignored == 3, "2 unknown status keys counted (gw, site, district)", ignored)
    rejected = m.readings.get(channel="up", outcome="rejected")
    check(rejected == 4 + 10, "readings rejected (poison, flood)", rejected)
    assert problems == [], "\n".join(problems)
