"""Run the device simulators through the real codecs and the real batch encoder.

For each device kind: the simulator's frames go through the kind's codec (a serial kind's frames
as one byte stream, so garbage and truncated frames must resynchronise; Modbus and MQTT frames one
by one), each reading is stamped with its simulated time and streamed into CBOR batches with
edge.protocol, and every batch is decoded back as `citybrain decode` reads it (and must pass the
collector's decode stage). With --publish HOST:PORT the batches and alarms go through that MQTT
broker (a test broker you run: this command starts none) and are decoded from what a subscriber
received.

Checks, per kind: no decoded reading that the simulator did not send (a made-up reading is a bug
at any fault rate), and, without --fault, every reading arrives and round-trips exactly. Exit 0
when they hold, 1 when not, 2 on a usage error.

examples:
  citybrain simulate --kind parking --count 5          frames and decoded readings
  citybrain simulate --fault garbage --fault-rate 0.3 -q   error counts per kind
  citybrain simulate --publish 127.0.0.1:18830 -q      round trip through a test broker
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import devices
from citybrain import decode as show
from collector.decode import Refused, decode_batch
from devices.common.errors import DecodeError
from devices.common.faults import FAULTS as _SIM_FAULTS
from edge import protocol

FAULTS = tuple(m for m in _SIM_FAULTS if m)  # the simulators' modes, None (healthy) aside
MAX_PAYLOAD = 1 << 20  # the decode stage's size cap; batches here are a few kB
Stamped = tuple[str, int, int, tuple[Any, ...]]  # (sensor, kind code, ts_ms, fields)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--kind",
        action="append",
        choices=devices.KINDS,
        help="device kind to simulate (repeatable; default: every kind)",
    )
    parser.add_argument("--count", type=int, default=20, help="wire frames per kind (default 20)")
    parser.add_argument("--sensors", type=int, default=3, help="simulated sensors per kind (default 3)")
    parser.add_argument("--seed", type=int, default=1, help="same seed, same frames (default 1)")
    parser.add_argument("--fault", choices=FAULTS, help="inject this fault mode into the simulators")
    parser.add_argument(
        "--fault-rate", type=float, default=0.2, help="share of frames (or sensors) hit (default 0.2)"
    )
    parser.add_argument(
        "--step-ms", type=int, default=1000, help="simulated time between polls of a simulator (default 1000)"
    )
    parser.add_argument(
        "--start-ms", type=int, help="simulated UTC start time in ms since the epoch (default: now)"
    )
    parser.add_argument(
        "--batch-bytes", type=int, default=1024, help="batch buffer size, as on a gateway (default 1024)"
    )
    parser.add_argument("--gateway", default="sim-gw", help="gateway id in the topics (default sim-gw)")
    parser.add_argument(
        "--publish",
        type=broker_address,
        metavar="HOST:PORT",
        help="round-trip every batch and alarm through this MQTT broker (anonymous; a test broker: "
        "the readings are made up)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only the summary, not every frame")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


@dataclass
class KindRun:
    """What one kind's simulation produced and what came back."""

    kind: str
    kind_code: int
    fields: tuple[str, ...]
    frames: int = 0
    wire_bytes: int = 0
    sent: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)  # sim.last_reading per frame
    readings: list[Stamped] = field(default_factory=list)  # decoded and stamped
    errors: Counter[str] = field(default_factory=Counter)  # decode errors by code name
    leftover: int = 0  # bytes still buffered at the end (an incomplete frame)
    alarms: list[tuple[str, Stamped]] = field(default_factory=list)
    batches: list[bytes] = field(default_factory=list)
    alarm_payloads: list[bytes] = field(default_factory=list)
    received: list[Stamped] = field(default_factory=list)  # decoded back from the batches
    received_alarms: int = 0
    refused: Counter[str] = field(default_factory=Counter)  # batches the decode stage refused


def default_sensors(host: ModuleType, kind: str, n: int) -> list[Any]:
    """Sensor ids as the kind names them (its sim_encode's `sensor_name(addr)` where it has one)."""
    namer = getattr(host, "sensor_name", None)
    if namer is not None:
        return [namer(i) for i in range(1, n + 1)]
    return [f"{kind[:1].upper()}-{i:03d}" for i in range(1, n + 1)]


def transport(kind: str) -> str:
    """The kind's transport from its sample config (`serial`, `modbus` or `mqtt`); `serial` if unknown."""
    path = Path(devices.__file__).parent / kind / "sample.json"
    try:
        sample = json.loads(path.read_text())
    except (OSError, ValueError):
        return "serial"
    found = sample.get("transport") if isinstance(sample, dict) else None
    return found if isinstance(found, str) else "serial"


def simulate_kind(kind: str, args: argparse.Namespace, out: Any) -> KindRun:
    """Frames from the simulator through the codec, stamped at the simulated time.

    A serial kind's frames are decoded as one byte stream, so garbage and a truncated frame must
    resynchronise against the frames that follow. Modbus answers and MQTT messages arrive whole
    and are decoded one by one; the poll (or topic) names the sensor, which for a simulated frame
    is the sensor the simulator answered for (None for a faulty frame: a reading decoded from it
    would show up as made up).
    """
    codec = devices.load(kind, "codec")
    sim_mod = devices.load(kind, "sim")
    run = KindRun(kind, codec.KIND_CODE, tuple(codec.FIELDS))
    host = devices.load(kind, "sim_encode")
    sim = sim_mod.Simulator(default_sensors(host, kind, args.sensors), seed=args.seed)
    if args.fault:
        sim.set_fault(args.fault, args.fault_rate)
    stream_framed = transport(kind) == "serial"
    now = args.start_ms
    stream = bytearray()
    max_steps = max(args.count, 1) * 3600  # enough for an hourly reporter; bounds `silence`
    steps = 0
    while run.frames < args.count and steps < max_steps:
        steps += 1
        now += args.step_ms
        frame = sim.next_frame(now)
        if frame is None:
            continue
        run.frames += 1
        run.wire_bytes += len(frame)
        sensor_id = None
        if sim.last_reading is not None:
            run.sent.append(sim.last_reading)
            sensor_id = sim.last_reading[0]
        if not args.quiet:
            print(f"{kind} t={now} frame {bytes(frame).hex()}", file=out)
        if not stream_framed:
            stream.clear()
        stream.extend(frame)
        pos = 0
        while pos < len(stream):
            # Kinds whose frames carry their own id ignore sensor_id.
            consumed, result = codec.decode(stream, pos, len(stream), sensor_id=sensor_id)
            if consumed == 0:
                break
            pos += consumed
            if isinstance(result, DecodeError):
                run.errors[result.name] += 1
                if not args.quiet:
                    print(f"{kind}   error {result!r}", file=out)
                continue
            _take_reading(run, codec, result, now, args.quiet, out)
        if not stream_framed and pos < len(stream):
            # A message that ends mid-frame never completes: for a poll, that is a timeout.
            run.errors["incomplete"] += 1
            if not args.quiet:
                print(f"{kind}   error incomplete message ({len(stream) - pos} bytes left)", file=out)
        del stream[:pos]
        if not stream_framed:
            stream.clear()
    run.leftover = len(stream)
    return run


def _take_reading(run: KindRun, codec: ModuleType, result: Any, now: int, quiet: bool, out: Any) -> None:
    sensor, fields = result
    if not isinstance(sensor, str) or not sensor:
        # The wire (and the collector) name a sensor by text; without one the reading has no series.
        run.errors["no_sensor_id"] += 1
        if not quiet:
            print(f"{run.kind}   error: reading without a sensor id ({sensor!r})", file=out)
        return
    reading: Stamped = (sensor, run.kind_code, now, tuple(fields))
    run.readings.append(reading)
    code = codec.alarm(fields)
    if code:
        run.alarms.append((code, reading))
    if not quiet:
        pairs = zip(run.fields, fields, strict=True)
        shown = ", ".join(f"{n}={_show(v)}" for n, v in pairs if v is not None)
        print(f"{run.kind}   {sensor}: {shown}{'  ALARM ' + code if code else ''}", file=out)


def _show(v: Any) -> str:
    return f"{v:.6g}" if isinstance(v, float) else repr(v)


def encode_batches(run: KindRun, boot: int, batch_bytes: int) -> None:
    """Stream the readings into batches as a gateway does: a full buffer closes the batch."""
    enc = protocol.BatchEncoder(batch_bytes)
    seq = 0
    pending = list(run.readings)
    while pending:
        enc.begin(boot, seq, pending[0][2])
        n = 0
        while n < len(pending) and enc.add(*pending[n]):
            n += 1
        if n == 0:
            raise ValueError(f"{run.kind}: one reading does not fit a {batch_bytes}-byte batch")
        run.batches.append(bytes(enc.finish()))
        pending = pending[n:]
        seq += 1
    alarm_enc = protocol.BatchEncoder(batch_bytes)
    for i, (code, (sensor, kind_code, ts, fields)) in enumerate(run.alarms):
        payload = protocol.encode_alarm(alarm_enc, boot, i, code, sensor, kind_code, ts, fields)
        run.alarm_payloads.append(bytes(payload))


def readings_of(run: KindRun, payload: bytes, *, alarm: bool) -> list[Stamped]:
    """A payload decoded back as `citybrain decode` reads it, into stamped readings with aligned
    fields; the collector's decode stage (cbor2, strict) must accept it too."""
    leaf = protocol.ALARM if alarm else protocol.UP
    decode_batch(payload, max_bytes=MAX_PAYLOAD, alarm=alarm)
    doc, problems, _size = show.decode(payload, leaf, "raw")
    if problems:
        raise Refused("problems", "; ".join(problems))
    index = {name: i for i, name in enumerate(run.fields)}
    out: list[Stamped] = []
    for r in doc["readings"]:
        values: list[Any] = [None] * len(run.fields)
        for name, fv in r["fields"].items():
            values[index[name]] = fv["value"]
        out.append((r["sensor"], r["kind_code"], r["ts"], tuple(values)))
    return out


def take_back(run: KindRun, payload: bytes, *, alarm: bool) -> None:
    try:
        got = readings_of(run, payload, alarm=alarm)
    except Refused as exc:
        run.refused[exc.reason] += 1
    except (show.Garbage, KeyError) as exc:
        run.refused[type(exc).__name__] += 1
    else:
        if alarm:
            run.received_alarms += 1
        else:
            run.received.extend(got)


def round_trip_local(runs: list[KindRun]) -> None:
    for run in runs:
        for payload in run.batches:
            take_back(run, payload, alarm=False)
        for payload in run.alarm_payloads:
            take_back(run, payload, alarm=True)


def round_trip_broker(
    runs: list[KindRun], gateway: str, broker: tuple[str, int], timeout: float = 60.0
) -> None:
    """Publish every payload at QoS 1 to the MQTT broker `broker` (host, port) and decode what a
    subscriber gets back from it.

    Each kind goes to its own gateway id (`<gateway>-<kind>`), so a message's topic says which kind
    decoded it; messages of other gateways on the same broker are ignored. The broker is the
    caller's: this command starts no server (scripts/demo and the tests start a private Mosquitto
    from hil/services.py and pass its port).
    """
    import paho.mqtt.client as mqtt

    host, port = broker
    by_gw = {f"{gateway}-{run.kind}": run for run in runs}
    expected = sum(len(r.batches) + len(r.alarm_payloads) for r in runs)
    received: list[tuple[str, str, bytes]] = []
    lock = threading.Lock()
    all_in = threading.Event()
    subscribed = threading.Event()

    def on_subscribe(*_: object) -> None:
        subscribed.set()

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        parsed = protocol.parse_topic(msg.topic)
        if parsed is None or parsed[0] not in by_gw:
            return  # another gateway's traffic on a shared broker
        with lock:
            received.append((parsed[0], parsed[1], bytes(msg.payload)))
            if len(received) >= expected:
                all_in.set()

    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{gateway}-collector")
    sub.on_subscribe = on_subscribe
    sub.on_message = on_message
    sub.connect(host, port)
    sub.loop_start()
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=gateway)
    try:
        sub.subscribe(f"{protocol.PREFIX}/+/+", qos=1)
        if not subscribed.wait(timeout):
            raise TimeoutError(f"no SUBACK from the broker at {host}:{port}")
        pub.connect(host, port)
        pub.loop_start()
        infos = []
        for gw, run in by_gw.items():
            up, alarm = protocol.topic(gw, protocol.UP), protocol.topic(gw, protocol.ALARM)
            infos += [pub.publish(up, p, qos=1) for p in run.batches]
            infos += [pub.publish(alarm, p, qos=1) for p in run.alarm_payloads]
        for info in infos:
            info.wait_for_publish(timeout)
        if expected:
            all_in.wait(timeout)
    finally:
        pub.disconnect()
        pub.loop_stop()
        sub.disconnect()
        sub.loop_stop()
    for gw, channel, payload in received:
        take_back(by_gw[gw], payload, alarm=channel == protocol.ALARM)


def broker_address(text: str) -> tuple[str, int]:
    """`HOST:PORT` (argparse type for --publish)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:18830)")
    return host, int(port)


def _lost_and_invented(run: KindRun) -> tuple[int, int]:
    sent = Counter((s, tuple(f)) for s, f in run.sent)
    got = Counter((s, f) for s, _k, _t, f in run.readings)
    return sum((sent - got).values()), sum((got - sent).values())


def summarize(run: KindRun, faulty: bool) -> dict[str, Any]:
    lost, invented = _lost_and_invented(run)
    cbor_bytes = sum(map(len, run.batches))
    n = len(run.readings)
    problems = []
    if invented:
        problems.append(f"{invented} decoded readings the simulator never sent")
    if run.received != run.readings:
        problems.append(f"batches decoded back differ ({len(run.received)} of {n} readings match order)")
    if run.received_alarms != len(run.alarm_payloads):
        problems.append(f"{run.received_alarms} of {len(run.alarm_payloads)} alarms came back")
    if run.refused:
        problems.append(f"payloads refused: {dict(run.refused)}")
    if not faulty and (lost or run.errors or run.leftover):
        problems.append(f"no fault injected, yet {lost} lost, errors {dict(run.errors)}")
    return {
        "kind": run.kind,
        "frames": run.frames,
        "readings": n,
        "errors": dict(sorted(run.errors.items())),
        "lost": lost,
        "invented": invented,
        "leftover_bytes": run.leftover,
        "alarms": len(run.alarms),
        "batches": len(run.batches),
        "wire_bytes_per_reading": round(run.wire_bytes / n, 1) if n else None,
        "cbor_bytes_per_reading": round(cbor_bytes / n, 1) if n else None,
        "round_trip_ok": run.received == run.readings,
        "problems": problems,
    }


def print_table(rows: list[dict[str, Any]], out: Any) -> None:
    head = f"{'kind':<12} {'frames':>6} {'readings':>8} {'lost':>5} {'alarms':>6} {'batches':>7} "
    head += f"{'B/wire':>7} {'B/cbor':>7}  errors"
    print(head, file=out)
    for r in rows:
        errors = ", ".join(f"{k}={v}" for k, v in r["errors"].items()) or "-"
        print(
            f"{r['kind']:<12} {r['frames']:>6} {r['readings']:>8} {r['lost']:>5} {r['alarms']:>6} "
            f"{r['batches']:>7} {r['wire_bytes_per_reading'] or '-':>7} "
            f"{r['cbor_bytes_per_reading'] or '-':>7}"
            f"  {errors}",
            file=out,
        )
        for p in r["problems"]:
            print(f"  PROBLEM {r['kind']}: {p}", file=out)


def run(args: argparse.Namespace) -> int:
    out = sys.stdout
    if args.count < 0 or args.sensors < 1 or args.step_ms < 1 or not 0.0 <= args.fault_rate <= 1.0:
        print(
            "simulate: need --count >= 0, --sensors >= 1, --step-ms >= 1, 0 <= --fault-rate <= 1",
            file=sys.stderr,
        )
        return 2
    if args.start_ms is None:
        args.start_ms = int(time.time()) * 1000
    kinds = args.kind or list(devices.KINDS)
    runs = []
    for kind in kinds:
        try:
            runs.append(simulate_kind(kind, args, out))
        except ImportError as exc:
            print(f"simulate: kind {kind!r} is not available: {exc}", file=sys.stderr)
            return 1
    for r in runs:
        encode_batches(r, boot=1, batch_bytes=args.batch_bytes)
    transport = "local"
    if args.publish:
        round_trip_broker(runs, args.gateway, args.publish)
        host, port = args.publish
        transport = f"mqtt broker {host}:{port}"
    else:
        round_trip_local(runs)
    rows = [summarize(r, faulty=args.fault is not None) for r in runs]
    if args.json:
        print(json.dumps({"transport": transport, "kinds": rows}, indent=2), file=out)
    else:
        fault = args.fault or "none"
        print(f"-- summary (seed {args.seed}, fault {fault}, batches via {transport})", file=out)
        print_table(rows, out)
    return 1 if any(r["problems"] for r in rows) else 0
