"""Scenarios as data: a TOML file (hil/scenarios/*.toml) -> a typed, checked `Scenario`.

Every key is documented field by field in docs/hil.md ("Scenario files"). Loading refuses, naming
the key (and the closest valid one): unknown keys, wrong types, a sensor kind on a bus that does
not carry it, a fault on a gateway that does not exist, a fault timeline past the duration, and
a fault kind the rig cannot inject yet ("not implemented yet": never ignored).

    from hil.spec import load
    scenario = load("hil/scenarios/city-block.toml")
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from collector.config import parse_duration

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"
RUNTIMES = ("cpython", "micropython")
# kind -> the one bus the rig carries it on (hil/rig.py): the agent's source transport.
BUSES = {"parking": "rs485", "thermometer": "serial", "water": "modbus", "manhole": "mqtt"}
SERIAL_KINDS = ("parking", "thermometer")
TORN_MODES = ("truncate", "garbage")  # how a power cut tears the record being written (hil/rig.py)

# Fault kind -> the keys it takes besides kind/at/for (a key for another kind is refused).
FAULT_KEYS: dict[str, frozenset[str]] = {
    "broker_restart": frozenset(),
    "broker_down": frozenset(),
    "db_down": frozenset(),
    "collector_kill": frozenset(),
    "gateway_power_cut": frozenset({"gateway", "torn_tail"}),
    "serial_noise": frozenset({"gateway", "bus", "rate"}),
    "bit_flips": frozenset({"gateway", "bus", "rate"}),
    "slave_silent": frozenset({"gateway"}),
    "storm": frozenset({"factor"}),
    "clock_unset_at_boot": frozenset({"gateway"}),
    "uplink_impair": frozenset({"gateway", "latency", "jitter", "drop", "partition"}),
    # From the one-gateway Python scenario `faults` (hil/scenarios.py):
    "garbage_device": frozenset({"gateway"}),  # an extra serial port (no sensor behind it) spews random bytes
    "dead_slave": frozenset({"gateway", "address"}),  # one Modbus slave stops answering, then returns
}
# What hil/block.py can inject today. Any other kind in FAULT_KEYS is refused at load time.
IMPLEMENTED = frozenset({
    "broker_restart", "broker_down", "db_down", "collector_kill", "gateway_power_cut",
    "serial_noise", "bit_flips", "slave_silent", "storm", "uplink_impair", "clock_unset_at_boot",
    "garbage_device", "dead_slave",
})
# Faults that last (`for` > 0 required); the others are instants or have an optional length.
_SPAN_FAULTS = frozenset({"broker_down", "db_down", "serial_noise", "bit_flips", "slave_silent", "storm",
                          "uplink_impair", "clock_unset_at_boot", "garbage_device", "dead_slave"})
GATEWAY_FAULTS = frozenset(k for k, keys in FAULT_KEYS.items() if "gateway" in keys)


class SpecError(ValueError):
    """A scenario file that cannot be run as written; the message names the key."""


def suggest(key: str, valid: list[str]) -> str:
    """"; did you mean 'x'?" or the list of valid keys (the collector config's wording)."""
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(sorted(valid))}"


@dataclass(frozen=True)
class Sensors:
    kind: str
    count: int
    rate: float  # per kind, see docs/hil.md: clock speed-up, lid messages/s, polls/s
    bus: str


@dataclass(frozen=True)
class Gateway:
    id: str
    runtime: str
    heap: str  # micropython only ("256K"); "" for cpython
    site: str
    district: str
    sensors: tuple[Sensors, ...]

    def sensor(self, kind: str) -> Sensors | None:
        return next((s for s in self.sensors if s.kind == kind), None)


@dataclass(frozen=True)
class Fault:
    kind: str
    at: float  # seconds from the start of the timeline
    duration: float  # the TOML key `for`; 0 for an instant fault
    gateway: str = ""
    bus: str = ""
    rate: float = 0.0
    factor: float = 1.0
    torn_tail: str = ""  # gateway_power_cut: "" (none), "truncate" or "garbage" (hil/rig.py tear_log_tail)
    latency: float = 0.0  # uplink_impair: seconds added to every chunk, plus up to `jitter`
    jitter: float = 0.0
    drop: float = 0.0  # uplink_impair: share of chunks lost and retransmitted (hil/link.py)
    partition: bool = False
    address: int = 0  # dead_slave: the Modbus address (1..the gateway's water count) that goes dead

    @property
    def end(self) -> float:
        return self.at + self.duration

    def label(self) -> str:
        where = f" {self.gateway}" if self.gateway else ""
        return f"{self.kind}{where} at {self.at:g}s for {self.duration:g}s"


@dataclass(frozen=True)
class Goals:
    reading_p99: float | None = None  # seconds; None: not judged
    alarm_p99: float | None = None


@dataclass(frozen=True)
class Pipeline:
    """How every gateway and the collector of the block are tuned. The defaults are the rig's
    (short batches and syncs, receipts off: what `city-block` and `storm` were measured with); a
    scenario sets the shipped defaults to measure what a deployment gets (`city-block-defaults`)."""

    batch_age: float = 0.3  # the agents' uplink.batch_age_ms, seconds
    sync_every: float = 0.5  # the agents' store.sync_every_ms, seconds
    receipts: bool = False  # the agents' uplink.receipts (the collector always sends receipts)
    collector_flush: float = 0.2  # the collector's writer.flush_interval, seconds


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    duration: float
    seed: int
    gateways: tuple[Gateway, ...]
    faults: tuple[Fault, ...]
    goals: Goals
    poll_interval: float  # how often the rig queries InfluxDB for new points (latency resolution)
    drain_timeout: float  # after the timeline: how long to wait for every reading to be stored
    pipeline: Pipeline = Pipeline()

    def gateway(self, gw_id: str) -> Gateway:
        return next(g for g in self.gateways if g.id == gw_id)


_TOP = {"name", "description", "duration", "seed", "gateways", "faults", "goals", "poll_interval",
        "drain_timeout", "pipeline"}
_PIPELINE = {"batch_age", "sync_every", "receipts", "collector_flush"}
_GATEWAY = {"count", "runtime", "heap", "site", "district", "sensors"}
_SENSORS = {"kind", "count", "rate", "bus"}
_GOALS = {"reading_p99", "alarm_p99"}
_FAULT_COMMON = {"kind", "at", "for"}
_DEFAULT_RATE = {"parking": 10.0, "thermometer": 10.0, "water": 2.5, "manhole": 10.0}


def _table(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SpecError(f"{where}: expected a table, got {type(value).__name__}")
    return value


def _keys(table: Mapping[str, Any], valid: set[str] | frozenset[str], where: str) -> None:
    for key in table:
        if key not in valid:
            raise SpecError(f"unknown key {_join(where, key)!r}{suggest(key, sorted(valid))}")


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _typed(table: Mapping[str, Any], key: str, kind: type, where: str, default: Any = None) -> Any:
    if key not in table:
        if default is None:
            raise SpecError(f"{_join(where, key)}: required")
        return default
    value = table[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        got = f"{type(value).__name__} {value!r}"
        raise SpecError(f"{_join(where, key)}: expected {kind.__name__}, got {got}")
    return value


def _duration(table: Mapping[str, Any], key: str, where: str, default: float | None = None) -> float:
    if key not in table:
        if default is None:
            raise SpecError(f"{_join(where, key)}: required")
        return default
    try:
        return parse_duration(table[key], _join(where, key))
    except ValueError as exc:
        raise SpecError(str(exc)) from None


def _choice(value: str, valid: tuple[str, ...] | list[str], key: str) -> str:
    if value not in valid:
        raise SpecError(f"{key}: {value!r} is not one of {', '.join(valid)}{suggest(value, list(valid))}"
                        .replace("; valid keys:", "; valid:"))
    return value


def _sensors(table: dict[str, Any], where: str) -> Sensors:
    _keys(table, _SENSORS, where)
    kind = _choice(_typed(table, "kind", str, where), list(BUSES), f"{where}.kind")
    count = _typed(table, "count", int, where)
    if not 1 <= count <= 32:
        raise SpecError(f"{where}.count: {count} must be 1..32")
    rate = _typed(table, "rate", float, where, _DEFAULT_RATE[kind])
    if not 0 < rate <= 100:
        raise SpecError(f"{where}.rate: {rate} must be > 0 and <= 100")
    bus = _typed(table, "bus", str, where, BUSES[kind])
    if bus != BUSES[kind]:
        raise SpecError(f"{where}.bus: the rig carries {kind} on {BUSES[kind]!r}, not {bus!r}")
    return Sensors(kind, count, rate, bus)


def _gateways(groups: object) -> tuple[Gateway, ...]:
    if not isinstance(groups, list) or not groups:
        raise SpecError("gateways: expected one or more [[gateways]] tables")
    out: list[Gateway] = []
    for gi, raw in enumerate(groups):
        where = f"gateways[{gi}]"
        table = _table(raw, where)
        _keys(table, _GATEWAY, where)
        count = _typed(table, "count", int, where, 1)
        if not 1 <= count <= 32:
            raise SpecError(f"{where}.count: {count} must be 1..32")
        runtime = _choice(_typed(table, "runtime", str, where), list(RUNTIMES), f"{where}.runtime")
        heap = _typed(table, "heap", str, where, "256K" if runtime == "micropython" else "")
        if runtime == "cpython" and heap:
            raise SpecError(f"{where}.heap: a heap size applies to runtime 'micropython' only")
        if runtime == "micropython" and (not heap[:-1].isdigit() or heap[-1] not in "KM"):
            raise SpecError(f"{where}.heap: {heap!r} is not a MicroPython heap size like '256K'")
        site = _typed(table, "site", str, where, "")
        district = _typed(table, "district", str, where, "")
        raw_sensors = table.get("sensors")
        if not isinstance(raw_sensors, list) or not raw_sensors:
            raise SpecError(f"{where}.sensors: expected one or more [[gateways.sensors]] tables")
        sensors: list[Sensors] = []
        for si, rs in enumerate(raw_sensors):
            s = _sensors(_table(rs, f"{where}.sensors[{si}]"), f"{where}.sensors[{si}]")
            if any(x.kind == s.kind for x in sensors):
                raise SpecError(f"{where}.sensors[{si}].kind: {s.kind!r} twice on one gateway "
                                "(raise its count)")
            sensors.append(s)
        for _ in range(count):
            out.append(Gateway(f"gw-{len(out) + 1:02d}", runtime, heap, site, district, tuple(sensors)))
    return tuple(out)


def _fault(table: dict[str, Any], where: str, gateways: tuple[Gateway, ...], duration: float) -> Fault:
    kind = _choice(_typed(table, "kind", str, where), list(FAULT_KEYS), f"{where}.kind")
    if kind not in IMPLEMENTED:
        raise SpecError(f"{where}.kind: {kind!r} is not implemented yet (the rig cannot inject it); "
                        f"implemented: {', '.join(sorted(IMPLEMENTED))}")
    _keys(table, _FAULT_COMMON | FAULT_KEYS[kind], where)
    at = _duration(table, "at", where)
    length = _duration(table, "for", where, 0.0)
    if at + length > duration:
        raise SpecError(f"{where}: ends at {at + length:g}s, after the scenario's duration {duration:g}s")
    f = Fault(kind, at, length)
    kw: dict[str, Any] = {}
    if kind in GATEWAY_FAULTS:
        gw = _typed(table, "gateway", str, where)
        ids = [g.id for g in gateways]
        if gw not in ids:
            hint = suggest(gw, ids).replace("; valid keys:", "; gateways:")
            raise SpecError(f"{where}.gateway: no gateway {gw!r}{hint}")
        kw["gateway"] = gw
        g = next(x for x in gateways if x.id == gw)
        if kind in ("serial_noise", "bit_flips"):
            bus = _choice(_typed(table, "bus", str, where), list(SERIAL_KINDS), f"{where}.bus")
            if g.sensor(bus) is None:
                raise SpecError(f"{where}.bus: gateway {gw} has no {bus} sensors")
            kw["bus"] = bus
            kw["rate"] = _typed(table, "rate", float, where, 0.2)
            if not 0 < kw["rate"] <= 1:
                raise SpecError(f"{where}.rate: {kw['rate']} must be > 0 and <= 1 (a share of frames)")
        water = g.sensor("water")
        if kind in ("slave_silent", "dead_slave") and water is None:
            raise SpecError(f"{where}.gateway: gateway {gw} has no water (Modbus) slaves")
        if kind == "dead_slave":
            assert water is not None
            kw["address"] = _typed(table, "address", int, where, water.count)
            if not 1 <= kw["address"] <= water.count:
                raise SpecError(f"{where}.address: {kw['address']} is not one of gateway {gw}'s slaves "
                                f"(1..{water.count})")
        if kind == "gateway_power_cut":
            tail = table.get("torn_tail", False)
            if tail is True:
                tail = "truncate"
            if tail is not False and tail not in TORN_MODES:
                raise SpecError(f"{where}.torn_tail: {tail!r} is not true, false, "
                                f"{' or '.join(repr(m) for m in TORN_MODES)}")
            kw["torn_tail"] = tail or ""
        if kind == "uplink_impair":
            kw["latency"] = _duration(table, "latency", where, 0.0)
            kw["jitter"] = _duration(table, "jitter", where, 0.0)
            kw["drop"] = _typed(table, "drop", float, where, 0.0)
            kw["partition"] = _typed(table, "partition", bool, where, False)
            if not 0 <= kw["drop"] <= 1:
                raise SpecError(f"{where}.drop: {kw['drop']} must be within 0..1 (a share of chunks)")
            if kw["latency"] > 30 or kw["jitter"] > 30:
                raise SpecError(f"{where}: latency and jitter must be at most 30s")
            if not (kw["latency"] or kw["jitter"] or kw["drop"] or kw["partition"]):
                raise SpecError(f"{where}: uplink_impair needs latency, jitter, drop or partition")
    if kind == "storm":
        kw["factor"] = _typed(table, "factor", float, where, 5.0)
        if not 1 < kw["factor"] <= 20:
            raise SpecError(f"{where}.factor: {kw['factor']} must be > 1 and <= 20")
    if kind in _SPAN_FAULTS and length <= 0:
        raise SpecError(f"{where}.for: {kind} needs a duration > 0")
    return Fault(f.kind, f.at, f.duration, **kw)


def from_dict(data: Mapping[str, Any], name: str = "") -> Scenario:
    _keys(data, _TOP, "")
    duration = _duration(data, "duration", "")
    if not 0 < duration <= 3600:
        raise SpecError(f"duration: {duration:g}s must be > 0 and <= 1h")
    seed = _typed(data, "seed", int, "", 1)
    gateways = _gateways(data.get("gateways"))
    raw_faults = data.get("faults", [])
    if not isinstance(raw_faults, list):
        raise SpecError("faults: expected [[faults]] tables")
    faults = tuple(sorted((_fault(_table(f, f"faults[{i}]"), f"faults[{i}]", gateways, duration)
                           for i, f in enumerate(raw_faults)), key=lambda f: f.at))
    goals_t = _table(data.get("goals", {}), "goals")
    _keys(goals_t, _GOALS, "goals")
    goals = Goals(*(_duration(goals_t, k, "goals") if k in goals_t else None
                    for k in ("reading_p99", "alarm_p99")))
    pipe_t = _table(data.get("pipeline", {}), "pipeline")
    _keys(pipe_t, _PIPELINE, "pipeline")
    d = Pipeline()
    pipeline = Pipeline(
        batch_age=_duration(pipe_t, "batch_age", "pipeline", d.batch_age),
        sync_every=_duration(pipe_t, "sync_every", "pipeline", d.sync_every),
        receipts=_typed(pipe_t, "receipts", bool, "pipeline", d.receipts),
        collector_flush=_duration(pipe_t, "collector_flush", "pipeline", d.collector_flush),
    )
    for key in ("batch_age", "sync_every", "collector_flush"):
        if not 0 < getattr(pipeline, key) <= 60:
            raise SpecError(f"pipeline.{key}: {getattr(pipeline, key):g}s must be > 0 and <= 60s")
    return Scenario(
        name=_typed(data, "name", str, "", name or "scenario"),
        description=_typed(data, "description", str, "", ""),
        duration=duration,
        seed=seed,
        gateways=gateways,
        faults=faults,
        goals=goals,
        poll_interval=_duration(data, "poll_interval", "", 0.25),
        drain_timeout=_duration(data, "drain_timeout", "", 60.0),
        pipeline=pipeline,
    )


def resolve(name_or_path: str) -> Path:
    """A shipped scenario by name (`city-block`) or a path to a TOML file."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        return path
    shipped = sorted(p.stem for p in SCENARIO_DIR.glob("*.toml"))
    if name_or_path not in shipped:
        hint = suggest(name_or_path, shipped).replace("; valid keys:", "; shipped:")
        raise SpecError(f"no scenario {name_or_path!r}{hint}")
    return SCENARIO_DIR / f"{name_or_path}.toml"


def load(name_or_path: str) -> Scenario:
    path = resolve(name_or_path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SpecError(f"{path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: {exc}") from None
    try:
        return from_dict(data, path.stem)
    except SpecError as exc:
        raise SpecError(f"{path.name}: {exc}") from None
