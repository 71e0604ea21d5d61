"""What an operator sees when things go wrong: real Mosquitto, real InfluxDB 1.6.7, the real collector.

A database that refuses lines (a field-type conflict answered as a partial write) is loud: logged
once per episode, counted in its own metric, shown by /healthz, and never counted as written. The
dead-letter store is bounded and can be listed, shown and replayed (twice stores nothing twice).
A missing database is held until it exists, or created with `influx.create_database = true`.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest

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
    tmp: Path, broker: Mosquitto, influx: InfluxDB, name: str, **settings: dict[str, object]
) -> CollectorProcess:
    influx_table: dict[str, object] = {"url": influx.url, "db": DB, **settings.pop("influx", {})}
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
    """Three thermometer readings (body_c a float, as the kind says) and two parking readings."""
    t = NOW_MS + seq * 1000
    readings: list[tuple[str, int, int, tuple[Any, ...]]] = [
        (f"T-{i}", 4, t + i, (36.5 + i / 10, 21.0, seq, 30, True)) for i in range(gw_readings)
    ]
    readings += [(f"P-{i}", 1, t + i, (True, 1, seq, 12.5, None, None, 3600, -71)) for i in range(2)]
    return encode_batch(1, seq, readings)


def test_a_field_type_conflict_is_loud_and_never_counted_written(
    tmp_path: Path, mosquitto: Mosquitto, influxdb: InfluxDB, caplog: pytest.LogCaptureFixture
) -> None:
    influxdb.create_database(DB)
    # The series is poisoned: body_c is a string in this shard, so InfluxDB refuses every float.
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
    finally:
        dead.close()
    assert len(entries) == 12 and {e.gateway for e in entries} == {"gw-1"}
    assert all(e.payload.startswith(b"thermometer,") for e in entries)
    # Logged once for the episode (12 refusals, one gateway), then summarised, never 12 lines.
    refused = [r.getMessage() for r in caplog.records if r.name == "collector.refused"]
    started = [m for m in refused if m.startswith("refused db_type_conflict from gateway gw-1")]
    assert len(started) == 1, refused
    assert "sha256:" in started[0]
    assert any("11 more" in m for m in refused), refused
