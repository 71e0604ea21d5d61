"""A 3-node NATS JetStream cluster on loopback (hil.services.NatsCluster), with the MQTT listener of
every node: the nodes start, each one is killed and restarted alone, and the gateway agent's own
MQTT 3.1.1 client (CPython and the MicroPython unix port) publishes its QoS 1 batches to one node
unchanged; every reading arrives exactly once."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import paho.mqtt.client as mqtt
import pytest

from collector import config as cfg
from collector import jetstream as js
from hil.rig import INTERPRETERS, Rig
from hil.services import NatsCluster, nats_server_version
from tests.integration.waiting import wait_until

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
    # A new meta leader among the two left, within a few election timeouts.
    wait_until(lambda: b.varz("/jsz")["meta_cluster"].get("leader") in {"n2", "n3"}, 30, "a new meta leader")
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


def test_uplink_stream_holds_mqtt_publishes_from_ids_with_colons(cluster: NatsCluster) -> None:
    """The stream (3 replicas, age and byte bounds, discard old) catches what MQTT clients publish
    to any node, one subject token per topic level; `:` in a gateway id needs no mapping."""
    n = cfg.NatsConfig(servers=",".join(cluster.nats_urls), max_age=3600.0, max_bytes=64 * 1024 * 1024)
    topics = ["city/gw_7:a/up", "city/gw-2/alarm", "city/gw:3/status", "city/gw_7:a/cmd"]
    subjects = asyncio.run(_ensure(n))
    assert sorted(subjects) == ["city.*.alarm", "city.*.status", "city.*.up"]
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="gw-probe", protocol=mqtt.MQTTv311)
    client.connect("127.0.0.1", cluster.nodes[2].mqtt_port)
    client.loop_start()
    try:
        wait_until(client.is_connected, 10, "MQTT CONNACK from a NATS node")
        for i, topic in enumerate(topics):
            client.publish(topic, f"m{i}".encode(), qos=1).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()
    # A node PUBACKs MQTT before the stream has stored the message (docs/scaling.md): wait for the
    # three, then a moment in which a wrongly caught fourth (cmd) would show.
    wait_until(lambda: asyncio.run(_messages(n)) >= 3, 10, "three messages in the stream")
    time.sleep(0.5)
    info, stored = asyncio.run(_read(n, 3))
    assert info["config"]["num_replicas"] == 3 and info["config"]["discard"] == "old"
    assert info["config"]["max_bytes"] == 64 * 1024 * 1024 and info["config"]["max_age"] == 3600 * 10**9
    assert info["config"]["storage"] == "file" and len(info["cluster"]["replicas"]) == 2
    assert info["state"]["messages"] == 3  # cmd is not the city's uplink
    assert stored == [("city.gw_7:a.up", b"m0"), ("city.gw-2.alarm", b"m1"), ("city.gw:3.status", b"m2")]
    assert [js.subject_topic(s) for s, _ in stored] == topics[:3]
    assert [js.topic_subject(t) for t in topics[:3]] == [s for s, _ in stored]


async def _messages(n: cfg.NatsConfig) -> int:
    nc = await nats.connect(**js.connect_options(n))
    try:
        info = await nc.jetstream().stream_info(n.stream)
        return int(info.state.messages)
    finally:
        await nc.close()


async def _ensure(n: cfg.NatsConfig) -> list[str]:
    nc = await nats.connect(**js.connect_options(n))
    try:
        jsc = nc.jetstream()
        await js.ensure_stream(jsc, n, "city")
        await js.ensure_stream(jsc, n, "city")  # idempotent: a second collector does the same
        info = await jsc.stream_info(n.stream)
        return list(info.config.subjects)
    finally:
        await nc.close()


async def _read(n: cfg.NatsConfig, count: int) -> tuple[dict[str, Any], list[tuple[str, bytes]]]:
    nc = await nats.connect(**js.connect_options(n))
    try:
        jsc = nc.jetstream()
        info = await jsc.stream_info(n.stream)
        out = []
        for seq in range(1, count + 1):
            m = await jsc.get_msg(n.stream, seq)
            out.append((m.subject, m.data))
        return info.as_dict(), out
    finally:
        await nc.close()


async def _first_subject(cluster: NatsCluster, subject: str, publish: Any) -> str:
    nc = await nats.connect(cluster.nats_urls)
    try:
        sub = await nc.subscribe(subject)
        await nc.flush()
        publish()
        m = await sub.next_msg(timeout=10)
        return str(m.subject)
    finally:
        await nc.close()


def test_a_dot_in_a_topic_level(cluster: NatsCluster) -> None:
    """Why a gateway id has no `.` (docs/protocol.md): nats-server 2.9 (Debian bookworm's) disconnects
    the publisher; 2.10 (CITYBRAIN_NATS_SERVER=.cache/nats-server/nats-server) maps the `.` to `//` in
    the subject, as collector.jetstream.topic_subject does, and subject_topic maps it back."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="gw-dot", protocol=mqtt.MQTTv311)
    client.connect("127.0.0.1", cluster.nodes[0].mqtt_port)
    client.loop_start()
    try:
        wait_until(client.is_connected, 10, "MQTT CONNACK")
        if nats_server_version() < (2, 10, 0):
            client.publish("city/gw.1/up", b"x", qos=1)
            wait_until(lambda: not client.is_connected(), 10, "the node dropping the client")
            assert "not supported for MQTT topics" in cluster.nodes[0].log_tail(5000)
            return
        subject = asyncio.run(_first_subject(
            cluster, "city.>", lambda: client.publish("city/gw.1/up", b"x", qos=1).wait_for_publish(10)))
        assert client.is_connected()
    finally:
        client.disconnect()
        client.loop_stop()
    assert subject == js.topic_subject("city/gw.1/up") == "city.gw//1.up"
    assert js.subject_topic(subject) == "city/gw.1/up"


@pytest.mark.parametrize("interpreter", INTERPRETERS)
def test_agent_moves_to_the_next_endpoint_when_its_node_is_killed(
    interpreter: str, cluster: NatsCluster, tmp_path: Path
) -> None:
    """broker.endpoints: the agent's node is SIGKILLed under load; the next attempt (same backoff)
    goes to the next node, its session and in-flight batches with it; every reading arrives once."""
    n1, n2, n3 = cluster.nodes
    with Rig(interpreter, broker_port=n3.mqtt_port, agent_brokers=[n1.mqtt_port, n2.mqtt_port], lids=0,
             water=(), workdir=str(tmp_path / "rig")) as rig:
        rig.start_agent()
        rig.run(2.0)
        assert n1.varz("/connz")["num_connections"] >= 1  # the agent is on the first endpoint
        n1.kill()
        rig.run(3.0)
        wait_until(lambda: n2.varz("/connz")["num_connections"] >= 1, 20, "the agent on n2")
        n1.start()
        rig.run(1.0)
        rig.drain()
        report = rig.verify()
        assert report.ok, report.summary()
        for kind in ("parking", "thermometer"):
            assert report.kinds[kind].received >= report.kinds[kind].expected > 5, report.summary()
        assert rig.agent is not None and "uplink:" in rig.agent.log_tail(20000)  # the drop was seen
        rig.stop_agent()
    assert rig.leftovers() == []
