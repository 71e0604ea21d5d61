"""A task that dies of a bug stops the whole agent (for a supervised restart), never limps on."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import cbor2
import paho.mqtt.client as mqtt
import pytest

from edge import config
from edge.agent import Agent, AgentCrashed
from edge.ports.posix import PosixPort
from hil.services import Mosquitto

pytestmark = pytest.mark.integration


class BrokenPort:
    baud = 9600

    async def readinto(self, buf: memoryview, timeout_ms: int | None) -> int:
        await asyncio.sleep(1.5)  # let the uplink connect (and register its will) first
        raise RuntimeError("a bug in a port driver")

    def close(self) -> None:
        pass


class CrashingPort(PosixPort):
    def open_serial(self, path: str, baud: int) -> BrokenPort:
        return BrokenPort()


def test_source_bug_stops_agent_and_broker_publishes_will(mosquitto: Mosquitto, tmp_path: Path) -> None:
    got: list[dict[str, object]] = []
    seen = threading.Event()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)

    def on_message(c: mqtt.Client, u: object, m: mqtt.MQTTMessage) -> None:
        got.append(cbor2.loads(m.payload))
        if got[-1].get("state") == "offline":
            seen.set()

    sub.on_message = on_message
    sub.connect("127.0.0.1", mosquitto.port)
    sub.subscribe("city/gw-crash/status", 1)
    sub.loop_start()
    try:
        cfg = config.validate({
            "gateway_id": "gw-crash", "trust_os_clock": True,
            "broker": {"host": "127.0.0.1", "port": mosquitto.port, "keepalive_s": 5},
            "store": {"dir": str(tmp_path / "spool")},
            "sources": [{"kind": "parking", "transport": "serial", "port": "/dev/null"}]})

        async def main() -> None:
            agent = Agent(cfg, CrashingPort(verbose=False))
            with pytest.raises(AgentCrashed, match="source parking: RuntimeError"):
                await asyncio.wait_for(agent.run(asyncio.Event()), 20)

        asyncio.run(main())
        assert seen.wait(15), f"no offline will after the crash: {got}"
        assert got[0]["state"] == "online"
    finally:
        sub.loop_stop()
        sub.disconnect()
