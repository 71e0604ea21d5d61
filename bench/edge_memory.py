"""Heap of the gateway agent on a board-sized MicroPython heap, over a long run of readings.

Why: an ESP32-class board gives the agent ~100 KB of heap; a leak of a few bytes per reading ends
in a MemoryError after a few days. This runs what a board runs: the image that
`provisioning.firmware.build` makes for a config (.mpy files for exactly the configured kinds),
under `micropython -X heapsize=128K`, with two serial sources (parking bays and fever screening
stations on ptys fed by their simulators) and one MQTT source (manhole lids publishing to a site
broker), uplinked to a private Mosquitto. Every reading is reported (max_silence_s 0).

The agent runs under a small driver (bench code, not part of the image) that drops the config as
edge.main does, makes every batch buffer of the uplink's pool at start (the agent makes them when
first needed, when the broker is slow: so every run measures that worst case), and samples the heap
every --sample-ms on the agent's own loop: `gc.mem_free()` as the allocator sees it, then after a
`gc.collect()` the live heap (`gc.mem_alloc()`) and free heap. It stops the agent with its
shutdown event when the bench drops a stop file, and lists the `devices.*` modules it imported.

Goals: >= 32 KB free (after collection) at every sample, on the 32-bit build; no growth: the live
heap's slope over the run (after the first 1,000 readings, which fill the per-sensor tables) stays
under --max-growth bytes per 10,000 readings. Exit status 1 if a goal is missed, a reading is lost or
a kind outside the config was imported; with --baseline (from a build of the same word size),
also if the peak live heap grew by more than 2 KB.

    python bench/edge_memory.py [--readings 10000] [--quick] [--save FILE] [--baseline FILE]
    python bench/edge_memory.py --sensors 128                       # 128 sensors in the default mix
    python bench/edge_memory.py --sensors 128 --no-receipts         # uplink.receipts off, to compare
    python bench/edge_memory.py --sensors parking=120,manhole=8 --mix parking=0.8,manhole=0.2
    python bench/edge_memory.py --micropython .venv/bin/micropython --heap 1M   # the 64-bit port
    python bench/edge_memory.py --sensors 128 --command-at 5000   # a first command mid-run

With --command-at N the bench plays an operator: once N readings reached the broker it publishes
one `status` command on the gateway's /cmd topic, waits for its reply, and reports the interned
names before and after it and the free heap from then on (a first command loads edge.command and
the CBOR decoder, whose names can make a new qstr pool, one block of ~4.5 KB, mid-run).

The interpreter is the 32-bit build scripts/setup installs (.cache/micropython32): an ESP32 is a
32-bit machine, and the 64-bit port needs ~1.45 times the heap for the same objects.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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

import cbor2  # noqa: E402
import paho.mqtt.client as mqtt  # noqa: E402

from bench import baseline  # noqa: E402
from collector.receipts import encode_receipt  # noqa: E402
from hil.services import MICROPYTHON32, Mosquitto  # noqa: E402
from provisioning.firmware import build, mpy_cross  # noqa: E402

MICROPYTHON = ROOT / ".venv" / "bin" / "micropython"
HEAP = "128K"  # what the goal is stated for
BOARD_HEAP = 128 * 1024
GOAL_FREE = 32 * 1024  # so the live heap may peak at 96 KB
T0 = 1795676000000
# The default source mix: the share of readings per kind, and the sensors of each kind. Parking and
# thermometers are serial sources (ptys), manhole lids an MQTT source (a site broker).
SHARE = {"parking": 0.4, "thermometer": 0.4, "manhole": 0.2}
COUNTS = {"parking": 20, "thermometer": 6, "manhole": 12}
KINDS = tuple(SHARE)
_ID = {"parking": "P-{:05d}", "thermometer": "T-gate-{:02d}", "manhole": "MH-{:04d}"}


def sensor_ids(counts: dict[str, int]) -> dict[str, list[str]]:
    return {k: [_ID[k].format(i) for i in range(1, n + 1)] for k, n in counts.items()}


def parse_mix(text: str) -> dict[str, float]:
    """'parking=0.8,manhole=0.2' -> reading shares (normalised); kinds left out are not configured."""
    mix = _pairs(text, float)
    total = sum(mix.values())
    if total <= 0 or any(v < 0 for v in mix.values()):
        raise argparse.ArgumentTypeError("shares must be >= 0 and add up to more than 0")
    return {k: v / total for k, v in mix.items() if v > 0}


def parse_sensors(text: str) -> dict[str, int] | int:
    """'128' (a total, split like the default 20:6:12) or 'parking=120,manhole=8' (per kind)."""
    if text.isdigit():
        return int(text)
    return _pairs(text, int)


def _pairs(text: str, conv: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in text.split(","):
        k, sep, v = part.partition("=")
        if not sep or k.strip() not in SHARE:
            raise argparse.ArgumentTypeError(f"{part!r} is not KIND=VALUE with KIND one of {KINDS}")
        try:
            out[k.strip()] = conv(v)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{v!r} is not a number") from None
    return out


def plan(mix: dict[str, float], sensors: dict[str, int] | int | None) -> dict[str, int]:
    """Sensors per configured kind: the kinds of the mix, counts from `sensors` or the defaults."""
    if sensors is None:
        return {k: COUNTS[k] for k in mix}
    if isinstance(sensors, int):
        weight = sum(COUNTS[k] for k in mix)
        counts = {k: max(1, round(sensors * COUNTS[k] / weight)) for k in mix}
        first = next(iter(counts))
        counts[first] += sensors - sum(counts.values())
        return counts
    if set(sensors) != set(mix):
        raise ValueError(f"--sensors names {sorted(sensors)}, --mix {sorted(mix)}: name the same kinds")
    if any(n < 1 for n in sensors.values()):
        raise ValueError("--sensors: each kind needs at least 1 sensor")
    return dict(sensors)

# Runs under micropython from the image as `micropython -m bench_driver`, with no arguments: the
# bench writes the config path, stop file, sample interval and verbosity into its text (@NAME@),
# so no argv string and no script path is interned. Kept lean: the run's peak includes its live
# heap and its interned names (a board's main.py, provisioning/flash.py BOOT_PY, has a handful),
# so it keeps the stage figures in a list, prints long format strings (heap strings, not interned
# names) and its report at the end with json. Every stage is reported, and a MemoryError names
# the stage it hit (STAGES, by how many were passed), with the live heap there.
STAGES = ("imports", "driver", "asyncio", "config", "agent_modules", "agent_built")
DRIVER = r"""
import gc, sys, time, json
gc.collect()
F0 = gc.mem_free()
LIVE = []  # the live heap after each of STAGES[1:]


def mark():
    gc.collect()
    LIVE.append(gc.mem_alloc())


mark()  # this bench's own code: not part of the agent


def main():
    import asyncio

    mark()
    from edge.main import load_config

    cfg = load_config("@CONFIG@")
    mark()
    from edge.agent import Agent
    from edge.ports.posix import PosixPort

    mark()
    t0 = time.ticks_ms()
    agent = Agent(cfg, PosixPort(@VERBOSE@))
    del cfg  # as edge.main does: the agent keeps only what it runs with
    # The uplink's pool makes its batch buffers when first needed, i.e. when the broker is slow
    # enough: made here, every run has the worst case, and one made mid-run is no false "growth".
    pool = agent.batcher.pool or []
    for i in range(len(pool)):
        if type(pool[i]) is int:
            pool[i] = bytearray(pool[i])
    mark()

    def line(tag):
        import micropython

        raw = gc.mem_free()
        gc.collect()
        log = agent.log
        print('{"tag": "%s", "ms": %d, "reported": %d, "acked": %d, "raw_free": %d, "free": %d, '
              '"alloc": %d, "block": %d}' % (tag, time.ticks_diff(time.ticks_ms(), t0),
              sum([s.reported for s in agent.sources]), log.appended - log.pending, raw,
              gc.mem_free(), gc.mem_alloc(), 16 if sys.maxsize < 1 << 32 else 32))
        micropython.qstr_info()  # interned names: pools grow by doubling (one 640-entry pool ~4.5 KB)
        micropython.mem_info()  # its "max free sz" (blocks) is the largest allocation that can succeed

    shutdown = asyncio.Event()

    async def sampler():
        import os

        while True:
            await asyncio.sleep_ms(@SAMPLE_MS@)
            line("sample")
            try:
                os.stat("@STOP@")
            except OSError:
                continue
            shutdown.set()
            return

    line("start")
    asyncio.create_task(sampler())  # a task before the loop runs: MicroPython's asyncio allows it
    asyncio.run(agent.run(shutdown))  # returns once the sampler set shutdown and the agent stopped
    line("end")
    errors = {}
    for s in agent.sources:
        rep = s.error_report()
        for k in rep:
            errors[k] = rep[k]
    print('{"tag": "done", "free_before_import": %d, "live": %s, "modules": %s, "errors": %s}' % (
        F0, json.dumps(LIVE), json.dumps(sorted([m for m in sys.modules if m.startswith("devices")])),
        json.dumps(errors)))


try:
    main()
except Exception as exc:  # a MemoryError here, or AgentCrashed naming the task that died and why
    gc.collect()
    print('{"tag": "oom", "stage": %d, "live": %s, "free_before_import": %d, "error": %s, "alloc": %d, '
          '"free": %d}' % (len(LIVE), json.dumps(LIVE), F0, json.dumps(repr(exc)), gc.mem_alloc(),
          gc.mem_free()))
    sys.exit(3)
"""


class Uplink:
    """Subscriber on the central broker: readings per batch, and heap_free from status messages."""

    def __init__(self, port: int) -> None:
        self.readings = 0
        self.batches = 0
        self.status_heap: list[int] = []
        self.seen: set[tuple[int, int]] = set()
        self.replies: list[Any] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-uplink")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe([("city/+/up", 1), ("city/+/status", 1), ("city/+/alarm", 1),
                               ("city/+/reply", 1)])
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        doc = cbor2.loads(msg.payload)
        if msg.topic.endswith("/up"):
            # Plays the collector: a receipt per batch (the agent keeps a batch until receipted;
            # docs/protocol.md, "Receipt"); a re-sent batch is counted once.
            self.client.publish(msg.topic[:-2] + "ack", encode_receipt(doc[1], [doc[2], doc[2]], []), qos=1)
            if (doc[1], doc[2]) in self.seen:
                return
            self.seen.add((doc[1], doc[2]))
            self.batches += 1
            self.readings += len(doc[4])
        elif msg.topic.endswith("/reply"):
            self.replies.append(doc)
        elif msg.topic.endswith("/alarm"):
            # Alarms too: the agent keeps an alarm's log record until it is receipted.
            self.client.publish(msg.topic[:-5] + "ack", encode_receipt(doc[1], [], [doc[2], doc[2]]), qos=1)
        elif isinstance(doc, dict) and doc.get("heap_free") is not None:
            self.status_heap.append(int(doc["heap_free"]))

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _serial_feed(kind: str, ids: list[str], n: int, fd: int, rate: float, stop: threading.Event) -> None:
    import devices

    sim_mod = devices.load(kind, "sim")
    if kind == "parking":
        sim = sim_mod.Simulator(ids, seed=5, heartbeat_s=2)
    else:
        sim = sim_mod.Simulator(ids, seed=5, mean_gap_s=0.5)
    _paced(lambda now: sim.next_frame(now), lambda f: os.write(fd, f), n, rate, stop)


def _mqtt_feed(port: int, ids: list[str], n: int, rate: float, stop: threading.Event) -> None:
    from devices.manhole.sim import Simulator

    sim = Simulator(ids, seed=5)
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-lids")
    pub.connect("127.0.0.1", port)
    pub.loop_start()

    def send(frame: bytes) -> None:
        dev = sim.last_reading[0] if sim.last_reading else "unknown"
        pub.publish(f"lids/{dev}/up", frame, qos=1).wait_for_publish(5)

    try:
        _paced(sim.next_frame, send, n, rate, stop)
    finally:
        pub.loop_stop()
        pub.disconnect()


def _paced(next_frame: Any, send: Any, n: int, rate: float, stop: threading.Event) -> None:
    """Send n valid frames at `rate` per second (simulated time runs 50 ms per attempt)."""
    now = T0
    sent = 0
    start = time.monotonic()
    while sent < n and not stop.is_set():
        now += 50
        frame = next_frame(now)
        if not frame:
            continue
        send(frame)
        sent += 1
        lag = start + sent / rate - time.monotonic()
        if lag > 0:
            time.sleep(lag)


def config_for(central: int, site: int, ttys: dict[str, str], spool: str, status_s: int,
               sensors: dict[str, list[str]] | None = None, receipts: bool = True) -> dict[str, Any]:
    """The gateway config: one source per kind of `sensors` (default: the default mix)."""
    ids = sensors if sensors is not None else sensor_ids(COUNTS)
    sources: list[dict[str, Any]] = []
    for kind in ("parking", "thermometer"):
        if kind in ids:
            sources.append({"kind": kind, "transport": "serial", "port": ttys[kind], "baud": 115200,
                            "sensors": ids[kind], "max_silence_s": 0})
    if "manhole" in ids:
        sources.append({"kind": "manhole", "transport": "mqtt", "topic": "lids/+/up",
                        "sensors": ids["manhole"], "max_silence_s": 0})
    cfg: dict[str, Any] = {
        "gateway_id": "gw-bench-mem",
        "broker": {"host": "127.0.0.1", "port": central},
        "trust_os_clock": True,
        "store": {"dir": spool},
        "uplink": {"status_every_s": status_s, "receipts": receipts},
        "sources": sources,
    }
    if "manhole" in ids:
        cfg["site_broker"] = {"host": "127.0.0.1", "port": site}
    return cfg


def _records(lines: list[str]) -> list[dict[str, Any]]:
    """The driver's JSON lines; a sample gets `max_free_block` (bytes) from the mem_info after it."""
    out: list[dict[str, Any]] = []
    for ln in lines:
        if ln.startswith("{"):
            try:
                out.append(json.loads(ln))
            except ValueError:
                pass
        elif "max free sz:" in ln and out and "block" in out[-1]:
            out[-1]["max_free_block"] = int(ln.rsplit(":", 1)[1]) * out[-1]["block"]
        elif ln.startswith("qstr pool:") and out and "block" in out[-1]:
            # "qstr pool: n_pool=6, n_qstr=663, n_str_data_bytes=6282, n_total_bytes=15290"
            for part in ln.split(":", 1)[1].split(","):
                k, _, v = part.strip().partition("=")
                out[-1][k] = int(v)
    return out


def _oom(lines: list[str]) -> dict[str, Any] | None:
    """The driver's `oom` record, its stage named (`running` once the agent was started)."""
    recs = _records(lines)
    oom = next((r for r in recs if r.get("tag") == "oom"), None)
    if oom is None:
        return None
    started = any(r.get("tag") == "start" for r in recs)
    stage = "running" if started else STAGES[min(oom["stage"], len(STAGES) - 1)]
    return dict(oom, stage=stage, live=dict(zip(STAGES[1:], oom["live"], strict=False)))


_MEM_INFO = ("stack:", "GC:", "No. of 1-blocks:", "mem: total", "qstr pool:")


def measure(n: int, rate: float, sample_ms: int, timeout_s: float, heap: str,
            micropython: Path = MICROPYTHON32, frozen: bool = False, verbose: bool = False,
            mix: dict[str, float] | None = None, counts: dict[str, int] | None = None,
            receipts: bool = True, command_at: int | None = None) -> dict[str, Any]:
    mix = mix or SHARE
    ids = sensor_ids(counts or plan(mix, None))
    tmp = Path(tempfile.mkdtemp(prefix="edge-mem-"))
    central, site = Mosquitto(persistence=False), Mosquitto(persistence=False)
    serial_kinds: list[str] = [k for k in ("parking", "thermometer") if k in mix]
    ptys = {k: os.openpty() for k in serial_kinds}
    proc: subprocess.Popen[str] | None = None
    stop = threading.Event()
    feeders: list[threading.Thread] = []
    uplink: Uplink | None = None
    lines: list[str] = []
    try:
        central.start()
        if "manhole" in mix:
            site.start()
        uplink = Uplink(central.port)
        ttys = {k: os.ttyname(s) for k, (_m, s) in ptys.items()}
        cfg_path = tmp / "config.json"
        cfg = config_for(central.port, site.port, ttys, str(tmp / "spool"), 1, ids, receipts)
        cfg_path.write_text(json.dumps(cfg))
        image = tmp / "image"
        image_bytes = build(cfg_path, image, progress=lambda _s: None)
        image_kinds = sorted(p.name for p in (image / "devices").iterdir()
                             if p.is_dir() and p.name != "common")
        # The driver is compiled like the image (a source module would be compiled on the heap it
        # measures), as the module `bench_driver` of the process's current folder (sys.path[0] is
        # "" under -m), its source named like its file, so its path is one interned name.
        home = tmp if frozen else image  # the process's current folder
        stop_file = home / "bench-stop-file"
        text = (DRIVER.replace("@CONFIG@", os.path.relpath(image / "config.json", home))
                .replace("@STOP@", stop_file.name).replace("@SAMPLE_MS@", str(int(sample_ms)))
                .replace("@VERBOSE@", str(bool(verbose))))
        (tmp / "bench_driver.py").write_text(text)
        subprocess.run([mpy_cross(), "-s", "bench_driver.mpy", "-o", str(home / "bench_driver.mpy"),
                        str(tmp / "bench_driver.py")], check=True)
        # MICROPYPATH replaces the default path, which is where asyncio lives (".frozen").
        env = dict(os.environ, MICROPYPATH=".frozen")
        # The image's config.json, beside the config.checked build wrote: the agent boots as a
        # board does, without edge.config (edge/checked.py).
        proc = subprocess.Popen([str(micropython), "-X", "heapsize=" + heap, "-m", "bench_driver"],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                cwd=str(home))
        out = proc.stdout
        assert out is not None
        reader = threading.Thread(target=lambda: lines.extend(iter(out.readline, "")), daemon=True)
        reader.start()
        end = time.monotonic() + 20
        while not any('"start"' in ln for ln in lines):  # agent built; give it time to connect
            if proc.poll() is not None or time.monotonic() > end:
                reader.join(timeout=5)
                oom = _oom(lines)
                if oom is not None:
                    return dict(oom, heap=heap, image_bytes=image_bytes, image_kinds=image_kinds)
                raise RuntimeError("agent did not start:\n" + "".join(lines[-30:]))
            time.sleep(0.05)
        time.sleep(1.0)
        want = {k: round(n * s) for k, s in mix.items()}
        want[next(iter(want))] += n - sum(want.values())
        rates = {k: rate * s for k, s in mix.items()}
        t_start = time.monotonic()
        feeders = [threading.Thread(target=_serial_feed,
                                    args=(k, ids[k], want[k], ptys[k][0], rates[k], stop)) for k in ptys]
        if "manhole" in mix:
            feeders.append(threading.Thread(target=_mqtt_feed, args=(
                site.port, ids["manhole"], want["manhole"], rates["manhole"], stop)))
        for t in feeders:
            t.start()
        deadline = time.monotonic() + timeout_s
        cmd_sent = cmd_replied = None  # len(lines) when the command was published / answered
        while time.monotonic() < deadline and uplink.readings < n:
            if command_at is not None and cmd_sent is None and uplink.readings >= command_at:
                cmd_sent = len(lines)
                uplink.client.publish(f"city/{cfg['gateway_id']}/cmd",
                                      cbor2.dumps({"id": "bench-1", "op": "status"}), qos=1)
            if cmd_replied is None and uplink.replies:
                cmd_replied = len(lines)
            if proc.poll() is not None:
                reader.join(timeout=5)
                died = _oom(lines)
                if died is None:
                    raise RuntimeError("agent exited:\n" + "".join(lines[-30:]))
                peak = max((r["alloc"] for r in _records(lines) if r.get("tag") == "sample"), default=None)
                return dict(died, heap=heap, image_bytes=image_bytes, image_kinds=image_kinds,
                            uplinked=uplink.readings, peak_alloc=peak)
            time.sleep(0.1)
        wall = time.monotonic() - t_start
        time.sleep(sample_ms / 1000 * 2 + 0.2)  # one more sample at rest
        stop_file.write_text("stop")
        proc.wait(timeout=30)
        reader.join(timeout=5)
    finally:
        stop.set()
        for t in feeders:
            t.join(timeout=10)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if uplink is not None:
            uplink.close()
        central.cleanup()
        site.cleanup()
        for m, s in ptys.values():
            os.close(m)
            os.close(s)
        shutil.rmtree(tmp, ignore_errors=True)
    fig = analyse(lines, n, uplink, image_bytes, image_kinds, wall, heap)
    if command_at is not None:
        fig["command"] = _command(lines, command_at, cmd_sent, cmd_replied, uplink)
    fig["word_bits"] = 32 if _records(lines)[0].get("block") == 16 else 64
    fig["sensors"] = {k: len(v) for k, v in ids.items()}
    fig["mix"] = mix
    fig["receipts"] = receipts
    return fig


def _command(lines: list[str], at: int, sent: int | None, replied: int | None,
             uplink: Uplink) -> dict[str, Any]:
    """The figures of --command-at: names at the last sample before the command was published and
    at the end; the peak live heap over the samples after its reply."""
    out: dict[str, Any] = {"at": at, "sent": sent is not None, "reply": uplink.replies[:1]}
    if sent is None:
        return out
    before = [r for r in _records(lines[:sent]) if r.get("tag") in ("start", "sample")]
    after = [r for r in _records(lines[replied or sent:]) if r.get("tag") in ("sample", "end")]
    if before:
        out.update(qstrs_before=before[-1].get("n_qstr"), pools_before=before[-1].get("n_pool"))
    if after:
        peak = max(s["alloc"] for s in after)
        out.update(qstrs_after=after[-1].get("n_qstr"), pools_after=after[-1].get("n_pool"),
                   peak_alloc_after=peak, free_at_128k_after=BOARD_HEAP - peak,
                   min_free_after=min(s["free"] for s in after), samples_after=len(after))
    return out


def _slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs (0 for fewer than two distinct xs)."""
    if len(xs) < 2:
        return 0.0
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


def analyse(lines: list[str], n: int, uplink: Uplink | None, image_bytes: int, image_kinds: list[str],
            wall: float, heap: str) -> dict[str, Any]:
    recs = _records(lines)
    samples = [r for r in recs if r.get("tag") in ("start", "sample", "end")]
    done = next((r for r in recs if r.get("tag") == "done"), None)
    if not samples or done is None:
        raise RuntimeError("driver output incomplete:\n" + "".join(lines[-30:]))
    start = samples[0]
    running = [s for s in samples if s["tag"] == "sample"]
    steady = [s for s in running if s["reported"] >= min(1000, n // 2)]
    slope = _slope([s["reported"] for s in steady], [s["alloc"] for s in steady])
    every = max(1, n // 10)
    by_k: list[dict[str, int]] = []
    for k in range(every, n + 1, every):
        s = next((x for x in running if x["reported"] >= k), None)
        if s is not None:
            by_k.append({"readings": s["reported"], "alloc": s["alloc"], "free": s["free"]})
    return {
        "readings_target": n,
        "readings_reported": samples[-1]["reported"],
        "readings_uplinked": uplink.readings if uplink else 0,
        "batches": uplink.batches if uplink else 0,
        "wall_s": round(wall, 1),
        "heap": heap,
        "live_by_stage": dict(zip(STAGES[1:], done["live"], strict=False)),
        "peak_alloc": max(s["alloc"] for s in samples),
        "free_at_128k": BOARD_HEAP - max(s["alloc"] for s in samples),
        "free_before_import": done["free_before_import"],
        "free_after_start": start["free"],
        "alloc_after_start": start["alloc"],
        "min_free": min(s["free"] for s in running) if running else start["free"],
        "qstr_pools": samples[-1].get("n_pool"),
        "qstrs": samples[-1].get("n_qstr"),
        "qstr_bytes": samples[-1].get("n_total_bytes"),
        "min_max_free_block": min((s.get("max_free_block", 0) for s in samples), default=0),
        "min_raw_free": min(s["raw_free"] for s in running) if running else start["raw_free"],
        "min_status_heap_free": min(uplink.status_heap) if uplink and uplink.status_heap else None,
        "alloc_by_readings": by_k,
        "growth_bytes_per_10k": round(slope * 10000, 1),
        "samples": len(running),
        "modules": done["modules"],
        "image_kinds": image_kinds,
        "image_bytes": image_bytes,
        "errors": done["errors"],
        "agent_log": [ln.rstrip() for ln in lines
                      if not ln.startswith("{") and not ln.lstrip().startswith(_MEM_INFO)][-40:],
    }


def _kb(n: int) -> str:
    return f"{n / 1024:.1f} KB"


def report(fig: dict[str, Any], args: argparse.Namespace) -> int:
    status = 0
    if fig.get("tag") == "oom":
        live = fig["live"]
        print(f"micropython     heap {fig['heap']}, image {fig['image_bytes']} B, "
              f"kinds in image {fig['image_kinds']}")
        if fig["stage"] == "running":
            print(f"FAIL: the agent died while running on a {fig['heap']} heap, after "
                  f"{fig.get('uplinked', 0)} readings were uplinked: {fig.get('error')}")
            if fig.get("peak_alloc") is not None:
                print(f"peak live heap  {fig['peak_alloc']} B at a sample before it died")
        else:
            print(f"FAIL: MemoryError while {fig['stage']!r}: the agent does not start on a "
                  f"{fig['heap']} heap")
        print(f"free heap       before imports {fig['free_before_import']} B; live heap by stage: "
              + ", ".join(f"{k} {v}" for k, v in sorted(live.items(), key=lambda kv: kv[1])))
        print("                (run with --heap 1M to measure what it needs and whether it grows)")
        return 1
    configured = sorted(fig["mix"])
    loaded = sorted({m.split(".")[1] for m in fig["modules"] if m.count(".") >= 1} - {"common"})
    print(f"micropython     {fig['word_bits']}-bit, heap {fig['heap']}, image {fig['image_bytes']} B, "
          f"kinds in image {fig['image_kinds']}, kinds imported {loaded}; "
          f"receipts {'on' if fig['receipts'] else 'off'}")
    print("sensors         " + ", ".join(f"{k} {n} ({fig['mix'][k]:.0%} of readings)"
                                          for k, n in fig["sensors"].items())
          + f"; {sum(fig['sensors'].values())} in all")
    print(f"readings        target {fig['readings_target']}  reported {fig['readings_reported']}  "
          f"uplinked {fig['readings_uplinked']} in {fig['batches']} batches  ({fig['wall_s']} s)")
    print("live heap       " + ", ".join(f"{k} {v}" for k, v in sorted(fig["live_by_stage"].items(),
                                                                        key=lambda kv: kv[1])))
    print(f"free heap       before imports {fig['free_before_import']} B, after start "
          f"{fig['free_after_start']} B (live {fig['alloc_after_start']} B)")
    print(f"min free heap   {fig['min_free']} B after gc.collect, {fig['min_raw_free']} B before it, "
          f"{fig['min_status_heap_free']} B in status messages (heap {fig['heap']})")
    print(f"largest free    block {fig['min_max_free_block']} B at the worst sample "
          f"(a batch copy needs ~2 KB in one piece)")
    print(f"interned names  {fig['qstrs']} qstrs in {fig['qstr_pools']} pools, {fig['qstr_bytes']} B of the "
          f"live heap at the end (the bench driver's own names among them)")
    print(f"peak live heap  {fig['peak_alloc']} B -> free on a 128 KB heap {fig['free_at_128k']} B "
          f"(goal >= {GOAL_FREE}); this includes the {fig['live_by_stage'].get('driver', 0)} B live once "
          f"the bench driver was loaded (part of it the interpreter's own: an empty module shows 640 B "
          f"on 32 bits), which a board's main.py does not carry")
    print("gc.mem_alloc    " + "  ".join(f"{s['readings']}:{s['alloc']}" for s in fig["alloc_by_readings"]))
    print(f"growth slope    {fig['growth_bytes_per_10k']:+.1f} B per 10,000 readings "
          f"(goal <= {args.max_growth}; {fig['samples']} samples)")
    cmd = fig.get("command")
    if cmd is not None:
        if not cmd["sent"] or not cmd["reply"] or "qstrs_after" not in cmd:
            print(f"FAIL: the command at {cmd['at']} readings was not sent or not answered: {cmd}")
            status = 1
        else:
            print(f"first command   `status` at {cmd['at']} readings, reply {cmd['reply'][0]}; interned "
                  f"names {cmd.get('qstrs_before')} ({cmd.get('pools_before')} pools) before -> "
                  f"{cmd['qstrs_after']} ({cmd['pools_after']} pools) at the end; after its reply: peak "
                  f"live heap {cmd['peak_alloc_after']} B -> free on a 128 KB heap "
                  f"{cmd['free_at_128k_after']} B ({_kb(cmd['free_at_128k_after'])}), min free "
                  f"{cmd['min_free_after']} B ({cmd['samples_after']} samples)")
    if args.verbose:
        print("\n".join(fig["agent_log"]))
    if fig["errors"]:
        print(f"source errors   {fig['errors']}")
    if fig["word_bits"] != 32:
        # Every pointer, header and dict slot is twice the size: the goal is a board's, judged on 32 bits.
        print("free-heap goal  judged on the 32-bit build only (a board is 32-bit); not on this run")
    elif fig["free_at_128k"] < GOAL_FREE:
        print(f"FAIL: free heap on 128 KB would be {_kb(fig['free_at_128k'])}, below {_kb(GOAL_FREE)}")
        status = 1
    if fig["growth_bytes_per_10k"] > args.max_growth:
        print(f"FAIL: the live heap grows {fig['growth_bytes_per_10k']:.0f} B per 10,000 readings")
        status = 1
    if fig["readings_uplinked"] < fig["readings_target"]:
        print("FAIL: not every reading reached the broker")
        status = 1
    if loaded != configured or fig["image_kinds"] != configured:
        print(f"FAIL: kinds imported {loaded} / in image {fig['image_kinds']}, configured {configured}")
        status = 1
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readings", type=int, default=10000, help="readings driven (default 10000)")
    parser.add_argument("--rate", type=float, default=250.0, help="readings/s fed, all sources (default 250)")
    parser.add_argument("--heap", default=HEAP, help="micropython -X heapsize (default 128K)")
    parser.add_argument("--micropython", type=Path, default=MICROPYTHON32,
                        help="interpreter (default: the 32-bit build scripts/setup installs in "
                             ".cache/micropython32; the 64-bit port is .venv/bin/micropython)")
    parser.add_argument("--mix", type=parse_mix, default=dict(SHARE), metavar="KIND=SHARE,...",
                        help="share of the readings per kind; kinds left out are not configured "
                             "(default parking=0.4,thermometer=0.4,manhole=0.2)")
    parser.add_argument("--sensors", type=parse_sensors, default=None, metavar="N|KIND=N,...",
                        help="sensors: a total split like the default (20 parking : 6 thermometer : "
                             "12 manhole), or a count per kind of the mix (default 38: 20,6,12)")
    parser.add_argument("--frozen", action="store_true",
                        help="the interpreter has edge/ and the kinds frozen in (a board firmware built "
                             "with a manifest): run from .frozen, not from the .mpy image")
    parser.add_argument("--sample-ms", type=int, default=250, help="heap sample interval (default 250)")
    parser.add_argument("--max-growth", type=int, default=1024,
                        help="allowed live-heap growth, bytes per 10,000 readings (default 1024)")
    parser.add_argument("--no-receipts", dest="receipts", action="store_false",
                        help="run the agent with uplink.receipts off (a PUBACK frees a batch), to "
                             "compare the heap with receipts on, the default")
    parser.add_argument("--command-at", type=int, default=None, metavar="N",
                        help="publish one `status` command on /cmd once N readings were uplinked, and "
                             "report the names and free heap after it (a first command mid-run)")
    parser.add_argument("--quick", action="store_true", help="1,000 readings: proves the script works")
    parser.add_argument("--verbose", action="store_true", help="print the agent's own log lines")
    baseline.add_arguments(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.readings = 1000
    try:
        counts = plan(args.mix, args.sensors)
    except ValueError as exc:
        parser.error(str(exc))
    if not args.micropython.exists():
        print(f"bench: needs {args.micropython}", file=sys.stderr)
        return 2
    args.micropython = args.micropython.absolute()  # the agent runs in the image's folder
    base = None
    if args.baseline:
        base = baseline.read(args.baseline, "peak_alloc")
        if base is None:
            return 2
    fig = measure(args.readings, args.rate, args.sample_ms, 60 + 3 * args.readings / args.rate, args.heap,
                  args.micropython, args.frozen, args.verbose, args.mix, counts, args.receipts,
                  args.command_at)
    fig["frozen"] = args.frozen
    status = report(fig, args)
    if base is not None:
        old = int(base["peak_alloc"])
        if fig.get("word_bits", base.get("word_bits")) != base.get("word_bits", 64):
            print(f"bench: the baseline is from a {base.get('word_bits', 64)}-bit build, this run "
                  f"{fig.get('word_bits')}-bit: pick the matching baseline or --micropython", file=sys.stderr)
            return 2
        if fig.get("tag") == "oom":
            print(f"baseline        peak live heap {old} B -> the agent did not complete the run")
        else:
            new = int(fig["peak_alloc"])
            print(f"baseline        peak live heap {old} B -> {new} B ({new - old:+d} B)")
            if new > old + 2048:
                print("FAIL: the peak live heap grew by more than 2 KB")
                status = 1
    if args.save:
        baseline.save(args.save, fig)
    return status


if __name__ == "__main__":
    sys.exit(main())
