"""Readings per second through the whole gateway path on CPython, one core.

Why: a CPython gateway (a Pi on a junction) may front a LoRa concentrator whose UART carries the
frames of hundreds of bays; the agent must never be the bottleneck. The path measured is the
real one: kind codec decode -> rules -> record encode -> log append (files on disk, group syncs,
fsync for events and alarms) -> batch -> MQTT publish -> PUBACK from a private Mosquitto -> log ack.
Only the serial port is replaced: an in-memory port (the edge.ports interface, `readinto`) serves
pre-generated simulator frames as fast as the source asks, because the pty's byte-at-a-time path
is a test fixture, not what a gateway's UART driver costs. The clock starts at the first frame
and stops when the broker has acknowledged every reading (after the equivalent of a `flush`
command for the tail). A subscriber counts the readings in the published batches as a check.

Goal: >= 5,000 readings/s. Exit status 1 below the goal (with a profile of the top costs), or
(with --baseline) if readings/s fell by more than --tolerance against saved figures.

    python bench/edge_throughput.py [--readings 40000] [--kinds parking,thermometer]
                                    [--profile] [--save FILE] [--baseline FILE] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
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
import paho.mqtt.client as mqtt  # noqa: E402

from bench import baseline  # noqa: E402
from edge import config as edge_config  # noqa: E402
from edge.agent import Agent  # noqa: E402
from edge.ports.posix import PosixPort  # noqa: E402
from hil.services import Mosquitto  # noqa: E402

GOAL = 5000.0
T0 = 1795676000000  # 2026-11-26, a trusted OS clock's era (the agent stamps with its own clock)
SENSORS = {
    "parking": [f"P-{i:05d}" for i in range(1, 41)],
    "thermometer": [f"T-gate-{i:02d}" for i in range(1, 9)],
}


def frames(kind: str, n: int, seed: int = 11) -> bytes:
    """n valid wire frames of one kind from its simulator, back to back as a UART would carry them."""
    import devices

    sim_mod = devices.load(kind, "sim")
    if kind == "parking":
        sim = sim_mod.Simulator(SENSORS[kind], seed=seed, heartbeat_s=2)
    else:
        sim = sim_mod.Simulator(SENSORS[kind], seed=seed, mean_gap_s=0.5)
    out = bytearray()
    now = T0
    got = 0
    while got < n:
        now += 50
        f = sim.next_frame(now)
        if f:
            out += f
            got += 1
    return bytes(out)


class MemoryPort:
    """The edge.ports interface over a byte string: serves what it has at once, then goes quiet.

    Each read yields to the loop first, as a UART driver's await does, so the uplink runs
    interleaved with the source exactly as on a gateway.
    """

    baud = 115200

    def __init__(self, data: bytes, bytes_per_s: float = 0.0) -> None:
        self.data = memoryview(data)
        self.pos = 0
        self.open = False  # the bench opens the tap once the uplink is connected
        self.bytes_per_s = bytes_per_s  # 0: as fast as asked; else a line rate
        self.opened_at = 0.0

    def start(self) -> None:
        self.open = True
        self.opened_at = time.perf_counter()

    @property
    def drained(self) -> bool:
        return self.pos >= len(self.data)

    def _available(self, limit: int) -> int:
        n = min(limit, len(self.data) - self.pos) if self.open else 0
        if n > 0 and self.bytes_per_s:
            due = int((time.perf_counter() - self.opened_at) * self.bytes_per_s)
            n = min(n, max(0, due - self.pos))
        return n

    async def readinto(self, buf: Any, timeout_ms: int | None) -> int:
        """The port contract: wait up to timeout_ms (None: as long as it takes) for a first byte,
        0 only if none came."""
        await asyncio.sleep(0)
        n = self._available(len(buf))
        end = None if timeout_ms is None else time.perf_counter() + timeout_ms / 1000
        while n <= 0:
            if end is not None and time.perf_counter() >= end:
                return 0
            await asyncio.sleep(0.001)
            n = self._available(len(buf))
        buf[:n] = self.data[self.pos:self.pos + n]
        self.pos += n
        return n

    async def write(self, buf: Any) -> None:
        pass

    def discard(self) -> int:
        return 0

    def close(self) -> None:
        pass


class BenchPort(PosixPort):
    """PosixPort whose serial ports are MemoryPorts, by config path."""

    def __init__(self, ports: dict[str, MemoryPort]) -> None:
        super().__init__(verbose=False)
        self.ports = ports

    def open_serial(self, path: str, baud: int) -> Any:
        return self.ports[path]


def agent_config(broker_port: int, store_dir: str, kinds: list[str], **store: int) -> dict[str, Any]:
    """Every reading reported (max_silence_s 0, no deadband); defaults elsewhere, except receipts:
    no collector answers here, so records leave the log on PUBACK (uplink.receipts false; what
    receipts cost is measured by edge_memory.py and collector_throughput.py)."""
    sources = [{"kind": k, "transport": "serial", "port": "mem:" + k, "sensors": SENSORS[k],
                "max_silence_s": 0} for k in kinds]
    return edge_config.validate({
        "gateway_id": "gw-bench", "broker": {"host": "127.0.0.1", "port": broker_port},
        "trust_os_clock": True, "store": dict({"dir": store_dir}, **store),
        "uplink": {"status_every_s": 3600, "receipts": False}, "sources": sources,
    })


async def drive(cfg: dict[str, Any], data: dict[str, bytes], timeout_s: float,
                bytes_per_s: float | dict[str, float] = 0.0, on_agent: Any = None) -> dict[str, Any]:
    """Run the agent until every frame is taken and every reading acknowledged; figures.

    `bytes_per_s`: every port's line rate, or one per kind. `on_agent(agent)` is called once the
    agent is built (edge_flash.py counts its writes there).
    """
    def rate(k: str) -> float:
        return bytes_per_s[k] if isinstance(bytes_per_s, dict) else bytes_per_s

    ports = {"mem:" + k: MemoryPort(v, rate(k)) for k, v in data.items()}
    agent = Agent(cfg, BenchPort(ports))
    if on_agent is not None:
        on_agent(agent)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    while not agent.client.connected:  # time the path, not the TCP/MQTT handshake
        await asyncio.sleep(0.005)
    for p in ports.values():
        p.start()
    t0 = time.perf_counter()
    deadline = t0 + timeout_s
    flushed = False
    try:
        while time.perf_counter() < deadline:
            await asyncio.sleep(0.002)
            if not flushed and all(p.drained for p in ports.values()):
                # The tail: what the `flush` command does, instead of waiting for the group sync.
                await asyncio.sleep(0)
                agent.request_flush()
                flushed = True
            if flushed and agent.log.pending + agent.events.pending == 0 and not agent._sent:
                break
        t1 = time.perf_counter()
    finally:
        stop.set()
        await task
    stats = log_stats(agent)
    return {
        "seconds": t1 - t0,
        "readings_decoded": sum(s.readings for s in agent.sources),
        "readings_reported": sum(s.reported for s in agent.sources),
        "readings_acked": stats["appended"] - stats["pending_records"],
        "errors": {s.kind: s.error_report() for s in agent.sources},
        "alarms_sent": agent.alarms_sent,
        "log": stats,
        "complete": stats["pending_records"] == 0 and all(p.drained for p in ports.values()),
    }


def log_stats(agent: Any) -> dict[str, Any]:
    """The counters of the agent's two logs (periodic and events, docs/store.md "Two logs")
    added up; `bytes_written` once, as both write through one `Files`."""
    stats = agent.log.stats()
    for k, v in agent.events.stats().items():
        if k != "bytes_written" and k != "boot":
            stats[k] += v
    return stats


class Counter:
    """A subscriber on the gateway's up topic counting readings in the batches it receives."""

    def __init__(self, port: int) -> None:
        self.readings = 0
        self.batches = 0
        self.reading_bytes = 0
        self.payload_bytes = 0
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-counter")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe("city/+/up", 1)
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        batch = cbor2.loads(msg.payload)
        with self._lock:
            self.batches += 1
            self.readings += len(batch[4])
            self.payload_bytes += len(msg.payload)
            self.reading_bytes += sum(len(cbor2.dumps(r)) for r in batch[4])

    def settle(self, want: int, timeout: float = 10.0) -> None:
        end = time.monotonic() + timeout
        while self.readings < want and time.monotonic() < end:
            time.sleep(0.02)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def run_once(n: int, kinds: list[str], profile: bool, timeout_s: float,
             store: dict[str, int] | None = None) -> dict[str, Any]:
    """Start a private Mosquitto, run the agent over n readings (split across kinds), tear down."""
    per = [n // len(kinds) + (1 if i < n % len(kinds) else 0) for i in range(len(kinds))]
    data = {k: frames(k, m) for k, m in zip(kinds, per, strict=True)}
    tmp = tempfile.mkdtemp(prefix="edge-bench-")
    broker = Mosquitto(persistence=False)
    broker.start()
    counter = Counter(broker.port)
    prof = cProfile.Profile() if profile else None
    try:
        cfg = agent_config(broker.port, tmp + "/spool", kinds, **(store or {}))
        if prof:
            prof.enable()
        fig = asyncio.run(drive(cfg, data, timeout_s))
        if prof:
            prof.disable()
        counter.settle(fig["readings_acked"])
        fig["subscriber_readings"] = counter.readings
        fig["subscriber_batches"] = counter.batches
        fig["subscriber_reading_bytes"] = counter.reading_bytes
        fig["subscriber_payload_bytes"] = counter.payload_bytes
    finally:
        counter.close()
        broker.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)
    fig["frames"] = dict(zip(kinds, per, strict=True))
    fig["readings_per_s"] = round(fig["readings_acked"] / fig["seconds"], 1) if fig["seconds"] else 0.0
    if prof:
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(15)
        fig["profile"] = s.getvalue()
    return fig


def pin_one_core() -> str:
    """Run this process (agent, loop, codecs) on one core; Mosquitto keeps the others."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpus[-1]})
        return f"cpu {cpus[-1]} of {len(cpus)}"
    except (AttributeError, OSError):
        return "not pinned"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readings", type=int, default=40000, help="frames fed (default 40000)")
    parser.add_argument("--kinds", default="parking", help="serial kinds, comma-separated")
    parser.add_argument("--repeat", type=int, default=3, help="runs; the best is reported (default 3)")
    parser.add_argument("--profile", action="store_true", help="print the top costs even above the goal")
    parser.add_argument("--quick", action="store_true", help="a tiny run that proves the script works")
    baseline.add_arguments(parser)
    parser.add_argument("--tolerance", type=float, default=0.15,
                        help="allowed drop of readings/s against --baseline (default 0.15)")
    args = parser.parse_args(argv)
    if args.quick:
        args.readings, args.repeat = 1000, 1
    kinds = [k for k in args.kinds.split(",") if k]
    if not kinds or any(k not in SENSORS for k in kinds):
        parser.error("--kinds: choose from " + ", ".join(SENSORS))

    pinned = pin_one_core()
    runs = [run_once(args.readings, kinds, args.profile, 120.0) for _ in range(max(1, args.repeat))]
    fig = max(runs, key=lambda f: f["readings_per_s"])
    rates = [r["readings_per_s"] for r in runs]
    print(f"python          {sys.version.split()[0]}  ({pinned})")
    print(f"frames          {fig['frames']}")
    print(f"readings        decoded {fig['readings_decoded']}  reported {fig['readings_reported']}  "
          f"acked {fig['readings_acked']}  seen by subscriber {fig['subscriber_readings']} "
          f"in {fig['subscriber_batches']} batches")
    print(f"log             syncs {fig['log']['syncs']}  bytes_written {fig['log']['bytes_written']}  "
          f"alarms published {fig['alarms_sent']}")
    print(f"elapsed         {fig['seconds']:.3f} s")
    print(f"throughput      {fig['readings_per_s']:.0f} readings/s  (runs: "
          + ", ".join(f"{r:.0f}" for r in rates) + f"; goal >= {GOAL:.0f})")
    status = 0
    if not fig["complete"] or fig["readings_acked"] != fig["readings_decoded"]:
        print("FAIL: not every decoded reading was acknowledged in time")
        status = 1
    if fig["readings_per_s"] < GOAL:
        print(f"FAIL: {fig['readings_per_s']:.0f} readings/s is below the goal {GOAL:.0f}")
        status = 1
        if "profile" not in fig:
            fig = dict(fig, profile=run_once(args.readings, kinds, True, 120.0)["profile"])
    if "profile" in fig:
        print("top costs (cProfile, by own time):")
        print(fig["profile"])
    if args.baseline:
        base = baseline.read(args.baseline, "readings_per_s")
        if base is None:
            return 2
        old = float(base["readings_per_s"])
        change = fig["readings_per_s"] / old - 1.0
        print(f"baseline        {old:.0f} readings/s -> {fig['readings_per_s']:.0f} ({change:+.1%})")
        if change < -args.tolerance:
            print(f"FAIL: readings/s fell {-change:.1%} (> {args.tolerance:.0%})")
            status = 1
    if args.save:
        keep = {k: v for k, v in fig.items() if k != "profile"}
        keep["python"] = sys.version.split()[0]
        baseline.save(args.save, keep)
    return status


if __name__ == "__main__":
    sys.exit(main())
