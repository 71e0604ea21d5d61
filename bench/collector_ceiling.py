"""Ceiling of the collector's write half: how many readings per second each stage can take.

Why: the collector must keep up with ~100,000 readings/s of a city fleet on a small box. This
measures each stage alone on this machine, with realistic points (4 fields, 2 tags, a 10^4-sensor
fleet), so the slowest stage is visible:

  * lineproto   -- `collector.lineproto.encode` of 5000-point batches (the hot path)
  * spool       -- group commits of 50-point bodies into the SQLite spool, then drain + delete
  * writer/null -- `Writer.submit` of 50-point messages, 64 concurrent submitters, against an
                   in-process HTTP server that answers 204 (same process: its cost is included)
  * writer/spool -- the same with the database down: every submit is acknowledged from the spool
  * writer/influxdb -- (with --influxdb) against a real InfluxDB 1.x started by hil.services

Goal: lineproto and writer/null >= 100,000 points/s. Exit status 1 if lineproto misses it.

    python bench/collector_ceiling.py [--points 200000] [--influxdb]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from aiohttp import web  # noqa: E402

from collector.deadletter import DeadLetters  # noqa: E402
from collector.lineproto import encode  # noqa: E402
from collector.model import Point  # noqa: E402
from collector.sinks.influx import InfluxV1Sink  # noqa: E402
from collector.spool import Spool  # noqa: E402
from collector.writer import Writer  # noqa: E402

GOAL = 100_000
T0 = 1767225600000
MESSAGE = 50  # readings per MQTT message


def fleet_points(n: int) -> list[Point]:
    out = []
    for i in range(n):
        s = i % 10_000
        out.append(
            Point(
                "parking",
                (("gw", f"gw-hz-{s // 100:04d}"), ("sensor", f"p-{s:05d}")),
                (("occupied", i % 3 == 0), ("distance_cm", 100 + i % 400), ("temp_c", 20.5 + (i % 50) / 10),
                 ("battery_v", 3.3 + (i % 7) / 100)),
                T0 + i,
            )
        )
    return out


def bench_lineproto(points: list[Point]) -> float:
    encode(points[:10_000])  # warm the series cache, as a running collector has
    started = time.perf_counter()
    for i in range(0, len(points), 5000):
        encode(points[i : i + 5000])
    return len(points) / (time.perf_counter() - started)


def bench_spool(points: list[Point], tmp: Path) -> tuple[float, float]:
    bodies = [encode(points[i : i + MESSAGE])[:2] for i in range(0, len(points), MESSAGE)]
    sp = Spool(tmp / "bench-spool.db", 10**10)
    started = time.perf_counter()
    for i in range(0, len(bodies), 100):  # 100 messages per group commit
        sp.append(bodies[i : i + 100])
    append_rate = len(points) / (time.perf_counter() - started)
    started = time.perf_counter()
    while sp.rows:
        rows = sp.head(5000)
        sp.delete_through(rows[-1][0])
    drain_rate = len(points) / (time.perf_counter() - started)
    sp.close()
    return append_rate, drain_rate


async def null_server() -> tuple[web.AppRunner, str]:
    async def write(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=204)

    app = web.Application(client_max_size=256 * 1024 * 1024)
    app.router.add_post("/write", write)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def bench_writer(
    points: list[Point], url: str, tmp: Path, name: str
) -> tuple[float, dict[str, object]]:
    sink = InfluxV1Sink(url, "bench", timeout_s=30.0)
    spool = Spool(tmp / f"{name}-spool.db", 10**10)
    dead = DeadLetters(tmp / f"{name}-dead.db")
    writer = Writer(sink, spool, dead, batch_points=5000, batch_age_s=0.2, max_concurrent=4)
    await writer.start()
    messages = [points[i : i + MESSAGE] for i in range(0, len(points), MESSAGE)]
    queue: asyncio.Queue[list[Point]] = asyncio.Queue()
    for m in messages:
        queue.put_nowait(m)

    async def submitter() -> None:
        while not queue.empty():
            await writer.submit(queue.get_nowait())

    started = time.perf_counter()
    await asyncio.gather(*(submitter() for _ in range(64)))
    rate = len(points) / (time.perf_counter() - started)
    stats = writer.stats
    await writer.close(drain=False, timeout_s=5)
    await sink.close()
    spool.close()
    dead.close()
    return rate, stats


async def bench_writers(points: list[Point], tmp: Path, influx: bool) -> dict[str, float]:
    rates: dict[str, float] = {}
    runner, url = await null_server()
    try:
        rates["writer/null"], _ = await bench_writer(points, url, tmp, "null")
    finally:
        await runner.cleanup()
    # The database down: a closed port, every submit acknowledged from the spool.
    rates["writer/spool"], stats = await bench_writer(points, url, tmp, "down")
    assert stats["points_spooled"] == len(points), stats
    if influx:
        from hil.services import InfluxDB

        with InfluxDB(workdir=str(tmp / "influxdb")) as db:
            db.create_database("bench")
            rates["writer/influxdb"], stats = await bench_writer(points, db.url, tmp, "influx")
            answer = db.query("bench", "SELECT COUNT(distance_cm) FROM parking")
            [[_, count]] = answer["results"][0]["series"][0]["values"]
            rates["influxdb stored"] = float(count)
    return rates


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--points", type=int, default=200_000)
    ap.add_argument("--influxdb", action="store_true", help="also write to a real InfluxDB 1.x")
    args = ap.parse_args(argv)
    points = fleet_points(args.points)
    with tempfile.TemporaryDirectory(prefix="citybrain-bench-") as d:
        tmp = Path(d)
        rates = {"lineproto": bench_lineproto(points)}
        rates["spool append"], rates["spool drain"] = bench_spool(points, tmp)
        rates.update(asyncio.run(bench_writers(points, tmp, args.influxdb)))
    for name, rate in rates.items():
        unit = "points" if name == "influxdb stored" else "points/s"
        print(f"{name:18s} {rate:12,.0f} {unit}")
    ok = rates["lineproto"] >= GOAL
    print(f"goal lineproto >= {GOAL:,} points/s: {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
