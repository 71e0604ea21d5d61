"""The pipeline's acknowledgement rule, with an in-test writer (the real one is exercised end to end
in tests/integration/test_collector_e2e.py): ack only when durable or dead-lettered, in arrival order,
never after NotDurable; redeliveries skipped; hostile payloads dead-lettered and counted."""

from __future__ import annotations

import asyncio
import json
import math
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

import cbor2
import pytest

from collector.config import Config, DecodeConfig, GatewayInfo, MetricsConfig, MqttConfig
from collector.deadletter import DeadLetters
from collector.ingest import Message
from collector.metrics import Metrics, MetricsServer
from collector.service import Pipeline
from collector.validate import load_kinds
from collector.writer import NotDurable, Submitted

NOW_MS = int(time.time() * 1000)


class FakeWriter:
    """Same interface as collector.writer.Writer (`submit_lines`, the one entry point); `fail`
    NotDurables first, `gate` holds the submits of a sensor."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.fail = 0
        self.gates: dict[str, asyncio.Event] = {}

    @property
    def stats(self) -> Mapping[str, object]:
        return {"spool_lines": 0, "spool_oldest_age_s": 0.0, "mode": "direct"}

    async def start(self) -> None:
        pass

    async def submit_lines(self, body: bytes, n: int) -> Submitted:
        lines = body.decode().split("\n")
        assert len(lines) == n
        sensor = tags(lines[0]).get("sensor", "")
        if sensor in self.gates:
            await self.gates[sensor].wait()
        if self.fail:
            self.fail -= 1
            raise NotDurable("database down and spool full")
        self.batches.append(lines)
        return Submitted(stored=len(lines))

    async def close(self, drain: bool = True, timeout_s: float = 30.0) -> None:
        pass


def measurement(line: str) -> str:
    return line.split(",", 1)[0]


def tags(line: str) -> dict[str, str]:
    """The tags of a line whose ids need no escaping (these tests' ids)."""
    head = line.split(" ", 1)[0]
    return dict(kv.split("=", 1) for kv in head.split(",")[1:])


def batch(seq: int, readings: list[object], boot: int = 1, **extra: object) -> bytes:
    m: dict[int, object] = {0: 1, 1: boot, 2: seq, 3: NOW_MS, 4: readings}
    m.update({int(k[1:]): v for k, v in extra.items()})
    return cbor2.dumps(m)


def msg(topic: str, payload: bytes, mid: int) -> Message:
    return Message(topic, payload, mid, 1, False, 1)


class Harness:
    def __init__(self, tmp_path: Path, config: Config | None = None) -> None:
        self.config = config or Config(gateways={"gw-1": GatewayInfo(site="s1", district="d1")})
        self.writer = FakeWriter()
        self.dead = DeadLetters(tmp_path / "dead.sqlite")
        self.metrics = Metrics()
        self.acked: list[int] = []
        self.pipeline = Pipeline(
            self.config,
            writer=self.writer,
            dead_letters=self.dead,
            metrics=self.metrics,
            ack=lambda m: self.acked.append(m.mid),
            kinds=load_kinds(),
        )

    async def settle(self) -> None:
        while self.pipeline._tasks:
            await asyncio.wait(set(self.pipeline._tasks))


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path)
    yield harness
    harness.dead.close()


def test_good_batch_written_then_acked_and_redelivery_skipped(h: Harness) -> None:
    async def go() -> None:
        payload = batch(5, [["P-1", 1, 0, {0: True, 6: 3600}], ["T-1", 4, -10, {0: 36.5}]])
        h.pipeline.offer(msg("city/gw-1/up", payload, 1))
        await h.settle()
        h.pipeline.offer(msg("city/gw-1/up", payload, 2))  # redelivered
        await h.settle()

    asyncio.run(go())
    assert h.acked == [1, 2]
    assert len(h.writer.batches) == 1
    p = h.writer.batches[0][0]
    assert measurement(p) == "parking" and tags(p) == {
        "district": "d1",
        "gw": "gw-1",
        "sensor": "P-1",
        "site": "s1",
    }
    assert h.metrics.dedup_hits.get() == 1
    assert h.metrics.readings.get(channel="up", outcome="written") == 2
    assert h.metrics.messages.get(channel="up", outcome="duplicate") == 1


def test_acks_leave_in_arrival_order(h: Harness) -> None:
    async def go() -> None:
        h.writer.gates["slow"] = asyncio.Event()
        h.pipeline.offer(msg("city/gw-1/up", batch(1, [["slow", 1, 0, {0: True}]]), 10))
        h.pipeline.offer(msg("city/gw-1/up", batch(2, [["fast", 1, 0, {0: True}]]), 11))
        h.pipeline.offer(msg("city/gw-1/up", b"garbage", 12))
        for _ in range(20):
            await asyncio.sleep(0)
        assert h.acked == []  # 11 and 12 are done but wait behind 10
        h.writer.gates["slow"].set()
        await h.settle()

    asyncio.run(go())
    assert h.acked == [10, 11, 12]


def test_not_durable_is_never_acked_until_durable(h: Harness) -> None:
    async def go() -> None:
        h.writer.fail = 2
        h.pipeline.offer(msg("city/gw-1/up", batch(1, [["P-1", 1, 0, {0: True}]]), 1))
        await h.settle()

    asyncio.run(go())
    assert h.acked == [1]
    assert h.metrics.not_durable.get() == 2
    assert len(h.writer.batches) == 1


def test_shutdown_leaves_not_durable_unacked(h: Harness) -> None:
    async def go() -> None:
        h.writer.fail = 1_000_000
        h.pipeline.offer(msg("city/gw-1/up", batch(1, [["P-1", 1, 0, {0: True}]]), 1))
        await asyncio.sleep(0.05)
        assert await h.pipeline.drain(timeout=5.0)
        h.pipeline.offer(msg("city/gw-1/up", batch(2, [["P-1", 1, 0, {0: True}]]), 2))  # after drain

    asyncio.run(go())
    assert h.acked == []
    assert h.writer.batches == []
    assert not h.pipeline.dedup.seen("gw-1", "up", 1, 1)  # a redelivery will be written
    assert h.metrics.messages.get(channel="-", outcome="deferred") == 1


def test_hostile_payloads_dead_lettered_good_readings_kept(h: Harness) -> None:
    hostile = [
        ("city/gw-1/up", b"\xff\xfe"),
        ("city/gw-1/up", b"\x00" * 70_000),
        ("city/gw-1/up", batch(9, [], k0=2)),
        ("city/gw-1/up", cbor2.dumps({0: 1})),
        ("city/gw\n1/up", batch(3, [["P-1", 1, 0, {0: True}]])),
        ("city/gw-1/cmd", b""),
        ("city/gw-1/alarm", batch(4, [["T-1", 4, 0, {0: 39.0}]])),  # no alarm code
    ]
    mixed = batch(
        20,
        [
            ["P-1", 1, 0, {0: True}],
            ["P-2", 2, 0, {0: math.nan}],
            ["P-3\nx", 1, 0, {0: True}],
            ["P-4", 99, 0, {0: True}],
            ["P-5", 1, 10 * 60_000, {0: True}],
            ["P-6", 1, 0, {0: False}],
        ],
    )

    async def go() -> None:
        for i, (topic, payload) in enumerate(hostile):
            h.pipeline.offer(msg(topic, payload, 100 + i))
        h.pipeline.offer(msg("city/gw-1/up", mixed, 200))
        await h.settle()

    asyncio.run(go())
    assert h.acked == [*range(100, 100 + len(hostile)), 200]
    assert [tags(p)["sensor"] for b in h.writer.batches for p in b] == ["P-1", "P-6"]
    reasons = {r: n for r, n in h.dead.counts.items()}
    assert reasons == {
        "bad_cbor": 1,
        "too_large": 1,
        "bad_version": 1,
        "bad_header": 1,
        "bad_gateway_id": 1,
        "bad_topic": 1,
        "bad_alarm": 1,
        "not_finite": 1,
        "bad_sensor_id": 1,
        "unknown_kind": 1,
        "time_in_future": 1,
    }
    for reason, n in reasons.items():
        assert h.metrics.dead_letters.get(reason=reason) == n
    assert h.metrics.readings.get(channel="up", outcome="rejected") == 4
    entries = h.dead.entries()
    nan_entry = next(e for e in entries if e[0] == "not_finite")
    # Kept as a one-reading batch with the original header: replayable on its own.
    assert "reading 1" in nan_entry[1] and cbor2.loads(nan_entry[3])[4][0][0] == "P-2"


def test_alarm_and_status(h: Harness) -> None:
    async def go() -> None:
        h.pipeline.offer(msg("city/gw-1/alarm", batch(1, [["T-1", 4, 0, {0: 39.5}]], k5="fever"), 1))
        status = {"v": 1, "state": "online", "boot": 1, "ts": NOW_MS, "errors": {"P-1": {"bad_crc": 2}}}
        h.pipeline.offer(msg("city/gw-1/status", cbor2.dumps(status), 2))
        await h.settle()

    asyncio.run(go())
    assert h.acked == [1, 2]
    alarm = h.writer.batches[0][0]
    assert measurement(alarm) == "alarm" and tags(alarm)["code"] == "fever"
    status_lines = h.writer.batches[1]
    assert [measurement(p) for p in status_lines] == ["gateway_status", "sensor_errors"]
    assert h.pipeline.liveness.last_seen.keys() == {"gw-1"}


def test_silent_gateways_reported(tmp_path: Path) -> None:
    config = Config(
        metrics=MetricsConfig(default_heartbeat=60.0),
        gateways={"gw-quiet": GatewayInfo(heartbeat=30.0), "gw-1": GatewayInfo()},
    )
    h = Harness(tmp_path, config)
    lv = h.pipeline.liveness
    t0 = time.time()
    lv.seen("gw-1", t0)
    lv.seen("gw-x", t0)
    assert lv.check(t0 + 40) == ["gw-quiet"]  # registered, never heard, 30 s heartbeat
    assert sorted(lv.check(t0 + 61)) == ["gw-1", "gw-x"]
    assert lv.check(t0 + 62) == []  # reported once per silence
    assert h.metrics.silent.get(gw="gw-1") == 1
    lv.seen("gw-1", t0 + 63)
    assert h.metrics.silent.get(gw="gw-1") == 0 and "gw-1" not in lv.silent
    h.dead.close()


def test_metrics_and_healthz_over_http(h: Harness) -> None:
    async def go() -> tuple[str, int, dict[str, object]]:
        h.pipeline.offer(msg("city/gw-1/up", batch(1, [["P-1", 1, 0, {0: True}]]), 1))
        h.pipeline.offer(msg("city/gw-1/up", b"junk", 2))
        await h.settle()
        healthy = {"ok": True}
        h.metrics.collect.append(lambda: h.metrics.mirror_stats(h.writer.stats))
        server = MetricsServer(h.metrics, lambda: (bool(healthy["ok"]), {"mqtt_connected": healthy["ok"]}))
        await server.start("127.0.0.1", 0)
        try:
            url = f"http://127.0.0.1:{server.port}"
            text = await asyncio.to_thread(lambda: urllib.request.urlopen(url + "/metrics").read().decode())
            healthy["ok"] = False
            try:
                await asyncio.to_thread(urllib.request.urlopen, url + "/healthz")
            except urllib.error.HTTPError as exc:
                return text, exc.code, json.loads(exc.read())
            raise AssertionError("healthz answered 200 while unhealthy")
        finally:
            await server.close()

    text, status, body = asyncio.run(go())
    assert status == 503 and body == {"ok": False, "mqtt_connected": False}
    for line in (
        'citybrain_collector_messages_total{channel="up",outcome="ok"} 1',
        'citybrain_collector_dead_letters_total{reason="bad_cbor"} 1',
        'citybrain_collector_readings_total{channel="up",outcome="written"} 1',
        'citybrain_collector_writer{stat="spool_lines"} 0',
        "citybrain_collector_write_latency_seconds_count 1",
        "# TYPE citybrain_collector_gateway_last_seen_seconds gauge",
    ):
        assert line in text, line
    assert 'gw="gw-1"' in text


def test_a_stage_bug_dead_letters_instead_of_blocking_acks(h: Harness) -> None:
    async def boom(body: bytes, n: int) -> None:
        raise RuntimeError("bug")

    async def go() -> None:
        h.writer.submit_lines = boom  # type: ignore[method-assign]
        h.pipeline.offer(msg("city/gw-1/up", batch(1, [["P-1", 1, 0, {0: True}]]), 1))
        h.pipeline.offer(msg("city/gw-1/up", b"junk", 2))
        await h.settle()

    asyncio.run(go())
    assert h.acked == [1, 2]
    assert h.dead.counts["internal_error"] == 1
    assert h.metrics.messages.get(channel="-", outcome="error") == 1


def test_work_in_flight_is_capped_and_excess_waits_in_order(tmp_path: Path) -> None:
    h = Harness(tmp_path, Config(mqtt=MqttConfig(receive_maximum=2)))

    async def go() -> None:
        for i in range(5):
            h.writer.gates[f"S-{i}"] = asyncio.Event()
            h.pipeline.offer(msg("city/gw-1/up", batch(i, [[f"S-{i}", 1, 0, {0: True}]]), i))
        for _ in range(20):
            await asyncio.sleep(0)
        assert len(h.pipeline._tasks) == 2 and len(h.pipeline._waiting) == 3
        assert h.metrics.over_receive_maximum.get() == 3
        for i in reversed(range(5)):
            h.writer.gates[f"S-{i}"].set()
        await h.settle()

    asyncio.run(go())
    h.dead.close()
    assert h.acked == [0, 1, 2, 3, 4]
    assert h.metrics.waiting.get() == 0


def test_hostile_gateway_cannot_poison_spoof_or_overflow(tmp_path: Path) -> None:
    """Issue 8, findings 1, 2, 4 and 5 through the pipeline: each refusal dead-lettered by reason
    and counted; the good readings of the same messages written; nothing else reaches the writer."""
    config = Config(
        decode=DecodeConfig(max_sensors_per_gateway=3),
        gateways={"gw-1": GatewayInfo(site="s1", district="d1"), "gw-spec": GatewayInfo()},
    )
    h = Harness(tmp_path, config)
    poison = batch(
        1,
        [
            ["T-1", 4, 0, {0: "36.6"}],
            ["T-2", 4, 1, {0: True}],
            ["T-3", 4, 2, {0: 36}],  # widened: written as 36.0
            ["T-1", 4, 3, {0: 36.6, 2: 1.5}],
            ["T-4", 4, 4, {0: 36.6}],  # a fourth sensor id: over the bound
        ],
    )
    spoof = cbor2.dumps({"gw": "gw-victim", "site": "x", "state": "online", "rogue_key": 1})

    async def go() -> None:
        h.pipeline.offer(msg("city/gw-1/up", poison, 1))
        h.pipeline.offer(msg("city/gw-spec/status", spoof, 2))
        h.pipeline.offer(msg("city/gw-\u200b1/up", batch(2, [["T-1", 4, 0, {0: 36.6}]]), 3))
        h.pipeline.offer(msg("city/gw-stranger/up", batch(3, [["T-1", 4, 0, {0: 36.6}]]), 4))
        await h.settle()

    asyncio.run(go())
    h.dead.close()
    assert h.acked == [1, 2, 3, 4]
    lines = [line for b in h.writer.batches for line in b]
    assert lines == [
        f"thermometer,district=d1,gw=gw-1,sensor=T-3,site=s1 body_c=36 {NOW_MS + 2}",
        f'gateway_status,gw=gw-spec state="online" {lines[1].rsplit(" ", 1)[1]}',
    ]
    assert dict(h.dead.counts) == {
        "field_type": 3,
        "too_many_sensors": 1,
        "bad_gateway_id": 1,
        "unknown_gateway": 1,
    }
    for reason, n in h.dead.counts.items():
        assert h.metrics.dead_letters.get(reason=reason) == n
    assert h.metrics.readings.get(channel="up", outcome="rejected") == 4
    assert h.metrics.readings.get(channel="up", outcome="written") == 1
    assert h.metrics.ignored.get(reason="unknown_status_key") == 3
    assert h.metrics.messages.get(channel="up", outcome="refused") == 2
    assert h.pipeline.liveness.last_seen.keys() == {"gw-1", "gw-spec"}  # refused ids are not tracked


def test_one_read_is_one_task_and_one_write_per_channel(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """The MQTT input hands over every message of one read: they share one task and one
    `submit_lines` per channel; a stage that fails on one message costs that message alone (dead
    letter `internal_error`), and every ack still leaves in arrival order."""
    real = h.pipeline.validator.batch_body

    def flaky(gw: str, b: object, now_ms: int) -> object:
        if getattr(b, "seq", 0) == 3:
            raise RuntimeError("a bug in a stage")
        return real(gw, b, now_ms)  # type: ignore[arg-type]

    monkeypatch.setattr(h.pipeline.validator, "batch_body", flaky)

    async def go() -> None:
        ups = [msg("city/gw-1/up", batch(i, [[f"S-{i}", 1, 0, {0: True}]]), i) for i in range(1, 6)]
        alarm = msg("city/gw-1/alarm", batch(1, [["T-1", 4, 0, {0: 39.5}]], k5="fever"), 6)
        h.pipeline.offer_many([*ups[:2], alarm, *ups[2:]])
        assert len(h.pipeline._tasks) == 1
        await h.settle()

    asyncio.run(go())
    assert h.acked == [1, 2, 6, 3, 4, 5]
    assert sorted(len(b) for b in h.writer.batches) == [1, 4]  # the alarm's line; four of the five ups
    assert h.metrics.readings.get(channel="up", outcome="written") == 4
    assert h.metrics.messages.get(channel="up", outcome="ok") == 4
    assert h.metrics.dead_letters.get(reason="internal_error") == 1
