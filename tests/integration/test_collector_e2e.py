"""The collector end to end: real Mosquitto, real InfluxDB 1.x, the real writer and spool.

Batches are built by the gateway's own encoder (edge/protocol.py) and published at QoS 1. Every
reading must come back from InfluxDB exactly once with its type (bool / int / float), a redelivered
batch must not be doubled, hostile payloads mixed into good traffic must be dead-lettered and counted
while the good ones land, and a collector killed with SIGKILL mid-stream loses nothing after restart.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cbor2
import paho.mqtt.client as mqtt
import pytest

from collector import config as cfg
from collector.deadletter import DeadLetters
from collector.service import Collector, run
from collector.validate import load_kinds
from edge import protocol
from hil.services import Collector as CollectorProcess
from hil.services import InfluxDB, Mosquitto
from tests.integration.waiting import await_until, wait_until

pytestmark = pytest.mark.integration

DB = "citybrain"
NOW_MS = int(time.time() * 1000) - 60_000


def collector_process(
    tmp_path: Path, broker: Mosquitto, influx: InfluxDB, client_id: str, *, metrics: bool = False
) -> CollectorProcess:
    """The collector these tests run, in-process (`collector_config`) or as a subprocess."""
    return CollectorProcess(
        broker.port,
        {"url": influx.url, "db": DB},
        client_id=client_id,
        metrics=metrics,
        workdir=str(tmp_path / "collector"),
        settings={
            "mqtt": {"receive_maximum": 50},
            "writer": {"flush_interval": "50ms"},
            "service": {"drain_timeout": "10s"},
            "gateways": {"gw-1": {"site": "wulin-p3", "district": "xihu"}, "gw-2": {}},
        },
    )


def collector_config(tmp_path: Path, broker: Mosquitto, influx: InfluxDB, client_id: str) -> cfg.Config:
    return cfg.load(collector_process(tmp_path, broker, influx, client_id).write_config(), env={})


class Publisher:
    """A gateway-side MQTT client publishing QoS 1 and waiting for each PUBACK."""

    def __init__(self, port: int, client_id: str = "test-gateway") -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(timeout=10)
        assert info.is_published(), topic

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def publisher(mosquitto: Mosquitto) -> Iterator[Publisher]:
    pub = Publisher(mosquitto.port)
    yield pub
    pub.close()


def encode_batch(boot: int, seq: int, readings: list[tuple[str, int, int, tuple[Any, ...]]]) -> bytes:
    enc = protocol.BatchEncoder(4096)
    enc.begin(boot, seq, readings[0][2])
    for sensor, kind, ts, fields in readings:
        assert enc.add(sensor, kind, ts, fields)
    return bytes(enc.finish())


def field_types(influx: InfluxDB, measurement: str) -> dict[str, str]:
    return {
        row["fieldKey"]: row["fieldType"]
        for row in influx.points(DB, f'SHOW FIELD KEYS FROM "{measurement}"')
    }


def run_collector(config: cfg.Config, scenario: Callable[[Collector], Any]) -> Collector:
    """Run the collector in-process (the real `run`), call `scenario(collector)` in a worker thread,
    then shut it down through the injected trigger and return it for inspection."""

    async def main() -> Collector:
        stop = asyncio.Event()
        box: list[Collector] = []
        task = asyncio.create_task(run(config, shutdown=stop.wait, started=box.append))
        await await_until(lambda: bool(box) or task.done(), 30, "collector start")
        collector = box[0]
        await asyncio.wait_for(collector.input.subscribed.wait(), 30)
        try:
            await asyncio.to_thread(scenario, collector)
        finally:
            stop.set()
            assert await task == 0
        return collector

    return asyncio.run(main())


def test_every_reading_exactly_once_with_types_and_hostile_traffic(
    tmp_path: Path, mosquitto: Mosquitto, influxdb: InfluxDB, publisher: Publisher
) -> None:
    influxdb.create_database(DB)
    config = collector_config(tmp_path, mosquitto, influxdb, "e2e-collector")
    # 30 batches x 4 readings of four kinds, with bool / int / float fields and a Chinese sensor id.
    sent: list[tuple[str, str, int, tuple[Any, ...]]] = []
    payloads: list[bytes] = []
    for seq in range(30):
        t = NOW_MS + seq * 1000
        readings = [
            (f"P-{seq:02d}", 1, t, (seq % 2 == 0, 1, seq, 125, None, None, 3600, -71)),
            # water_level_cm sent as an int: a float is due, so it is widened (and stored as 20.0)
            (f"井盖-{seq}", 2, t + 1, (1.5, False, None, 20, 0.0, None, 3500, None)),
            (f"W-{seq}", 3, t + 2, (7.25, 1.0, None, None, None, None, None, None, 18.0)),
            (f"T-{seq}", 4, t - 3, (36.6, 21.0, seq, 30, True)),
        ]
        payloads.append(encode_batch(1, seq, readings))
        for sensor, kind, ts, fields in readings:
            sent.append((sensor, ("parking", "manhole", "water", "thermometer")[kind - 1], ts, fields))
    hostile = [
        b"\xff\xff\xff",
        b"\x00" * 70_000,
        cbor2.dumps({0: 2, 1: 1, 2: 1, 3: NOW_MS, 4: []}),
        cbor2.dumps(
            {0: 1, 1: 9, 2: 1, 3: NOW_MS, 4: [["bad\nsensor", 1, 0, {0: True}], ["ok-1", 1, 0, {0: True}]]}
        ),
        cbor2.dumps(
            {0: 1, 1: 9, 2: 2, 3: NOW_MS, 4: [["nan-1", 3, 0, {0: float("nan")}], ["ok-2", 9, 0, {0: 1}]]}
        ),
        cbor2.dumps({0: 1, 1: 9, 2: 3, 3: NOW_MS + 3_600_000, 4: [["future", 1, 0, {0: True}]]}),
        cbor2.dumps({0: 1, 1: 9, 2: 4, 3: 1_000, 4: [["ancient", 1, 0, {0: True}]]}),
    ]

    def scenario(collector: Collector) -> None:
        for i, payload in enumerate(payloads):
            publisher.publish("city/gw-1/up", payload)
            if i % 5 == 0:
                publisher.publish("city/gw-1/up", hostile[(i // 5) % len(hostile)])
        for h in hostile:
            publisher.publish("city/gw-2/up", h)
        first = len(payloads) + 6 + len(hostile)
        wait_until(lambda: collector.input.acks_sent >= first, 60, "first copies acknowledged")
        # Sent again after they were written: a gateway that missed its PUBACKs resends. (A copy that
        # arrives while the first is still being written is written twice, harmlessly: same point.)
        for payload in payloads[:5]:
            publisher.publish("city/gw-1/up", payload)
        publisher.publish(
            "city/gw-1/alarm",
            bytes(
                protocol.encode_alarm(
                    protocol.BatchEncoder(512),
                    1,
                    0,
                    "fever",
                    "T-0",
                    4,
                    NOW_MS,
                    (39.5, None, None, None, None),
                )
            ),
        )
        publisher.publish(
            "city/gw-1/status", cbor2.dumps({"v": 1, "state": "online", "boot": 1, "ts": NOW_MS})
        )
        publisher.publish("city/gw\\x/up", payloads[0])
        expected = len(payloads) + 6 + len(hostile) + 5 + 3
        wait_until(lambda: collector.input.acks_sent >= expected, 60, "every message acknowledged")

    collector = run_collector(config, scenario)
    m = collector.metrics

    # Every good reading exactly once, with its tags and value.
    rows = {
        name: influxdb.points(DB, f"SELECT * FROM \"{name}\" WHERE gw = 'gw-1' AND sensor !~ /^ok-/")
        for name in ("parking", "manhole", "water", "thermometer")
    }
    assert sum(len(r) for r in rows.values()) == len(sent)
    by_key = {(r["sensor"], name, r["time"]): r for name, rs in rows.items() for r in rs}
    assert len(by_key) == len(sent)
    kinds = load_kinds()
    names = {k.name: k.names for k in kinds.values()}
    for sensor, name, ts, fields in sent:
        row = by_key[(sensor, name, ts)]
        assert row["site"] == "wulin-p3" and row["district"] == "xihu"
        for field, value in zip(names[name], fields, strict=False):
            assert row.get(field) == value, (sensor, field)  # None: absent from the point
    assert by_key[("P-02", "parking", NOW_MS + 2000)]["occupied"] is True
    assert by_key[("井盖-3", "manhole", NOW_MS + 3001)]["open"] is False
    assert by_key[("T-7", "thermometer", NOW_MS + 6997)]["seq"] == 7
    # Types as sent: bool stays bool, int stays int, float stays float (21.0 is not 21i).
    assert field_types(influxdb, "parking") == {
        "occupied": "boolean",
        "event": "integer",
        "seq": "integer",
        "mag_x": "integer",
        "battery_mv": "integer",
        "rssi_dbm": "integer",
    }
    assert field_types(influxdb, "thermometer") == {
        "body_c": "float",
        "ambient_c": "float",
        "seq": "integer",
        "distance_cm": "integer",
        "mask": "boolean",
    }
    assert field_types(influxdb, "water") == {"ph": "float", "turbidity_ntu": "float", "temp_c": "float"}
    assert field_types(influxdb, "manhole") == {
        "tilt_deg": "float",
        "open": "boolean",
        "water_level_cm": "float",  # sent as 20, widened
        "ch4_ppm": "float",
        "battery_mv": "integer",
    }

    # The good readings inside partly bad batches landed; the bad ones did not.
    ok = influxdb.points(DB, 'SELECT * FROM "parking" WHERE sensor =~ /^ok-/')
    assert {r["sensor"] for r in ok} == {"ok-1"}
    assert (
        influxdb.points(DB, "SELECT * FROM \"parking\" WHERE sensor = 'future' OR sensor = 'ancient'") == []
    )

    alarm = influxdb.points(DB, 'SELECT * FROM "alarm"')
    assert [(a["code"], a["sensor"], a["body_c"]) for a in alarm] == [("fever", "T-0", 39.5)]
    status = influxdb.points(DB, 'SELECT * FROM "gateway_status"')
    assert [(s["gw"], s["state"]) for s in status] == [("gw-1", "online")]

    # Dead letters: counted by reason, in the store and in the metrics.
    dead = DeadLetters(config.storage.dead_letter_path)
    try:
        counts = dict(dead.counts)
    finally:
        dead.close()
    assert counts["bad_cbor"] >= 2 and counts["too_large"] >= 2 and counts["bad_version"] >= 2
    for reason in (
        "bad_sensor_id",
        "not_finite",
        "unknown_kind",
        "time_in_future",
        "time_too_old",
        "bad_gateway_id",
    ):
        assert counts.get(reason, 0) >= 1, reason
    for reason, n in counts.items():
        assert m.dead_letters.get(reason=reason) == n
    assert m.dedup_hits.get() == 5
    assert m.readings.get(channel="up", outcome="written") >= len(sent)


def test_kill_9_mid_stream_loses_nothing(tmp_path: Path, mosquitto: Mosquitto, influxdb: InfluxDB) -> None:
    influxdb.create_database(DB)
    collector = collector_process(tmp_path, mosquitto, influxdb, "e2e-kill", metrics=True)
    pub = Publisher(mosquitto.port, "kill-gateway")
    try:
        # First run registers the persistent session (subscriptions) before anything is published.
        collector.start()
        n_batches, per_batch = 200, 5

        def publish(seqs: range) -> None:
            for seq in seqs:
                t = NOW_MS + seq * 10
                readings = [(f"K-{i}", 4, t + i, (36.0 + i, None, seq, None, None)) for i in range(per_batch)]
                pub.publish("city/gw-1/up", encode_batch(2, seq, readings))

        # Batches 0-149 stream in; the collector is killed once some are written, whatever is in
        # flight at that moment (received, being written, written but not acknowledged).
        thread = threading.Thread(target=publish, args=(range(150),))
        thread.start()
        wait_until(lambda: _count(influxdb, "thermometer", "K-") > 100, 60, "some points written")
        collector.kill()  # SIGKILL: no drain, no clean disconnect
        thread.join(60)
        assert not thread.is_alive()
        # Batches 150-199 arrive while no collector runs: the broker queues them for the session.
        publish(range(150, n_batches))
        collector.start()  # returns once the restarted collector is healthy (subscribed)
        want = n_batches * per_batch
        wait_until(lambda: _count(influxdb, "thermometer", "K-") >= want, 90, "every point after restart")
        assert _count(influxdb, "thermometer", "K-") == want
        assert collector.stop() == 0
    finally:
        pub.close()
        collector.kill()


def _count(influx: InfluxDB, measurement: str, prefix: str, field: str = "body_c") -> int:
    rows = influx.points(DB, f'SELECT count("{field}") FROM "{measurement}" WHERE sensor =~ /^{prefix}/')
    return int(rows[0]["count"]) if rows else 0


def test_broker_restart_mid_stream_loses_nothing(
    tmp_path: Path, mosquitto: Mosquitto, influxdb: InfluxDB, publisher: Publisher
) -> None:
    """The broker goes down (cleanly) while the collector holds unacknowledged messages: those acks
    are never sent on the new connection, the broker redelivers from the resumed session, and every
    point still lands exactly once."""
    influxdb.create_database(DB)
    config = collector_config(tmp_path, mosquitto, influxdb, "e2e-restart")
    n_batches, per_batch = 60, 4

    def payload(seq: int) -> bytes:
        t = NOW_MS + seq * 10
        return encode_batch(3, seq, [(f"R-{i}", 3, t + i, (7.0 + i,)) for i in range(per_batch)])

    def scenario(collector: Collector) -> None:
        for seq in range(n_batches // 2):
            publisher.publish("city/gw-1/up", payload(seq))
        mosquitto.restart()  # whatever the collector had not acknowledged yet stays in the session
        wait_until(lambda: collector.input.connects >= 2 and collector.input.connected, 60, "reconnect")
        wait_until(publisher.client.is_connected, 60, "the publisher reconnected")  # paho: 1 s or more
        for seq in range(n_batches // 2, n_batches):
            publisher.publish("city/gw-1/up", payload(seq))
        want = n_batches * per_batch
        wait_until(lambda: _count(influxdb, "water", "R-", "ph") >= want, 60, "every point")

    collector = run_collector(config, scenario)
    assert _count(influxdb, "water", "R-", "ph") == n_batches * per_batch
    assert collector.input.connects >= 2


def test_database_outage_is_spooled_acknowledged_and_replayed(
    tmp_path: Path, mosquitto: Mosquitto, influxdb: InfluxDB, publisher: Publisher
) -> None:
    """InfluxDB hangs (SIGSTOP): messages are still acknowledged once their points are in the spool,
    and every point reaches the database after it answers again."""
    influxdb.create_database(DB)
    config = collector_config(tmp_path, mosquitto, influxdb, "e2e-outage")
    config = cfg.override(config, "writer.timeout", "1s")
    n_batches, per_batch = 40, 3

    def payload(seq: int) -> bytes:
        t = NOW_MS + seq * 10
        return encode_batch(
            4, seq, [(f"O-{i}", 2, t + i, (float(i), seq % 2 == 1)) for i in range(per_batch)]
        )

    def scenario(collector: Collector) -> None:
        for seq in range(10):
            publisher.publish("city/gw-1/up", payload(seq))
        wait_until(lambda: collector.input.acks_sent >= 10, 30, "first batches acknowledged")
        influxdb.pause()
        try:
            for seq in range(10, n_batches):
                publisher.publish("city/gw-1/up", payload(seq))
            wait_until(lambda: collector.input.acks_sent >= n_batches, 60, "acknowledged from the spool")
            assert int(collector.writer.stats["points_spooled"]) > 0  # type: ignore[call-overload]
        finally:
            influxdb.resume()
        want = n_batches * per_batch
        wait_until(lambda: _count(influxdb, "manhole", "O-", "tilt_deg") >= want, 90, "spool replayed")

    run_collector(config, scenario)
    assert _count(influxdb, "manhole", "O-", "tilt_deg") == n_batches * per_batch
