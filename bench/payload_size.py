"""Bytes per reading: the CBOR batch (docs/protocol.md) against the JSON a first design would send.

Why: the uplink is metered (NB-IoT / 4G per-MB tariffs) and the board's spool is small, so the wire
format is judged by its size on realistic data. 50 mixed readings come from the device simulators
decoded by their own codecs (devices/<kind>/sim.py, codec.py); a kind whose simulator is not built
yet falls back to a table of typical readings (reported as "table"). The same readings are encoded

  * with edge.protocol.BatchEncoder (what a gateway publishes on <prefix>/<gw>/up), and
  * as the "obvious JSON":
    {"gw":..,"seq":..,"readings":[{"sensor":..,"kind":..,"ts":..,"fields":{name: value}}]}
    with compact separators (",", ":") and UTF-8 text, so JSON is not penalised for whitespace.

Goal: CBOR <= 35 % of JSON. Exit status 1 if the ratio is above the goal, or (with --baseline) if
CBOR bytes per reading grew by more than --tolerance against the saved figures.

    python bench/payload_size.py [--readings 50] [--save FILE] [--baseline FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import baseline  # noqa: E402
from edge import protocol  # noqa: E402

GOAL = 0.35
T0 = 1767225600000  # 2026-01-01T00:00:00Z
GW = "gw-hz-xihu-0001"
KINDS = ("parking", "manhole", "water", "thermometer")

# Typical readings for kinds whose simulator is not there yet: (sensor prefix, FIELDS, values).
TABLE: dict[str, tuple[str, tuple[str, ...], tuple[Any, ...]]] = {
    "parking": (
        "P-",
        ("occupied", "event", "seq", "mag_x", "mag_y", "mag_z", "battery_mv", "rssi_dbm"),
        (True, 0, 1207, 212, -268, -731, 3612, -97),
    ),
    "manhole": (
        "MH-",
        ("lid_open", "tilt_deg", "water_level_cm", "gas_ch4_ppm", "temp_c", "battery_mv", "rssi_dbm"),
        (False, 1.25, 37, 12, 18.5, 3581, -104),
    ),
    "water": (
        "W-",
        ("level_m", "flow_m3h", "pressure_kpa", "turbidity_ntu", "ph", "temp_c"),
        (2.437, 118.6, 312.4, 4.8, 7.21, 17.9),
    ),
    "thermometer": (
        "T-",
        ("temp_c", "fever", "battery_mv"),
        (36.6, False, 2987),
    ),
}


def _from_simulator(kind: str, n: int) -> tuple[list[tuple[Any, ...]], tuple[str, ...]] | None:
    """n readings (sensor, kind_code, ts_ms, fields) from the kind's simulator + codec, or None."""
    import devices

    try:
        codec = devices.load(kind)
        sim_mod = devices.load(kind, "sim")
    except (ImportError, AttributeError):
        return None
    for sensors in (list(range(1, 9)), [f"{TABLE[kind][0]}{i:05d}" for i in range(1, 9)]):
        try:
            sim = sim_mod.Simulator(sensors, seed=7)
            got = _collect(kind, codec, sim, n)
        except Exception:  # a simulator that wants the other id form: try it, then the table
            continue
        if got is not None:
            return got, tuple(codec.FIELDS)
    return None


def _collect(kind: str, codec: Any, sim: Any, n: int) -> list[tuple[Any, ...]] | None:
    out: list[tuple[Any, ...]] = []
    now = T0
    for _ in range(200_000):  # 1 s steps: ~2 days of simulated time at most
        frame = sim.next_frame(now)
        if frame:
            _consumed, result = codec.decode(frame)
            if isinstance(result, tuple):
                sensor, fields = result
                if sensor is None:  # bus replies carry no id: the master knows whom it polled
                    truth = sim.last_reading
                    sensor = truth[0] if truth else None
                if sensor is None or type(sensor) is int:
                    sensor = f"{TABLE[kind][0]}{sensor or 0:05d}"
                out.append((str(sensor), codec.KIND_CODE, now, tuple(fields)))
                if len(out) == n:
                    return out
        now += 1000
    return None


def _from_table(kind: str, n: int) -> tuple[list[tuple[Any, ...]], tuple[str, ...]]:
    prefix, fields, values = TABLE[kind]
    code = KINDS.index(kind) + 1
    out = []
    for i in range(n):
        # Vary the values a little so they are not all the same encoded length.
        vals = tuple(v + (i % 7) if type(v) is int else v + (i % 5) * 0.1 if type(v) is float else v
                     for v in values)
        out.append((f"{prefix}{i % 8 + 1:05d}", code, T0 + i * 37_000, vals))
    return out, fields


def build_readings(total: int) -> tuple[list[tuple[Any, ...]], dict[int, tuple[str, ...]], dict[str, str]]:
    """Mixed readings sorted by time, FIELDS per kind code, and where each kind's data came from."""
    per_kind = [total // len(KINDS) + (1 if i < total % len(KINDS) else 0) for i in range(len(KINDS))]
    readings: list[tuple[Any, ...]] = []
    names: dict[int, tuple[str, ...]] = {}
    sources: dict[str, str] = {}
    for kind, n in zip(KINDS, per_kind, strict=True):
        got = _from_simulator(kind, n)
        sources[kind] = "simulator" if got else "table"
        rs, fields = got if got else _from_table(kind, n)
        readings.extend(rs)
        names[rs[0][1] if rs else KINDS.index(kind) + 1] = fields
    readings.sort(key=lambda r: r[2])
    return readings, names, sources


def encode_cbor(readings: list[tuple[Any, ...]], seq: int = 42) -> bytes:
    enc = protocol.BatchEncoder(16384)
    enc.begin(3, seq, readings[0][2] if readings else T0)
    for sensor, code, ts, fields in readings:
        if not enc.add(sensor, code, ts, fields):
            raise SystemExit("bench: BatchEncoder buffer too small for the readings")
    return bytes(enc.finish())


def encode_json(readings: list[tuple[Any, ...]], names: dict[int, tuple[str, ...]], seq: int = 42) -> bytes:
    kinds = {i + 1: k for i, k in enumerate(KINDS)}
    doc = {
        "gw": GW,
        "seq": seq,
        "readings": [
            {
                "sensor": sensor,
                "kind": kinds[code],
                "ts": ts,
                "fields": {names[code][i]: v for i, v in enumerate(fields) if v is not None},
            }
            for sensor, code, ts, fields in readings
        ],
    }
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def measure(total: int) -> dict[str, Any]:
    readings, names, sources = build_readings(total)
    cb = encode_cbor(readings)
    js = encode_json(readings, names)
    n = len(readings)
    return {
        "readings": n,
        "cbor_bytes": len(cb),
        "json_bytes": len(js),
        "cbor_per_reading": round(len(cb) / n, 2),
        "json_per_reading": round(len(js) / n, 2),
        "ratio": round(len(cb) / len(js), 4),
        "sources": sources,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--readings", type=int, default=50, help="readings in the batch (default 50)")
    baseline.add_arguments(parser)
    parser.add_argument("--tolerance", type=float, default=0.05,
                        help="allowed growth of CBOR bytes per reading against --baseline (default 0.05)")
    args = parser.parse_args(argv)
    if args.readings < 1:
        parser.error("--readings must be at least 1")

    fig = measure(args.readings)
    print(f"readings        {fig['readings']}  (sources: "
          + ", ".join(f"{k}={v}" for k, v in fig["sources"].items()) + ")")
    print(f"CBOR batch      {fig['cbor_bytes']:6d} B  {fig['cbor_per_reading']:7.2f} B/reading")
    print(f"JSON (compact)  {fig['json_bytes']:6d} B  {fig['json_per_reading']:7.2f} B/reading")
    print(f"ratio           {fig['ratio']:.1%}  (goal <= {GOAL:.0%})")
    status = 0
    if fig["ratio"] > GOAL:
        print(f"FAIL: ratio {fig['ratio']:.1%} is above the goal {GOAL:.0%}")
        status = 1
    if args.baseline:
        base = baseline.read(args.baseline, "cbor_per_reading")
        if base is None:
            return 2
        old = float(base["cbor_per_reading"])
        growth = fig["cbor_per_reading"] / old - 1.0
        print(f"baseline        {old:7.2f} B/reading -> {fig['cbor_per_reading']:.2f} ({growth:+.1%}), "
              f"ratio {base.get('ratio')} -> {fig['ratio']}")
        if growth > args.tolerance:
            print(f"FAIL: CBOR bytes per reading grew {growth:.1%} (> {args.tolerance:.0%})")
            status = 1
    if args.save:
        baseline.save(args.save, fig)
    return status


if __name__ == "__main__":
    sys.exit(main())
