"""The collector end to end into a real VictoriaMetrics through the InfluxDB 2.x sink (`/api/v2/write`):
gateway-encoded batches published at QoS 1 on a real Mosquitto, every reading read back exactly once
with the right values.

How InfluxDB data maps onto VictoriaMetrics (what the asserts below pin down):
- a field becomes a series `<measurement>_<field>`, the tags become its labels; `org`, `bucket` and the
  token are accepted and ignored (no label is added for them);
- every value is a float64: true -> 1, false -> 0, an int -> the same number as a float (exact to
  2^53), a float -> itself to about 12 significant decimal digits (VictoriaMetrics' storage format);
- a text field (a gateway status `state`) is stored as a meaningless 0; the numeric fields of the
  same line are stored as sent (statuses are for InfluxDB; on VictoriaMetrics ignore `*_state`);
- a rewrite of the same point is a second sample, not an overwrite (InfluxDB overwrites): redelivery
  after a crash can double a sample unless VictoriaMetrics runs with `-dedup.minScrapeInterval=1ms`
  (docs/scaling.md). This test has no crash, so each reading must appear exactly once.
"""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path
from typing import Any

import cbor2
import paho.mqtt.client as mqtt
import pytest

from collector import config as cfg
from collector.service import Collector, run
from collector.validate import load_kinds
from edge import protocol
from hil.services import Collector as CollectorProcess
from hil.services import Mosquitto, VictoriaMetrics
from tests.integration.waiting import wait_until

pytestmark = pytest.mark.integration

NOW_MS = int(time.time() * 1000) - 120_000
KIND_NAMES = {1: "parking", 2: "manhole", 3: "water", 4: "thermometer"}


def collector_config(tmp_path: Path, broker: Mosquitto, vm: VictoriaMetrics) -> cfg.Config:
    """The config of a collector run in-process, written as every collector test writes it."""
    launcher = CollectorProcess(
        broker.port,
        {
            "version": 2,
            "url": vm.url,
            "org": "ignored-org",
            "bucket": "ignored-bucket",
            "token": "ignored-token",
        },
        client_id="vm-collector",
        metrics=False,
        workdir=str(tmp_path / "collector"),
        settings={
            "mqtt": {"receive_maximum": 50},
            "writer": {"flush_interval": "50ms"},
            "gateways": {"gw-1": {"site": "wulin-p3", "district": "xihu"}},
        },
    )
    return cfg.load(launcher.write_config(), env={})


def readings(seq: int) -> list[tuple[str, int, int, tuple[Any, ...]]]:
    t = NOW_MS + seq * 1000
    return [
        (f"P-{seq % 3}", 1, t, (seq % 2 == 0, 1, seq, -212, None, 731, 3600, -71)),
        (f"MH-{seq % 2}", 2, t + 1, (1.25, False, True, 37.5, None, None, 3500, None)),
        ("W-1", 3, t + 2, (7.21, 4.8, None, None, None, None, 2.437, 118.6, 17.9)),
        ("T-1", 4, t + 3, (36.6, 21.0, seq, 30, True)),
    ]


def test_every_reading_exactly_once_in_victoriametrics(
    tmp_path: Path, mosquitto: Mosquitto, victoriametrics: VictoriaMetrics
) -> None:
    config = collector_config(tmp_path, mosquitto, victoriametrics)
    n_batches = 40
    payloads = []
    for seq in range(n_batches):
        enc = protocol.BatchEncoder(2048)
        rs = readings(seq)
        enc.begin(1, seq, rs[0][2])
        for sensor, kind, ts, fields in rs:
            assert enc.add(sensor, kind, ts, fields)
        payloads.append(bytes(enc.finish()))
    status_payload = cbor2.dumps({"v": 1, "state": "online", "boot": 1, "uptime_s": 42, "ts": NOW_MS})

    def scenario(collector: Collector) -> None:
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="vm-gateway", protocol=mqtt.MQTTv5)
        pub.connect("127.0.0.1", mosquitto.port)
        pub.loop_start()
        try:
            for payload in payloads:
                pub.publish("city/gw-1/up", payload, qos=1).wait_for_publish(10)
            pub.publish("city/gw-1/status", status_payload, qos=1).wait_for_publish(10)
            wait_until(lambda: collector.input.acks_sent >= n_batches + 1, 60, "every message acknowledged")
        finally:
            pub.disconnect()
            pub.loop_stop()

    async def main() -> None:
        stop = asyncio.Event()
        box: list[Collector] = []
        task = asyncio.create_task(run(config, shutdown=stop.wait, started=box.append))
        while not box and not task.done():
            await asyncio.sleep(0.05)
        await asyncio.wait_for(box[0].input.subscribed.wait(), 30)
        try:
            await asyncio.to_thread(scenario, box[0])
        finally:
            stop.set()
            assert await task == 0

    asyncio.run(main())

    # Expected samples: (series name, sensor) -> {timestamp: value as VictoriaMetrics stores it}.
    kind_fields = {k.name: k.names for k in load_kinds().values()}
    want: dict[tuple[str, str], dict[int, float]] = {}
    for seq in range(n_batches):
        for sensor, kind, ts, values in readings(seq):
            name = KIND_NAMES[kind]
            for field, v in zip(kind_fields[name], values, strict=False):
                if v is not None:
                    want.setdefault((f"{name}_{field}", sensor), {})[ts] = float(v)  # True -> 1.0
    series = victoriametrics.export('{gw="gw-1"}', min_series=len(want) + 3)
    got: dict[tuple[str, str], dict[int, float]] = {}
    for s in series:
        labels = s["metric"]
        if labels["__name__"].startswith("gateway_status_"):
            continue
        # The tags, and nothing for org/bucket/token.
        assert set(labels) == {"__name__", "gw", "sensor", "site", "district"}, labels
        assert (labels["site"], labels["district"]) == ("wulin-p3", "xihu")
        key = (labels["__name__"], labels["sensor"])
        assert len(set(s["timestamps"])) == len(s["timestamps"]), f"a sample written twice: {key}"
        got[key] = dict(zip(s["timestamps"], s["values"], strict=True))
    assert got.keys() == want.keys()
    for key, samples in want.items():
        assert got[key].keys() == samples.keys(), key
        for ts, v in samples.items():
            assert math.isclose(got[key][ts], v, rel_tol=1e-11), (key, ts, got[key][ts], v)
    assert got[("parking_occupied", "P-0")][NOW_MS] == 1.0  # bool true
    assert got[("manhole_open", "MH-1")][NOW_MS + 1000 + 1] == 0.0  # bool false
    assert got[("thermometer_ambient_c", "T-1")][NOW_MS + 3] == 21.0  # float 21.0, int 30:
    assert got[("thermometer_distance_cm", "T-1")][NOW_MS + 3] == 30.0  # both plain numbers now

    # The status line: numeric fields stored as sent; the text `state` becomes a meaningless 0.
    status = {
        s["metric"]["__name__"]: s["values"]
        for s in series
        if s["metric"]["__name__"].startswith("gateway_status_")
    }
    assert status["gateway_status_uptime_s"] == [42] and status["gateway_status_state"] == [0]
