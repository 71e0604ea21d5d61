"""The write half against real servers: InfluxDB 1.6 (/write) and VictoriaMetrics (/api/v2/write).

Points with every field type and hostile names go through the real writer and are read back
exactly (InfluxDB also reports the stored field types); InfluxDB is stopped and restarted in the
middle of a stream, and everything acknowledged meanwhile arrives exactly once.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.deadletter import DeadLetters
from collector.lineproto import line
from collector.model import FieldValue, Point
from collector.sinks.base import Delivered
from collector.sinks.influx import HttpLineSink, InfluxV1Sink, InfluxV2Sink
from collector.spool import Spool
from collector.writer import Writer
from hil.services import InfluxDB, VictoriaMetrics

pytestmark = pytest.mark.integration

T0 = 1_700_000_000_000
HOSTILE = ["plain", "with space", "com,ma", "eq=uals", 'quo"te', "back\\slash", "停车场 西湖区", 'a, b=c "d"']


def hostile_points() -> list[Point]:
    points = []
    for i, text in enumerate(HOSTILE):
        fields: tuple[tuple[str, FieldValue], ...] = (
            ("f float", 0.1 * (i + 1) - 1e-12),
            ("i,int", -(2**62) + i),
            ("b=bool", i % 2 == 0),
            ("s", f'{text} \\ "{i}"'),
        )
        tags = (("gw", "gw 01"), ("sensor", text))
        points.append(Point("park ing,x", tags, fields, T0 + i))
    extremes: tuple[tuple[str, FieldValue], ...] = (("空闲", True), ("big", 2**63 - 1), ("tiny", 5e-324))
    points.append(Point("停车", (("区", "西湖"),), extremes, T0))
    return points


def run_writer(
    sink: HttpLineSink, tmp: Path, body: Callable[[Writer], Awaitable[None]], **kw: Any
) -> DeadLetters:
    async def main() -> DeadLetters:
        spool = Spool(tmp / "spool.db", 10**8)
        dead = DeadLetters(tmp / "dead.db")
        opts: dict[str, Any] = {"batch_age_s": 0.05, "backoff_base_s": 0.05, "backoff_max_s": 0.5}
        opts.update(kw)
        writer = Writer(sink, spool, dead, **opts)
        await writer.start()
        try:
            await body(writer)
        finally:
            await writer.close(drain=True, timeout_s=30)
            await sink.close()
            spool.close()
        return dead

    return asyncio.run(main())


def influx_rows(db: InfluxDB, measurement: str) -> list[dict[str, Any]]:
    ident = measurement.replace("\\", "\\\\").replace('"', '\\"')
    return db.points("city", f'SELECT * FROM "{ident}" GROUP BY *')


@pytest.mark.parametrize("gzip_body", [False, True])
def test_influxdb_round_trip_is_exact_with_types(influxdb: InfluxDB, tmp_path: Path, gzip_body: bool) -> None:
    influxdb.create_database("city")
    points = hostile_points()

    async def body(w: Writer) -> None:
        await w.submit(points)
        assert w.stats["points_written"] == len(points)

    dead = run_writer(InfluxV1Sink(influxdb.url, "city", gzip_body=gzip_body), tmp_path, body)
    assert dead.entries() == []
    for meas in ("park ing,x", "停车"):
        expected = [p for p in points if p.measurement == meas]
        rows = sorted(influx_rows(influxdb, meas), key=lambda r: r["time"])
        assert len(rows) == len(expected)
        for row, p in zip(rows, expected, strict=True):
            want = {"time": p.ts_ms, **dict(p.tags), **dict(p.fields)}
            assert row == want
            for k, v in p.fields:
                assert type(row[k]) is type(v) or isinstance(v, float)  # JSON writes 1.0 as 1
    types = {
        (s["name"], k): t
        for res in influxdb.query("city", "SHOW FIELD KEYS")["results"]
        for s in res["series"]
        for k, t in s["values"]
    }
    assert types == {
        ("park ing,x", "f float"): "float",
        ("park ing,x", "i,int"): "integer",
        ("park ing,x", "b=bool"): "boolean",
        ("park ing,x", "s"): "string",
        ("停车", "空闲"): "boolean",
        ("停车", "big"): "integer",
        ("停车", "tiny"): "float",
    }


def test_influxdb_refused_points_are_dead_lettered_and_the_rest_kept(
    influxdb: InfluxDB, tmp_path: Path
) -> None:
    influxdb.create_database("city")
    influxdb.write("city", b"m,sensor=s0 v=1.5 1")  # v is a float from now on
    good = [Point("m", (("sensor", f"s{i}"),), (("v", float(i)),), T0 + i) for i in range(20)]
    conflict = Point("m", (("sensor", "s5"),), (("v", 7),), T0 + 100)  # an int: a type conflict
    batch = [*good[:10], conflict, *good[10:]]

    async def body(w: Writer) -> None:
        await w.submit(batch)

    dead = run_writer(InfluxV1Sink(influxdb.url, "city"), tmp_path, body)
    [(reason, detail, _, payload)] = dead.entries()
    assert (reason, payload) == ("db_type_conflict", line(conflict))
    assert "field type conflict" in detail
    rows = influxdb.points("city", f"SELECT v FROM m WHERE time >= {T0}ms GROUP BY *")
    assert sorted((r["sensor"], r["time"], r["v"]) for r in rows) == sorted(
        (p.tags[0][1], p.ts_ms, p.fields[0][1]) for p in good
    )


def test_victoriametrics_v2_write_round_trip(victoriametrics: VictoriaMetrics, tmp_path: Path) -> None:
    # VictoriaMetrics stores numbers only: one series per numeric field, bools as 1/0.
    points = []
    for i, text in enumerate(HOSTILE):
        fields: tuple[tuple[str, FieldValue], ...] = (("f", 0.25 + i), ("i", -i), ("b", i % 2 == 0))
        points.append(Point("park ing,x", (("gw", "gw 01"), ("sensor", text)), fields, T0 + i))

    async def body(w: Writer) -> None:
        await w.submit(points)

    sink = InfluxV2Sink(victoriametrics.url, "org", "bucket", "token", gzip_body=True)
    dead = run_writer(sink, tmp_path, body)
    assert dead.entries() == []
    got: dict[tuple[str, str, int], FieldValue] = {}
    for s in victoriametrics.export('{__name__=~"park ing,x_.*"}', min_series=3 * len(HOSTILE)):
        labels = {k: v for k, v in s["metric"].items() if k not in ("__name__", "db")}
        for ts, v in zip(s["timestamps"], s["values"], strict=True):
            got[(s["metric"]["__name__"], json.dumps(labels, sort_keys=True), ts)] = v
    want: dict[tuple[str, str, int], FieldValue] = {}
    for p in points:
        key = json.dumps(dict(p.tags), sort_keys=True)
        for k, v in p.fields:
            want[(f"park ing,x_{k}", key, p.ts_ms)] = int(v) if isinstance(v, bool) else v
    assert got == want


class RecordingSink(InfluxV1Sink):
    """The real sink, remembering each body the database acknowledged, in order."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.delivered: list[bytes] = []

    async def write(self, body: bytes) -> Delivered:
        done = await super().write(body)
        self.delivered.append(body)
        return done


def test_influxdb_restart_mid_stream_spools_and_drains_without_loss(
    influxdb: InfluxDB, tmp_path: Path
) -> None:
    influxdb.create_database("city")
    total = 600

    def pts(i: int) -> list[Point]:
        return [Point("flow", (("sensor", f"s{i % 7}"),), (("seq", i), ("v", i / 8)), T0 + i)]

    async def body(w: Writer) -> None:
        for i in range(200):
            await w.submit(pts(i))  # direct writes
        await asyncio.to_thread(influxdb.stop)
        for i in range(200, 400):
            await w.submit(pts(i))  # acknowledged from the spool while the database is down
        assert w.stats["points_spooled"] > 0 and w.stats["mode"] == "spool"
        await asyncio.to_thread(influxdb.start)
        for i in range(400, total):
            await w.submit(pts(i))  # behind the spool until it is drained
        loop = asyncio.get_running_loop()
        end = loop.time() + 60
        while w.spool.rows and loop.time() < end:
            await asyncio.sleep(0.05)
        assert w.spool.rows == 0

    sink = RecordingSink(influxdb.url, "city", timeout_s=2.0)
    dead = run_writer(sink, tmp_path, body, batch_points=50, batch_age_s=0.005)
    assert dead.entries() == []
    # Delivery order: every point delivered; what went before the outage went first, in seq order;
    # the spool drains oldest first (points 200-399 were spooled), while live traffic that arrives
    # once the database is back may go direct alongside the drain (the writer's design), so points
    # from 400 on are only required to arrive, not to wait for the drain.
    first: dict[int, None] = {}
    for delivered in sink.delivered:
        for ln in delivered.split(b"\n"):
            first.setdefault(int(ln.split(b"seq=")[1].split(b"i")[0]), None)
    order = list(first)
    assert sorted(order) == list(range(total))
    assert order[:200] == list(range(200))
    assert [s for s in order if 200 <= s < 400] == list(range(200, 400))
    rows = influxdb.points("city", "SELECT seq, v FROM flow GROUP BY *")
    assert sorted(r["seq"] for r in rows) == list(range(total))  # nothing lost, nothing doubled
    [[_, count]] = influxdb.query("city", "SELECT COUNT(seq) FROM flow")["results"][0]["series"][0]["values"]
    assert count == total
    assert all(r["time"] == T0 + r["seq"] and r["v"] == r["seq"] / 8 for r in rows)


CHILD = """
import asyncio, sys
sys.path.insert(0, {root!r})
from collector.deadletter import DeadLetters
from collector.model import Point
from collector.sinks.influx import InfluxV1Sink
from collector.spool import Spool
from collector.writer import Writer

async def main():
    w = Writer(InfluxV1Sink({url!r}, "city", timeout_s=1.0), Spool({spool!r}, 10**8), DeadLetters({dead!r}),
               batch_points=20, batch_age_s=0.02, backoff_base_s=0.05, backoff_max_s=0.2)
    await w.start()
    i = 0
    while True:
        await w.submit([Point("crash", (("sensor", "s%d" % (i % 3)),), (("seq", i),), {t0} + i)])
        print(i, flush=True)  # acknowledged: from here on this point must never be lost
        i += 1

asyncio.run(main())
"""


def test_kill_9_of_the_writer_loses_nothing_acknowledged(influxdb: InfluxDB, tmp_path: Path) -> None:
    """Acknowledge, crash (SIGKILL, database down at the time), restart: every acked point arrives."""
    import os
    import signal
    import subprocess
    import sys

    influxdb.create_database("city")
    root = str(Path(__file__).resolve().parents[2])
    spool, dead = str(tmp_path / "spool.db"), str(tmp_path / "dead.db")
    code = CHILD.format(root=root, url=influxdb.url, spool=spool, dead=dead, t0=T0)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert child.stdout is not None
    acked = -1
    try:
        while acked < 150:
            acked = int(child.stdout.readline())
        influxdb.stop()  # the database goes away: acknowledgements now come from the spool
        while acked < 400:
            acked = int(child.stdout.readline())
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        child.stdout.close()
    influxdb.start()

    async def body(w: Writer) -> None:
        assert w.stats["spool_lines"] > 0  # the previous run left data behind
        loop = asyncio.get_running_loop()
        end = loop.time() + 60
        while w.spool.rows and loop.time() < end:
            await asyncio.sleep(0.05)
        assert w.spool.rows == 0

    run_writer(InfluxV1Sink(influxdb.url, "city"), tmp_path, body)  # the crashed run's spool.db
    seqs = {r["seq"] for r in influxdb.points("city", "SELECT seq FROM crash GROUP BY *")}
    assert set(range(acked + 1)) <= seqs  # every acknowledged point; maybe a few more (never acked)


_text = st.lists(st.sampled_from([*"ab ,=\"'#停车é", "\\x"]), min_size=1, max_size=6).map("".join)
_kinds: dict[str, st.SearchStrategy[FieldValue]] = {
    "float": st.floats(allow_nan=False, allow_infinity=False),
    "int": st.integers(min_value=-(2**63), max_value=2**63 - 1),
    "bool": st.booleans(),
    "str": st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=12),
}


@st.composite
def batches(draw: st.DrawFn) -> list[Point]:
    """Points of one measurement with a fixed field schema (a real database keeps field types)."""
    kinds = st.sampled_from(sorted(_kinds))
    schema = draw(st.dictionaries(_text.map("f".__add__), kinds, min_size=1, max_size=4))
    tag_keys = draw(st.lists(_text.map("t".__add__), unique=True, max_size=3))
    points = []
    for i in range(draw(st.integers(1, 8))):
        tags = tuple(sorted((k, draw(_text)) for k in tag_keys))
        fields = tuple((k, draw(_kinds[kind])) for k, kind in schema.items())
        points.append(Point("m" + draw(_text), tags, fields, T0 + i))  # "#..." would be a comment
    return points


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=batches())
def test_any_representable_point_reads_back_exactly(influxdb: InfluxDB, batch: list[Point]) -> None:
    db = f"h{uuid.uuid4().hex}"  # one database per example: field types never collide across examples
    influxdb.create_database(db)
    lines = b"\n".join(line(p) for p in batch)
    influxdb.write(db, lines)
    rows: list[dict[str, Any]] = []
    for meas in {p.measurement for p in batch}:
        ident = meas.replace("\\", "\\\\").replace('"', '\\"')
        rows += influxdb.points(db, f'SELECT * FROM "{ident}" GROUP BY *')
    # Same series and timestamp overwrite: the last point written wins.
    last = {(p.measurement, p.tags, p.ts_ms): p for p in batch}
    want = [{"time": p.ts_ms, **dict(p.tags), **dict(p.fields)} for p in last.values()]
    floats = {k for p in batch for k, v in p.fields if isinstance(v, float)}
    for r in rows:  # JSON prints 4.3e16 as 43040462669705260: read float fields back as floats
        r.update({k: float(r[k]) for k in floats if k in r})
    # Order rows by content; -0.0 and 0.0 are equal (and may come back either way), so they must
    # sort alike too, or equal lists compare out of step.
    key = lambda r: json.dumps({k: v + 0.0 if isinstance(v, float) else v for k, v in r.items()},  # noqa: E731
                               sort_keys=True)
    assert sorted(rows, key=key) == sorted(want, key=key)
    influxdb._post_query(f'DROP DATABASE "{db}"')
