"""Heap cost of Modbus register maps on MicroPython: per slave at rest, and per poll.

Why: the board keeps one compiled read plan per slave for the whole run and decodes every poll on
a tight heap (docs/benchmarks.md "Memory"), so both must stay small. For each slave of a water
source block (default devices/water/sample.json: two built-in maps, two vendor maps) this prints

  plan B     the live heap of the slave's poll state (`_Slave`: reads, codes, scales), after collect
  twin B     the same for a second slave with the same layout (it shares the compiled plan)
  reads      requests per poll
  poll B     bytes allocated by decoding one poll's answers into the source's value list, the range
             check and the reading's tuple (gc disabled, so nothing is collected meanwhile); the
             master's receive buffer is preallocated, its memoryview per read is not counted here

The answers are the registers hil/water_slave.py would serve for the simulator's values.

    python bench/modbus_map.py [--source devices/water/sample.json] [--micropython PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.edge_memory import MICROPYTHON  # noqa: E402
from hil import water_slave  # noqa: E402

DRIVER = r"""
import gc, sys, json
from edge import config
from edge.sources.modbus import _Slave
from devices.common.regmap import decode
from devices.water import codec

with open(sys.argv[1]) as f:
    job = json.load(f)
cfg = config.validate({"gateway_id": "gw", "broker": {"host": "h"}, "sources": [job["block"]]})
slaves = cfg["sources"][0]["slaves"]
del cfg
vals = [None] * len(codec.FIELDS)
for s in slaves:
    answers = [bytes.fromhex(h) for h in job["answers"][str(s["address"])]]
    seen = {}
    gc.collect()
    a = gc.mem_alloc()
    sl = _Slave(s, seen)
    gc.collect()
    plan = gc.mem_alloc() - a
    twin = _Slave(s, seen)  # another slave of the same layout on the bus: shares the compiled plan
    gc.collect()
    shared = gc.mem_alloc() - a - plan
    gc.collect()
    gc.disable()
    a = gc.mem_alloc()
    k = 0
    for i in range(len(sl.reads)):
        k = decode(answers[i], 0, sl.codes, sl.scales, k, sl.reads[i][2], vals)
    bad = codec.bad_field(vals)
    reading = tuple(vals)
    poll = gc.mem_alloc() - a
    gc.enable()
    print("SLAVE", s["address"], s["sensor"], plan, shared, len(sl.reads), poll, bad)
    del sl, twin, seen, reading
"""


def answers_for(block: dict[str, object]) -> dict[str, list[str]]:
    """slave address -> the register data of each read of its plan, as the pymodbus slave serves it."""
    from edge import config

    cfg = config.validate({"gateway_id": "gw", "broker": {"host": "h"}, "sources": [block]})
    out: dict[str, list[str]] = {}
    for s in cfg["sources"][0]["slaves"]:
        entries = water_slave.map_entries(s)
        fields = water_slave.station(s["address"], 0, 4).reading(s["address"], 13 * 3600 * 1000)
        bank = water_slave.bank(entries, fields)
        out[str(s["address"])] = [
            b"".join(bank.get(r, 0).to_bytes(2, "big") for r in range(start, start + count)).hex()
            for start, count, _end in s["plan"]["reads"]]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=ROOT / "devices" / "water" / "sample.json",
                        help="a water source block (JSON), e.g. devices/water/sample.json")
    parser.add_argument("--micropython", type=Path, default=MICROPYTHON)
    args = parser.parse_args(argv)
    if not args.micropython.exists():
        print(f"bench: needs {args.micropython}", file=sys.stderr)
        return 2
    block = json.loads(args.source.read_text(encoding="utf-8"))
    with tempfile.TemporaryDirectory(prefix="modbus-map-") as tmp:
        job = Path(tmp) / "job.json"
        job.write_text(json.dumps({"block": block, "answers": answers_for(block)}))
        driver = Path(tmp) / "driver.py"
        driver.write_text(DRIVER)
        env = dict(os.environ, MICROPYPATH=".frozen:" + str(ROOT))
        run = subprocess.run([str(args.micropython), "-X", "heapsize=1M", str(driver), str(job)], env=env,
                             capture_output=True, text=True, timeout=60, cwd=str(ROOT))
    if run.returncode != 0:
        print(run.stdout + run.stderr, file=sys.stderr)
        return 1
    print(f"{'slave':28} {'plan B':>7} {'twin B':>7} {'reads':>5} {'poll B':>7}")
    for ln in run.stdout.splitlines():
        if ln.startswith("SLAVE "):
            _tag, addr, sensor, plan, twin, reads, poll, bad = ln.split()
            flag = "" if bad == "-1" else f"  (field {bad} out of range)"
            print(f"{addr + ' ' + sensor:28} {plan:>7} {twin:>7} {reads:>5} {poll:>7}{flag}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
