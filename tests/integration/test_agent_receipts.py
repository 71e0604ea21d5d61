"""The gateway's side of receipts (docs/protocol.md "Receipt"), in-process against a real Mosquitto:
this test plays the collector with paho, so it decides exactly which receipts the agent gets.

With receipts on, a PUBACK only frees the window: the records stay in the log (and in status as
`unreceipted`) until a receipt names their batch; a batch not receipted within the timeout is
re-sent with the same boot, seq and bytes; a receipt for another boot or a hostile one is ignored.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cbor2
import paho.mqtt.client as mqtt
import pytest

from collector.receipts import encode_receipt
from edge import protocol
from hil.services import Mosquitto
from tests.integration.test_agent_behaviour import (  # noqa: F401 - fixtures
    GW,
    Observer,
    TestPort,
    make_cfg,
    observe,
    run,
    running,
    take,
    temp,
    thermometer,
    ttys,
    until,
)

pytestmark = pytest.mark.integration


class Receipter:
    """Publishes receipts on city/<GW>/ack, as a collector would."""

    def __init__(self, port: int) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fake-collector")
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.lock = threading.Lock()

    def send(self, payload: bytes) -> None:
        self.client.publish(protocol.topic(GW, protocol.ACK), payload, qos=1).wait_for_publish(10)

    def receipt(self, boot: int, up: list[int], alarm: list[int] | None = None) -> None:
        self.send(encode_receipt(boot, up, alarm or []))

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def batches(obs: Observer) -> list[tuple[int, int, bytes]]:
    return [(p[1], p[2], cbor2.dumps(p)) for p in obs.leaf("up")]


def test_records_stay_until_receipted_and_unreceipted_batches_are_resent(
        mosquitto: Mosquitto, observe: Callable[[], Observer],  # noqa: F811 - the fixtures
        ttys: Callable[[], str], tmp_path: Path) -> None:  # noqa: F811
    obs = observe()
    cfg = make_cfg(mosquitto, tmp_path / "spool", [thermometer(ttys())], trust_os_clock=True,
                   uplink={"receipts": True, "receipt_timeout_ms": 600, "batch_max": 5})
    port = TestPort(clock_valid=True)
    rc = Receipter(mosquitto.port)

    async def main() -> None:
        async with running(cfg, port) as agent:
            await until(lambda: agent.client.connected, "connected")
            await asyncio.sleep(0.3)  # the ack subscription is made after connect
            for i in range(10):
                take(agent, 0, "T-1", temp(i))
            await until(lambda: len({s for _, s, _ in batches(obs)}) >= 2, "two batches published")
            await until(lambda: not agent._sent, "PUBACKs")
            assert agent.log.pending == 10  # PUBACKed, not receipted: still in the log
            first = {(b, s): p for b, s, p in batches(obs)}
            # No receipt within 600 ms: the same batches again, byte for byte.
            await until(lambda: len(batches(obs)) >= 4, "re-sends")
            for b, s, p in batches(obs):
                assert first[(b, s)] == p
            assert agent.batcher.resent >= 2
            st: dict[str, Any] = cbor2.loads(agent.status_payload())
            assert st["unreceipted"] == 10 and st["spool_records"] == 10
            # Hostile or foreign receipts change nothing.
            rc.send(cbor2.dumps({0: 2, 1: agent.boot, 2: [0, 100], 3: []}))  # version 2
            rc.receipt(agent.boot + 1, [0, 100])
            await until(lambda: agent.receipts_bad == 1 and agent.receipts_got == 1, "bad receipts seen")
            assert agent.log.pending == 10
            # Batch 1 only: nothing may leave the log yet (batch 0 is older).
            rc.receipt(agent.boot, [1, 1])
            await until(lambda: agent.receipts_got == 2, "receipt for batch 1")
            assert agent.log.pending == 10
            rc.receipt(agent.boot, [0, 1])
            await until(lambda: agent.log.pending == 0, "log drained by the receipt")
            st = cbor2.loads(agent.status_payload())
            assert st["unreceipted"] == 0 and st["unreceipted_age_s"] == 0
            n = len(batches(obs))
            await asyncio.sleep(1.5)
            assert len(batches(obs)) == n  # receipted: never re-sent

    try:
        run(main())
    finally:
        rc.close()


def test_without_receipts_the_puback_drains_the_log(
        mosquitto: Mosquitto, observe: Callable[[], Observer],  # noqa: F811 - the fixtures
        ttys: Callable[[], str], tmp_path: Path) -> None:  # noqa: F811
    obs = observe()
    cfg = make_cfg(mosquitto, tmp_path / "spool", [thermometer(ttys())], trust_os_clock=True,
                   uplink={"receipts": False, "batch_max": 5})

    async def main() -> None:
        async with running(cfg, TestPort(clock_valid=True)) as agent:
            await until(lambda: agent.client.connected, "connected")
            for i in range(10):
                take(agent, 0, "T-1", temp(i))
            await until(lambda: agent.log.pending == 0, "delivery")
            assert "unreceipted" not in cbor2.loads(agent.status_payload())
            assert len(obs.readings()) == 10

    run(main())
