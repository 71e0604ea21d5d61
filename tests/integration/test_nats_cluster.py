"""A 3-node NATS JetStream cluster on loopback (hil.services.NatsCluster), with the MQTT listener of
every node: the nodes start, each one is killed and restarted alone, and the gateway agent's own
MQTT 3.1.1 client (CPython and the MicroPython unix port) publishes its QoS 1 batches to one node
unchanged; every reading arrives exactly once."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from hil.rig import INTERPRETERS, Rig
from hil.services import NatsCluster

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    c = NatsCluster(3, workdir=str(tmp_path / "nats"))
    try:
        c.start()
        yield c
    finally:
        c.cleanup()


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_three_nodes_form_one_jetstream_cluster_and_survive_a_node_kill(cluster: NatsCluster) -> None:
    a, b, _ = cluster.nodes
    meta = a.varz("/jsz")["meta_cluster"]
    assert meta["cluster_size"] == 3 and meta["leader"] in {"n1", "n2", "n3"}
    assert {n.varz()["server_name"] for n in cluster.nodes} == {"n1", "n2", "n3"}
    assert all(n.varz()["mqtt"]["port"] == n.mqtt_port for n in cluster.nodes)
    assert a.proc is not None
    pid = a.proc.pid
    a.kill()  # SIGKILL: the others keep a quorum and elect a meta leader if it was a's
    assert _gone(pid)
    b.start()  # running already: a no-op
    assert b.varz("/jsz")["meta_cluster"]["leader"] in {"n2", "n3"}
    a.start()  # back from its data dir, ready (healthz) once it has rejoined
    assert a.varz("/jsz")["meta_cluster"]["cluster_size"] == 3
    pids = [n.proc.pid for n in cluster.nodes if n.proc is not None]
    cluster.stop()
    assert len(pids) == 3 and all(_gone(p) for p in pids)


@pytest.mark.parametrize("interpreter", INTERPRETERS)
def test_agent_publishes_qos1_batches_to_a_nats_node_unchanged(
    interpreter: str, cluster: NatsCluster, tmp_path: Path
) -> None:
    node = cluster.nodes[1]
    with Rig(interpreter, broker_port=node.mqtt_port, lids=0, water=(), workdir=str(tmp_path / "rig")) as rig:
        rig.start_agent()
        rig.run(3.0)
        rig.drain()
        report = rig.verify()
        assert report.ok, report.summary()
        for kind in ("parking", "thermometer"):
            assert report.kinds[kind].received >= report.kinds[kind].expected > 5, report.summary()
        assert report.batch_duplicates == 0
        status = rig.last_status()
        assert status is not None and status["state"] == "online"
        assert rig.stop_agent() is not None
    assert rig.leftovers() == []
