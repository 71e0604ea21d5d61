"""`citybrain provision render` writes out/nats/accounts.conf; a 3-node cluster started with it
enforces what the Mosquitto ACL does: a gateway publishes only under its own id and reads only its
own `cmd`, over MQTT only; the collector role pulls the uplink stream; the operator sends commands."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import paho.mqtt.client as mqtt
import pytest

from collector import config as cfg
from collector import jetstream as js
from hil.services import ROOT, NatsCluster, nats_server_binary
from provisioning.fleet import Fleet
from provisioning.render import render
from tests.integration.waiting import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    f = Fleet.create(tmp_path / "fleet", broker_host="127.0.0.1", broker_port=1883, tls=False)
    f.add_gateway("gw-a")
    f.add_gateway("gw-b")
    f.add_service_user("col-1", "collector", "col-secret")
    f.add_service_user("op-1", "operator", "op-secret")
    f.save()
    f = Fleet.load(tmp_path / "fleet")
    render(f, tmp_path / "out")
    return f


@pytest.fixture
def cluster(tmp_path: Path, fleet: Fleet) -> Iterator[NatsCluster]:
    c = NatsCluster(3, workdir=str(tmp_path / "nats"), accounts=tmp_path / "out" / "nats" / "accounts.conf")
    try:
        c.start()
        yield c
    finally:
        c.cleanup()


class Client:
    def __init__(self, name: str, password: str, port: int) -> None:
        self.got: list[tuple[str, bytes]] = []
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv311,
                             clean_session=False)
        self.c.username_pw_set(name, password)
        self.c.on_message = lambda cl, u, m: self.got.append((m.topic, bytes(m.payload)))
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        wait_until(self.c.is_connected, 20, f"{name} connected")

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


async def _stream(cluster: NatsCluster, user: str, password: str) -> None:
    n = cfg.NatsConfig(servers=",".join(cluster.nats_urls), user=user, password=password,
                       max_bytes=64 * 1024 * 1024)
    nc = await nats.connect(**js.connect_options(n))
    try:
        jsc = nc.jetstream()
        await js.ensure_stream(jsc, n, "city")
    finally:
        await nc.close()


async def _subjects(cluster: NatsCluster, user: str, password: str) -> list[str]:
    n = cfg.NatsConfig(servers=",".join(cluster.nats_urls), user=user, password=password)
    nc = await nats.connect(**js.connect_options(n))
    try:
        jsc = nc.jetstream()
        info = await jsc.stream_info(n.stream)
        return [(await jsc.get_msg(n.stream, s)).subject or ""
                for s in range(info.state.first_seq, info.state.last_seq + 1)]
    finally:
        await nc.close()


def core_login(port: int, user: str, password: str) -> str:
    """The server's answer to a core NATS CONNECT with these credentials: PONG, or its -ERR line.
    (Raw protocol: a refused nats-py connect left CPython 3.11.7's parser broken for the session.)"""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        f = s.makefile("rb")
        f.readline()  # INFO
        s.sendall(b"CONNECT " + json.dumps({"user": user, "pass": password, "verbose": False}).encode()
                  + b"\r\nPING\r\n")
        return f.readline().decode().strip()


def test_provisioned_accounts_enforce_the_gateway_acl(cluster: NatsCluster, fleet: Fleet) -> None:
    ports = cluster.mqtt_ports
    asyncio.run(_stream(cluster, "col-1", "col-secret"))  # the collector role may create the stream
    a = Client("gw-a", fleet.password("gw-a"), ports[0])
    b = Client("gw-b", fleet.password("gw-b"), ports[1])
    op = Client("op-1", "op-secret", ports[2])
    try:
        a.c.subscribe("city/gw-a/cmd", 1)
        b.c.subscribe("city/gw-a/cmd", 1)  # refused by the server: another gateway's commands
        time.sleep(1.0)
        op.c.publish("city/gw-a/cmd", b"reboot", qos=1).wait_for_publish(10)
        wait_until(lambda: a.got == [("city/gw-a/cmd", b"reboot")], 10, "gw-a's command delivered")
        if b.c.is_connected():
            b.c.publish("city/gw-a/up", b"forged", qos=1)  # dropped: not under its own id
        a.c.publish("city/gw-a/up", b"own", qos=1).wait_for_publish(10)
        time.sleep(1.0)
        assert b.got == []
    finally:
        for c in (a, b, op):
            c.close()
    assert asyncio.run(_subjects(cluster, "col-1", "col-secret")) == ["city.gw-a.up"]
    logs = "".join(n.log_tail(200_000) for n in cluster.nodes)
    assert 'User "gw-b", Subject "city.gw-a.cmd"' in logs  # the refused subscription, logged
    # A gateway's account is MQTT only: no core NATS login (which could read $MQTT.sub.>).
    port = cluster.nodes[0].client_port
    assert core_login(port, "gw-a", fleet.password("gw-a")) == "-ERR 'Authorization Violation'"
    assert core_login(port, "col-1", "col-secret") == "PONG"


def test_shipped_node_config_with_rendered_accounts_is_valid(tmp_path: Path, fleet: Fleet) -> None:
    """deploy/nats.conf as shipped (store dir moved here) with the rendered accounts.conf beside it."""
    conf = (ROOT / "deploy" / "nats.conf").read_text()
    conf = conf.replace("/var/lib/citybrain-nats", str(tmp_path / "js"))
    (tmp_path / "node").mkdir()
    (tmp_path / "node" / "nats.conf").write_text(conf)
    shutil.copyfile(tmp_path / "out" / "nats" / "accounts.conf", tmp_path / "node" / "accounts.conf")
    r = subprocess.run([nats_server_binary(), "-c", str(tmp_path / "node" / "nats.conf"), "-t"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "is valid" in r.stdout + r.stderr, r.stdout + r.stderr
    (tmp_path / "node" / "accounts.conf").write_text("accounts { CITY { users: [ {user: } ] } }")
    r = subprocess.run([nats_server_binary(), "-c", str(tmp_path / "node" / "nats.conf"), "-t"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0  # the check can fail: a broken include is caught


async def _receipt(cluster: NatsCluster, user: str, password: str, subject: str, payload: bytes) -> None:
    n = cfg.NatsConfig(servers=",".join(cluster.nats_urls), user=user, password=password)
    nc = await nats.connect(**js.connect_options(n))
    try:
        await nc.publish(subject, payload)
        await nc.flush(timeout=5)
    finally:
        await nc.close()


def test_collector_role_sends_receipts_that_only_their_gateway_reads(
    cluster: NatsCluster, fleet: Fleet
) -> None:
    """Receipts on the NATS input (collector/jetstream.py `publish`): the collector role publishes
    `<prefix>.<gw>.ack`, which the MQTT listener delivers to that gateway's `<prefix>/<gw>/ack`."""
    ports = cluster.mqtt_ports
    a = Client("gw-a", fleet.password("gw-a"), ports[0])
    b = Client("gw-b", fleet.password("gw-b"), ports[1])
    try:
        a.c.subscribe("city/gw-a/ack", 1)
        b.c.subscribe("city/gw-a/ack", 1)  # refused by the server: another gateway's receipts
        time.sleep(1.0)
        asyncio.run(_receipt(cluster, "col-1", "col-secret", "city.gw-a.ack", b"receipt"))
        wait_until(lambda: a.got == [("city/gw-a/ack", b"receipt")], 10, "gw-a's receipt delivered")
        time.sleep(0.5)
        assert b.got == []
    finally:
        for c in (a, b):
            c.close()
    logs = "".join(n.log_tail(200_000) for n in cluster.nodes)
    assert 'User "gw-b", Subject "city.gw-a.ack"' in logs  # the refused subscription, logged
