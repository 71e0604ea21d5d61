"""The writer against a stub database, a real spool and a real dead-letter store.

What is checked is the delivery contract: `submit` returns only when the points are stored or
spooled (or dead-lettered for good), raises `NotDurable` otherwise, and the spool is replayed in
order and only emptied after the database acknowledged.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from influx_stub import InfluxStub, Reply

from collector.deadletter import DeadLetters
from collector.lineproto import line
from collector.model import Point
from collector.sinks.influx import InfluxV1Sink
from collector.spool import Spool
from collector.writer import NotDurable, Submitted, Writer


def pt(i: int, sensor: str = "s1") -> Point:
    fields = (("occupied", i % 2 == 0), ("n", i))
    return Point("parking", (("sensor", sensor),), fields, 1_700_000_000_000 + i)


def lines_of(points: list[Point]) -> list[bytes]:
    return [line(p) for p in points]


class Rig:
    def __init__(self, stub: InfluxStub, tmp: Path, **kw: object) -> None:
        self.stub = stub
        self.sink = InfluxV1Sink(stub.url, "city", timeout_s=float(kw.pop("sink_timeout_s", 2.0)))  # type: ignore[arg-type]
        self.spool = Spool(tmp / "spool.db", int(kw.pop("spool_bytes", 10**7)))  # type: ignore[call-overload]
        self.dead = DeadLetters(tmp / "dead.db")
        opts: dict[str, object] = {"batch_age_s": 0.02, "backoff_base_s": 0.01, "backoff_max_s": 0.05}
        opts.update(kw)
        self.writer = Writer(self.sink, self.spool, self.dead, **opts)  # type: ignore[arg-type]

    async def close(self) -> None:
        await self.writer.close(drain=True, timeout_s=5.0)
        await self.sink.close()
        self.spool.close()
        self.dead.close()


def run(test: Callable[[Rig], Awaitable[None]], tmp: Path, style: str = "influx", **kw: object) -> None:
    async def main() -> None:
        async with InfluxStub(style=style) as stub:
            rig = Rig(stub, tmp, **kw)
            await rig.writer.start()
            try:
                await test(rig)
            finally:
                await rig.close()

    asyncio.run(main())


async def until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for a state, not for a time: fails only if the state never comes."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        assert loop.time() < end, "condition not reached"
        await asyncio.sleep(0.01)


def test_direct_writes_batch_across_submits(tmp_path: Path) -> None:
    points = [pt(i) for i in range(400)]

    async def t(rig: Rig) -> None:
        rig.stub.delay_s = 0.02  # a database that takes a moment: submits gather meanwhile
        await asyncio.gather(*(rig.writer.submit(points[i : i + 4]) for i in range(0, 400, 4)))
        assert sorted(rig.stub.stored) == sorted(lines_of(points))
        assert len(rig.stub.bodies) < 25  # 100 submits, far fewer requests
        # The size bound is reached and kept (a batch closes with the submit that fills it).
        assert 50 <= max(len(b.split(b"\n")) for b in rig.stub.bodies) < 50 + 4
        s = rig.writer.stats
        assert s["points_written"] == 400 and s["points_spooled"] == 0 and s["mode"] == "direct"

    run(t, tmp_path, batch_points=50, batch_age_s=5.0)


def test_submits_go_out_at_once_while_a_request_slot_is_free(tmp_path: Path) -> None:
    async def t(rig: Rig) -> None:
        for i in range(3):
            await rig.writer.submit([pt(i)])  # batch_age_s is an hour: only a free slot can send
        assert rig.stub.stored == lines_of([pt(0), pt(1), pt(2)])

    run(t, tmp_path, batch_points=5000, batch_age_s=3600.0)


def test_a_batch_waiting_for_busy_slots_is_flushed_by_age(tmp_path: Path) -> None:
    async def t(rig: Rig) -> None:
        rig.stub.delay_s = 0.3
        first = asyncio.ensure_future(rig.writer.submit([pt(1)]))  # takes the only slot
        await until(lambda: len(rig.stub.bodies) == 1)
        await rig.writer.submit([pt(2)])  # waits for the slot, then goes: age bound 0.05 s
        await first
        assert rig.stub.stored == lines_of([pt(1), pt(2)])

    run(t, tmp_path, batch_points=5000, batch_age_s=0.05, max_concurrent=1)


def test_concurrent_requests_are_bounded(tmp_path: Path) -> None:
    async def t(rig: Rig) -> None:
        rig.stub.delay_s = 0.05
        await asyncio.gather(*(rig.writer.submit([pt(i)]) for i in range(40)))
        assert len(rig.stub.stored) == 40
        assert 1 < rig.stub.max_active <= 2

    run(t, tmp_path, batch_points=1, max_concurrent=2, max_queued_batches=100)


def test_a_burst_into_a_busy_database_waits_for_room_instead_of_spooling(tmp_path: Path) -> None:
    points = [pt(i) for i in range(300)]
    most = {"batches": 0}

    async def t(rig: Rig) -> None:
        rig.stub.delay_s = 0.02  # healthy, slower than the burst

        async def watch() -> None:
            while True:
                most["batches"] = max(most["batches"], rig.writer.stats["inflight_batches"])
                await asyncio.sleep(0)

        watcher = asyncio.ensure_future(watch())
        try:
            await asyncio.gather(*(rig.writer.submit([p]) for p in points))  # all at once
        finally:
            watcher.cancel()
        assert sorted(rig.stub.stored) == sorted(lines_of(points))  # each once
        s = rig.writer.stats
        assert s["points_spooled"] == 0 and rig.spool.rows == 0  # the old writer spooled 288
        assert s["submits_held"] > 0 and s["submits_held_now"] == 0  # backpressure did the work
        assert 0 < most["batches"] <= 2 + 1  # max_concurrent + max_queued_batches: memory bound
        assert max(len(b.split(b"\n")) for b in rig.stub.bodies) <= 10
        assert rig.stub.max_active <= 2

    run(t, tmp_path, batch_points=10, max_concurrent=2, max_queued_batches=1, batch_age_s=5.0)


def test_a_sustained_backlog_is_spooled_and_drained_alongside(tmp_path: Path) -> None:
    points = [pt(i) for i in range(60)]

    async def t(rig: Rig) -> None:
        rig.stub.delay_s = 0.3  # far slower than the traffic, for longer than backlog_timeout_s
        await asyncio.gather(*(rig.writer.submit([p]) for p in points))
        s = rig.writer.stats
        assert s["points_spooled_backlog"] > 0 and s["points_spooled"] == s["points_spooled_backlog"]
        assert s["sink_state"] == "ok" and s["retries"] == 0  # nothing failed: a backlog, not an outage
        await until(lambda: rig.spool.rows == 0 and not rig.writer.stats["inflight_batches"])
        assert sorted(rig.stub.stored) == sorted(lines_of(points))  # each once
        # Spool rows are cut at batch_points lines: a replayed request is of the usual size.
        assert max(len(b.split(b"\n")) for b in rig.stub.bodies) < 2 * 5

    run(
        t,
        tmp_path,
        batch_points=5,
        max_concurrent=1,
        max_queued_batches=1,
        backlog_timeout_s=0.1,
        sink_timeout_s=5.0,
    )


def test_held_submits_are_spooled_at_once_when_the_database_fails(tmp_path: Path) -> None:
    points = [pt(i) for i in range(60)]

    async def t(rig: Rig) -> None:
        # The first request hangs, then fails: everything behind it was held by backpressure.
        rig.stub.script.append(Reply(503, "down", delay_s=0.3))
        # Held submits must not sit out backlog_timeout_s (an hour): the failure spools them.
        await asyncio.wait_for(asyncio.gather(*(rig.writer.submit([p]) for p in points)), 30)
        s = rig.writer.stats
        assert s["submits_held"] > 0 and s["points_spooled"] > 0 and s["points_spooled_backlog"] == 0
        await until(lambda: rig.spool.rows == 0 and not rig.writer.stats["inflight_batches"])
        assert sorted(rig.stub.stored) == sorted(lines_of(points))  # each once

    run(t, tmp_path, batch_points=5, max_concurrent=1, max_queued_batches=1, backlog_timeout_s=3600.0)


def test_database_down_spools_then_drains_in_order(tmp_path: Path) -> None:
    async def t(rig: Rig) -> None:
        stub = rig.stub
        stub.script.extend(Reply(503, "down") for _ in range(6))
        first = [pt(i) for i in range(10)]
        for p in first:
            await rig.writer.submit([p])  # returns: durable in the spool, MQTT can acknowledge
        await until(lambda: not stub.script and rig.spool.rows == 0)
        later = [pt(i) for i in range(10, 20)]
        for p in later:
            await rig.writer.submit([p])
        assert stub.stored == lines_of(first + later)  # in order, each once
        s = rig.writer.stats
        assert s["points_spooled"] >= 9 and s["retries"] >= 6 and s["spool_lines"] == 0
        assert s["mode"] == "direct" and s["sink_state"] == "ok"

    run(t, tmp_path, batch_points=1)


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_is_honoured_before_the_next_attempt(tmp_path: Path, status: int) -> None:
    async def t(rig: Rig) -> None:
        rig.stub.script.append(Reply(status, "slow down", {"Retry-After": "1"}))
        await rig.writer.submit([pt(1)])  # spooled after the refusal
        await until(lambda: rig.spool.rows == 0)
        assert len(rig.stub.times) == 2
        assert rig.stub.times[1] - rig.stub.times[0] >= 0.95  # not before the server said
        assert rig.stub.stored == lines_of([pt(1)])

    run(t, tmp_path)


def test_spool_full_while_database_down_is_not_durable(tmp_path: Path) -> None:
    async def t(rig: Rig) -> None:
        rig.stub.script.extend(Reply(500, "down") for _ in range(10_000))
        with pytest.raises(NotDurable):
            for i in range(100):
                await rig.writer.submit([pt(i)])
        s = rig.writer.stats
        assert s["points_not_durable"] >= 1 and s["spool_refused"] >= 1
        assert 0 < rig.spool.bytes <= 300
        rig.stub.script.clear()  # the database is back: what was spooled is written
        await until(lambda: rig.spool.rows == 0)
        assert len(rig.stub.stored) == s["points_spooled"] + s["points_written"]

    run(t, tmp_path, batch_points=1, spool_bytes=300)


def test_rejected_and_unserializable_points_are_dead_lettered(tmp_path: Path) -> None:
    async def t(rig: Rig) -> None:
        bad_db = Point("parking", (("sensor", "BAD"),), (("n", 1),), 5)
        bad_lp = Point("parking", (("sensor", "x"),), (("v", math.nan),), 6)
        done = await rig.writer.submit([pt(1), bad_db, bad_lp, pt(2)])
        assert done == Submitted(stored=2, spooled=0, refused=2)
        assert set(rig.stub.stored) == set(lines_of([pt(1), pt(2)]))
        entries = rig.dead.entries()
        assert sorted((r, p) for r, _, _, p in entries) == sorted(
            [("unserializable", repr(bad_lp).encode()), ("db_rejected", line(bad_db))]
        )
        assert rig.writer.stats["dead_letters"] == {"unserializable": 1, "db_rejected": 1}

    run(t, tmp_path)


def test_each_submit_of_a_shared_batch_is_told_its_own_refusals(tmp_path: Path) -> None:
    async def t(rig: Rig) -> None:
        bad = Point("parking", (("sensor", "BAD"),), (("n", 1),), 5)
        # Sent together in one request (one slot, the first holds it while the others gather).
        results = await asyncio.gather(
            rig.writer.submit_lines(line(pt(0)), 1),
            rig.writer.submit_lines(b"\n".join([line(pt(1)), line(bad), line(pt(2))]), 3),
            rig.writer.submit_lines(b"\n".join([line(bad), line(bad)]), 2),
            rig.writer.submit_lines(line(pt(3)), 1),
        )
        assert results == [
            Submitted(stored=1),
            Submitted(stored=2, refused=1),
            Submitted(refused=2),
            Submitted(stored=1),
        ]
        assert rig.writer.stats["db_refused"] == 3

    run(t, tmp_path, max_concurrent=1)


def test_auth_error_holds_data_until_fixed(tmp_path: Path) -> None:
    async def t(rig: Rig) -> None:
        rig.stub.script.extend(Reply(401, '{"error":"authorization failed"}') for _ in range(3))
        await rig.writer.submit([pt(1), pt(2)])  # held in the spool, acknowledged
        assert rig.writer.stats["sink_state"] == "config_error"
        await until(lambda: rig.spool.rows == 0)  # the operator fixed it: delivered, not dead-lettered
        assert rig.stub.stored == lines_of([pt(1), pt(2)])
        assert rig.dead.entries() == []

    run(t, tmp_path, config_error_retry_s=0.05)


def test_leftovers_from_a_previous_run_drain_alongside_new_data(tmp_path: Path) -> None:
    old = lines_of([pt(i, "old") for i in range(20)])
    sp = Spool(tmp_path / "spool.db", 10**7)
    for i in range(0, 20, 2):
        sp.append([(b"\n".join(old[i : i + 2]), 2)])
    sp.close()

    async def t(rig: Rig) -> None:
        rig.stub.delay_s = 0.05  # ten rows replayed one request at a time: about half a second
        assert rig.writer.stats["mode"] == "direct"
        await rig.writer.submit([pt(100, "new")])  # written directly, not queued behind the spool
        assert rig.spool.rows > 0 and rig.writer.stats["points_spooled"] == 0
        await until(lambda: rig.spool.rows == 0)
        assert sorted(rig.stub.stored) == sorted([*old, line(pt(100, "new"))])  # each once
        assert [x for x in rig.stub.stored if b"old" in x] == old  # the spool itself in order

    run(t, tmp_path, batch_points=2)


def test_timeouts_are_retried_with_identical_bodies(tmp_path: Path) -> None:
    async def t(rig: Rig) -> None:
        rig.stub.script.append(Reply(204, delay_s=0.6, store=True))
        await rig.writer.submit([pt(1), pt(2)])
        await until(lambda: rig.spool.rows == 0 and len(rig.stub.bodies) == 2)
        assert rig.stub.bodies[0] == rig.stub.bodies[1]
        assert rig.writer.stats["retries"] == 1

    run(t, tmp_path, sink_timeout_s=0.2)


def test_close_without_database_keeps_the_spool_and_refuses_new_submits(tmp_path: Path) -> None:
    async def main() -> None:
        async with InfluxStub() as stub:
            stub.script.extend(Reply(502, "bad gateway") for _ in range(10_000))
            rig = Rig(stub, tmp_path)
            await rig.writer.start()
            await rig.writer.submit([pt(1)])
            await rig.writer.close(drain=True, timeout_s=0.2)
            with pytest.raises(NotDurable):
                await rig.writer.submit([pt(2)])
            assert rig.spool.lines == 1
            await rig.sink.close()
            rig.spool.close()
            rig.dead.close()

    asyncio.run(main())


@settings(max_examples=15, deadline=None)
@given(
    failures=st.lists(st.sampled_from([500, 502, 503, 504, 429, 401]), max_size=8),
    sizes=st.lists(st.integers(1, 30), min_size=1, max_size=12),
    concurrent=st.booleans(),
)
def test_whatever_the_outages_every_acknowledged_point_arrives(
    tmp_path_factory: pytest.TempPathFactory, failures: list[int], sizes: list[int], concurrent: bool
) -> None:
    tmp = tmp_path_factory.mktemp("w")
    offsets = [sum(sizes[:k]) for k in range(len(sizes))]
    messages = [[pt(o + j, "p") for j in range(n)] for o, n in zip(offsets, sizes, strict=True)]

    async def t(rig: Rig) -> None:
        rig.stub.script.extend(Reply(s, "no", {"Retry-After": "0"}) for s in failures)
        if concurrent:
            await asyncio.gather(*(rig.writer.submit(m) for m in messages))
        else:
            for m in messages:
                await rig.writer.submit(m)
        await until(lambda: rig.spool.rows == 0 and not rig.writer.stats["inflight_batches"])
        assert set(rig.stub.stored) == {line(p) for m in messages for p in m}
        assert rig.dead.entries() == []

    run(t, tmp, batch_points=16, config_error_retry_s=0.01)


def test_a_spooled_line_refused_when_drained_is_counted_refused_not_written(tmp_path: Path) -> None:
    async def t(rig: Rig) -> None:
        rig.stub.script.extend(Reply(503, "down") for _ in range(2))
        bad = Point("parking", (("sensor", "BAD"),), (("n", 1),), 5)
        done = await rig.writer.submit_lines(b"\n".join([line(pt(1)), line(bad)]), 2)
        assert done == Submitted(spooled=2)  # durable; its fate is known only once drained
        await until(lambda: rig.spool.rows == 0)
        s = rig.writer.stats
        assert s["points_written"] == 1 and s["db_refused"] == 1
        assert s["dead_letters"] == {"db_rejected": 1} and "HTTP 400" in s["last_refusal"]
        assert [(e.reason, e.payload) for e in rig.dead.list()] == [("db_rejected", line(bad))]

    run(t, tmp_path)
