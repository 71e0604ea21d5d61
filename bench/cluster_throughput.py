"""Throughput through the NATS JetStream cluster beside one Mosquitto, same workload, same run.

Why: docs/scaling.md sizes collectors for one Mosquitto with shared subscriptions; a city that moves
to the cluster (issue 13) needs to know what the cluster costs per reading and whether a second
collector adds throughput there too.

The collectors run with their shipped defaults. The workload is bench/collector_throughput.py's
(50-reading batches of the simulators' kind mix, pre-encoded, from many gateway ids, QoS 1 from
its publisher subprocess, MQTT 3.1.1). Four runs, each with a fresh broker and a fresh InfluxDB
1.x (hil.services): Mosquitto with one collector
and with two (a share group), then a 3-node NATS cluster on loopback (JetStream R3, file storage;
the publisher on one node's MQTT listener) with one collector and with two (service.input = "nats",
one durable consumer). The clock runs from the first publish until InfluxDB counts every reading;
every reading must be there exactly once (exact count per kind). Collector CPU per reading is the
collectors' user+system time over the run divided by the readings.

    python bench/cluster_throughput.py [--readings 200000] [--gateways 200] [--save F]
    python bench/cluster_throughput.py --quick     # 20 000 readings: shows the figures only
    CITYBRAIN_NATS_SERVER=.cache/nats-server/nats-server python bench/cluster_throughput.py  # 2.10

Each NATS run prints where the leaders of the city stream and of nats-server's `$MQTT_msgs` ended
up: with nats-server 2.9, both on one node other than the publisher's is the ~37 s stall
(docs/scaling.md, bench/cluster_ingest.py).

Nothing is pinned: on a shared 2-core box the broker(s), the collectors, the publisher and the
database compete for the same cores, and the three NATS nodes run on them too (in a city each node
has its own host), so the cluster's figure here is a floor. Exit status 1 if a reading is lost or
doubled.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import cluster_ingest  # noqa: E402
from bench import collector_throughput as ct  # noqa: E402
from collector.config import MqttConfig  # noqa: E402
from hil.services import Collector, Mosquitto, NatsCluster, nats_server_binary, nats_server_version  # noqa: E402


def collector_settings(kind: str, cluster: NatsCluster | None, n: int) -> dict[str, dict[str, object]]:
    # The collector's shipped defaults (what a user gets); the NATS in-flight bound is the MQTT one.
    settings: dict[str, dict[str, object]] = {
        "mqtt": {},
        "storage": {"spool_max_bytes": "512MiB"},
        "service": {"log_level": "WARNING"},
    }
    if kind == "nats":
        assert cluster is not None
        settings["service"]["input"] = "nats"
        settings["nats"] = {
            "servers": ",".join(cluster.nats_urls),
            # The consumer's bound is shared by all its collectors, Receive Maximum is per collector:
            # the same window per collector as on Mosquitto.
            "max_ack_pending": n * MqttConfig().receive_maximum,
            "fetch_batch": 250,
            "max_bytes": "256MiB",  # three nodes on one disk: the test nodes hold 1 GB each
        }
    elif n > 1:
        settings["mqtt"]["share_group"] = "bench"
    return settings


def cpu_s(c: Collector) -> float:
    assert c.proc is not None
    with open(f"/proc/{c.proc.pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    import os

    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def run(kind: str, n: int, wl: ct.Workload, tmp: Path) -> dict[str, Any]:
    """One run: `kind` (mosquitto or nats) with `n` collectors."""
    with contextlib.ExitStack() as stack:
        cluster: NatsCluster | None = None
        if kind == "nats":
            cluster = stack.enter_context(NatsCluster(3, workdir=str(tmp / "nats")))
            port = cluster.mqtt_ports[0]
        else:
            port = stack.enter_context(Mosquitto(workdir=str(tmp / "mosquitto"), persistence=False)).port
        store = stack.enter_context(ct.Store(tmp / "db"))
        collectors = []
        for i in range(n):
            c = Collector(port, store.collector_influx(), client_id=f"bench-{kind}-{i}",
                          settings=collector_settings(kind, cluster, n), workdir=str(tmp / f"c{i}"))
            stack.callback(c.kill)
            c.start()
            collectors.append(c)
        pub = ct.Publisher(wl, port)
        stack.callback(pub.kill)
        cpu0 = sum(cpu_s(c) for c in collectors)
        pub.go()
        timing = pub.result(timeout=3600)
        done = ct.wait_for_all(store, wl, 900, poll=0.5)  # the database counts, for every run alike
        cpu = sum(cpu_s(c) for c in collectors) - cpu0
        problems = ct.verify(store, wl)
        placement = ""
        if cluster is not None:
            # The ~37 s stall of nats-server 2.9 (docs/scaling.md): both leaders on one node, not ours.
            lead = cluster_ingest.leaders(cluster)
            up, msgs = lead.get(cluster_ingest.STREAM, "?"), lead.get(cluster_ingest.MQTT_MSGS, "?")
            placement = f"{cluster_ingest.STREAM}@{up} {cluster_ingest.MQTT_MSGS}@{msgs}, publisher on n1"
        codes = [c.stop() for c in collectors]
    if any(codes):
        problems.append(f"collector exit codes {codes}")
    first = timing["first"]
    return {
        "broker": kind,
        "collectors": n,
        "rate": wl.readings / (done - first),
        "total_s": done - first,
        "publish_s": timing["sent"] - first,
        "acked_s": timing["acked"] - first,  # the broker had acknowledged every publish
        "cpu_us_per_reading": cpu / wl.readings * 1e6,
        "leaders": placement,
        "problems": problems,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--readings", type=int, default=200_000)
    ap.add_argument("--gateways", type=int, default=200)
    ap.add_argument("--quick", action="store_true", help="20 000 readings from 40 gateways")
    ap.add_argument("--save", metavar="FILE", help="write the figures as JSON")
    args = ap.parse_args(argv)
    if args.quick:
        args.readings, args.gateways = 20_000, 40
    wl = ct.make_workload(args.readings, args.gateways)
    server = nats_server_binary()
    print(f"NATS runs: nats-server {'.'.join(map(str, nats_server_version(server)))} ({server})", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="citybrain-bench-cluster-") as d:
        for i, (kind, n) in enumerate((("mosquitto", 1), ("mosquitto", 2), ("nats", 1), ("nats", 2))):
            r = run(kind, n, wl, Path(d) / f"run{i}")
            rows.append(r)
            print(f"{kind:10} {n} collector{'s' if n > 1 else ' '} {r['rate']:9,.0f} readings/s"
                  f"  ({r['total_s']:.1f} s; broker acked all after {r['acked_s']:.1f} s)"
                  f"  collector CPU {r['cpu_us_per_reading']:.1f} us/reading"
                  f"  {'OK' if not r['problems'] else 'PROBLEMS: ' + '; '.join(r['problems'])}"
                  f"{'  (' + r['leaders'] + ')' if r['leaders'] else ''}", flush=True)
            time.sleep(1)
    if args.save:
        Path(args.save).write_text(json.dumps({"readings": wl.readings, "gateways": wl.gateways,
                                               "runs": rows}, indent=2) + "\n")
    return 1 if any(r["problems"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
