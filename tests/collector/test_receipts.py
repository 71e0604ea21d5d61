"""Receipts (docs/protocol.md, "Receipt"): the stage alone (ranges, coalescing, bounds, a publish
that fails) and in the pipeline (durable, duplicate, dead-lettered whole, status never)."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import cbor2

from collector.config import Config, GatewayInfo
from collector.deadletter import DeadLetters
from collector.metrics import Metrics
from collector.receipts import Receipts, add_seq
from collector.service import Pipeline
from collector.validate import load_kinds
from edge import protocol
from tests.collector.test_pipeline import FakeWriter, batch, msg


class Sent:
    def __init__(self) -> None:
        self.out: list[tuple[str, bytes]] = []
        self.up = True

    def __call__(self, topic: str, payload: bytes) -> bool:
        if not self.up:
            return False
        self.out.append((topic, payload))
        return True

    def decoded(self) -> list[tuple[str, tuple[int, list[int], list[int]]]]:
        return [(t, protocol.decode_receipt(p)) for t, p in self.out]


def test_add_seq_merges_in_any_order_and_caps() -> None:
    rng = random.Random(3)
    seqs = list(range(100))
    rng.shuffle(seqs)
    ranges: list[list[int]] = []
    for s in seqs:
        assert add_seq(ranges, s, cap=1000)
        assert not add_seq(ranges, s, cap=1000)  # already in
        # sorted, disjoint, never adjacent
        assert all(ranges[i][1] + 1 < ranges[i + 1][0] for i in range(len(ranges) - 1))
    assert ranges == [[0, 99]]
    ranges = []
    for s in range(0, 20, 2):  # ten singletons, cap 4: the lowest go
        add_seq(ranges, s, cap=4)
    assert ranges == [[12, 12], [14, 14], [16, 16], [18, 18]]
    add_seq(ranges, 13, cap=4)
    assert ranges == [[12, 14], [16, 16], [18, 18]]


def test_coalesced_one_receipt_per_gateway_and_boot_per_flush() -> None:
    sent = Sent()
    r = Receipts("city", sent)
    for seq in range(50):
        r.durable("gw-1", "up", 7, seq)
    r.durable("gw-1", "alarm", 7, 3)
    r.durable("gw-2", "up", 1, 0)
    assert sent.out == []  # nothing before a flush
    assert r.flush() == 2
    assert sorted(sent.decoded()) == [
        ("city/gw-1/ack", (7, [0, 49], [3, 3])),
        ("city/gw-2/ack", (1, [0, 0], [])),
    ]
    assert r.flush() == 0  # no news, no receipt
    # Cumulative: a later receipt repeats what the earlier (perhaps lost) one said.
    r.durable("gw-1", "up", 7, 51)
    r.flush()
    assert sent.decoded()[-1] == ("city/gw-1/ack", (7, [0, 49, 51, 51], [3, 3]))
    # A duplicate is receipted again.
    r.durable("gw-1", "up", 7, 51)
    assert r.flush() == 1


def test_boots_kept_and_publish_failure_held_for_next_flush() -> None:
    sent = Sent()
    r = Receipts("hz/city", sent)
    r.durable("gw-1", "up", 5, 0)
    r.durable("gw-1", "up", 6, 0)
    r.durable("gw-1", "up", 7, 0)  # boot 5 forgotten
    r.durable("gw-1", "up", 4, 9)  # older than both kept: ignored
    sent.up = False
    assert r.flush() == 0 and r.held == 2
    sent.up = True
    assert r.flush() == 2
    assert sorted(b for _, (b, _u, _a) in sent.decoded()) == [6, 7]
    assert all(t == "hz/city/gw-1/ack" for t, _ in sent.out)


def test_gateways_bounded() -> None:
    sent = Sent()
    r = Receipts("city", sent, max_gateways=2)
    for gw in ("a", "b", "c"):
        r.durable(gw, "up", 1, 0)
    r.flush()
    assert sorted(t for t, _ in sent.out) == ["city/b/ack", "city/c/ack"]


def test_pipeline_receipts_durable_duplicate_and_dead_lettered(tmp_path: Path) -> None:
    sent = Sent()
    receipts = Receipts("city", sent)
    dead = DeadLetters(tmp_path / "dead.sqlite")
    writer = FakeWriter()
    pipeline = Pipeline(
        Config(gateways={"gw-1": GatewayInfo(site="s1")}),
        writer=writer,
        dead_letters=dead,
        metrics=Metrics(),
        ack=lambda m: None,
        kinds=load_kinds(),
        receipts=receipts,
    )
    good = batch(5, [["P-1", 1, 0, {0: True}]], boot=3)
    alarm = batch(2, [["T-1", 4, 0, {0: 39.0}]], boot=3, k5="fever")
    all_refused = batch(6, [["P-2", 99, 0, {0: True}]], boot=3)  # unknown kind: nothing to write
    bad_version = batch(7, [], boot=3, k0=2)  # refused whole, header still names (3, 7)
    garbage = b"\xff"
    status = cbor2.dumps({"v": 1, "state": "online"})
    unknown_gw = batch(8, [["P-1", 1, 0, {0: True}]], boot=3)

    async def go() -> None:
        for i, (topic, payload) in enumerate(
            [
                ("city/gw-1/up", good),
                ("city/gw-1/alarm", alarm),
                ("city/gw-1/up", all_refused),
                ("city/gw-1/up", bad_version),
                ("city/gw-1/up", garbage),
                ("city/gw-1/status", status),
                ("city/gw-x/up", unknown_gw),
            ]
        ):
            pipeline.offer(msg(topic, payload, i + 1))
        while pipeline._tasks:
            await asyncio.wait(set(pipeline._tasks))
        receipts.flush()
        pipeline.offer(msg("city/gw-1/up", good, 20))  # a re-send after a lost receipt
        while pipeline._tasks:
            await asyncio.wait(set(pipeline._tasks))
        receipts.flush()

    try:
        asyncio.run(go())
        # Each refusal for its own reason; a written batch is never also an internal error (the
        # receipt after the write once read a freed local: every batch dead-lettered as a bug).
        assert "internal_error" not in dead.counts, dict(dead.counts)
    finally:
        dead.close()
    # The batch, the alarm and the status; the duplicate was skipped, not written again.
    assert [b[0].split(",", 1)[0] for b in writer.batches] == ["parking", "alarm", "gateway_status"]
    assert sent.decoded() == [
        ("city/gw-1/ack", (3, [5, 7], [2, 2])),
        ("city/gw-1/ack", (3, [5, 7], [2, 2])),  # the duplicate's receipt
    ]


def test_pipeline_without_receipts_publishes_nothing(tmp_path: Path) -> None:
    dead = DeadLetters(tmp_path / "dead.sqlite")
    pipeline = Pipeline(
        Config(), writer=FakeWriter(), dead_letters=dead, metrics=Metrics(), ack=lambda m: None
    )

    async def go() -> None:
        pipeline.offer(msg("city/gw-1/up", batch(1, [["P-1", 1, 0, {0: True}]]), 1))
        while pipeline._tasks:
            await asyncio.wait(set(pipeline._tasks))

    try:
        asyncio.run(go())
        assert dict(dead.counts) == {}  # written, not also dead-lettered as internal_error
    finally:
        dead.close()
    assert pipeline.receipts is None
