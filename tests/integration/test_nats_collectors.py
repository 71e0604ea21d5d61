"""Collectors on the JetStream input (service.input = "nats"): two collectors pull from one durable
consumer on a 3-node NATS cluster, as subprocesses against a real InfluxDB 1.x, while MQTT 3.1.1
clients publish QoS 1 batches to the nodes' MQTT listeners. A collector is SIGKILLed mid-stream
(what it held unacknowledged is redelivered to the other after ack_wait) and restarted: every
reading comes back from InfluxDB exactly once, with its values."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import nats
import paho.mqtt.client as mqtt
import pytest

from collector import config as cfg
from collector import jetstream as js
from edge import protocol
from hil.services import Collector, InfluxDB, NatsCluster
from tests.integration.waiting import wait_until

pytestmark = pytest.mark.integration

DB = "citybrain"
PER_BATCH = 5
NOW_MS = int(time.time() * 1000) - 600_000
GATEWAYS = ("gw:0", "gw-1", "gw_2:x", "gw-3")  # ':' in ids, end to end


def nats_settings(cluster: NatsCluster) -> dict[str, object]:
    # Small stream bounds: three 1 GB test nodes must hold max_bytes x replicas.
    return {"servers": ",".join(cluster.nats_urls), "ack_wait": "3s", "max_ack_pending": 64,
            "max_bytes": "256MiB", "max_age": "1h"}


def nats_collector(tmp: Path, name: str, cluster: NatsCluster, influx: InfluxDB) -> Collector:
    return Collector(
        1883,  # [mqtt] is not used with service.input = "nats" (its topic_prefix is)
        {"url": influx.url, "db": DB},
        client_id=name,
        workdir=str(tmp / name),
        settings={
            "service": {"input": "nats", "drain_timeout": "10s"},
            "nats": nats_settings(cluster),
            "writer": {"flush_interval": "50ms", "timeout": "2s"},
        },
    )


def batch(i: int) -> tuple[str, bytes]:
    gw, seq = GATEWAYS[i % len(GATEWAYS)], i // len(GATEWAYS)
    t0 = NOW_MS + seq * 100
    enc = protocol.BatchEncoder(1024)
    enc.begin(1, seq, t0)
    for j in range(PER_BATCH):
        assert enc.add(f"T-{j}", 4, t0 + j, (36.0 + j / 10, 20.5, i, 40 + j, j % 2 == 0))
    return f"city/{gw}/up", bytes(enc.finish())


class Publisher:
    """QoS 1 batches from a background thread, each PUBACKed by the node before the next:
    `batches` of them, then more while `until` (if given) is false, up to four times as many."""

    def __init__(self, port: int, batches: int, until: Callable[[], bool] | None = None) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="nats-gws",
                                  protocol=mqtt.MQTTv311)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        wait_until(self.client.is_connected, 10, "MQTT CONNACK")
        self.batches = batches
        self.until = until
        self.published = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        i = 0
        while i < self.batches or (self.until is not None and not self.until() and i < 4 * self.batches):
            topic, payload = batch(i)
            self.client.publish(topic, payload, qos=1).wait_for_publish(30)
            i += 1
            self.published = i
            time.sleep(0.005)

    def close(self) -> None:
        self.thread.join(60)
        self.client.disconnect()
        self.client.loop_stop()
        assert not self.thread.is_alive() and self.published >= self.batches
        self.batches = self.published  # what every check counts from


def stored(influx: InfluxDB) -> int:
    rows = influx.points(DB, 'SELECT count("body_c") FROM "thermometer"')
    return int(rows[0]["count"]) if rows else 0


def check_exactly_once(influx: InfluxDB, batches: int) -> None:
    rows = influx.points(DB, 'SELECT * FROM "thermometer" GROUP BY *')
    assert len(rows) == batches * PER_BATCH
    assert len({(r["gw"], r["sensor"], r["time"]) for r in rows}) == len(rows)
    assert {r["gw"] for r in rows} == set(GATEWAYS)
    for r in rows[:: max(1, len(rows) // 50)]:
        j = int(r["sensor"][2:])
        assert r["body_c"] == 36.0 + j / 10 and r["distance_cm"] == 40 + j
        assert r["gw"] == GATEWAYS[r["seq"] % len(GATEWAYS)]


def written(c: Collector) -> float:
    try:
        return sum(c.metric("readings_total", channel="up", outcome=o) for o in ("written", "spooled"))
    except OSError:
        return 0.0


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    c = NatsCluster(3, workdir=str(tmp_path / "nats"))
    try:
        c.start()
        yield c
    finally:
        c.cleanup()


async def consumer_info(cluster: NatsCluster) -> dict[str, object]:
    n = cfg.NatsConfig(servers=",".join(cluster.nats_urls))
    nc = await nats.connect(**js.connect_options(n))
    try:
        info = await nc.jetstream().consumer_info(n.stream, f"{n.durable}-up")
        return info.as_dict()
    finally:
        await nc.close()


def test_two_collectors_share_one_durable_consumer_and_survive_a_kill_9(
    tmp_path: Path, cluster: NatsCluster, influxdb: InfluxDB
) -> None:
    influxdb.create_database(DB)
    a, b = (nats_collector(tmp_path, name, cluster, influxdb) for name in ("nats-a", "nats-b"))
    try:
        a.start()
        b.start()
        # Publishing goes on until the restarted `a` has written (on a loaded machine 400 batches
        # can all be out before it is back, and b alone would take them).
        restarted = threading.Event()
        pub = Publisher(cluster.nodes[1].mqtt_port, batches=400,
                        until=lambda: restarted.is_set() and written(a) > 0)
        wait_until(lambda: pub.published > 100 and written(a) > 0, 60, "collector a writing")
        a.kill()  # SIGKILL with whatever it pulled and had not acknowledged
        before = written(b)
        wait_until(lambda: written(b) > before, 30, "survivor writing")
        a.start()
        restarted.set()
        pub.close()
        want = pub.batches * PER_BATCH
        wait_until(lambda: stored(influxdb) >= want, 60, "every reading stored")
        time.sleep(0.5)  # anything still arriving would be a duplicate
        assert stored(influxdb) == want
        check_exactly_once(influxdb, pub.batches)
        assert written(a) > 0 and written(b) > 0  # a took part again after its restart
        info = asyncio.run(consumer_info(cluster))
        assert info["config"]["max_ack_pending"] == 64  # type: ignore[index]
        assert info["config"]["ack_policy"] == "explicit"  # type: ignore[index]
        assert info["num_ack_pending"] == 0 and info["num_pending"] == 0
        assert a.stop() == 0 and b.stop() == 0
    finally:
        a.kill()
        b.kill()


def test_nothing_is_acknowledged_to_jetstream_until_it_is_durable(
    tmp_path: Path, cluster: NatsCluster, influxdb: InfluxDB
) -> None:
    """InfluxDB stopped and the spool bounded small: the collector cannot make readings durable, so
    JetStream holds them unacknowledged (the consumer's ack-pending count); when the database is
    back every reading is stored exactly once and nothing stays pending."""
    influxdb.create_database(DB)
    c = nats_collector(tmp_path, "nats-hold", cluster, influxdb)
    c.tables["storage"]["spool_max_bytes"] = "4KiB"
    c.tables["writer"]["timeout"] = "1s"
    try:
        c.start()
        influxdb.stop()
        pub = Publisher(cluster.nodes[0].mqtt_port, batches=120)
        pub.close()
        # Held: delivered to the collector, not acknowledged, and none of it in the database.
        wait_until(lambda: asyncio.run(consumer_info(cluster))["num_ack_pending"] > 0, 30, "messages held")
        time.sleep(2.0)
        info = asyncio.run(consumer_info(cluster))
        assert info["num_ack_pending"] > 0 and info["num_pending"] + info["num_ack_pending"] > 0
        assert c.metric("not_durable_total") > 0
        influxdb.start()
        want = pub.batches * PER_BATCH
        wait_until(lambda: stored(influxdb) >= want, 90, "every reading stored after the outage")
        time.sleep(0.5)
        assert stored(influxdb) == want
        check_exactly_once(influxdb, pub.batches)
        wait_until(lambda: asyncio.run(consumer_info(cluster))["num_ack_pending"] == 0, 30, "all acked")
        assert c.stop() == 0
    finally:
        c.kill()
