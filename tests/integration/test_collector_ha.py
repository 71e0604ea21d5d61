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

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import paho.mqtt.client as mqtt
import pytest

from edge import protocol
from hil.services import InfluxDB, Mosquitto, free_port, http_request

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DB = "citybrain"
GROUP = "collectors"
NOW_MS = int(time.time() * 1000) - 600_000
PER_BATCH = 5


class CollectorProcess:
    """One collector subprocess with its own client id, spool, dead letters and metrics port."""

    def __init__(self, tmp: Path, name: str, broker: Mosquitto, influx: InfluxDB) -> None:
        self.name = name
        self.metrics_port = free_port()
        self.config = tmp / f"{name}.toml"
        self.config.write_text(
            f"""
[mqtt]
port = {broker.port}
client_id = "{name}"
share_group = "{GROUP}"
receive_maximum = 50
reconnect_max = "2s"
[influx]
url = "{influx.url}"
db = "{DB}"
[storage]
spool_path = "{tmp}/{name}-spool.sqlite"
dead_letter_path = "{tmp}/{name}-dead.sqlite"
[writer]
flush_interval = "50ms"
timeout = "2s"
[metrics]
port = {self.metrics_port}
[service]
drain_timeout = "10s"
"""
        )
        self._log: IO[bytes] = open(tmp / f"{name}.log", "ab")  # noqa: SIM115 - closed in close()
        self.proc: subprocess.Popen[bytes] | None = None
        self.kills = 0

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "collector.cli", "run", "--config", str(self.config)],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=self._log,
        )
        wait_until(self.healthy, 30, f"{self.name} subscribed")

    def healthy(self) -> bool:
        try:
            status, _ = http_request(f"http://127.0.0.1:{self.metrics_port}/healthz", timeout=2)
        except OSError:
            return False
        return status == 200

    def metric(self, series: str) -> float:
        """One series of this process's /metrics (0 when absent or not running)."""
        try:
            _, body = http_request(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2)
        except OSError:
            return 0.0
        want = f"citybrain_collector_{series} "
        for line in body.decode().splitlines():
            if line.startswith(want):
                return float(line[len(want) :])
        return 0.0

    def written(self) -> float:
        """Readings this process has made durable since it started."""
        return self.metric('readings_total{channel="up",outcome="written"}')

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)  # no drain, no clean disconnect, no acks
        self.proc.wait(10)
        self.kills += 1

    def stop(self) -> int:
        """SIGTERM and wait: the clean shutdown (drain, acks, disconnect) must exit 0."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


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


def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def published(pub: Gateways, n: float) -> Callable[[], bool]:
    return lambda: pub.published >= n


def writing(c: CollectorProcess, before: float) -> Callable[[], bool]:
    return lambda: c.written() > before


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
def pair(tmp_path: Path, mosquitto: Mosquitto, influxdb: InfluxDB) -> Iterator[list[CollectorProcess]]:
    influxdb.create_database(DB)
    collectors = [CollectorProcess(tmp_path, name, mosquitto, influxdb) for name in ("ha-a", "ha-b")]
    try:
        for c in collectors:
            c.start()
        yield collectors
    finally:
        for c in collectors:
            c.close()


def test_shared_subscription_survives_kill_9_three_times(
    mosquitto: Mosquitto, influxdb: InfluxDB, pair: list[CollectorProcess]
) -> None:
    a, b = pair
    pub = Gateways(mosquitto.port, batches=600)
    try:
        pub.start()
        for victim, at in ((a, 0.2), (b, 0.45), (a, 0.7)):
            # Killed with whatever it holds: received, being written, written but not acknowledged.
            wait_until(published(pub, pub.batches * at), 60, "publishing progress")
            wait_until(lambda: stored(influxdb) > 0, 30, "points written")
            victim.kill9()
            other = b if victim is a else a
            before = other.written()
            # The survivor keeps taking its share while the victim is down...
            wait_until(writing(other, before), 30, "survivor writing")
            victim.start()  # ...and the victim's session hands it back what was queued for it.
        pub.join()
        want = pub.batches * PER_BATCH
        wait_until(lambda: stored(influxdb) >= want, 90, "every reading stored")
        time.sleep(0.5)  # anything still arriving would be a duplicate: there must be none
        assert stored(influxdb) == want
        check_values(influxdb, pub)
        assert a.kills == 2 and b.kills == 1
        assert a.written() > 0 and b.written() > 0  # both took part after their restarts
        assert a.stop() == 0 and b.stop() == 0
    finally:
        pub.close()


def test_database_stopped_and_started_mid_stream(
    mosquitto: Mosquitto, influxdb: InfluxDB, pair: list[CollectorProcess]
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
        wait_until(lambda: sum(c.metric('writer{stat="spool_lines"}') for c in pair) > 0, 30, "spooling")
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
