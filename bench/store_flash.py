"""Flash cost of the store-and-forward log (edge.store) for one config and workload.

The workload runs under the real `micropython` unix port on a littlefs2 filesystem (VfsLfs2) over a
RAM block device that counts programmed bytes and block erases, so the figures include littlefs's
own costs (the partial last block it copies on every append+sync, metadata commits, the state
file's rename), not just what the log hands to `write`. It prints, per reading:

- bytes the log hands to the filesystem vs the encoded reading size (goal: <= 1.2x, plus the
  amortised per-batch cost of persisting the ack cursor);
- bytes littlefs programs and blocks it erases, and from the erase rate the projected life of the
  partition (ideal wear levelling: littlefs levels dynamically over free blocks).

    python bench/store_flash.py                      # defaults: 5 readings/s, 1% urgent, 10 s / 4 KB sync
    python bench/store_flash.py --save base.json     # keep the figures
    python bench/store_flash.py --baseline base.json # compare; exit 1 if a cost grew by more than 10%
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cbor2

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import baseline  # noqa: E402

MICROPYTHON = ROOT / ".venv" / "bin" / "micropython"
REGRESSION = 1.10  # a cost more than 10% above the baseline fails the comparison
HOURS_PER_YEAR = 24 * 365.25

# Runs under micropython; `CFG` is substituted with a JSON object.
_WORKLOAD = r"""
import json, os
from binascii import unhexlify
from edge.store import Files, Log

CFG = json.loads('%s')

class Dev:
    # littlefs block device in RAM, extended interface (offset writes, explicit erase).
    def __init__(self, bs, n):
        self.bs = bs
        self.n = n
        self.data = bytearray(bs * n)
        self.prog = 0
        self.erases = 0
    def readblocks(self, b, buf, off=0):
        a = b * self.bs + off
        buf[:] = self.data[a:a + len(buf)]
    def writeblocks(self, b, buf, off=0):
        a = b * self.bs + off
        self.data[a:a + len(buf)] = buf
        self.prog += len(buf)
    def ioctl(self, op, arg):
        if op == 4:
            return self.n
        if op == 5:
            return self.bs
        if op == 6:
            self.erases += 1
        return 0

class CountingFiles(Files):
    def __init__(self):
        Files.__init__(self)
        self.state_writes = 0
    def write_atomic(self, path, data):
        self.state_writes += 1
        Files.write_atomic(self, path, data)

class Clock:
    def __init__(self):
        self.now = 0
    def __call__(self):
        return self.now

dev = Dev(CFG["block_bytes"], CFG["partition_bytes"] // CFG["block_bytes"])
os.VfsLfs2.mkfs(dev)
os.mount(os.VfsLfs2(dev), "/flash")
clock = Clock()
files = CountingFiles()
log = Log("/flash/log", CFG["budget_bytes"], CFG["segment_bytes"], CFG["sync_every_ms"],
          CFG["sync_every_bytes"], clock, files)
prog0, erase0, written0, states0 = dev.prog, dev.erases, files.written, files.state_writes
payload = unhexlify(CFG["payload_hex"])
n = CFG["readings"]
step = 1000.0 / CFG["rate"]
urgent_every = CFG["urgent_every"]
batch_ms = CFG["batch_ms"]
t = 0.0
last_batch = 0
batches = 0
for i in range(n):
    t += step
    clock.now = int(t)
    log.append(payload, urgent_every > 0 and i %% urgent_every == 0)
    log.poll()
    if clock.now - last_batch >= batch_ms:
        last_batch = clock.now
        got = log.peek(CFG["batch_max"], 1 << 20)
        if got:
            log.ack(got[-1][0])
            batches += 1
log.close()
print(json.dumps({
    "log_written": files.written - written0, "state_writes": files.state_writes - states0,
    "syncs": log.syncs, "batches": batches, "flash_prog": dev.prog - prog0,
    "flash_erases": dev.erases - erase0, "sim_ms": clock.now, "pending": log.pending,
    "dropped": log.dropped_records,
}))
"""


def sample_reading() -> bytes:
    """A typical reading as the batch encoder writes it: [sensor, kind, dt, {field: value}]."""
    return cbor2.dumps(["湖滨-P-0042", 1, 1_764_140_000_000, {0: True, 1: 23.5, 2: 4012}])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--readings", type=int, default=20000, help="readings to simulate")
    p.add_argument("--rate", type=float, default=5.0, help="readings per second")
    p.add_argument("--urgent-every", type=int, default=100, help="every Nth reading is an event (0: none)")
    p.add_argument("--sync-every-ms", type=int, default=10000)
    p.add_argument("--sync-every-bytes", type=int, default=4096)
    p.add_argument("--segment-bytes", type=int, default=65536)
    p.add_argument("--budget-bytes", type=int, default=1 << 20)
    p.add_argument("--batch-ms", type=int, default=10000, help="publish (peek + PUBACK + ack) interval")
    p.add_argument("--batch-max", type=int, default=1000, help="records per batch at most")
    p.add_argument("--partition-bytes", type=int, default=4 << 20)
    p.add_argument("--block-bytes", type=int, default=4096)
    p.add_argument("--erase-cycles", type=int, default=100_000)
    baseline.add_arguments(p)
    return p.parse_args(argv)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    reading = sample_reading()
    cfg = {
        "readings": args.readings, "rate": args.rate, "urgent_every": args.urgent_every,
        "sync_every_ms": args.sync_every_ms, "sync_every_bytes": args.sync_every_bytes,
        "segment_bytes": args.segment_bytes, "budget_bytes": args.budget_bytes,
        "batch_ms": args.batch_ms, "batch_max": args.batch_max,
        "partition_bytes": args.partition_bytes, "block_bytes": args.block_bytes,
        "erase_cycles": args.erase_cycles, "payload_hex": reading.hex(),
    }
    tmp = Path(tempfile.mkdtemp(prefix="store-bench-"))
    try:
        script = tmp / "workload.py"
        script.write_text(_WORKLOAD % json.dumps(cfg))
        heap = f"{args.partition_bytes // (1 << 20) + 16}M"
        env = dict(os.environ, MICROPYPATH=str(ROOT))
        t0 = time.monotonic()
        out = subprocess.run([str(MICROPYTHON), "-X", "heapsize=" + heap, str(script)], env=env,
                             capture_output=True, text=True, check=True).stdout
        wall = time.monotonic() - t0
    finally:
        shutil.rmtree(tmp)
    raw = json.loads(out.strip().splitlines()[-1])
    n = args.readings
    hours = raw["sim_ms"] / 3_600_000
    blocks = args.partition_bytes // args.block_bytes
    erases_per_hour = raw["flash_erases"] / hours
    life_years = blocks * args.erase_cycles / erases_per_hour / HOURS_PER_YEAR
    record_bytes = len(reading) + 7
    return {
        "config": {k: v for k, v in cfg.items() if k != "payload_hex"},
        "reading_bytes": len(reading),
        "record_bytes": record_bytes,
        "log_bytes_per_reading": raw["log_written"] / n,
        "log_ratio": raw["log_written"] / (n * len(reading)),
        "state_writes": raw["state_writes"],
        "batches": raw["batches"],
        "syncs": raw["syncs"],
        "syncs_per_hour": raw["syncs"] / hours,
        "flash_prog_bytes_per_reading": raw["flash_prog"] / n,
        "flash_ratio": raw["flash_prog"] / (n * len(reading)),
        "flash_erases_per_hour": erases_per_hour,
        "projected_life_years": life_years,
        "dropped": raw["dropped"],
        "wall_s": wall,
    }


_COSTS = ("log_bytes_per_reading", "flash_prog_bytes_per_reading", "flash_erases_per_hour", "syncs_per_hour")


def report(fig: dict[str, Any]) -> None:
    c = fig["config"]
    print(f"workload: {c['readings']} readings at {c['rate']:.1f}/s, every {c['urgent_every']}th urgent, "
          f"sync {c['sync_every_ms']} ms / {c['sync_every_bytes']} B, segment {c['segment_bytes']} B, "
          f"budget {c['budget_bytes']} B, batch every {c['batch_ms']} ms")
    print(f"encoded reading          {fig['reading_bytes']:8d} B  (record on flash {fig['record_bytes']} B)")
    print(f"log -> filesystem        {fig['log_bytes_per_reading']:8.2f} B/reading = "
          f"{fig['log_ratio']:.3f}x the reading "
          f"({fig['state_writes']} cursor saves, {fig['batches']} batches)")
    print(f"syncs                    {fig['syncs_per_hour']:8.1f} /hour")
    print(f"littlefs programs        {fig['flash_prog_bytes_per_reading']:8.2f} B/reading = "
          f"{fig['flash_ratio']:.2f}x the reading")
    print(f"littlefs erases          {fig['flash_erases_per_hour']:8.1f} blocks/hour")
    print(f"projected life           {fig['projected_life_years']:8.1f} years "
          f"({c['partition_bytes']} B partition, "
          f"{c['block_bytes']} B blocks, {c['erase_cycles']} cycles, ideal wear levelling)")
    print(f"dropped by eviction      {fig['dropped']:8d}")


def compare(fig: dict[str, Any], base: dict[str, Any]) -> int:
    worse = 0
    for key in _COSTS:
        old, new = base[key], fig[key]
        flag = ""
        if old and new > old * REGRESSION:
            flag = "  REGRESSION"
            worse += 1
        print(f"{key:<30} {old:10.2f} -> {new:10.2f}{flag}")
    return 1 if worse else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not MICROPYTHON.exists():
        print(f"needs {MICROPYTHON} (the micropython unix port with VfsLfs2)", file=sys.stderr)
        return 2
    base = None
    if args.baseline:  # read first: a bad baseline should not cost a run
        base = baseline.read(args.baseline, *_COSTS)
        if base is None:
            return 2
    fig = measure(args)
    report(fig)
    if args.save:
        baseline.save(args.save, fig)
    return 0 if base is None else compare(fig, base)


if __name__ == "__main__":
    sys.exit(main())
