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
            assert agent.pending() == 10  # PUBACKed, not receipted: still in the log
            first = {(b, s): p for b, s, p in batches(obs)}
            # No receipt within 600 ms: the same batches again, byte for byte.
            await until(lambda: len(batches(obs)) >= 4, "re-sends")
            for b, s, p in batches(obs):
                assert first[(b, s)] == p
            assert agent.batcher.resent >= 2
            st: dict[str, Any] = cbor2.loads(agent.status_payload())
            assert st["unreceipted"] == 10 and st["spool_records"] == 10
            # The age of the oldest waiting batch runs from its first PUBACK, not from its last
            # re-send: at the second re-send of both (~1.8 s after the PUBACK) it is >= 1 s.
            await until(lambda: agent.batcher.resent >= 4, "second re-sends")
            st = cbor2.loads(agent.status_payload())
            assert st["unreceipted"] == 10 and st["unreceipted_age_s"] >= 1, st
            # Hostile or foreign receipts change nothing.
            rc.send(cbor2.dumps({0: 2, 1: agent.boot, 2: [0, 100], 3: []}))  # version 2
            rc.receipt(agent.boot + 1, [0, 100])
            await until(lambda: agent.receipts_bad == 1 and agent.receipts_got == 1, "bad receipts seen")
            assert agent.pending() == 10
            # Batch 1 only: nothing may leave the log yet (batch 0 is older).
            rc.receipt(agent.boot, [1, 1])
            await until(lambda: agent.receipts_got == 2, "receipt for batch 1")
            assert agent.pending() == 10
            rc.receipt(agent.boot, [0, 1])
            await until(lambda: agent.pending() == 0, "log drained by the receipt")
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
            await until(lambda: agent.pending() == 0, "delivery")
            assert "unreceipted" not in cbor2.loads(agent.status_payload())
            assert len(obs.readings()) == 10

    run(main())


def test_receipts_dropped_at_random_nothing_lost_nothing_doubled_log_drains(
        mosquitto: Mosquitto, ttys: Callable[[], str], influxdb: Any,  # noqa: F811 - the fixture
        tmp_path: Path) -> None:
    """The real collector (a process) receipts into InfluxDB; the gateway loses two receipts in
    three on the way in (as a lossy link or a swallowing proxy would): cumulative receipts and
    re-sends still drain its log, every reading is stored, and none twice."""
    import random

    from collector.validate import load_kinds
    from hil.services import Collector

    influxdb.create_database("citybrain")
    col = Collector(mosquitto.port, {"url": influxdb.url, "db": "citybrain"}, client_id="col-drop",
                    workdir=str(tmp_path / "col"),
                    settings={"writer": {"flush_interval": "50ms"}, "receipts": {"interval": "100ms"}})
    col.start()
    cfg = make_cfg(mosquitto, tmp_path / "spool", [thermometer(ttys())], trust_os_clock=True,
                   uplink={"receipts": True, "receipt_timeout_ms": 500, "batch_max": 4})
    rng = random.Random(12)
    n = 120

    async def main() -> None:
        async with running(cfg, TestPort(clock_valid=True)) as agent:
            real = agent._on_receipt
            dropped = [0]

            def lossy(payload: Any) -> None:
                if rng.random() < 2 / 3:
                    dropped[0] += 1
                    return
                real(payload)

            agent._on_receipt = lossy  # type: ignore[method-assign]
            await until(lambda: agent.client.connected, "connected")
            for i in range(n):
                take(agent, 0, f"T-{i % 5}", temp(i))
                if i % 10 == 9:
                    await asyncio.sleep(0.1)
            await until(lambda: agent.pending() == 0, "the log drained", timeout=60)
            assert dropped[0] > 0 and agent.receipts_got > 0
            assert agent.batcher.resent > 0  # some batches were only healed by a re-send

    try:
        run(main())
        name = load_kinds()[4].name
        rows = influxdb.points("citybrain", f'SELECT * FROM "{name}"')
        keys = [(r["sensor"], r["time"]) for r in rows]
        assert len(keys) == len(set(keys)) == n, (len(keys), len(set(keys)), n)
        assert sorted(r["seq"] for r in rows) == list(range(n))
        assert col.metric("dedup_hits_total") > 0  # re-sent batches were recognised and receipted
    finally:
        col.kill()


def test_log_budget_counts_records_waiting_for_a_receipt(
        mosquitto: Mosquitto, ttys: Callable[[], str], tmp_path: Path) -> None:  # noqa: F811
    """No collector receipts anything: the broker PUBACKs every batch, yet the records stay in the
    log, so the log fills to its budget and evicts its oldest, counted (with receipts off the same
    traffic drains on PUBACK and nothing is evicted)."""
    cfg = make_cfg(mosquitto, tmp_path / "spool", [thermometer(ttys())], trust_os_clock=True,
                   store={"segment_bytes": 1024, "budget_bytes": 4096},
                   uplink={"receipts": True, "receipt_timeout_ms": 60000, "batch_max": 10})
    n = 400

    async def main() -> None:
        async with running(cfg, TestPort(clock_valid=True)) as agent:
            await until(lambda: agent.client.connected, "connected")
            for i in range(n):
                take(agent, 0, f"T-{i % 5}", temp(i))
                if i % 20 == 0:
                    await asyncio.sleep(0.05)
            await until(lambda: agent.batcher.records_in_flight > 0 and not agent._sent, "PUBACKed")
            log = agent.events  # every thermometer reading is an event: the events log
            assert log.dropped_records > 0 and agent.log.pending == 0
            # Evicted from flash while in a batch: still in that batch's buffer, not lost.
            assert log.pending + log.dropped_records + log.evicted_in_flight == n
            assert log.flash_bytes <= 4096
            st = cbor2.loads(agent.status_payload())
            assert st["spool_dropped"] == log.dropped_records and st["unreceipted"] > 0

    run(main())


def test_alarm_stays_until_receipted_is_resent_and_survives_a_reboot(
        mosquitto: Mosquitto, observe: Callable[[], Observer],  # noqa: F811 - the fixtures
        ttys: Callable[[], str], tmp_path: Path) -> None:  # noqa: F811
    """A fever alarm is published at once; its batch's receipt alone does not free its record (nor
    any after it) from the log; with no receipt for the alarm it is published again, same seq and
    bytes. The agent then stops (the log as a power cut would leave it: the alarm's record synced,
    the cursor before it) and the next boot publishes the alarm again, under its own boot, until
    that is receipted."""
    obs = observe()
    cfg = make_cfg(mosquitto, tmp_path / "spool", [thermometer(ttys())], trust_os_clock=True,
                   uplink={"receipts": True, "receipt_timeout_ms": 600, "batch_max": 5})
    rc = Receipter(mosquitto.port)

    def alarms() -> list[tuple[int, int, bytes]]:
        return [(p[1], p[2], cbor2.dumps(p)) for p in obs.leaf("alarm")]

    async def first_boot() -> tuple[int, dict[int, Any]]:
        async with running(cfg, TestPort(clock_valid=True)) as agent:
            await until(lambda: agent.client.connected, "connected")
            await asyncio.sleep(0.3)  # the ack subscription is made after connect
            for i in range(5):
                take(agent, 0, "T-1", temp(i, 39.5 if i == 2 else 36.5))
            await until(lambda: batches(obs) and alarms(), "the batch and the alarm published")
            await until(lambda: not agent._sent, "PUBACKs")
            rc.receipt(agent.boot, [0, 0])  # the batch, not the alarm
            await until(lambda: agent.receipts_got == 1, "the batch's receipt")
            await asyncio.sleep(0.1)
            assert agent.pending() == 3  # readings 0-1 left; the fever and what follows stay
            assert len(agent.alarms) == 1
            await until(lambda: len(alarms()) >= 2, "the alarm re-sent")
            assert len({p for _, _, p in alarms()}) == 1 and agent.alarms_resent >= 1
            assert agent.alarms_sent == 1
            fever = obs.leaf("alarm")[0]
            return agent.boot, fever

    async def second_boot(boot1: int, fever: dict[int, Any]) -> None:
        n1 = len(alarms())
        async with running(cfg, TestPort(clock_valid=True)) as agent:
            assert agent.boot == boot1 + 1 and agent.pending() == 3
            again = (await until(lambda: obs.leaf("alarm")[n1:], "the alarm after the reboot"))[0]
            # The same alarm point (code, sensor, time, fields) under the new boot's own seq 0.
            assert (again[1], again[2]) == (agent.boot, 0)
            assert {k: again[k] for k in (3, 4, 5)} == {k: fever[k] for k in (3, 4, 5)}
            assert again[5] == "fever"
            await until(lambda: not agent._sent, "PUBACKs")
            rc.receipt(agent.boot, [0, 100], [0, 0])
            await until(lambda: agent.pending() == 0 and not agent.alarms, "log drained")
            assert agent.alarms_receipted == 1 and agent.alarms_dropped == 0

    try:
        boot1, fever = run(first_boot())
        run(second_boot(boot1, fever))
    finally:
        rc.close()


def test_a_reboot_replays_more_alarms_than_the_queue_holds_in_turn(
        mosquitto: Mosquitto, observe: Callable[[], Observer],  # noqa: F811 - the fixtures
        ttys: Callable[[], str], tmp_path: Path) -> None:  # noqa: F811
    """Q + 4 fevers (Q: the alarm queue's size), no receipt: Q are queued (4 live copies dropped,
    counted). The next boot finds all Q + 4 records in the log; its queue takes Q, and the batch
    stops before the next alarm's record (it may not be acked before its alarm is queued); once
    receipts free the queue the last 4 follow. batch_max 10: the read-ahead (4 batches in flight on
    CPython) covers q + 4 records, so the whole queue is replayed before any receipt."""
    from edge.agent import _ALARM_QUEUE as q
    obs = observe()
    cfg = make_cfg(mosquitto, tmp_path / "spool", [thermometer(ttys())], trust_os_clock=True,
                   uplink={"receipts": True, "receipt_timeout_ms": 60000, "batch_max": 10})
    rc = Receipter(mosquitto.port)
    n = q + 4

    async def first_boot() -> None:
        async with running(cfg, TestPort(clock_valid=True)) as agent:
            await until(lambda: agent.client.connected, "connected")
            for i in range(n):
                take(agent, 0, "T-1", temp(i, 39.5))
            await until(lambda: len(obs.leaf("alarm")) == q, "a queue of alarms published")
            assert agent.alarms_dropped == 4

    async def second_boot() -> None:
        async with running(cfg, TestPort(clock_valid=True)) as agent:
            assert agent.pending() == n
            await until(lambda: len(obs.leaf("alarm")) == 2 * q and agent.batcher.inflight, "replayed")
            await asyncio.sleep(0.5)
            assert len(obs.leaf("alarm")) == 2 * q  # the queue is full: the rest wait
            # Only the records before the (q+1)th alarm's were batched.
            assert sum(b.used for b in agent.batcher.inflight) + len(agent._carry) <= n
            assert max(b.last[1] for b in agent.batcher.inflight) < agent._carry[0][0]
            await asyncio.sleep(0.3)  # the ack subscription
            rc.receipt(agent.boot, [0, 100], [0, q - 1])
            await until(lambda: len(obs.leaf("alarm")) == 2 * q + 4, "the last 4 replayed")
            replayed = [(a[4][0][0], a[3]) for a in obs.leaf("alarm")[q:]]
            assert len(set(replayed)) == n  # every fever once, none of them twice
            rc.receipt(agent.boot, [0, 100], [0, n - 1])
            await until(lambda: agent.pending() == 0 and not agent.alarms, "log drained")
            assert agent.alarms_dropped == 0

    try:
        run(first_boot())
        run(second_boot())
    finally:
        rc.close()


def test_an_event_synced_at_once_leaves_the_periodic_records_in_ram(
        mosquitto: Mosquitto, observe: Callable[[], Observer],  # noqa: F811 - the fixtures
        ttys: Callable[[], str], tmp_path: Path) -> None:  # noqa: F811
    """Events and periodic readings live in two logs (docs/store.md, "Two logs"): a person
    screened is on flash when `accept` returns, and that sync writes none of the heartbeats
    taken before it, which wait in RAM for their receipt and, receipted, are never written."""
    from tests.integration.test_agent_behaviour import heartbeat, parking
    obs = observe()
    spool = tmp_path / "spool"
    cfg = make_cfg(mosquitto, spool, [parking(ttys()), thermometer(ttys())], trust_os_clock=True,
                   store={"sync_every_ms": 60000},
                   uplink={"receipts": True, "receipt_timeout_ms": 60000, "batch_max": 50,
                           "batch_age_ms": 60000})
    rc = Receipter(mosquitto.port)

    def on_flash(pattern: str) -> int:
        return sum(p.stat().st_size for p in spool.glob(pattern))

    async def main() -> None:
        async with running(cfg, TestPort(clock_valid=True)) as agent:
            await until(lambda: agent.client.connected, "connected")
            await asyncio.sleep(0.3)  # the ack subscription is made after connect
            for i in range(5):
                take(agent, 0, f"P-{i:05d}", heartbeat(i, 3600))  # no alarm: periodic
            assert on_flash("seg-*.log") == 0 and agent.log.pending == 5
            take(agent, 1, "T-1", temp(0))
            # The event is durable at once, alone; the heartbeats are still only in RAM.
            assert agent.events.pending == 1 and on_flash("events/seg-*.log") > 0
            assert on_flash("seg-*.log") == 0
            agent.flush_requested = True  # batch now (a `flush` command would also sync the log)
            agent.wake.set()
            await until(lambda: batches(obs) and not agent._sent, "the batch PUBACKed")
            got = [r for p in obs.leaf("up") for r in p[4]]
            assert sorted(r[0] for r in got) == ["P-00000", "P-00001", "P-00002", "P-00003",
                                                 "P-00004", "T-1"]
            rc.receipt(agent.boot, [0, 0])
            await until(lambda: agent.pending() == 0, "both logs drained by the receipt")
            agent.log.sync()
            assert on_flash("seg-*.log") == 0  # receipted before their group sync: never written
            assert agent.log.skipped_bytes > 0

    try:
        run(main())
    finally:
        rc.close()


def test_a_spool_from_before_the_events_log_is_delivered_and_its_alarms_replayed(
        mosquitto: Mosquitto, observe: Callable[[], Observer],  # noqa: F811 - the fixtures
        ttys: Callable[[], str], tmp_path: Path) -> None:  # noqa: F811
    """A gateway reflashed with this firmware over a spool of the one-log layout (events, alarms
    and periodic readings in <dir>/seg-*): its records are all delivered from that log, and the
    alarm it holds is published again and kept until receipted, as after any reboot."""
    from edge import cbor, record
    from edge.store import Log
    obs = observe()
    spool = tmp_path / "spool"
    spool.mkdir()
    old = Log(str(spool), 1 << 20, 65536)
    w = cbor.Writer(256)
    ts = 1796600000000
    for i in range(4):
        w.reset()
        body = 39.5 if i == 1 else 36.5
        record.encode(w, "T-1", 4, ts + i, temp(i, body), alarm="fever" if i == 1 else None)
        old.append(w.view(), urgent=True)
    old.close()
    cfg = make_cfg(mosquitto, spool, [thermometer(ttys())], trust_os_clock=True,
                   uplink={"receipts": True, "receipt_timeout_ms": 60000, "batch_max": 10})
    rc = Receipter(mosquitto.port)

    async def main() -> None:
        async with running(cfg, TestPort(clock_valid=True)) as agent:
            assert agent.log.pending == 4 and agent.events.pending == 0
            alarm = (await until(lambda: obs.leaf("alarm"), "the old alarm published again"))[0]
            assert alarm[5] == "fever" and alarm[4][0][3][0] == 39.5
            await until(lambda: obs.leaf("up") and not agent._sent, "the old records batched")
            assert sorted(r[3][2] for p in obs.leaf("up") for r in p[4]) == [0, 1, 2, 3]
            await asyncio.sleep(0.3)  # the ack subscription
            rc.receipt(agent.boot, [0, 0])
            await asyncio.sleep(0.3)
            assert agent.log.pending == 3  # the fever's record and after it wait for its receipt
            rc.receipt(agent.boot, [0, 0], [0, 0])
            await until(lambda: agent.pending() == 0 and not agent.alarms, "drained")

    try:
        run(main())
    finally:
        rc.close()
