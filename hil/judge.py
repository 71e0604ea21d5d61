"""Judge a city-block run where the city brain reads: what each sensor emitted vs what InfluxDB holds.

Pure (no I/O): `judge(run)` takes the record a block run writes to run.json (hil/block.py) and
returns a `Verdict`. Reading by reading, per kind and per gateway:

  * key: (gateway, sensor, kind, typed fields). Stored values get their type from InfluxDB's own
    field type (SHOW FIELD KEYS: integer, float, boolean, string), so a float stored for an int is
    a changed reading, not a match;
  * stored more often than emitted: **duplicated** (InfluxDB itself merges identical points with the
    same series and timestamp, so these are re-stamped copies: what the brain would double-count);
  * stored and never emitted: **altered** if an unmatched emission of the same gateway, sensor and
    kind lies within `ALTER_WINDOW_S` of the point's timestamp (a value or a type changed on the
    way), else **invented**;
  * emitted and not stored: **lost**, unless hil.verify's power-cut rules excuse it (and only
    those: written while the gateway was down is optional; an event or alarm within 0.3 s, a
    periodic reading within one group sync + 0.3 s before a kill is excusable);
  * polled kinds (water over Modbus): every stored value must be one the slaves serve (else
    invented); loss cannot be judged, the rig does not know when the agent polls.

Alarms are judged the same way in their own measurement (`alarm`, tags gw/sensor/kind/code): each
emission whose codec says `alarm(fields)` is not None must be there once.

Latency of a matched reading: the rig's first sight of the point in InfluxDB minus the emission's
wall time (polled kinds: minus the point's timestamp, the agent's clock when it polled). The rig
sees a point only when it polls, so each figure is late by up to one poll period (docs/hil.md).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from devices import KINDS, load
from hil.spec import BUSES
from hil.verify import Emission, Outage, _status, typed

ALTER_WINDOW_S = 5.0
# A reading emitted while its gateway's boot had no clock (clock_unset_at_boot) is logged with its
# uptime and stamped through the boot's anchor once NTP answers: its stored time must be within
# this of the emission's wall time (the agent reads a frame within a tick of the rig writing it).
CLOCK_TOLERANCE_S = 1.0
# A reading carried over MQTT (manhole lids, through the site broker) is stamped when it arrives:
# one published while the booting gateway had not yet subscribed waits at the site broker (a storm
# run stamped a lid 1.018 s after it was published). Its bound covers that wait; the stamping code
# is the same, and the serial readings of the same boot hold it to CLOCK_TOLERANCE_S.
MQTT_CLOCK_TOLERANCE_S = 3.0
ALARM = "alarm"
_PY_TYPE = {"integer": int, "float": float, "boolean": bool, "string": str}


@dataclass
class Tally:
    """Counts for one (gateway, kind) or a total; `kind` "alarm" counts alarm points."""

    emitted: int = 0
    expected: int = 0
    excusable: int = 0
    optional: int = 0
    stored: int = 0
    matched: int = 0
    lost: int = 0
    excused: int = 0
    duplicated: int = 0
    altered: int = 0
    invented: int = 0
    anchored: int = 0  # matched readings emitted before their boot knew UTC (times checked)
    mistimed: int = 0  # of those, stored with a time off by more than CLOCK_TOLERANCE_S
    # Lost alarms by where they went missing (`where_lost`; run.json from before the rig recorded
    # the evidence leaves all three 0): the broker delivered it and InfluxDB does not hold it
    # (lost after the broker: collector or database); the broker never had it and its gateway
    # counted that many `alarms_dropped` (its bounded alarm queue was full); the broker never had
    # it and the gateway counted no drop for it (lost in transit, gateway to broker).
    lost_after_broker: int = 0
    dropped_by_gateway: int = 0
    lost_in_transit: int = 0

    @property
    def bad(self) -> int:
        return self.lost + self.duplicated + self.altered + self.invented + self.mistimed

    def add(self, other: Tally) -> None:
        for k in self.__dataclass_fields__:
            setattr(self, k, getattr(self, k) + getattr(other, k))


@dataclass
class Latency:
    """Seconds from emission to first sight in InfluxDB, with the emission time of each."""

    samples: list[tuple[float, float]] = field(default_factory=list)  # (emitted at, latency)

    def stats(self, values: Sequence[float] | None = None) -> dict[str, float | int | None]:
        xs = sorted(v for _, v in self.samples) if values is None else sorted(values)
        if not xs:
            return {"n": 0, "p50": None, "p95": None, "p99": None, "max": None}
        return {"n": len(xs), "p50": pct(xs, 50), "p95": pct(xs, 95), "p99": pct(xs, 99), "max": xs[-1]}

    def between(self, t0: float, t1: float) -> dict[str, float | int | None]:
        return self.stats([v for t, v in self.samples if t0 <= t < t1])


def pct(sorted_xs: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of sorted values."""
    rank = max(1, math.ceil(p / 100 * len(sorted_xs)))
    return sorted_xs[rank - 1]


@dataclass
class Verdict:
    tallies: dict[tuple[str, str], Tally]  # (gateway, kind or "alarm") -> counts
    latency: dict[str, Latency]  # kind or "alarm" -> samples
    samples: list[str]  # a few examples of what went wrong, for the text verdict
    goals_missed: list[str]

    @property
    def ok(self) -> bool:
        return not self.goals_missed and all(t.bad == 0 for t in self.tallies.values())

    def by_kind(self) -> dict[str, Tally]:
        out: dict[str, Tally] = defaultdict(Tally)
        for (_, kind), t in sorted(self.tallies.items()):
            out[kind].add(t)
        return dict(out)

    def by_gateway(self) -> dict[str, Tally]:
        out: dict[str, Tally] = defaultdict(Tally)
        for (gw, kind), t in sorted(self.tallies.items()):
            if kind != ALARM:
                out[gw].add(t)
        return dict(out)


def _codecs() -> dict[str, Any]:
    return {name: load(name) for name in KINDS}


def stored_fields(
    row_fields: Mapping[str, Any], names: Sequence[str], types: Mapping[str, str]
) -> tuple[Any, ...]:
    """A stored point's fields in the codec's order, each with InfluxDB's type for that field."""
    out: list[Any] = []
    for name in names:
        v = row_fields.get(name)
        if v is not None:
            conv = _PY_TYPE.get(types.get(name, ""))
            if conv is float and isinstance(v, int) and not isinstance(v, bool):
                v = float(v)  # JSON writes the float 21.0 as 21
            elif conv is int and isinstance(v, float) and v.is_integer():
                v = int(v)
        out.append(v)
    return tuple(out)


def merge_partial(stored: Sequence[Sequence[Any]]) -> list[Sequence[Any]]:
    """Rows of one point (measurement, gateway, sensor, kind, time) where one shows a subset of
    another's fields are one point caught mid-write (InfluxDB 1.x stores each field as a series
    of its own; the rig's poller keeps the fuller row since, records from before did not): keep
    the fullest, seen when it was. Rows whose fields contradict are kept apart for judging."""
    groups: dict[tuple[Any, ...], list[Sequence[Any]]] = defaultdict(list)
    for row in stored:
        groups[(row[1], row[2], row[3], row[4], row[5])].append(row)
    out: list[Sequence[Any]] = []
    for rows in groups.values():
        rows = sorted(rows, key=lambda r: -len(r[6]))
        kept: list[Sequence[Any]] = []
        for r in rows:
            if not any(all(k2 in big[6] and big[6][k2] == v for k2, v in r[6].items()) for big in kept):
                kept.append(r)
        out += kept
    return out


def judge(run: Mapping[str, Any]) -> Verdict:
    """The verdict on a block run record (the dict saved as run.json; see hil/block.py `record`)."""
    codecs = _codecs()
    sync_s = run["sync_every_ms"] / 1000
    outages = {gw: [Outage(k, b) for k, b in v] for gw, v in run["outages"].items()}
    tallies: dict[tuple[str, str], Tally] = defaultdict(Tally)
    latency: dict[str, Latency] = defaultdict(Latency)
    samples: list[str] = []
    polled = {gw: {kind: {(s, typed(f)) for s, f in values} for kind, values in kinds.items()}
              for gw, kinds in run["polled"].items()}
    types = run["field_types"]

    # Ground truth: readings, and the alarms they must raise, keyed with their power-cut status.
    sent: dict[tuple[str, str, str, Any], list[tuple[str, float]]] = defaultdict(list)
    sent_alarms: dict[tuple[str, str, str, Any], list[tuple[str, float]]] = defaultdict(list)
    for t, gw, sensor, kind, fields in run["emissions"]:
        if fields is None:
            continue
        codec = codecs[kind]
        fields = tuple(fields)
        st = _status(Emission(t, sensor, kind, fields), outages.get(gw, ()), sync_s, codec, 0.3)
        key = (gw, sensor, kind, typed(fields))
        for where, tal in ((sent, tallies[(gw, kind)]),) + (
            ((sent_alarms, tallies[(gw, ALARM)]),) if codec.alarm(fields) is not None else ()
        ):
            where[key].append((st, t))
            tal.emitted += 1
            setattr(tal, st, getattr(tal, st) + 1)

    # What InfluxDB holds: (first seen, measurement, gw, sensor, kind, ts_ms, fields by name).
    stored = merge_partial(run["stored"])
    got: dict[tuple[str, str, str, Any], list[tuple[float, int]]] = defaultdict(list)
    got_alarms: dict[tuple[str, str, str, Any], list[tuple[float, int]]] = defaultdict(list)
    for seen, measurement, gw, sensor, kind, ts, fmap in stored:
        codec = codecs.get(kind)
        if codec is None:
            tallies[(gw, str(kind))].invented += 1
            samples.append(f"invented: {measurement} {gw} {sensor} unknown kind {kind!r}")
            continue
        fields = stored_fields(fmap, codec.FIELDS, types.get(measurement, {}))
        tag = ALARM if measurement == ALARM else kind
        tallies[(gw, tag)].stored += 1
        key = (gw, sensor, kind, typed(fields))
        if tag != ALARM and kind in polled.get(gw, {}):
            if (sensor, typed(fields)) in polled[gw][kind]:
                tallies[(gw, kind)].matched += 1
                latency[kind].samples.append((ts / 1000, seen - ts / 1000))
            else:
                tallies[(gw, kind)].invented += 1
                samples.append(f"invented: {gw} {sensor} {kind} {fields} (not a value the slaves serve)")
            continue
        (got_alarms if tag == ALARM else got)[key].append((seen, ts))

    # Boots without a clock: [online, clock set] per gateway (None: never set, then every later
    # emission of that gateway is in the window).
    unset = {gw: [(a, math.inf if b is None else b) for a, b in ws if a is not None]
             for gw, ws in run.get("clock_unset", {}).items()}
    lost_alarms: dict[tuple[str, str, str, Any], int] = defaultdict(int)
    for tag_of, want, have in ((None, sent, got), (ALARM, sent_alarms, got_alarms)):
        _compare(want, have, tallies, latency, samples, tag_of, unset,
                 lost_alarms if tag_of == ALARM else None)
    if "alarms_at_broker" in run:
        where_lost(run, lost_alarms, got_alarms, tallies, samples)

    goals_missed: list[str] = []
    goals = run["scenario"].get("goals", {})
    readings = [v for k, lat in latency.items() if k != ALARM for _, v in lat.samples]
    for name, values in (("reading_p99", readings), ("alarm_p99", [v for _, v in latency[ALARM].samples])):
        goal = goals.get(name)
        if goal is None:
            continue
        got_p99 = pct(sorted(values), 99) if values else None
        if got_p99 is None or got_p99 > goal:
            shown = "no samples" if got_p99 is None else f"{got_p99:.3f} s"
            goals_missed.append(f"{name}: {shown}, goal {goal:g} s")
    return Verdict(dict(tallies), dict(latency), samples, goals_missed)


def _compare(
    want: Mapping[tuple[str, str, str, Any], list[tuple[str, float]]],
    have: Mapping[tuple[str, str, str, Any], list[tuple[float, int]]],
    tallies: dict[tuple[str, str], Tally],
    latency: dict[str, Latency],
    samples: list[str],
    alarm: str | None,
    unset: Mapping[str, list[tuple[float, float]]],
    lost_keys: dict[tuple[str, str, str, Any], int] | None = None,
) -> None:
    """Multiset match of emissions and stored points, then altered/invented/lost for the rest;
    `lost_keys` (if given) counts the lost ones per key."""
    unmatched_stored: list[tuple[tuple[str, str, str, Any], int]] = []
    unmatched_sent: dict[tuple[str, str, str], list[tuple[str, float, Any]]] = defaultdict(list)
    for key in set(want) | set(have):
        gw, sensor, kind, tf = key
        tag = alarm or kind
        ems = sorted(want.get(key, ()), key=lambda x: x[1])
        pts = sorted(have.get(key, ()), key=lambda x: x[1])
        # Oldest emission with the oldest point: identical readings are interchangeable.
        for (_, t), (seen, ts) in zip(ems, pts, strict=False):
            tallies[(gw, tag)].matched += 1
            latency[tag].samples.append((t, seen - t))
            if any(a <= t < b for a, b in unset.get(gw, ())):
                tallies[(gw, tag)].anchored += 1
                bound = MQTT_CLOCK_TOLERANCE_S if BUSES.get(kind) == "mqtt" else CLOCK_TOLERANCE_S
                if abs(ts / 1000 - t) > bound:
                    tallies[(gw, tag)].mistimed += 1
                    samples.append(f"mistimed: {tag} {gw} {sensor} emitted t={t:.3f}, stored ts={ts} "
                                   f"({ts / 1000 - t:+.3f} s) {_plain(tf)}")
        for _, ts in pts[len(ems):]:
            if ems:
                tallies[(gw, tag)].duplicated += 1
                samples.append(f"duplicated: {tag} {gw} {sensor} ts={ts} {_plain(tf)}")
            else:
                unmatched_stored.append((key, ts))
        for st, t in ems[len(pts):]:
            unmatched_sent[(gw, sensor, kind)].append((st, t, tf))
    for key, ts in unmatched_stored:
        gw, sensor, kind, tf = key
        tag = alarm or kind
        cands = unmatched_sent.get((gw, sensor, kind), [])
        near = [c for c in cands if abs(c[1] - ts / 1000) <= ALTER_WINDOW_S]
        if near:
            c = min(near, key=lambda c: abs(c[1] - ts / 1000))
            cands.remove(c)
            tallies[(gw, tag)].altered += 1
            samples.append(f"altered: {tag} {gw} {sensor} emitted {_plain(c[2])}, stored {_plain(tf)}")
        else:
            tallies[(gw, tag)].invented += 1
            samples.append(f"invented: {tag} {gw} {sensor} ts={ts} {_plain(tf)}")
    for (gw, sensor, kind), cands in unmatched_sent.items():
        tag = alarm or kind
        for st, t, tf in cands:
            if st == "expected":
                tallies[(gw, tag)].lost += 1
                if lost_keys is not None:
                    lost_keys[(gw, sensor, kind, tf)] += 1
                samples.append(f"lost: {tag} {gw} {sensor} emitted t={t:.3f} {_plain(tf)}")
            elif st == "excusable":
                tallies[(gw, tag)].excused += 1


def where_lost(
    run: Mapping[str, Any],
    lost: Mapping[tuple[str, str, str, Any], int],
    got: Mapping[tuple[str, str, str, Any], list[tuple[float, int]]],
    tallies: dict[tuple[str, str], Tally],
    samples: list[str],
) -> None:
    """Sort each lost alarm by where it went missing, from the rig's evidence in the record: the
    `/alarm` messages the broker delivered to the rig's subscriber (`alarms_at_broker`, distinct
    (boot, seq)) and the live alarms each gateway counted as dropped from its full queue
    (`alarms_dropped`, from its statuses, every boot)."""
    at_broker: dict[tuple[str, str, str, Any], set[tuple[int, int]]] = defaultdict(set)
    for gw, msgs in run["alarms_at_broker"].items():
        for _t, boot, seq, _code, sensor, kind, _ts, fields in msgs:
            at_broker[(gw, sensor, kind, typed(tuple(fields)))].add((boot, seq))
    drops = dict(run.get("alarms_dropped") or {})
    for key, n in sorted(lost.items(), key=lambda kv: str(kv[0])):
        gw = key[0]
        tal = tallies[(gw, ALARM)]
        after = min(n, max(0, len(at_broker.get(key, ())) - len(got.get(key, ()))))
        dropped = min(n - after, drops.get(gw, 0))
        drops[gw] = drops.get(gw, 0) - dropped
        tal.lost_after_broker += after
        tal.dropped_by_gateway += dropped
        tal.lost_in_transit += n - after - dropped
    for (gw, tag), tal in sorted(tallies.items()):
        if tag == ALARM and tal.lost:
            samples.insert(0, f"{gw}: {tal.lost} alarms lost: {tal.dropped_by_gateway} dropped by the "
                              f"gateway (alarm queue full, its alarms_dropped), {tal.lost_in_transit} lost "
                              f"in transit to the broker, {tal.lost_after_broker} lost after the broker "
                              "delivered them")


def _plain(tf: Iterable[tuple[str, Any]]) -> list[Any]:
    return [f"{v!r}:{t}" if t not in ("int", "NoneType", "bool") else v for t, v in tf]


def backlog_series(
    record: Mapping[str, Any], verdict: Verdict, step: float = 0.25
) -> list[tuple[float, int]]:
    """(seconds since t0, readings emitted and not yet queryable) every `step`, over the run.

    Counted from the readings that were stored in the end (their emission and first sight), so an
    optional reading, sent into a powered-off gateway, never enters it; water has no emission time
    and is left out."""
    t0 = record["t0"]
    flights = [(t - t0, t - t0 + v) for kind, lat in verdict.latency.items() if kind not in (ALARM, "water")
               for t, v in lat.samples]
    if not flights:
        return []
    starts = sorted(a for a, _ in flights)
    ends = sorted(b for _, b in flights)
    out: list[tuple[float, int]] = []
    i = j = 0
    n = int(max(ends) / step) + 2
    for k in range(n):
        t = k * step
        while i < len(starts) and starts[i] <= t:
            i += 1
        while j < len(ends) and ends[j] <= t:
            j += 1
        out.append((t, i - j))
    return out


LATENCY_WINDOW_S = 2.0  # readings emitted in this long are judged together for "latency nominal"
CALM_AFTER_S = 30.0  # a fault's aftermath, left out of the nominal latency


def nominal_latency(record: Mapping[str, Any], verdict: Verdict) -> float | None:
    """The readings' p99 latency (seconds) outside every fault and the 30 s after it: what
    "nominal" means for the run; None if no reading was emitted in calm."""
    t0 = record["t0"]
    spans = [(start - t0, (end if end is not None else start) - t0 + CALM_AFTER_S)
             for start, end, _ in record.get("faults", [])]
    calm = sorted(v for kind, lat in verdict.latency.items() if kind not in (ALARM, "water")
                  for t, v in lat.samples if not any(a <= t - t0 < b for a, b in spans))
    return pct(calm, 99) if calm else None


def recovery(record: Mapping[str, Any], verdict: Verdict) -> list[dict[str, Any]]:
    """Per fault: the backlog's peak from its start until it drained; how long after its end the
    backlog was back to nominal (at most twice the run's median, plus 5); and how long after its
    end latency was back to nominal: the start of the first 2-s window of emissions whose p95 is
    within the calm p99 (`nominal_latency`). Each None if not within 60 s."""
    series = backlog_series(record, verdict)
    if not series:
        return []
    levels = sorted(b for _, b in series)
    nominal = 2 * levels[len(levels) // 2] + 5
    t0 = record["t0"]
    calm_p99 = nominal_latency(record, verdict)
    flights = sorted((t - t0, v) for kind, lat in verdict.latency.items() if kind not in (ALARM, "water")
                     for t, v in lat.samples)
    out = []
    for start, end, label in record.get("faults", []):
        s, e = start - t0, (end if end is not None else start) - t0
        drained = next((t - e for t, b in series if t >= e and b <= nominal), None)
        if drained is not None and drained > 60:
            drained = None
        # up to the moment it drained: a later fault's backlog is not this one's
        until = e + (drained if drained is not None else 60.0)
        peak = max((b for t, b in series if s <= t <= until), default=0)
        out.append({"fault": label, "at": s, "end": e, "peak_backlog": peak, "nominal_backlog": nominal,
                    "drained_s": drained, "nominal_latency_s": calm_p99,
                    "latency_back_s": _latency_back(flights, e, calm_p99)})
    return out


def _latency_back(flights: Sequence[tuple[float, float]], end: float, limit: float | None) -> float | None:
    """Seconds from `end` to the first window of emissions (from `end` on, LATENCY_WINDOW_S long,
    stepped by a quarter of it) whose p95 latency is within `limit`; None if none starts within 60 s.
    `flights` is sorted by emission time: each window is found by bisection, not by a scan of all."""
    if limit is None:
        return None
    step = LATENCY_WINDOW_S / 4
    k = 0
    while k * step <= 60.0:
        a = end + k * step
        lo = bisect_left(flights, (a, -math.inf))
        hi = bisect_left(flights, (a + LATENCY_WINDOW_S, -math.inf), lo)
        xs = sorted(v for _, v in flights[lo:hi])
        if xs and pct(xs, 95) <= limit:
            return k * step
        k += 1
    return None
