"""The service launchers themselves: each server starts on a free port, takes a write, answers a
query with it, and leaves no process behind once stopped."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from collector import config as cfg
from hil.services import Collector, InfluxDB, Mosquitto, Service, VictoriaMetrics, http_request

pytestmark = pytest.mark.integration

LINE = "parking,sensor=P-01,gw=gw1 occupied=true,battery_mv=3600i,temp_c=21.5 {ts}\n"


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie still answers kill(0); Popen.wait() reaped ours, so any answer means it runs.
    return False


def _stop_and_check(service: Service) -> None:
    assert service.proc is not None
    pid = service.proc.pid
    service.stop()
    assert service.proc is None
    assert _pid_gone(pid)


def test_influxdb_write_query_stop(influxdb: InfluxDB) -> None:
    assert influxdb.port not in (8086, 8088) and influxdb.rpc_port != 8088
    ts = int(time.time() * 1000)
    influxdb.create_database("city")
    influxdb.write("city", LINE.format(ts=ts))

    rows = influxdb.points("city", "SELECT * FROM parking")

    assert rows == [
        {"time": ts, "occupied": True, "battery_mv": 3600, "temp_c": 21.5, "sensor": "P-01", "gw": "gw1"}
    ]
    assert isinstance(rows[0]["battery_mv"], int)
    _stop_and_check(influxdb)


def test_influxdb_rejects_bad_line(influxdb: InfluxDB) -> None:
    influxdb.create_database("city")
    status, body = http_request(influxdb.write_url("city"), b"parking occupied=\n", method="POST")
    assert status == 400, body


def test_victoriametrics_write_export_stop(victoriametrics: VictoriaMetrics) -> None:
    ts = int(time.time() * 1000)
    # The InfluxDB v2 write path, as a collector configured for VictoriaMetrics uses it.
    status, body = http_request(
        f"{victoriametrics.url}/api/v2/write?precision=ms", LINE.format(ts=ts).encode(), method="POST"
    )
    assert status == 204, body

    series = victoriametrics.export('{sensor="P-01"}', min_series=3)

    got = {s["metric"]["__name__"]: (s["values"], s["timestamps"], s["metric"]["gw"]) for s in series}
    assert got == {
        "parking_occupied": ([1], [ts], "gw1"),
        "parking_battery_mv": ([3600], [ts], "gw1"),
        "parking_temp_c": ([21.5], [ts], "gw1"),
    }
    answer = victoriametrics.query('parking_battery_mv{sensor="P-01"}', time_ms=ts, min_results=1)
    assert answer["status"] == "success"
    assert [r["value"][1] for r in answer["data"]["result"]] == ["3600"]
    _stop_and_check(victoriametrics)


def test_mosquitto_round_trip_stop(mosquitto: Mosquitto) -> None:
    assert mosquitto.port != 1883
    got: list[bytes] = []
    done = threading.Event()

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        got.append(msg.payload)
        done.set()

    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="t-sub")
    sub.on_message = on_message
    sub.connect("127.0.0.1", mosquitto.port)
    sub.subscribe("city/gw1/up", qos=1)
    sub.loop_start()
    try:
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="t-pub")
        pub.connect("127.0.0.1", mosquitto.port)
        pub.loop_start()
        try:
            # Retry the publish until the subscription is in place (SUBACK is asynchronous).
            deadline = time.monotonic() + 10
            while not done.is_set() and time.monotonic() < deadline:
                pub.publish("city/gw1/up", b"\xa1\x00\x01", qos=1).wait_for_publish(5)
                done.wait(0.2)
        finally:
            pub.disconnect()
            pub.loop_stop()
    finally:
        sub.disconnect()
        sub.loop_stop()
    assert got and got[0] == b"\xa1\x00\x01"
    _stop_and_check(mosquitto)


def test_collector_config_ready_kill_restart_stop(
    tmp_path: Path, mosquitto: Mosquitto, influxdb: InfluxDB
) -> None:
    collector = Collector(
        mosquitto.port,
        {"url": influxdb.url, "db": "city"},
        client_id="t-collector",
        workdir=str(tmp_path / "collector"),
        settings={"writer": {"flush_interval": "50ms"}, "gateways": {"gw:1": {"site": "文三路"}}},
    )
    # The file it writes is what the collector loads: its own keys, the settings merged in, a
    # gateway id that needs quoting and a non-ASCII value intact.
    config = cfg.load(collector.write_config(), env={})
    assert (config.mqtt.port, config.mqtt.client_id) == (mosquitto.port, "t-collector")
    assert (config.influx.url, config.influx.db) == (influxdb.url, "city")
    assert config.metrics.port == collector.port and config.storage.spool_path == str(collector.spool_path)
    assert config.writer.flush_interval == 0.05 and config.gateways["gw:1"].site == "文三路"
    try:
        collector.start()  # ready: /healthz says connected and subscribed
        assert collector.metric("mqtt_connected") == 1
        collector.kill()
        with pytest.raises(OSError):
            collector.metric("mqtt_connected")
        collector.start()  # the same session, spool and log
        assert collector.metric("mqtt_connected") == 1
        assert collector.proc is not None
        pid = collector.proc.pid
        assert collector.stop() == 0  # SIGTERM: a clean drain
        assert _pid_gone(pid)
    finally:
        collector.kill()


def test_collector_without_metrics_is_ready_by_its_log(
    tmp_path: Path, mosquitto: Mosquitto, influxdb: InfluxDB
) -> None:
    workdir = str(tmp_path / "collector")
    with Collector(mosquitto.port, {"url": influxdb.url}, metrics=False, workdir=workdir) as collector:
        assert collector.port == 0 and "MQTT subscribed" in collector.log_tail()
        _stop_and_check(collector)


@pytest.mark.parametrize("cls", [InfluxDB, VictoriaMetrics, Mosquitto])
def test_context_manager_removes_temp_dir(cls: type[Service]) -> None:
    with cls() as service:
        assert service.proc is not None
        pid = service.proc.pid
        workdir = Path(service.dir)
        assert workdir.is_dir()
    assert _pid_gone(pid)
    assert not workdir.exists()
