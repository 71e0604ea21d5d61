"""Receipts through the NATS cluster (issue 13): a collector on the JetStream input publishes each
receipt on core NATS as `<prefix>.<gw>.ack`, which the node's MQTT listener delivers to the gateway's
`<prefix>/<gw>/ack` subscription. A gateway agent with receipts on, under CPython and under the
`micropython` binary, publishes to a 3-node cluster.

First with the collector stopped: the node PUBACKs every batch and the stream holds them, but no one
receipts, so the gateway keeps them all (its status says `unreceipted` > 0, its log is not empty). Then
the collector runs: it stores and receipts, the gateway's log drains (spool_records 0, unreceipted 0)
long before its re-send timeout, and every reading it sent is in InfluxDB exactly once."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import cbor2
import nats
import pytest

from collector import config as cfg
from collector import jetstream as js
from hil.rig import INTERPRETERS, Rig
from hil.services import Collector, InfluxDB, NatsCluster
from tests.integration.test_nats_city import readings, stored, uplinked
from tests.integration.test_nats_collectors import DB, nats_collector
from tests.integration.waiting import wait_until

pytestmark = pytest.mark.integration

GATEWAYS = {"cpython": "gw:rc-py", "micropython": "gw:rc-mpy"}


async def _last_status(cluster: NatsCluster, gw: str) -> dict[str, object]:
    n = cfg.NatsConfig(servers=",".join(cluster.nats_urls))
    nc = await nats.connect(**js.connect_options(n))
    try:
        m = await nc.jetstream().get_last_msg(n.stream, f"hil.{gw}.status")
        return dict(cbor2.loads(m.data or b""))
    except nats.errors.Error:
        return {}
    finally:
        await nc.close()


def last_status(cluster: NatsCluster, gw: str) -> dict[str, object]:
    """The gateway's last status in the stream ({} before its first)."""
    return asyncio.run(_last_status(cluster, gw))


def drained(cluster: NatsCluster, gw: str) -> bool:
    s = last_status(cluster, gw)
    return s.get("state") == "online" and s.get("spool_records") == 0 and s.get("unreceipted") == 0


def kept(cluster: NatsCluster, gw: str) -> bool:
    """Online, with PUBACKed batches it has not dropped: waiting for their receipts."""
    s = last_status(cluster, gw)
    return s.get("state") == "online" and int(str(s.get("unreceipted", 0))) > 0


@pytest.fixture(params=INTERPRETERS)
def city(request: pytest.FixtureRequest, tmp_path: Path,
         influxdb: InfluxDB) -> Iterator[tuple[NatsCluster, Collector, Rig]]:
    influxdb.create_database(DB)
    cluster = NatsCluster(3, workdir=str(tmp_path / "nats"))
    col: Collector | None = None
    rig: Rig | None = None
    try:
        cluster.start()
        col = nats_collector(tmp_path, "city-a", cluster, influxdb)
        col.tables["mqtt"]["topic_prefix"] = "hil"  # the rig's prefix
        col.tables["receipts"] = {"enabled": True}
        col.start()  # makes the stream and the consumers
        ports = cluster.mqtt_ports
        rig = Rig(request.param, gw=GATEWAYS[request.param], broker_port=ports[0], agent_brokers=ports,
                  lids=0, water=(), receipts=True, receipt_timeout_ms=60_000,
                  workdir=str(tmp_path / "rig"))
        yield cluster, col, rig
    finally:
        if rig is not None:
            rig.close()
        if col is not None:
            col.kill()
        cluster.cleanup()


def test_gateway_keeps_its_batches_until_the_cluster_receipts_them(
    city: tuple[NatsCluster, Collector, Rig], influxdb: InfluxDB
) -> None:
    cluster, col, rig = city
    gw = rig.gw
    assert col.stop() == 0  # no one receipts: the stream takes the batches, the gateway keeps them
    rig.start_agent()
    rig.run(3.0)
    wait_until(lambda: bool(uplinked(cluster).get(gw)), 30, "batches PUBACKed into the stream")
    wait_until(lambda: kept(cluster, gw), 30, "the gateway keeping PUBACKed, unreceipted batches")
    s = last_status(cluster, gw)
    assert int(str(s["spool_records"])) > 0, s  # its log still holds them
    col.start()
    # Sensors quiet. The re-send timeout (60 s) is far away: only receipts can empty the log.
    wait_until(lambda: drained(cluster, gw), 30, "the gateway's log drained by receipts")
    assert col.metric("receipts_total", outcome="sent") > 0
    want = readings(gw, uplinked(cluster)[gw])
    assert len(want) > 5
    wait_until(lambda: len(stored(influxdb)) >= len(want), 30, "every reading in InfluxDB")
    rows = stored(influxdb)
    assert len(rows) == len(set(rows)) and set(rows) == want  # exactly once
    rig.stop_agent()
    assert col.stop() == 0
