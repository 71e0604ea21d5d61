"""Prove that what the sensors sent is what the broker got: nothing lost, duplicated or invented.

Input is the rig's record of what the simulators wrote (`Emission`: wall time, sensor, kind,
fields, or fields None for a frame the simulator deliberately corrupted), the payloads received
on `<prefix>/<gw>/up`, and the agent's power cuts (`Outage`: kill time, time the next boot was
seen online). Batches are de-duplicated as the collector does, by (boot, seq); then readings by
point identity (sensor, kind, ts, fields), because after a power cut the agent may re-send records
it had already delivered under a new boot (its cursor reaches flash at the next sync).

Readings are then compared as multisets keyed by (sensor, kind, typed fields): floats exactly
(CBOR keeps them), bool apart from int. A missing reading is a failure unless a rule excuses it:

  * written while the agent was down (from the kill until the next boot announced itself):
    the sensor transmitted into a powered-off gateway; not expected, welcome if it arrives;
  * an event or alarm (`codec.is_event` or `codec.alarm`) written within `read_margin_s`
    (0.3 s) before a kill: the agent may not have read it yet; any earlier one is synced at
    append and must arrive;
  * a periodic reading written within one group-sync interval (`store.sync_every_ms`, plus the
    read margin) before a kill, and never received: a periodic reading is lost only if it was
    neither synced nor receipted (docs/store.md, "Guarantees"). The log is write-behind: it
    waits in RAM, unwritten, until its group sync, which comes at most `sync_every_ms` after it
    was taken, so one taken earlier was synced; and a receipted one was received (the collector
    receipts only what reached it through the broker this verifier listens to), so a missing
    one was not receipted.

Polled kinds (water over Modbus) are not emitted by a rig-side clock: the agent decides when to
poll, so only their values can be checked (`polled`: the set of (sensor, fields) the slaves
serve). Any received value outside it is invented.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cbor2

from devices import registry

READ_MARGIN_S = 0.3

Fields = tuple[Any, ...]
Key = tuple[str, str, tuple[tuple[str, Any], ...]]


@dataclass(frozen=True)
class Emission:
    """One frame a simulator put on the wire (or the air). `fields` None: deliberately faulty."""

    t: float
    sensor: str
    kind: str
    fields: Fields | None


@dataclass(frozen=True)
class Outage:
    """A power cut: the agent was killed at `killed`; its next boot was online at `back` (wall time)."""

    killed: float
    back: float


@dataclass
class KindReport:
    kind: str
    emitted: int = 0  # good frames written (faulty ones are not counted)
    expected: int = 0  # of those, the ones that must arrive
    excusable: int = 0  # may be lost under a power-cut rule
    optional: int = 0  # written while the agent was down
    received: int = 0  # readings after de-duplication
    lost: int = 0  # expected and missing: a failure
    excused: int = 0  # missing, and a rule allowed it
    duplicated: int = 0  # received more often than emitted: a failure
    invented: int = 0  # received, never emitted: a failure
    polled: bool = False
    lost_samples: list[str] = field(default_factory=list)
    bad_samples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.duplicated == 0 and self.invented == 0


@dataclass
class Report:
    kinds: dict[str, KindReport]
    batches: int = 0
    batch_duplicates: int = 0  # same (boot, seq) received again (QoS 1 redelivery)
    resent: int = 0  # same point again under another batch key (re-sent after a power cut)
    undecodable: int = 0  # /up payloads that are not a batch: a failure

    @property
    def ok(self) -> bool:
        return self.undecodable == 0 and all(k.ok for k in self.kinds.values())

    def summary(self) -> str:
        lines = [
            f"batches {self.batches} (redelivered {self.batch_duplicates}), re-sent points {self.resent}, "
            f"undecodable {self.undecodable}: {'OK' if self.ok else 'FAIL'}"
        ]
        for k in self.kinds.values():
            exp = "polled"
            if not k.polled:
                exp = f"expected {k.expected} (+{k.excusable} excusable, +{k.optional} optional)"
            lines.append(
                f"  {k.kind:12s} emitted {k.emitted}, {exp}, received {k.received}, lost {k.lost}, "
                f"excused {k.excused}, duplicated {k.duplicated}, invented {k.invented}"
            )
            lines += [f"    lost: {s}" for s in k.lost_samples[:5]]
            lines += [f"    bad: {s}" for s in k.bad_samples[:5]]
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "batches": self.batches,
            "batch_duplicates": self.batch_duplicates,
            "resent": self.resent,
            "undecodable": self.undecodable,
            "kinds": {
                name: {
                    "emitted": k.emitted, "expected": k.expected, "excusable": k.excusable,
                    "optional": k.optional, "received": k.received, "lost": k.lost, "excused": k.excused,
                    "duplicated": k.duplicated, "invented": k.invented, "polled": k.polled,
                }
                for name, k in self.kinds.items()
            },
        }


def codecs_by_code() -> dict[int, Any]:
    """Kind code -> codec module, from the kind registry (devices/registry.py)."""
    return {code: kind.codec() for code, kind in registry.by_code().items()}


def typed(fields: Sequence[Any]) -> tuple[tuple[str, Any], ...]:
    """Fields with their type names, so True never matches 1 and 1 never matches 1.0."""
    return tuple((type(v).__name__, v) for v in fields)


def readings_of(payload: Mapping[Any, Any], codecs: Mapping[int, Any]) -> list[tuple[str, str, int, Fields]]:
    """(sensor, kind name, ts, fields tuple) of each reading in a decoded batch map."""
    t0 = payload[3]
    out = []
    for sensor, kind_code, dt, fmap in payload[4]:
        codec = codecs[kind_code]
        fields: list[Any] = [None] * len(codec.FIELDS)
        for i, v in fmap.items():
            fields[i] = v
        out.append((sensor, codec.KIND, t0 + dt, tuple(fields)))
    return out


def _status(e: Emission, outages: Sequence[Outage], sync_s: float, codec: Any, margin: float) -> str:
    """'optional', 'excusable' or 'expected' for one good emission under the power-cut rules."""
    assert e.fields is not None
    urgent = bool(codec.is_event(e.fields)) or codec.alarm(e.fields) is not None
    window = margin if urgent else sync_s + margin
    for o in outages:
        if o.killed <= e.t <= o.back:
            return "optional"
        if 0 <= o.killed - e.t <= window:
            return "excusable"
    return "expected"


def verify(
    emissions: Iterable[Emission],
    payloads: Iterable[bytes],
    *,
    outages: Sequence[Outage] = (),
    sync_every_ms: int = 10000,
    polled: Mapping[str, Iterable[tuple[str, Fields]]] | None = None,
    read_margin_s: float = READ_MARGIN_S,
) -> Report:
    codecs = codecs_by_code()
    by_name = {c.KIND: c for c in codecs.values()}
    kinds: dict[str, KindReport] = {}

    def rep(kind: str) -> KindReport:
        if kind not in kinds:
            kinds[kind] = KindReport(kind)
        return kinds[kind]

    # What was sent, by key, each with its status under the rules.
    sent: dict[Key, list[tuple[str, Emission]]] = {}
    for e in emissions:
        if e.fields is None:
            continue
        r = rep(e.kind)
        r.emitted += 1
        st = _status(e, outages, sync_every_ms / 1000, by_name[e.kind], read_margin_s)
        if st == "optional":
            r.optional += 1
        elif st == "excusable":
            r.excusable += 1
        else:
            r.expected += 1
        sent.setdefault((e.sensor, e.kind, typed(e.fields)), []).append((st, e))
    allowed: dict[str, set[tuple[str, tuple[tuple[str, Any], ...]]]] = {}
    for kind, values in (polled or {}).items():
        rep(kind).polled = True
        allowed[kind] = {(s, typed(f)) for s, f in values}

    # What arrived: batch de-dup, then point de-dup.
    report = Report(kinds)
    seen_batches: set[tuple[int, int]] = set()
    seen_points: set[tuple[str, str, int, tuple[tuple[str, Any], ...]]] = set()
    got: Counter[Key] = Counter()
    for raw in payloads:
        try:
            payload = cbor2.loads(raw)
            bkey = (int(payload[1]), int(payload[2]))
            readings = readings_of(payload, codecs)
        except (cbor2.CBORDecodeError, KeyError, TypeError, ValueError, IndexError):
            report.undecodable += 1
            continue
        report.batches += 1
        if bkey in seen_batches:
            report.batch_duplicates += 1
            continue
        seen_batches.add(bkey)
        for sensor, kind, ts, fields in readings:
            tf = typed(fields)
            point = (sensor, kind, ts, tf)
            if point in seen_points:
                report.resent += 1
                continue
            seen_points.add(point)
            rep(kind).received += 1
            got[(sensor, kind, tf)] += 1

    # Compare.
    for key, n in got.items():
        sensor, kind, tf = key
        r = kinds[kind]
        if r.polled:
            if (sensor, tf) not in allowed[kind]:
                r.invented += n
                r.bad_samples.append(f"invented {sensor} {tf}")
            continue
        n_sent = len(sent.get(key, ()))
        if n_sent == 0:
            r.invented += n
            r.bad_samples.append(f"invented {sensor} {tf}")
        elif n > n_sent:
            r.duplicated += n - n_sent
            r.bad_samples.append(f"duplicated x{n - n_sent} {sensor} {tf}")
    for key, ems in sent.items():
        missing = len(ems) - got.get(key, 0)
        if missing <= 0:
            continue
        r = kinds[key[1]]
        # Identical readings are interchangeable: charge the missing ones to the most excusable first.
        order = {"optional": 0, "excusable": 1, "expected": 2}
        for st, e in sorted(ems, key=lambda x: order[x[0]])[:missing]:
            if st == "expected":
                r.lost += 1
                r.lost_samples.append(f"t={e.t:.3f} {e.sensor} {e.fields}")
            elif st == "excusable":
                r.excused += 1
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Verify a run saved by `python -m hil.rig --save run.json` (exit 1 on any failure)."""
    ap = argparse.ArgumentParser(prog="python -m hil.verify", description=main.__doc__)
    ap.add_argument("run", help="JSON written by the rig (--save)")
    args = ap.parse_args(argv)
    with open(args.run, encoding="utf-8") as f:
        data = json.load(f)
    report = verify(
        [Emission(e["t"], e["sensor"], e["kind"], None if e["fields"] is None else tuple(e["fields"]))
         for e in data["emissions"]],
        [bytes.fromhex(p) for p in data["up"]],
        outages=[Outage(o["killed"], o["back"]) for o in data["outages"]],
        sync_every_ms=data["sync_every_ms"],
        polled={k: [(s, tuple(f)) for s, f in v] for k, v in data.get("polled", {}).items()},
    )
    print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
