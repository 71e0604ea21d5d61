"""What an operator sees when things go wrong: real Mosquitto, real InfluxDB 1.6.7, the real collector.

A database that refuses lines (a field-type conflict answered as a partial write) is loud: logged
once per episode, counted in its own metric, shown by /healthz, and never counted as written. The
dead-letter store is bounded and can be listed, shown and replayed (twice stores nothing twice).
A missing database is held until it exists, or created with `influx.create_database = true`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from collector import cli as collector_cli
from collector import config as cfg
from collector.deadletter import DeadLetters
from collector.service import Collector
from hil.services import Collector as CollectorProcess
from hil.services import InfluxDB, Mosquitto, http_request
from tests.integration.test_collector_e2e import Publisher, encode_batch, run_collector
from tests.integration.waiting import wait_until

pytestmark = pytest.mark.integration

DB = "citybrain"
NOW_MS = int(time.time() * 1000) - 60_000


def launcher(
    tmp: Path, broker: Mosquitto, db: InfluxDB, name: str, **settings: dict[str, object]
) -> CollectorProcess:
    influx_table: dict[str, object] = {"url": db.url, "db": DB, **settings.pop("influx", {})}
    return CollectorProcess(
        broker.port,
        influx_table,
        client_id=name,
        workdir=str(tmp / name),
        settings={
            "mqtt": {"receive_maximum": 50},
            "writer": {"flush_interval": "50ms"},
            "service": {"drain_timeout": "10s"},
            **settings,
        },
    )


def healthz(proc: CollectorProcess) -> tuple[int, dict[str, Any]]:
    status, body = http_request(f"{proc.url}/healthz", timeout=5)
    return status, json.loads(body)


def thermometer_batch(seq: int, gw_readings: int = 3) -> bytes:
    """Three thermometer readings and two parking readings, each field of the type and in the range
    the kind registry says (mag_x an int), so the collector passes every one to the database."""
    t = NOW_MS + seq * 1000
    readings: list[tuple[str, int, int, tuple[Any, ...]]] = [
        (f"T-{i}", 4, t + i, (36.5 + i / 10, 21.0, seq, 30, True)) for i in range(gw_readings)
    ]
    readings += [(f"P-{i}", 1, t + i, (True, 1, seq, 12, None, None, 3600, -71)) for i in range(2)]
    return encode_batch(1, seq, readings)


def test_a_field_type_conflict_is_loud_and_never_counted_written(
    tmp_path: Path, mosquitto: Mosquitto, influxdb: InfluxDB, caplog: pytest.LogCaptureFixture
) -> None:
    influxdb.create_database(DB)
    # The shard is poisoned by another tool writing to InfluxDB directly (the collector itself would
    # dead-letter a string body_c as field_type): body_c is a string here, so InfluxDB refuses every
    # correctly typed float the collector then sends.
    influxdb.write(DB, f'thermometer,gw=gw-evil,sensor=T-x body_c="36.6" {NOW_MS - 5000}')
    proc = launcher(tmp_path, mosquitto, influxdb, "conflict")
    config = cfg.load(proc.write_config(), env={})
    seen: dict[str, Any] = {}

    def scenario(collector: Collector) -> None:
        pub = Publisher(mosquitto.port, "conflict-gw")
        try:
            for seq in range(4):
                pub.publish("city/gw-1/up", thermometer_batch(seq))
            wait_until(lambda: collector.input.acks_sent >= 4, 30, "4 batches acknowledged")
        finally:
            pub.close()
        seen["written"] = proc.metric("readings_total", channel="up", outcome="written")
        seen["refused"] = proc.metric("readings_total", channel="up", outcome="db_refused")
        seen["conflicts"] = proc.metric("type_conflicts_total")
        seen["health"] = healthz(proc)

    with caplog.at_level(logging.WARNING, logger="collector"):
        run_collector(config, scenario)

    # The parking readings are stored; not one thermometer reading is, and none is counted written.
    assert len(influxdb.points(DB, f"SELECT * FROM parking WHERE time >= {NOW_MS}ms GROUP BY *")) == 8
    assert influxdb.points(DB, f"SELECT * FROM thermometer WHERE time >= {NOW_MS}ms GROUP BY *") == []
    assert seen["written"] == 8
    assert seen["refused"] == 12
    assert seen["conflicts"] == 12
    status, health = seen["health"]
    assert status == 200 and health["status"] == "degraded"
    assert any("field type conflict" in r for r in health["reasons"]), health
    dead = DeadLetters(proc.dead_letter_path)
    try:
        entries = dead.list(reason="db_type_conflict")
        own = dead.list(reason="field_type")  # the collector passed every reading: the database refused
    finally:
        dead.close()
    assert len(entries) == 12 and {e.gateway for e in entries} == {"gw-1"}
    assert own == []
    assert all(e.payload.startswith(b"thermometer,") for e in entries)
    # Logged once for the episode (12 refusals, one gateway), then summarised, never 12 lines.
    refused = [r.getMessage() for r in caplog.records if r.name == "collector.refused"]
    started = [m for m in refused if m.startswith("refused db_type_conflict from gateway gw-1")]
    assert len(started) == 1, refused
    assert "sha256:" in started[0]
    assert any("11 more" in m for m in refused), refused


def influx_post(influx: InfluxDB, q: str) -> None:
    status, body = http_request(
        f"{influx.url}/query", urllib.parse.urlencode({"db": DB, "q": q}).encode(), method="POST"
    )
    assert status == 200 and b'"error"' not in body, body


def count(influx: InfluxDB, q: str) -> int:
    rows = influx.points(DB, q)
    return int(rows[0]["count"]) if rows else 0


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    rc = collector_cli.main(list(argv))
    out = capsys.readouterr()
    return rc, out.out + out.err


def test_dead_letters_bounded_listed_shown_and_replayed_once(
    tmp_path: Path, mosquitto: Mosquitto, influxdb: InfluxDB, capsys: pytest.CaptureFixture[str]
) -> None:
    influxdb.create_database(DB)
    influxdb.write(DB, f'thermometer,gw=gw-evil,sensor=T-x body_c="36.6" {NOW_MS - 5000}')
    proc = launcher(tmp_path, mosquitto, influxdb, "replay", storage={"dead_letter_payload_max": "1KiB"})
    config = cfg.load(proc.write_config(), env={})
    ahead = int(time.time() * 1000) + 20 * 60_000  # 20 min ahead: refused with max_future = 5m
    future_batch = encode_batch(
        1,
        7,
        [
            ("P-now", 1, NOW_MS, (True, 1, 7, 12, None, None, 3600, -71)),
            ("P-ahead", 1, ahead, (False, 1, 7, 12, None, None, 3600, -71)),
            ("P-ahead2", 1, ahead + 1, (True, 1, 7, 12, None, None, 3600, -71)),
        ],
    )

    def scenario(collector: Collector) -> None:
        pub = Publisher(mosquitto.port, "replay-gw")
        try:
            pub.publish("city/gw-1/up", thermometer_batch(0))  # 3 lines refused by the database
            pub.publish("city/gw-1/up", future_batch)  # two readings refused: time_in_future
            pub.publish("city/gw-2/up", b"\xa5" * 70_000)  # too_large: kept as a 1 KiB prefix
            wait_until(lambda: collector.input.acks_sent >= 3, 30, "3 messages acknowledged")
        finally:
            pub.close()

    run_collector(config, scenario)
    path = str(proc.config_path)

    rc, out = cli(capsys, "dead-letters", "list", "-c", path, "--json")
    assert rc == 0
    listed = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    by_reason: dict[str, list[dict[str, Any]]] = {}
    for e in listed:
        by_reason.setdefault(e["reason"], []).append(e)
    assert len(by_reason["db_type_conflict"]) == 3 and len(by_reason["time_in_future"]) == 2
    [big] = by_reason["too_large"]
    assert big["truncated"] and big["size"] == 70_000 and big["gateway"] == "gw-2"
    assert big["sha256"] == hashlib.sha256(b"\xa5" * 70_000).hexdigest()
    rc, out = cli(capsys, "dead-letters", "list", "-c", path, "--gateway", "gw-2", "--since", "1h")
    assert rc == 0 and "too_large" in out and "db_type_conflict" not in out
    ahead_entry, ahead2_entry = by_reason["time_in_future"]
    rc, out = cli(capsys, "dead-letters", "show", "-c", path, str(ahead_entry["id"]))
    assert rc == 0 and "P-ahead" in out and "parking" in out and "P-now" not in out

    # Replaying before the cause is fixed: refused again, nothing stored, entry not marked.
    rc, out = cli(capsys, "dead-letters", "replay", "-c", path, str(ahead_entry["id"]))
    assert rc == 1 and "refused again: time_in_future" in out

    # The operator fixes the causes: the poisoned series is dropped, the clock allowance raised.
    influx_post(influxdb, "DROP MEASUREMENT thermometer")
    proc.tables["decode"] = {"max_future": "1h"}
    proc.write_config()
    # Both readings of one batch in one replay (they share the batch's dedup key: each must be stored).
    ids = [str(e["id"]) for e in [*by_reason["db_type_conflict"], ahead_entry, ahead2_entry]]
    for attempt in range(2):  # replaying twice stores nothing twice
        rc, out = cli(capsys, "dead-letters", "replay", "-c", path, *ids)
        assert rc == 0, out
        assert out.count(" ok ") == 5, out
        assert count(influxdb, "SELECT COUNT(body_c) FROM thermometer") == 3, attempt
        assert count(influxdb, "SELECT COUNT(occupied) FROM parking WHERE sensor =~ /^P-ahead/") == 2
    rc, out = cli(capsys, "dead-letters", "replay", "-c", path, str(big["id"]))
    assert rc == 1 and "truncated payload cannot be replayed" in out
    rc, out = cli(capsys, "dead-letters", "list", "-c", path, "--reason", "db_type_conflict")
    assert out.count(" replayed") == 3


def test_refusals_logged_once_per_episode_and_health_degraded_with_reasons(
    tmp_path: Path, mosquitto: Mosquitto, influxdb: InfluxDB, caplog: pytest.LogCaptureFixture
) -> None:
    influxdb.create_database(DB)
    proc = launcher(
        tmp_path,
        mosquitto,
        influxdb,
        "health",
        health={"dead_letter_spike": 20, "dead_letter_window": "1m", "spool_window": "1m"},
        writer={"flush_interval": "50ms", "timeout": "1s"},
    )
    config = cfg.load(proc.write_config(), env={})
    seen: dict[str, Any] = {}

    def scenario(collector: Collector) -> None:
        seen["start"] = healthz(proc)
        pub = Publisher(mosquitto.port, "flood-gw")
        try:
            for i in range(30):  # a flood of garbage from one gateway, a little from another
                pub.publish("city/gw-flood/up", b"\xff\xfe" + bytes([i]))
            pub.publish("city/gw-2/up", b"\xff")
            wait_until(lambda: collector.input.acks_sent >= 31, 30, "31 messages acknowledged")
            seen["spike"] = healthz(proc)
            influxdb.stop()  # the database goes away: writes are refused, the spool grows
            for seq in range(3):
                pub.publish("city/gw-1/up", thermometer_batch(seq))
            wait_until(lambda: collector.input.acks_sent >= 34, 30, "3 batches acknowledged (spooled)")
            seen["down"] = healthz(proc)
            influxdb.start()
            wait_until(lambda: collector.writer.stats["spool_lines"] == 0, 30, "spool drained")
        finally:
            pub.close()

    with caplog.at_level(logging.WARNING, logger="collector"):
        run_collector(config, scenario)

    assert seen["start"] == (200, {**seen["start"][1], "status": "ok", "reasons": []})
    status, spike = seen["spike"]
    assert status == 200 and spike["status"] == "degraded"
    assert any("31 dead letters in the last 60 s" in r for r in spike["reasons"]), spike
    status, down = seen["down"]
    assert status == 200 and down["status"] == "degraded", down
    assert any(r.startswith("database not writable") for r in down["reasons"]), down
    assert any(r.startswith("spool growing: 15 lines held") for r in down["reasons"]), down
    # 31 refusals: one line per (reason, gateway) episode, with a digest, and a summary of the rest.
    refused = [r.getMessage() for r in caplog.records if r.name == "collector.refused"]
    flood = [m for m in refused if m.startswith("refused bad_cbor from gateway gw-flood")]
    other = [m for m in refused if m.startswith("refused bad_cbor from gateway gw-2")]
    assert len(flood) == 1 and len(other) == 1, refused
    assert "sha256:" in flood[0]
    assert any("gw-flood stopped: 29 more" in m for m in refused), refused
    assert len(refused) == 3, refused


@pytest.mark.parametrize("create", [False, True])
def test_a_missing_database_is_held_or_created(
    tmp_path: Path, mosquitto: Mosquitto, influxdb: InfluxDB, create: bool
) -> None:
    # No CREATE DATABASE here: the collector starts against an InfluxDB without its database.
    settings: dict[str, object] = {"create_database": True} if create else {}
    proc = launcher(
        tmp_path,
        mosquitto,
        influxdb,
        f"nodb-{create}",
        influx=settings,
        writer={"flush_interval": "50ms", "hold_retry": "500ms"},
    )
    config = cfg.load(proc.write_config(), env={})
    seen: dict[str, Any] = {}

    def scenario(collector: Collector) -> None:
        pub = Publisher(mosquitto.port, "nodb-gw")
        try:
            pub.publish("city/gw-1/up", thermometer_batch(0))
            wait_until(lambda: collector.input.acks_sent >= 1, 30, "batch acknowledged")
            if not create:
                # Held in the spool (acknowledged, durable), the operator told why.
                wait_until(lambda: collector.writer.stats["sink_state"] == "config_error", 30, "config error")
                seen["health"] = healthz(proc)
                assert collector.writer.stats["spool_lines"] == 5
                influxdb.create_database(DB)  # the writer finds it on its next try (writer.hold_retry)
            wait_until(
                lambda: (
                    count(influxdb, "SELECT COUNT(body_c) FROM thermometer") == 3
                    if _has_db(influxdb)
                    else False
                ),
                60,
                "readings in the database",
            )
        finally:
            pub.close()

    run_collector(config, scenario)
    assert count(influxdb, "SELECT COUNT(occupied) FROM parking") == 2
    if not create:
        status, health = seen["health"]
        assert status == 200 and health["status"] == "degraded"
        assert any("database not found" in r for r in health["reasons"]), health


def _has_db(influx: InfluxDB) -> bool:
    rows = influx.points(DB, "SHOW DATABASES")
    return any(r.get("name") == DB for r in rows)
