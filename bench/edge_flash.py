"""Flash bytes the gateway agent writes per reading, end to end: sources -> log -> PUBACK -> ack.

Why: bench/store_flash.py measures the log alone (a fixed payload, appends and acks by hand, and
littlefs's own amplification under MicroPython). This one measures what the agent does with it:
the real record encoding of simulator readings, the agent's batches and acks, the ack-cursor
saves they cause and the clock anchors, all counted at the file layer (`Files.written`, the
`bytes_written` of the log's stats) while a private Mosquitto acknowledges every batch. Frames
arrive at a line rate (--rate readings/s) so syncs and cursor saves happen at their real pace.

Reported per reading, against the encoded reading size (the record payload `edge.record.encode`
hands the log) and, for reference, against the reading's size inside the published batch:

- record bytes (payload + 7-byte header) and their ratio to the payload: goal <= 1.2x;
- per-batch overhead: everything else written (ack-cursor state file, clock anchors) per batch;
- total bytes written per reading.

Receipts (docs/gateway.md, "Receipts"; the log is write-behind, docs/store.md): `--link online`
(the default) answers every batch with a receipt as it arrives, as a citybrain collector does, so
most periodic records are receipted before their group sync and never written (goal <= 0.3x the
encoded reading); `--link offline` holds every receipt until the readings are all taken and the
`flush` has synced the log, as if the link were down all along (goal <= 1.2x, as before
write-behind). Also printed: the latency from the agent taking a reading (its timestamp) to the
batch carrying it reaching the broker's subscriber, p50/p99/max.

Exit status 1 above the goal, or (with --baseline) if bytes written per reading grew by more
than 5 % against saved figures.

    python bench/edge_flash.py [--readings 3000] [--rate 200] [--link online|offline] [--quick]
                               [--shares KIND=SHARE,...] [--save FILE] [--baseline FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import cbor2  # noqa: E402

from bench import baseline  # noqa: E402
from bench.edge_throughput import Counter, agent_config, drive, frames  # noqa: E402
from edge.store.log import HEADER  # noqa: E402
from hil.services import Mosquitto  # noqa: E402

GOALS = {"online": 0.3, "offline": 1.2}


class Receipts(Counter):
    """The broker-side subscriber, also acting as the collector: a receipt for every batch
    (docs/protocol.md, "Receipt"), at once (online) or only after `release` (offline). Records
    each reading's latency from its timestamp to its arrival."""

    def __init__(self, port: int, hold: bool) -> None:
        self.hold = hold
        self.held: list[tuple[int, int, bool]] = []
        self.latency_ms: list[float] = []
        self._rlock = threading.Lock()
        super().__init__(port)
        # Alarms are receipted too: the gateway keeps each alarm's record until its receipt.
        self.client.subscribe("city/+/alarm", 1)

    def _on_message(self, c: Any, u: Any, msg: Any) -> None:
        if msg.topic.endswith("/alarm"):
            alarm = cbor2.loads(msg.payload)
            with self._rlock:
                if self.hold:
                    self.held.append((alarm[1], alarm[2], True))
                    return
            self._receipt(alarm[1], alarm[2], True)
            return
        now_ms = time.time() * 1000
        super()._on_message(c, u, msg)
        batch = cbor2.loads(msg.payload)
        t0 = batch[3]
        self.latency_ms.extend(now_ms - (t0 + r[2]) for r in batch[4])
        with self._rlock:
            if self.hold:
                self.held.append((batch[1], batch[2], False))
                return
        self._receipt(batch[1], batch[2])

    def _receipt(self, boot: int, seq: int, alarm: bool = False) -> None:
        from collector.receipts import encode_receipt

        seqs = [seq, seq]
        payload = encode_receipt(boot, [], seqs) if alarm else encode_receipt(boot, seqs, [])
        self.client.publish("city/gw-bench/ack", payload, 1)

    def release(self) -> None:
        with self._rlock:
            self.hold = False
            held, self.held = self.held, []
        for boot, seq, alarm in held:
            self._receipt(boot, seq, alarm)


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(q * len(xs)))], 1) if xs else 0.0


class WriteCounter:
    """Splits what the logs' Files object writes into records and small atomic files (state,
    anchors), and the records into the events log's and the periodic log's (docs/store.md, "Two
    logs")."""

    def __init__(self) -> None:
        self.atomic_bytes = 0
        self.atomic_writes = 0
        self.event_bytes = 0  # record bytes written to <dir>/events/seg-*
        self.start_written = 0
        self.files: Any = None
        self.agent: Any = None

    def attach(self, agent: Any) -> None:
        self.agent = agent
        files = agent.log.files
        self.files = files
        self.start_written = files.written
        inner = files.write_atomic
        inner_write = files.write

        def write_atomic(path: str, data: Any) -> None:
            self.atomic_writes += 1
            self.atomic_bytes += len(data)
            inner(path, data)

        def write(f: Any, buf: Any) -> int:
            n = int(inner_write(f, buf))
            if "/events/seg-" in str(getattr(f, "name", "")):
                self.event_bytes += n
            return n

        files.write_atomic = write_atomic
        files.write = write


def measure(n: int, rate: float, kinds: list[str], link: str = "online",
            shares: dict[str, float] | None = None) -> dict[str, Any]:
    bytes_per_s: float | dict[str, float]
    if shares is None:
        per = [n // len(kinds) + (1 if i < n % len(kinds) else 0) for i in range(len(kinds))]
        data = {k: frames(k, m) for k, m in zip(kinds, per, strict=True)}
        # One line rate for every port: each carries its share of --rate readings/s.
        mean_frame = sum(len(v) for v in data.values()) / max(1, n)
        bytes_per_s = rate / len(kinds) * mean_frame
    else:
        # Each kind its own share of the readings and of --rate readings/s (its own line rate).
        total = sum(shares[k] for k in kinds)
        per = [max(1, round(n * shares[k] / total)) for k in kinds]
        data = {k: frames(k, m) for k, m in zip(kinds, per, strict=True)}
        bytes_per_s = {k: rate * shares[k] / total * len(data[k]) / m
                       for k, m in zip(kinds, per, strict=True)}
        n = sum(per)
    tmp = tempfile.mkdtemp(prefix="edge-flash-")
    broker = Mosquitto(persistence=False)
    broker.start()
    counter = Receipts(broker.port, hold=link == "offline")
    wc = WriteCounter()

    def attach(agent: Any) -> None:
        wc.attach(agent)
        flush = agent.request_flush

        def request_flush() -> int:
            n = flush()  # the log is synced: whatever was held is on flash now
            counter.release()
            return n

        agent.request_flush = request_flush

    try:
        cfg = agent_config(broker.port, tmp + "/spool", kinds)
        # This bench answers with receipts (`Receipts`): records leave the log on them, not on the
        # PUBACK (edge_throughput's config has receipts off; with it, --link made no difference).
        cfg["uplink"]["receipts"] = True
        fig = asyncio.run(drive(cfg, data, 60 + 2 * n / rate, bytes_per_s, attach))
        counter.settle(fig["readings_acked"])
    finally:
        counter.close()
        broker.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)
    files = wc.files
    written = files.written - wc.start_written
    readings = fig["log"]["appended"]
    record_bytes = written - wc.atomic_bytes
    # Every record taken, written or not (receipted before its sync, so never written: skipped).
    payload = record_bytes + fig["log"]["skipped_bytes"] - HEADER * readings
    batches = max(1, counter.batches)
    # The two logs apart: events and alarms (synced at append, every byte written) and periodic
    # readings (write-behind: written only if not receipted by their group sync).
    events = wc.agent.events.appended
    periodic = wc.agent.log.appended
    event_payload = wc.event_bytes - HEADER * events
    periodic_written = record_bytes - wc.event_bytes
    periodic_payload = periodic_written + wc.agent.log.skipped_bytes - HEADER * periodic
    return {
        "kinds": dict(zip(kinds, per, strict=True)),
        "rate": rate,
        "readings": readings,
        "readings_acked": fig["readings_acked"],
        "seconds": round(fig["seconds"], 1),
        "batches": counter.batches,
        "bytes_written": written,
        "payload_bytes_per_reading": round(payload / readings, 2),
        "record_bytes_per_reading": round(record_bytes / readings, 2),
        "record_ratio": round(record_bytes / payload, 4),
        "link": link,
        "skipped_bytes_per_reading": round(fig["log"]["skipped_bytes"] / readings, 2),
        "latency_p50_ms": _pct(counter.latency_ms, 0.5),
        "latency_p99_ms": _pct(counter.latency_ms, 0.99),
        "latency_max_ms": _pct(counter.latency_ms, 1.0),
        "atomic_writes": wc.atomic_writes,
        "overhead_bytes_per_batch": round(wc.atomic_bytes / batches, 2),
        "bytes_written_per_reading": round(written / readings, 2),
        "total_ratio": round(written / payload, 4),
        "wire_reading_bytes": round(counter.reading_bytes / max(1, counter.readings), 2),
        "wire_ratio": round(written / max(1, counter.reading_bytes), 4),
        "syncs": fig["log"]["syncs"],
        "event_readings": events,
        "event_record_ratio": round(wc.event_bytes / event_payload, 4) if events else 0.0,
        "periodic_readings": periodic,
        "periodic_record_ratio": round(periodic_written / periodic_payload, 4) if periodic else 0.0,
        "event_floor_ratio": round(wc.event_bytes / payload, 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readings", type=int, default=3000, help="readings (default 3000)")
    parser.add_argument("--rate", type=float, default=200.0, help="readings/s arriving (default 200)")
    parser.add_argument("--kinds", default="parking,thermometer", help="serial kinds, comma-separated")
    parser.add_argument("--shares", default=None, metavar="KIND=SHARE,...",
                        help="each kind's share of the readings and of the rate (default: equal "
                             "readings, one line rate), e.g. parking=0.9,thermometer=0.1")
    parser.add_argument("--link", choices=("online", "offline"), default="online",
                        help="receipts at once (online, default) or held until the log is synced")
    parser.add_argument("--quick", action="store_true", help="a tiny run that proves the script works")
    baseline.add_arguments(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.readings, args.rate = 300, 300.0
    kinds = [k for k in args.kinds.split(",") if k]
    shares = None
    if args.shares:
        shares = {k: float(v) for k, _, v in (p.partition("=") for p in args.shares.split(",") if p)}
        kinds = list(shares)
    fig = measure(args.readings, args.rate, kinds, args.link, shares)
    goal = GOALS[args.link]
    print(f"workload        {fig['kinds']} at {fig['rate']:.0f} readings/s: {fig['readings']} logged, "
          f"{fig['readings_acked']} acked in {fig['batches']} batches ({fig['seconds']} s, "
          f"{fig['syncs']} syncs)")
    print(f"encoded reading {fig['payload_bytes_per_reading']:7.2f} B (record payload; "
          f"{fig['wire_reading_bytes']:.2f} B inside a batch)")
    print(f"record on file  {fig['record_bytes_per_reading']:7.2f} B/reading = {fig['record_ratio']:.3f}x "
          f"the encoded reading (goal <= {goal}x, link {fig['link']})")
    print(f"per batch       {fig['overhead_bytes_per_batch']:7.2f} B ({fig['atomic_writes']} state/anchor "
          f"files written for {fig['batches']} batches)")
    print(f"bytes written   {fig['bytes_written_per_reading']:7.2f} B/reading = "
          f"{fig['total_ratio']:.3f}x the encoded reading, {fig['wire_ratio']:.3f}x its size in a batch")
    print(f"never written   {fig['skipped_bytes_per_reading']:7.2f} B/reading (receipted before their sync)")
    print(f"periodic log    {fig['periodic_readings']} readings: {fig['periodic_record_ratio']:.3f}x their "
          f"encoded size written (write-behind)")
    print(f"events log      {fig['event_readings']} events and alarms: {fig['event_record_ratio']:.3f}x "
          f"their encoded size written (synced at append) = {fig['event_floor_ratio']:.3f}x the mix's "
          f"encoded readings: the least this share of events can cost while each is on flash at append")
    print(f"to the broker   p50 {fig['latency_p50_ms']} ms, p99 {fig['latency_p99_ms']} ms, "
          f"max {fig['latency_max_ms']} ms (reading's timestamp -> subscriber)")
    status = 0
    if fig["record_ratio"] > goal:
        print(f"FAIL: {fig['record_ratio']:.3f}x is above the goal {goal}x")
        status = 1
    if fig["readings_acked"] != fig["readings"]:
        print("FAIL: not every reading was acknowledged")
        status = 1
    if args.baseline:
        base = baseline.read(args.baseline, "bytes_written_per_reading")
        if base is None:
            return 2
        old = float(base["bytes_written_per_reading"])
        change = fig["bytes_written_per_reading"] / old - 1.0
        new = fig["bytes_written_per_reading"]
        print(f"baseline        {old:.2f} B/reading -> {new:.2f} ({change:+.1%})")
        if change > 0.05:
            print(f"FAIL: bytes written per reading grew {change:.1%} (> 5%)")
            status = 1
    if args.save:
        baseline.save(args.save, fig)
    return status


if __name__ == "__main__":
    sys.exit(main())
