"""The main job, end to end on one machine: street sensors to the city brain's database.

    simulated sensors (ptys, pymodbus, MQTT lids) -> gateway agent (CPython or MicroPython)
      -> Mosquitto -> collector -> InfluxDB 1.x  (and the verifier checks every reading)

Everything runs privately on free ports and is stopped by PID at the end. The demo fails (exit 1)
if the verifier finds a lost, doubled or invented reading, or if InfluxDB does not hold exactly
one point per reading the broker delivered.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from hil.rig import INTERPRETERS, PREFIX, Rig
from hil.services import Collector, InfluxDB

DB = "citybrain"
MEASUREMENTS = ("parking", "manhole", "water", "thermometer")


def collector(rig: Rig, influx: InfluxDB) -> Collector:
    """The collector on the rig's broker, writing to `influx`; no metrics port (ready by its log)."""
    return Collector(
        rig.broker.port,
        {"version": 1, "url": influx.url, "db": DB},
        client_id="demo-collector",
        metrics=False,
        workdir=str(rig.dir / "collector"),
        settings={
            "mqtt": {"topic_prefix": PREFIX},
            "writer": {"flush_interval": "200ms"},
            "gateways": {rig.gw: {"site": "文三路-wensan-rd", "district": "西湖区-xihu"}},
        },
    )


def count_points(influx: InfluxDB, measurement: str) -> int:
    """Points in a measurement: the largest per-field count (every point has its required fields),
    summed over kinds (`alarm` holds points of every kind, each with its own fields)."""
    group = ' GROUP BY "kind"' if measurement == "alarm" else ""
    result = influx.query(DB, f'SELECT COUNT(*) FROM "{measurement}"{group}')
    series = result.get("results", [{}])[0].get("series") or []
    return sum(max(int(v) for v in s["values"][0][1:] if v is not None) for s in series)


def dead_letters(path: Path) -> dict[str, int]:
    """What the collector refused, by reason (its dead-letter store)."""
    import sqlite3

    if not path.exists():
        return {}
    with contextlib.closing(sqlite3.connect(path)) as db:
        return dict(db.execute("SELECT reason, COUNT(*) FROM dead_letters GROUP BY reason").fetchall())


def brain_view(influx: InfluxDB, dead_letter_path: Path) -> list[str]:
    """Alarms, gateway statuses, three parking events as stored, dead letters: what the brain sees
    besides the readings (also printed by `citybrain demo`)."""
    alarms = count_points(influx, "alarm")
    statuses = count_points(influx, "gateway_status")
    lines = [f"  {'alarm':12s} {alarms:6d} points (fever, lid open, overflow ... sent at once on /alarm)",
             f"  {'gateway_status':12s} {statuses:6d} points (heap, spool, error counters)"]
    sample = influx.query(DB, 'SELECT * FROM "parking" WHERE "event" > 0 LIMIT 3')
    rows = (sample.get("results", [{}])[0].get("series") or [{}])[0]
    if rows.get("values"):
        lines.append("\nthree parking arrivals/departures as stored (billing is computed from these):")
        cols = rows["columns"]
        for values in rows["values"]:
            lines.append("  " + json.dumps(dict(zip(cols, values, strict=True)), ensure_ascii=False))
    dead = dead_letters(dead_letter_path)
    lines.append(f"  {'dead letters':12s} {sum(dead.values()):6d} {dict(dead) if dead else ''}")
    return lines


def run(interpreter: str, seconds: float, seed: int) -> int:
    print(f"starting: Mosquitto, InfluxDB 1.x, simulated sensors, a {interpreter} gateway agent,"
          " the collector")
    influx = InfluxDB()
    rig: Rig | None = None
    coll: Collector | None = None
    try:
        influx.start()
        influx.create_database(DB)
        rig = Rig(interpreter, seed=seed, receipts=True)  # a collector runs: it receipts
        coll = collector(rig, influx)
        # The collector's session must exist before the first batch: a broker queues messages only
        # for subscriptions it already knows (in production the collector runs first, always).
        coll.start()
        rig.start_agent()
        print(f"sensors talking for {seconds:.0f} s ...")
        rig.run(seconds)
        rig.drain()
        rig.stop_agent()  # SIGTERM: the agent stops polling; what it had not sent stays in its log
        time.sleep(0.5)
        report = rig.verify()
        print("\nverifier (what the sensors emitted vs what the broker received):")
        print(report.summary())
        received = {name: k.received for name, k in report.kinds.items()}
        deadline = time.monotonic() + 30
        stored: dict[str, int] = {}
        while time.monotonic() < deadline:
            stored = {m: count_points(influx, m) for m in MEASUREMENTS}
            if all(stored.get(k, 0) >= n for k, n in received.items()):
                break
            time.sleep(0.5)
        print("\nInfluxDB (what the city brain sees):")
        ok = report.ok
        for m in MEASUREMENTS:
            want = received.get(m, 0)
            mark = "ok" if stored.get(m, 0) == want else "MISMATCH"
            ok = ok and stored.get(m, 0) == want
            print(f"  {m:12s} {stored.get(m, 0):6d} points for {want:6d} readings delivered  {mark}")
        print("\n".join(brain_view(influx, coll.dead_letter_path)))
        if not ok:
            print(f"agent log:\n{rig.agent.log_tail() if rig.agent else ''}")
            print(f"collector log:\n{coll.log_tail(3000)}")
        print(f"\ndemo {'OK' if ok else 'FAILED'}")
        return 0 if ok else 1
    finally:
        if coll is not None:
            coll.stop(30)
        if rig is not None:
            rig.close()
        influx.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hil.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--interpreter", choices=INTERPRETERS, default="cpython",
                   help="run the gateway agent under CPython (a Pi) or MicroPython from .mpy (a board)")
    p.add_argument("--seconds", type=float, default=8.0, help="how long the sensors talk (default 8)")
    p.add_argument("--seed", type=int, default=1, help="simulator seed (same seed, same readings)")
    args = p.parse_args(argv)
    return run(args.interpreter, args.seconds, args.seed)


if __name__ == "__main__":
    sys.exit(main())
