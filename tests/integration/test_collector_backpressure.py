"""A burst against a healthy database is absorbed by backpressure, never by the disk spool.

Real Mosquitto 2.0, real InfluxDB 1.6 and the collector in-process with the SHIPPED defaults (only
the broker, the database and the file paths are set). A gateway publishes 400 QoS 1 batches of 200
readings at once; Mosquitto forwards them all (fewer messages than the Receive Maximum of 1000; a
longer burst is delivered far beyond it), so the writer has 80,000 readings in hand while InfluxDB
takes them a few thousand per request: the database is busy, not failing. The spool is
for a database that is down or refusing (docs/collector-writes.md); a burst must wait for request
slots instead, and every reading must be stored exactly once.

Whether a burst outruns the database on its own depends on how the two cores are shared at that
moment, so the test makes the database busy on purpose: InfluxDB is held (SIGSTOP) while the burst
arrives, for at most 3 s, well inside the 10 s write timeout: it answers late, it never fails (no
request is retried). Today's writer (before the backpressure fix) spooled 39,200 of the 80,000
readings here (4,800-39,200 without the hold); the fix spools none.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from collector import config as cfg
from collector.service import Collector
from edge import protocol
from hil.services import Collector as CollectorProcess
from hil.services import InfluxDB, Mosquitto
from tests.integration.test_collector_e2e import DB, run_collector
from tests.integration.waiting import wait_until

pytestmark = pytest.mark.integration

PER_MESSAGE = 200  # readings per batch: a burst of many readings from few messages (~6 KB each)
MESSAGES = 400  # 80,000 readings: far more than 12 batches of the default 5,000 points
T0_MS = int(time.time() * 1000) - 3_600_000


def burst_payloads() -> list[bytes]:
    """Thermometer batches; reading j of batch i is sensor T-j at T0 + i s + j ms: all distinct points."""
    enc = protocol.BatchEncoder(16384)
    out = []
    for i in range(MESSAGES):
        t0 = T0_MS + i * 1000
        enc.begin(1, i, t0)
        for j in range(PER_MESSAGE):
            assert enc.add(f"T-{j:03d}", 4, t0 + j, (36.5 + j / 100, 21.0, i, 30, j % 2 == 0))
        out.append(bytes(enc.finish()))
    return out


def test_burst_with_healthy_database_spools_nothing(
    tmp_path: Path, mosquitto: Mosquitto, influxdb: InfluxDB
) -> None:
    influxdb.create_database(DB)
    # Shipped defaults: nothing under [mqtt]/[writer] beyond where the broker is.
    launcher = CollectorProcess(
        mosquitto.port,
        {"url": influxdb.url, "db": DB},
        client_id="burst-collector",
        metrics=False,
        workdir=str(tmp_path / "collector"),
    )
    config = cfg.load(launcher.write_config(), env={})
    assert config.writer == cfg.WriterConfig()
    assert config.mqtt.receive_maximum == cfg.MqttConfig().receive_maximum
    payloads = burst_payloads()
    peak = {"spool_rows": 0}
    final: dict[str, object] = {}

    def scenario(collector: Collector) -> None:
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="burst-gw", protocol=mqtt.MQTTv5)
        pub.connect("127.0.0.1", mosquitto.port)
        pub.loop_start()
        try:
            # All at once (no waiting for each PUBACK): the broker forwards them as fast as it can,
            # while the database is busy (held) until the collector has every reading in hand.
            influxdb.pause()
            try:
                infos = [pub.publish("city/gw-burst/up", p, qos=1) for p in payloads]
                with contextlib.suppress(AssertionError):
                    wait_until(
                        lambda: collector.writer.stats["points_submitted"] == MESSAGES * PER_MESSAGE,
                        3,
                        "the burst submitted",
                    )
            finally:
                influxdb.resume()
            for info in infos:
                info.wait_for_publish(timeout=30)
                assert info.is_published()

            def done() -> bool:
                rows = collector.writer.stats["spool_rows"]
                assert isinstance(rows, int)
                peak["spool_rows"] = max(peak["spool_rows"], rows)
                return collector.input.acks_sent >= MESSAGES

            wait_until(done, 120, "every burst message acknowledged")
            final.update(collector.writer.stats)
        finally:
            pub.disconnect()
            pub.loop_stop()

    run_collector(config, scenario)
    stats = final

    # Nothing took the disk path: InfluxDB answered every request.
    assert stats["sink_state"] == "ok"
    assert stats["retries"] == 0
    assert stats["points_spooled"] == 0, f"{stats['points_spooled']} readings spooled with a healthy database"
    assert peak["spool_rows"] == 0
    assert stats["spool_rows"] == 0
    assert stats["points_written"] == MESSAGES * PER_MESSAGE
    # Every reading stored exactly once.
    rows = influxdb.points(DB, "SELECT count(body_c) FROM thermometer WHERE gw = 'gw-burst'")
    assert rows and rows[0]["count"] == MESSAGES * PER_MESSAGE
    per_sensor = influxdb.points(DB, "SELECT count(body_c) FROM thermometer GROUP BY sensor")
    assert len(per_sensor) == PER_MESSAGE
    assert {r["count"] for r in per_sensor} == {MESSAGES}
