"""Receipts through the NATS cluster (issue 13): a collector on the JetStream input publishes each
receipt on core NATS as `<prefix>.<gw>.ack`, which the node's MQTT listener delivers to the gateway's
`<prefix>/<gw>/ack` subscription. A gateway agent with receipts on (it drops a record only when its
batch is receipted) publishes to a 3-node cluster: its log drains (status spool_records 0 and
unreceipted 0), and every reading it sent is in InfluxDB exactly once."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import cbor2
import nats
import pytest

from collector import config as cfg
from collector import jetstream as js
from hil.rig import Rig
from hil.services import Collector, InfluxDB, NatsCluster
from tests.integration.test_nats_city import readings, stored, uplinked
from tests.integration.test_nats_collectors import DB, nats_collector
from tests.integration.waiting import wait_until

pytestmark = pytest.mark.integration

GW = "gw:rc"


async def _last_status(cluster: NatsCluster) -> dict[str, object]:
    n = cfg.NatsConfig(servers=",".join(cluster.nats_urls))
    nc = await nats.connect(**js.connect_options(n))
    try:
        m = await nc.jetstream().get_last_msg(n.stream, f"hil.{GW}.status")
        return dict(cbor2.loads(m.data or b""))
    except nats.errors.Error:
        return {}
    finally:
        await nc.close()


def drained(cluster: NatsCluster) -> bool:
    s = asyncio.run(_last_status(cluster))
    return s.get("state") == "online" and s.get("spool_records") == 0 and s.get("unreceipted") == 0


@pytest.fixture
def city(tmp_path: Path, influxdb: InfluxDB) -> Iterator[tuple[NatsCluster, Collector, Rig]]:
    influxdb.create_database(DB)
    cluster = NatsCluster(3, workdir=str(tmp_path / "nats"))
    col: Collector | None = None
    rig: Rig | None = None
    try:
        cluster.start()
        col = nats_collector(tmp_path, "city-a", cluster, influxdb)
        col.tables["mqtt"]["topic_prefix"] = "hil"  # the rig's prefix
        col.tables["receipts"] = {"enabled": True}
        col.start()
        ports = cluster.mqtt_ports
        rig = Rig("cpython", gw=GW, broker_port=ports[0], agent_brokers=ports, lids=0, water=(),
                  receipts=True, receipt_timeout_ms=60_000, workdir=str(tmp_path / "rig"))
        yield cluster, col, rig
    finally:
        if rig is not None:
            rig.close()
        if col is not None:
            col.kill()
        cluster.cleanup()


def test_gateway_with_receipts_drains_its_log_through_the_cluster(
    city: tuple[NatsCluster, Collector, Rig], influxdb: InfluxDB
) -> None:
    cluster, col, rig = city
    rig.start_agent()
    rig.run(3.0)
    # Sensors quiet. The re-send timeout (60 s) is far away: only receipts can empty the log.
    wait_until(lambda: drained(cluster), 30, "the gateway's log drained by receipts")
    assert col.metric("receipts_total", outcome="sent") > 0
    up = uplinked(cluster)
    want = readings(GW, up[GW])
    assert len(want) > 5
    wait_until(lambda: len(stored(influxdb)) >= len(want), 30, "every reading in InfluxDB")
    rows = stored(influxdb)
    assert len(rows) == len(set(rows)) and set(rows) == want  # exactly once
    rig.stop_agent()
    assert col.stop() == 0
