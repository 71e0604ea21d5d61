"""A site broker that queued lid messages while the gateway was away delivers them all at once.

Found by the city-block rig's `storm` scenario (docs/hil.md, "Findings"): after a broker outage 41
queued lid messages arrived within 30 ms, the MQTT source's queue holds 32, and its callback
dropped the rest while the client acknowledged them, so the broker forgot readings it had kept
safe. A message that finds the queue full must not be dropped (they arrive before the SUBACK, so
before the source's task runs: the callback decodes the queue itself).
"""

from __future__ import annotations

import asyncio
import time

import paho.mqtt.client as mqtt
import pytest

from devices.manhole.sim import Simulator
from edge import config as edge_config
from edge.ports.posix import PosixPort
from edge.sources.mqtt import MqttSource
from hil.services import Mosquitto

pytestmark = pytest.mark.integration

TOPIC = "site/lids"
N = 80  # well past the source's queue of 32


def _publish_backlog(port: int) -> list[str]:
    """N lid reports, QoS 1, each from its own lid (each is a first reading, so each is reported)."""
    sim = Simulator([f"MH-{i:04d}" for i in range(N)], seed=3)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="lids")
    client.connect("127.0.0.1", port)
    client.loop_start()
    sent = []
    try:
        for i in range(N):
            frame = sim.next_frame(1_796_000_000_000 + i * 1000)
            assert frame is not None and sim.last_reading is not None
            sent.append(sim.last_reading[0])
            client.publish(f"{TOPIC}/{sent[-1]}/up", frame, qos=1).wait_for_publish(5)
    finally:
        client.loop_stop()
        client.disconnect()
    return sent


async def _until(check: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:  # type: ignore[operator]
        await asyncio.sleep(0.02)


def test_a_queued_backlog_larger_than_the_queue_is_delivered_whole(mosquitto: Mosquitto) -> None:
    cfg = edge_config.validate({
        "gateway_id": "gw-burst",
        "broker": {"host": "127.0.0.1", "port": mosquitto.port},
        "site_broker": {"host": "127.0.0.1", "port": mosquitto.port, "keepalive_s": 5},
        "sources": [{"kind": "manhole", "transport": "mqtt", "topic": TOPIC + "/+/up"}],
    })
    taken: list[str] = []

    def accept(sensor: str, kind: int, fields: object, urgent: bool, alarm: object) -> None:
        taken.append(sensor)

    async def scenario() -> MqttSource:
        source = MqttSource(cfg["sources"][0], PosixPort(False), accept, cfg["site_broker"], "gw-burst-site")
        task = asyncio.ensure_future(source.run())
        await _until(lambda: source.opened, 10)  # subscribed: the broker keeps a session for it
        assert source.opened
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        source.client.close()  # the gateway is gone; its persistent session queues what comes
        sent = await asyncio.get_running_loop().run_in_executor(None, _publish_backlog, mosquitto.port)
        task = asyncio.ensure_future(source.run())  # back: the broker delivers the backlog at once
        await _until(lambda: len(taken) >= N, 20)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        source.client.close()
        assert sorted(taken) == sorted(sent), (
            f"{len(taken)} of {N} taken; errors {source.error_report()}, {source.readings} readings")
        return source

    source = asyncio.run(scenario())
    assert source.bursts > 0  # the queue did fill: it was decoded at once, nothing was dropped
    assert source.error_report() == {}
