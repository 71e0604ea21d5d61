"""The demo: a city block end to end on this machine, then what the city brain sees in InfluxDB.

A thin front of `citybrain hil run city-block` (hil/scenarios/city-block.toml: 6 gateways of both
runtimes, every sensor kind, 60 s, no faults): the same run, the same verdict and exit status,
followed by the alarms, gateway statuses, three parking events as stored and the collector's dead
letters, read from the run's InfluxDB before it stops.

  citybrain demo                         the city block, ~90 s on a laptop
  citybrain demo --out /tmp/demo         ... and keep run.json and report.html there
"""

from __future__ import annotations

import argparse

from hil.block import DB, Block


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=None, help="override the scenario's seed")
    p.add_argument("--out", default=None, help="directory for run.json and report.html")
    p.add_argument("--keep", action="store_true", help="keep the run's temp dir and print it")


def brain_lines(block: Block) -> list[str]:
    """Read from the run's InfluxDB while it is up (run_block's `inspect` hook)."""
    from hil.demo import brain_view

    assert block.collector is not None
    lines = ["\nInfluxDB (what the city brain sees):"]
    for m in ("parking", "thermometer", "water", "manhole"):
        rows = block.influx.points(DB, f'SELECT COUNT(*) FROM "{m}"')
        n = max((int(v) for r in rows for k, v in r.items() if k.startswith("count_") and v is not None),
                default=0)
        lines.append(f"  {m:12s} {n:6d} points")
    return lines + brain_view(block.influx, block.collector.dead_letter_path)


def run(args: argparse.Namespace) -> int:
    from hil.cli import run_scenario
    from hil.spec import load

    seen: list[str] = []
    code = run_scenario(load("city-block"), seed=args.seed, out=args.out, keep=args.keep,
                        inspect=lambda block: seen.extend(brain_lines(block)))
    print("\n".join(seen))
    print(f"\ndemo {'OK' if code == 0 else 'FAILED'}")
    return code
