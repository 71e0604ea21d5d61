"""The city on the cluster, end to end: gateway agents (CPython and the MicroPython unix port, with
ids holding ':') publish to a 3-node NATS JetStream cluster through its MQTT listeners, each with the
three nodes as broker endpoints; two collectors pull the uplink stream into a real InfluxDB 1.x.
Gateways keep uplink.receipts on, as on the cluster in the field.
Under load: a node is SIGKILLed, then another once the first is back; a collector is SIGKILLed and
restarted; then every node is restarted in turn (SIGTERM). Every reading the sensors sent is in
InfluxDB exactly once, and the gateways' logs drain (status spool_records 0)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import cbor2
import nats
import pytest

from collector import config as cfg
from collector import jetstream as js
from hil.rig import Rig
from hil.services import Collector, InfluxDB, NatsCluster
from hil.verify import Report, codecs_by_code, readings_of, verify
from tests.integration.test_nats_collectors import DB, nats_collector, written
from tests.integration.waiting import wait_until

pytestmark = pytest.mark.integration

AGENTS = (("cpython", "gw:py"), ("micropython", "gw:mpy"))


def run_all(rigs: list[Rig], seconds: float) -> None:
    """Drive every rig's sensors for `seconds`, interleaved."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for rig in rigs:
            rig.run(0.05)


async def _stream_payloads(cluster: NatsCluster) -> dict[str, list[bytes]]:
    n = cfg.NatsConfig(servers=",".join(cluster.nats_urls))
    nc = await nats.connect(**js.connect_options(n))
    out: dict[str, list[bytes]] = {}
    try:
        jsc = nc.jetstream()
        info = await jsc.stream_info(n.stream)
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            m = await jsc.get_msg(n.stream, seq)
            topic = js.subject_topic(m.subject or "")
            if topic.endswith("/up"):
                out.setdefault(topic.split("/")[1], []).append(m.data or b"")
        return out
    finally:
        await nc.close()


def uplinked(cluster: NatsCluster) -> dict[str, list[bytes]]:
    """Gateway id -> every batch payload the stream holds: what the cluster acknowledged."""
    return asyncio.run(_stream_payloads(cluster))


def delivered(rig: Rig, payloads: list[bytes]) -> Report:
    """The rig's verdict on what reached the stream (instead of its MQTT subscriber's view)."""
    return verify(rig.emissions, payloads, outages=rig.outages, sync_every_ms=rig.sync_every_ms)


def readings(gw: str, payloads: list[bytes]) -> set[tuple[str, str, int]]:
    """(gw, sensor, ts) of every reading in the batches (repeats collapse)."""
    codecs = codecs_by_code()
    return {(gw, r[0], r[2]) for p in payloads for r in readings_of(cbor2.loads(p), codecs)}


def stored(influx: InfluxDB) -> list[tuple[str, str, int]]:
    rows = []
    for m in ("parking", "thermometer"):
        points = influx.points(DB, f'SELECT * FROM "{m}" GROUP BY *')
        rows += [(r["gw"], r["sensor"], r["time"]) for r in points]
    return rows


async def _last_statuses(cluster: NatsCluster) -> dict[str, dict[str, object]]:
    n = cfg.NatsConfig(servers=",".join(cluster.nats_urls))
    nc = await nats.connect(**js.connect_options(n))
    out = {}
    try:
        jsc = nc.jetstream()
        for gw in ("gw:py", "gw:mpy"):
            m = await jsc.get_last_msg(n.stream, f"hil.{gw}.status")
            out[gw] = cbor2.loads(m.data or b"")
        return out
    finally:
        await nc.close()


def uplinked_status(cluster: NatsCluster) -> dict[str, dict[str, object]]:
    """Gateway id -> its last status in the stream."""
    return asyncio.run(_last_statuses(cluster))


def _spool_empty(statuses: dict[str, dict[str, object]], gw: str) -> bool:
    s = statuses.get(gw)
    return s is not None and s.get("state") == "online" and s.get("spool_records") == 0


@pytest.fixture
def city(tmp_path: Path, influxdb: InfluxDB) -> Iterator[tuple[NatsCluster, list[Collector], list[Rig]]]:
    influxdb.create_database(DB)
    cluster = NatsCluster(3, workdir=str(tmp_path / "nats"))
    collectors: list[Collector] = []
    rigs: list[Rig] = []
    try:
        cluster.start()
        for name in ("city-a", "city-b"):
            c = nats_collector(tmp_path, name, cluster, influxdb)
            c.tables["mqtt"]["topic_prefix"] = "hil"  # the rig's prefix
            c.start()
            collectors.append(c)
        ports = cluster.mqtt_ports
        for i, (interpreter, gw) in enumerate(AGENTS):
            order = ports[i:] + ports[:i]  # each gateway starts on another node
            # Receipts on, as gateways on the cluster run (docs/scaling.md): a node's PUBACK is not
            # the stream's (a batch PUBACKed while a node is down can miss the stream), so
            # without receipts a gateway drops what the stream never got.
            rigs.append(Rig(interpreter, gw=gw, broker_port=ports[2], agent_brokers=order, lids=0, water=(),
                            receipts=True, workdir=str(tmp_path / f"rig-{interpreter}")))
        yield cluster, collectors, rigs
    finally:
        for rig in rigs:
            rig.close()
        for c in collectors:
            c.kill()
        cluster.cleanup()


def test_node_kills_collector_kill_and_rolling_restart_lose_and_double_nothing(
    city: tuple[NatsCluster, list[Collector], list[Rig]], influxdb: InfluxDB
) -> None:
    cluster, (ca, cb), rigs = city
    n1, n2, n3 = cluster.nodes
    for rig in rigs:
        rig.start_agent()
    run_all(rigs, 2.0)
    wait_until(lambda: written(ca) + written(cb) > 0, 30, "collectors writing")
    n1.kill()  # under load: a gateway's node and a stream/consumer replica gone
    run_all(rigs, 2.5)
    n1.start()
    run_all(rigs, 1.0)
    n2.kill()  # another, once the first is back
    run_all(rigs, 2.5)
    n2.start()
    ca.kill()  # a collector with whatever it had pulled and not acknowledged
    before = written(cb)
    run_all(rigs, 1.5)
    wait_until(lambda: written(cb) > before, 30, "the other collector writing")
    ca.start()
    for node in (n1, n2, n3):  # rolling restart, as an upgrade does it
        node.stop()
        run_all(rigs, 1.0)
        node.start()
    run_all(rigs, 1.0)
    # The gateways' logs drain into the stream: every reading the sensors sent is in it.
    def all_delivered() -> bool:
        up = uplinked(cluster)
        return all(delivered(rig, up.get(rig.gw, [])).ok for rig in rigs)

    wait_until(all_delivered, 30, "every reading in the stream")
    up = uplinked(cluster)
    for rig in rigs:
        report = delivered(rig, up[rig.gw])
        for kind in ("parking", "thermometer"):
            assert report.kinds[kind].received >= report.kinds[kind].expected > 5, report.summary()
    want = readings(rigs[0].gw, up[rigs[0].gw]) | readings(rigs[1].gw, up[rigs[1].gw])
    wait_until(lambda: len(stored(influxdb)) >= len(want), 60, "every reading in InfluxDB")
    time.sleep(0.5)
    rows = stored(influxdb)
    assert len(rows) == len(set(rows))
    assert set(rows) == want  # exactly once: none missing, none extra
    wait_until(lambda: all(_spool_empty(up, rig.gw) for up in [uplinked_status(cluster)] for rig in rigs),
               20, "the gateways' logs drained (status spool_records 0)")
    assert written(ca) > 0 and written(cb) > 0
    for rig in rigs:
        rig.stop_agent()
    assert ca.stop() == 0 and cb.stop() == 0
