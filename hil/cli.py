"""Run a city block in the loop from a scenario file, or re-judge a saved run.

  citybrain hil run city-block                       6 gateways, 60 s, no faults (the demo)
  citybrain hil run storm --out /tmp/storm           every implemented fault; run.json, report.html
  citybrain hil run my-block.toml --seed 7 --keep    a scenario file of your own; keep the temp dir
  citybrain hil verify /tmp/storm/run.json           judge a saved run again (same verdict, no rig)
  citybrain hil verify run.json --report r.html      ... and draw its report again
  citybrain hil check my-block.toml                  load a scenario file and say what is wrong

Shipped scenarios live in hil/scenarios/*.toml; every key is in docs/hil.md ("Scenario files").
Exit status: 0 when nothing was lost, duplicated, altered or invented in InfluxDB and every latency
goal the scenario states was met; 1 otherwise; 2 for a scenario file that cannot run.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hil.judge import (
    ALARM,
    CLOCK_TOLERANCE_S,
    MQTT_CLOCK_TOLERANCE_S,
    Latency,
    Tally,
    Verdict,
    judge,
    recovery,
)
from hil.report import write_report
from hil.spec import SpecError, load

if TYPE_CHECKING:
    from hil.block import Block


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="hil_command", metavar="<run|verify|check>", required=True)
    r = sub.add_parser("run", help="run a scenario end to end and judge what InfluxDB holds",
                       epilog="example: citybrain hil run storm --out /tmp/storm")
    r.add_argument("scenario", help="a shipped scenario name (city-block, storm) or a .toml path")
    r.add_argument("--seed", type=int, default=None, help="override the scenario's seed")
    r.add_argument("--out", default=None, help="directory for run.json (created if missing)")
    r.add_argument("--keep", action="store_true",
                   help="keep the run's temp dir (service logs, gateway spools, configs) and print it")
    v = sub.add_parser("verify", help="judge a saved run.json again",
                       epilog="example: citybrain hil verify /tmp/storm/run.json --report /tmp/r.html")
    v.add_argument("run_json")
    v.add_argument("--report", default=None, help="also write the HTML report to this path")
    c = sub.add_parser("check", help="load a scenario file and report the first problem, if any",
                       epilog="example: citybrain hil check hil/scenarios/city-block.toml")
    c.add_argument("scenario")


def run(args: argparse.Namespace) -> int:
    if args.hil_command == "verify":
        data = json.loads(Path(args.run_json).read_text(encoding="utf-8"))
        verdict = judge(data)
        print(verdict_text(data, verdict))
        if args.report:
            print(f"wrote {write_report(data, verdict, args.report)}")
        return 0 if verdict.ok else 1
    try:
        scenario = load(args.scenario)
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.hil_command == "check":
        print(f"{scenario.name}: {len(scenario.gateways)} gateways, {scenario.duration:g} s, "
              f"{len(scenario.faults)} faults: OK")
        return 0
    return run_scenario(scenario, seed=args.seed, out=args.out, keep=args.keep)


def run_scenario(scenario: Any, *, seed: int | None = None, out: str | None = None, keep: bool = False,
                 workdir: str | None = None, inspect: Callable[[Block], None] | None = None) -> int:
    import tempfile

    from hil.block import run_block

    if keep and workdir is None:
        workdir = tempfile.mkdtemp(prefix="citybrain-block-")
        print(f"run directory (kept): {workdir}")
    from hil.live import view_for
    from hil.rig import RigError
    from hil.services import ServiceError

    try:
        with view_for(sys.stdout) as view:
            record, leftovers = run_block(scenario, seed=seed, workdir=workdir, progress=view.message,
                                          status=view.update, inspect=inspect)
    except (RigError, ServiceError) as exc:  # a part did not come up or died: no verdict to give
        print(f"error: the rig failed: {exc}", file=sys.stderr)
        return 1
    verdict = judge(record)
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        path = Path(out) / "run.json"
        path.write_text(json.dumps(record))
        print(f"wrote {path} and {write_report(record, verdict, Path(out) / 'report.html')}")
    print(verdict_text(record, verdict))
    if leftovers:
        print(f"FAIL: processes left running: {leftovers}")
    return 0 if verdict.ok and not leftovers else 1


def _ms(v: float | int | None) -> str:
    return "-" if v is None else f"{v * 1000:.0f}"


def verdict_text(record: Mapping[str, Any], verdict: Verdict) -> str:
    sc = record["scenario"]
    lines = [f"\n{sc['name']} (seed {sc['seed']}): {len(sc['gateways'])} gateways, {sc['duration']:g} s, "
             f"{len(sc['faults'])} faults"]
    head = f"  {'':14s} {'emitted':>8s} {'stored':>7s} {'lost':>5s} {'excused':>7s} {'dup':>4s} " \
           f"{'altered':>7s} {'invented':>8s}"
    for title, table in (("per kind", verdict.by_kind()), ("per gateway", verdict.by_gateway())):
        lines += [f"{title}:", head]
        for name, t in table.items():
            shown = "polled" if name == "water" and t.emitted == 0 else str(t.emitted)
            lines.append(f"  {name:14s} {shown:>8s} {t.stored:7d} {t.lost:5d} {t.excused:7d} "
                         f"{t.duplicated:4d} {t.altered:7d} {t.invented:8d}")
    total = Tally()
    for t in verdict.tallies.values():
        total.add(t)
    if total.anchored or record.get("clock_unset"):
        lines.append(f"clock unset at boot: {total.anchored} readings stamped through their boot's anchor, "
                     f"{total.mistimed} off by more than {CLOCK_TOLERANCE_S:g} s "
                     f"({MQTT_CLOCK_TOLERANCE_S:g} s over MQTT)")
    lines.append("latency, emission -> queryable in InfluxDB (ms; "
                 f"seen by polling every {record['poller']['period'] * 1000:.0f} ms):")
    lines.append(f"  {'':14s} {'n':>6s} {'p50':>6s} {'p95':>6s} {'p99':>6s} {'max':>6s}")
    rows = {k: verdict.latency[k] for k in sorted(verdict.latency) if k != ALARM}
    rows["all readings"] = Latency([x for lat in rows.values() for x in lat.samples])
    rows[ALARM] = verdict.latency.get(ALARM, Latency())
    for kind, lat in rows.items():
        s = lat.stats()
        lines.append(f"  {kind:14s} {s['n']:6d} {_ms(s['p50']):>6s} {_ms(s['p95']):>6s} {_ms(s['p99']):>6s} "
                     f"{_ms(s['max']):>6s}")
    recovered = {r["fault"]: r for r in recovery(record, verdict)}
    if recovered:
        lines.append("faults (readings' p99 during the fault and in the 30 s after it; backlog = readings "
                     "emitted, not yet queryable):")
    for start, end, label in record.get("faults", []):
        stop = end if end is not None else start
        during = _merged(verdict, start, max(stop, start + 1))
        after = _merged(verdict, stop, stop + 30)
        rec = recovered.get(label, {})
        drained = rec.get("drained_s")
        back = "not within 60 s" if drained is None else f"{drained:.2f} s after its end"
        lat_back = rec.get("latency_back_s")
        lat_text = "not within 60 s" if lat_back is None else f"{lat_back:.1f} s after its end"
        lines.append(f"  {label}: p99 during {_ms(during['p99'])} ms, after {_ms(after['p99'])} ms; "
                     f"backlog peak {rec.get('peak_backlog', 0)}, back to nominal {back}; "
                     f"latency back to nominal {lat_text}")
    flash = {gw: f for gw, f in (record.get("gateway_flash") or {}).items() if f and f["readings"]}
    if flash:
        lines.append("flash written by each gateway's logs this boot (records, state and anchor files), "
                     "per reading (bench/edge_flash.py's measure, the state files included):")
    for gw, f in sorted(flash.items()):
        n = f["readings"]
        enc = f.get("encoded_bytes") or 0
        ratio = f["bytes_written"] / enc if enc else 0.0
        lines.append(f"  {gw}: {n} readings ({100 * f['events'] / n:.0f} % events and alarms), "
                     f"{f['bytes_written'] / n:.2f} B/reading = {ratio:.3f}x the encoded reading; never "
                     f"written {f['never_written'] / n:.2f} B/reading (receipted before their sync)")
    errors = {gw: e for gw, e in (record.get("gateway_errors") or {}).items() if e}
    for gw, e in errors.items():
        lines.append(f"  {gw} status errors: {e}")
    dead = record.get("dead_letters") or {}
    if dead:
        lines.append(f"collector dead letters: {dead}")
    lines += [f"  {sample}" for sample in verdict.samples[:10]]
    for g in verdict.goals_missed:
        lines.append(f"  latency goal missed: {g}")
    lines.append("verdict: " + ("OK" if verdict.ok else "FAIL"))
    return "\n".join(lines)


def _merged(verdict: Verdict, t0: float, t1: float) -> dict[str, Any]:
    merged = Latency([x for k, lat in verdict.latency.items() if k != ALARM for x in lat.samples])
    return merged.between(t0, t1)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="citybrain hil", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
