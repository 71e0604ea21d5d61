"""MQTT QoS 1 ingest into the NATS cluster with the stream leaders placed on purpose.

Why: bench/cluster_throughput.py saw the cluster take ~37 s to PUBACK 4 000 publishes that Mosquitto
took in 1 s, in 2 runs of 8 (docs/scaling.md, "The ~37 s ingest stall"). nats-server answers an MQTT
QoS 1 PUBLISH only after storing it in its own `$MQTT_msgs` stream, a request made from the client's
read loop. nats-server 2.9 makes that request without first flushing the route it has just queued
the message on for the city stream's leader; when `$MQTT_msgs` has its leader on that same node (and
it is not the gateway's node), the store request waits in the unflushed route buffer until other
traffic flushes it or the request times out (4 s). Fixed upstream in 2.10.0 ("MQTT: Fixed issue that
could cause time out storing messages"). Leaders land where the Raft elections put them, so the slow
case was chance: 1 in 3 that both leaders share a node, 2 in 3 that the publisher is on another.

This bench takes the chance out: a 3-node cluster (hil.services.NatsCluster, JetStream R3, file
storage), the city stream made as the collector makes it, then `CITY_UPLINK`'s leader stepped down
until it is (`together`) or is not (`apart`) on `$MQTT_msgs`'s leader's node, and one paho client
(QoS 1, 1 000 in flight, MQTT 3.1.1, bench/collector_throughput.py's pre-encoded 50-reading batches)
publishes to a node that leads neither stream. It prints the time until the last PUBACK, the rate,
and the longest wait for a PUBACK, for each placement and each run, with the nats-server that the
tests run (hil.services.nats_server_binary(): the system's, or $CITYBRAIN_NATS_SERVER) or the one
`--nats-server` names, such as the 2.10 that scripts/setup unpacks:

    python bench/cluster_ingest.py [--batches 4000] [--runs 2]       # the system's (bookworm: 2.9.10)
    python bench/cluster_ingest.py --nats-server .cache/nats-server/nats-server   # trixie's 2.10.27

Nothing is pinned: the three nodes, the publisher and this process share the machine's cores.
Exit status 1 if a publish is not PUBACKed within `--timeout` (s).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import nats  # noqa: E402
import paho.mqtt.client as mqtt  # noqa: E402

from bench import collector_throughput as ct  # noqa: E402
from collector import jetstream as js  # noqa: E402
from collector.config import NatsConfig  # noqa: E402
from hil.services import NatsCluster, http_request, nats_server_binary  # noqa: E402

STREAM = NatsConfig().stream
MQTT_MSGS = "$MQTT_msgs"  # nats-server's own stream of MQTT QoS 1 messages


def leaders(cluster: NatsCluster) -> dict[str, str]:
    """Stream name -> the server name of its leader, as the nodes' /jsz reports it."""
    out: dict[str, str] = {}
    for n in cluster.nodes:
        _, body = http_request(n.url + "/jsz?streams=true", timeout=5)
        for acc in json.loads(body).get("account_details", []):
            for s in acc.get("stream_detail", []):
                leader = s.get("cluster", {}).get("leader")
                if leader:
                    out[s["name"]] = leader
    return out


async def _make_stream(cluster: NatsCluster) -> None:
    n = NatsConfig(servers=",".join(cluster.nats_urls), max_bytes=256 * 2**20)
    nc = await nats.connect(**js.connect_options(n))
    try:
        await js.ensure_stream(nc.jetstream(), n, ct.PREFIX)
    finally:
        await nc.close()


async def _step_down(cluster: NatsCluster, stream: str) -> None:
    nc = await nats.connect(cluster.nats_urls)
    try:
        await nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", b"", timeout=5)
    finally:
        await nc.close()


def place(cluster: NatsCluster, together: bool, tries: int = 30) -> tuple[str, str]:
    """Step CITY_UPLINK's leader down until it is (or is not) on $MQTT_msgs's leader's node."""
    for _ in range(tries):
        lead = leaders(cluster)
        up, msgs = lead.get(STREAM), lead.get(MQTT_MSGS)
        if up and msgs and (up == msgs) == together:
            return up, msgs
        if up:
            asyncio.run(_step_down(cluster, STREAM))
        time.sleep(1.5)
    raise SystemExit(f"bench: could not place the leaders ({'together' if together else 'apart'}): {lead}")


def publish(port: int, wl: ct.Workload, timeout: float) -> dict[str, Any]:
    """Every batch at QoS 1 from one client; when each PUBACK came."""
    source = list(wl.messages())
    acked: list[float] = []
    lock = threading.Lock()

    def on_publish(*_: object) -> None:
        with lock:
            acked.append(time.monotonic())

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-ingest")
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.on_publish = on_publish
    disconnects: list[float] = []
    client.on_disconnect = lambda *_: disconnects.append(time.monotonic())
    client.connect("127.0.0.1", port)
    client.loop_start()
    time.sleep(0.5)
    t0 = time.monotonic()
    for topic, payload in source:
        client.publish(topic, payload, qos=1)
    deadline = t0 + timeout
    while len(acked) < len(source) and time.monotonic() < deadline:
        time.sleep(0.02)
    lost_connection = len(disconnects)  # before ours: the node dropped the client
    client.disconnect()
    client.loop_stop()
    times = [t0, *acked]
    return {
        "messages": len(source),
        "acked": len(acked),
        "acked_s": (acked[-1] - t0) if acked else timeout,
        "max_wait_s": max((b - a for a, b in itertools.pairwise(times)), default=timeout),
        "disconnects": lost_connection,
    }


def run(server: str, together: bool, wl: ct.Workload, tmp: Path, timeout: float) -> dict[str, Any]:
    with NatsCluster(3, workdir=str(tmp), binary=server) as cluster:
        asyncio.run(_make_stream(cluster))
        up, msgs = place(cluster, together)
        names = [n.server_name for n in cluster.nodes]
        node = next(i for i, name in enumerate(names) if name not in (up, msgs))
        r = publish(cluster.mqtt_ports[node], wl, timeout)
    return {"placement": "together" if together else "apart", "stream_leader": up, "mqtt_msgs_leader": msgs,
            "publisher_node": names[node], **r}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=4000, help="50-reading batches per run")
    ap.add_argument("--runs", type=int, default=2, help="runs of each placement")
    ap.add_argument("--nats-server", default="", help="the nats-server binary (default: the tests')")
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--save", metavar="FILE", help="write the figures as JSON")
    args = ap.parse_args(argv)
    server = args.nats_server or nats_server_binary()
    version = subprocess.run([server, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    print(f"{version} ({server}); {args.batches} batches of {ct.PER_BATCH} readings per run", flush=True)
    wl = ct.make_workload(args.batches * ct.PER_BATCH, 200)
    rows = []
    with tempfile.TemporaryDirectory(prefix="citybrain-bench-ingest-") as d:
        for i in range(args.runs):
            for together in (True, False):
                r = run(server, together, wl, Path(d) / f"run{i}-{together}", args.timeout)
                rows.append(r)
                ok = r["acked"] == r["messages"]
                print(f"run {i + 1} {r['placement']:8} ({STREAM}@{r['stream_leader']} {MQTT_MSGS}@"
                      f"{r['mqtt_msgs_leader']}, publisher on {r['publisher_node']}): "
                      f"{r['acked']}/{r['messages']} PUBACKed in {r['acked_s']:.1f} s "
                      f"({r['acked'] / max(r['acked_s'], 1e-9):,.0f}/s), "
                      f"longest wait {r['max_wait_s']:.2f} s, "
                      f"{r['disconnects']} disconnects{'' if ok else '  NOT ALL PUBACKED'}", flush=True)
    if args.save:
        Path(args.save).write_text(json.dumps({"server": version, "batches": args.batches, "runs": rows},
                                              indent=2) + "\n")
    return 0 if all(r["acked"] == r["messages"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
