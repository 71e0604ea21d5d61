"""The generated passwd + ACL, loaded by a real Mosquitto, pin each gateway to its own subtree."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from hil.services import Mosquitto
from provisioning.fleet import Fleet
from provisioning.render import render

pytestmark = pytest.mark.integration


def _client(port: int, user: str, password: str) -> tuple[mqtt.Client, int]:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"t-{user}-{time.monotonic_ns()}")
    c.username_pw_set(user, password)
    done = threading.Event()
    result: list[int] = []

    def on_connect(client: mqtt.Client, userdata: object, flags: object, rc: object, props: object) -> None:
        result.append(int(rc.value if hasattr(rc, "value") else rc))  # type: ignore[union-attr, arg-type]
        done.set()

    c.on_connect = on_connect
    c.connect("127.0.0.1", port)
    c.loop_start()
    assert done.wait(10), "no CONNACK"
    return c, result[0]


def test_generated_acl_on_real_mosquitto(tmp_path: Path) -> None:
    fleet = Fleet.create(tmp_path / "fleet", broker_host="127.0.0.1", broker_port=0, tls=False)
    fleet.add_gateway("gw-a")
    fleet.add_gateway("gw-b")
    out = tmp_path / "out"
    render(fleet, out, service_users={"collector": "collector-pw"})
    broker = Mosquitto(workdir=str(tmp_path / "broker"), password_file=str(out / "mosquitto" / "passwd"),
                       acl_file=str(out / "mosquitto" / "acl"))
    broker.start()
    clients: list[mqtt.Client] = []
    try:
        _, refused = _client(broker.port, "gw-a", "wrong")
        assert refused != 0, "a wrong password was accepted"
        collector, rc = _client(broker.port, "collector", "collector-pw")
        clients.append(collector)
        assert rc == 0
        got: list[str] = []
        collector.on_message = lambda c, u, m: got.append(m.topic)
        collector.subscribe("city/+/up", qos=1)
        time.sleep(0.3)
        gw_a, rc = _client(broker.port, "gw-a", fleet.password("gw-a"))
        clients.append(gw_a)
        assert rc == 0
        gw_a.publish("city/gw-b/up", b"spoofed", qos=1).wait_for_publish(5)  # denied by the ACL
        gw_a.publish("city/gw-a/up", b"genuine", qos=1).wait_for_publish(5)
        deadline = time.monotonic() + 5
        while "city/gw-a/up" not in got and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        assert got == ["city/gw-a/up"]
    finally:
        for c in clients:
            c.loop_stop()
            c.disconnect()
        broker.cleanup()
