"""Two collectors sharing one MQTT 5 subscription (`$share/<group>/...`) on a real Mosquitto, against
a real InfluxDB 1.x, both as subprocesses (`python -m collector.cli run`), with the failures a
deployment sees: collectors killed with SIGKILL mid-stream (and restarted, as systemd does), and the
database stopped for a while and started again. Every reading published must come back from
InfluxDB exactly once (a rewrite of the same point overwrites it, so an exact count is the check),
with its values.

What Mosquitto 2.0 does with a dead member of a share group (seen here, and why the collector is
restarted rather than left dead): the member's persistent session keeps receiving its round-robin
share while it is offline, and gets it on reconnect. docs/scaling.md says what that means in a city.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edge import protocol
from hil.services import Collector, InfluxDB, Mosquitto
from tests.integration.waiting import wait_until

pytestmark = pytest.mark.integration

DB = "citybrain"
GROUP = "collectors"
NOW_MS = int(time.time() * 1000) - 600_000
PER_BATCH = 5


def collector(tmp: Path, name: str, broker: Mosquitto, influx: InfluxDB) -> Collector:
    """One collector of the share group, with its own client id, spool, dead letters and metrics port."""
    return Collector(
        broker.port,
        {"url": influx.url, "db": DB},
        client_id=name,
        workdir=str(tmp / name),
        settings={
            "mqtt": {"share_group": GROUP, "receive_maximum": 50, "reconnect_max": "2s"},
            "writer": {"flush_interval": "50ms", "timeout": "2s"},
            "service": {"drain_timeout": "10s"},
        },
    )


def metric(c: Collector, name: str, **labels: str) -> float:
    """One series of a collector's /metrics (0 when absent or not running)."""
    try:
        return c.metric(name, **labels)
    except OSError:
        return 0.0


def written(c: Collector) -> float:
    """Readings this process has made durable since it started."""
    # Stored by the database, or durable in the spool to be written later.
    return sum(metric(c, "readings_total", channel="up", outcome=o) for o in ("written", "spooled"))


class Gateways:
    """Publishes batches from several gateway ids at QoS 1 in a background thread, each PUBACKed."""

    def __init__(self, port: int, batches: int, gateways: int = 4) -> None:
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id="ha-gateways", protocol=mqtt.MQTTv5
        )
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.batches = batches
        self.gateways = gateways
        self.published = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def payload(self, i: int) -> tuple[str, bytes]:
        gw, seq = i % self.gateways, i // self.gateways
        t0 = NOW_MS + seq * 100
        enc = protocol.BatchEncoder(1024)
        enc.begin(1, seq, t0)
        for j in range(PER_BATCH):
            # bool, int and float fields (thermometer: body_c, ambient_c, seq, distance_cm, mask)
            assert enc.add(f"T-{j}", 4, t0 + j, (36.0 + j / 10, 20.5, i, 40 + j, j % 2 == 0))
        return f"city/gw-{gw}/up", bytes(enc.finish())

    def _run(self) -> None:
        for i in range(self.batches):
            topic, payload = self.payload(i)
            info = self.client.publish(topic, payload, qos=1)
            info.wait_for_publish(timeout=30)
            self.published += 1
            time.sleep(0.01)

    def start(self) -> None:
        self.thread.start()

    def join(self) -> None:
        self.thread.join(120)
        assert not self.thread.is_alive()
        assert self.published == self.batches

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def published(pub: Gateways, n: float) -> Callable[[], bool]:
    return lambda: pub.published >= n


def writing(c: Collector, before: float) -> Callable[[], bool]:
    return lambda: written(c) > before


def stored(influx: InfluxDB) -> int:
    rows = influx.points(DB, 'SELECT count("body_c") FROM "thermometer"')
    return int(rows[0]["count"]) if rows else 0


def check_values(influx: InfluxDB, pub: Gateways) -> None:
    """Every point exactly once per (gateway, sensor, time), with the values that were sent."""
    rows = influx.points(DB, 'SELECT * FROM "thermometer" GROUP BY *')
    assert len(rows) == pub.batches * PER_BATCH
    keys = {(r["gw"], r["sensor"], r["time"]) for r in rows}
    assert len(keys) == len(rows)
    for r in rows[:: max(1, len(rows) // 50)]:
        j = int(r["sensor"][2:])
        assert r["body_c"] == 36.0 + j / 10 and r["ambient_c"] == 20.5
        assert r["distance_cm"] == 40 + j and r["mask"] is (j % 2 == 0)
        assert int(r["gw"][3:]) == r["seq"] % pub.gateways


@pytest.fixture
def pair(tmp_path: Path, mosquitto: Mosquitto, influxdb: InfluxDB) -> Iterator[list[Collector]]:
    influxdb.create_database(DB)
    collectors = [collector(tmp_path, name, mosquitto, influxdb) for name in ("ha-a", "ha-b")]
    try:
        for c in collectors:
            c.start()
        yield collectors
    finally:
        for c in collectors:
            c.kill()


def test_shared_subscription_survives_kill_9_three_times(
    mosquitto: Mosquitto, influxdb: InfluxDB, pair: list[Collector]
) -> None:
    a, b = pair
    kills: Counter[str] = Counter()
    pub = Gateways(mosquitto.port, batches=600)
    try:
        pub.start()
        for victim, at in ((a, 0.2), (b, 0.45), (a, 0.7)):
            # Killed with whatever it holds: received, being written, written but not acknowledged.
            wait_until(published(pub, pub.batches * at), 60, "publishing progress")
            wait_until(lambda: stored(influxdb) > 0, 30, "points written")
            victim.kill()  # SIGKILL: no drain, no clean disconnect, no acks
            kills[victim.client_id] += 1
            other = b if victim is a else a
            before = written(other)
            # The survivor keeps taking its share while the victim is down...
            wait_until(writing(other, before), 30, "survivor writing")
            victim.start()  # ...and the victim's session hands it back what was queued for it.
        pub.join()
        want = pub.batches * PER_BATCH
        wait_until(lambda: stored(influxdb) >= want, 90, "every reading stored")
        time.sleep(0.5)  # anything still arriving would be a duplicate: there must be none
        assert stored(influxdb) == want
        check_values(influxdb, pub)
        assert kills == {"ha-a": 2, "ha-b": 1}
        assert written(a) > 0 and written(b) > 0  # both took part after their restarts
        assert a.stop() == 0 and b.stop() == 0
    finally:
        pub.close()


def test_database_stopped_and_started_mid_stream(
    mosquitto: Mosquitto, influxdb: InfluxDB, pair: list[Collector]
) -> None:
    """InfluxDB goes away (SIGTERM, port closed) for a few seconds mid-stream: both collectors spool,
    keep acknowledging, and replay into the restarted database; nothing lost, nothing doubled."""
    pub = Gateways(mosquitto.port, batches=400)
    try:
        pub.start()
        wait_until(lambda: stored(influxdb) > 100, 60, "points written")
        influxdb.stop()
        wait_until(lambda: pub.published >= pub.batches * 0.6, 60, "publishing while the database is down")
        # Acknowledged from the spool while the database is away.
        wait_until(lambda: sum(metric(c, "writer", stat="spool_lines") for c in pair) > 0, 30, "spooling")
        time.sleep(1)
        influxdb.start()
        pub.join()
        want = pub.batches * PER_BATCH
        wait_until(lambda: stored(influxdb) >= want, 90, "spool replayed")
        time.sleep(0.5)
        assert stored(influxdb) == want
        check_values(influxdb, pub)
        for c in pair:
            assert c.stop() == 0
    finally:
        pub.close()
