"""The rig's scenarios: what the integration tests run and what `python -m hil.rig` runs by hand.

Each returns an `Outcome` (the verifier's report, the last online status, command replies) and
leaves nothing running. What each one proves is in docs/hil.md. Each (but `commands`) takes its
sensors, rates, length, seed and fault times from its twin `hil/scenarios/rig-<name>.toml` (the
one source: `twin`); an argument given overrides the file. The runtime is the `interpreter`
argument, not the file's.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import cbor2

from hil.block import GARBAGE_BYTES_PER_TICK, rig_options, tune
from hil.rig import ALL_INTERPRETERS, Rig, RigError, TornWrite
from hil.spec import Fault, Scenario, load
from hil.verify import Report, codecs_by_code, readings_of


@dataclass
class Outcome:
    report: Report
    status: dict[str, Any] | None  # the agent's last online status
    retained: dict[str, Any] | None = None  # what a newcomer got from the broker (retained)
    replies: dict[str, dict[str, Any]] = field(default_factory=dict)
    exit_code: int | None = None  # of the agent's final SIGTERM stop
    kills: int = 0
    broker_restarts: int = 0
    leftovers: list[int] = field(default_factory=list)  # PIDs still alive after the rig closed
    tears: list[TornCheck] = field(default_factory=list)  # torn-power-cut: one per torn record


@dataclass
class TornCheck:
    """One torn write and what the next boot made of it."""

    write: TornWrite
    log: dict[str, Any]  # the `log` map of the status command reply of the boot after the tear
    prefix_kept: bool  # the segment's bytes before the torn record were intact after recovery
    reading: tuple[str, str, int, tuple[Any, ...]]  # the torn record's (sensor, kind, ts, fields)
    emitted_age_s: float | None  # kill time minus the last emission of that reading before the kill
    delivered: bool = False  # it had been published before the kill (else the tear lost it)


def twin(name: str) -> Scenario:
    """The scenario file of Python scenario `name` (hil/scenarios/rig-<name>.toml), one gateway."""
    sc = load(f"rig-{name}")
    if len(sc.gateways) != 1:
        raise RigError(f"rig-{name}.toml: a Python scenario runs one gateway, not {len(sc.gateways)}")
    return sc


def faults_of(sc: Scenario, kind: str) -> list[Fault]:
    return [f for f in sc.faults if f.kind == kind]


def _scenario(
    interpreter: str, save: str | None, body: Callable[[Rig, Outcome], None], sc: Scenario | None = None,
    **rig_kw: Any,
) -> Outcome:
    """Start a rig (from the twin `sc`'s gateway, then `rig_kw`), run `body`, drain, verify, stop
    the agent cleanly, close, check for leftovers."""
    if sc is not None:
        rig_kw = {**rig_options(sc.gateways[0], sc.faults), **rig_kw}
    rig = Rig(interpreter, **rig_kw)
    if sc is not None:
        tune(rig, sc.gateways[0])
    try:
        rig.start_agent()
        out = Outcome(Report({}), None)
        body(rig, out)
        rig.drain()
        out.status = rig.last_status()
        out.retained = rig.retained_status()
        out.report = rig.verify()
        if save:
            rig.save(save)
        out.exit_code = rig.stop_agent()
    finally:
        rig.close()
    out.leftovers = rig.leftovers()
    return out


def steady(interpreter: str, *, seconds: float | None = None, save: str | None = None,
           seed: int | None = None) -> Outcome:
    """All four kinds, no faults: every reading exactly once."""
    sc = twin("steady")
    length = sc.duration if seconds is None else seconds
    return _scenario(interpreter, save, lambda rig, out: rig.run(length), sc, seed=_seed(sc, seed))


def _seed(sc: Scenario, seed: int | None) -> int:
    return sc.seed if seed is None else seed


def broker_restart(
    interpreter: str, *, seconds: float | None = None, save: str | None = None, seed: int | None = None
) -> Outcome:
    """Mosquitto restarted mid-stream (clean stop, same port and data dir): nothing lost."""
    sc = twin("broker-restart")
    length = sc.duration if seconds is None else seconds
    (restart,) = faults_of(sc, "broker_restart")

    def body(rig: Rig, out: Outcome) -> None:
        rig.run(min(restart.at, length))
        rig.restart_broker()
        out.broker_restarts += 1
        rig.run(max(0.0, length - restart.at))

    return _scenario(interpreter, save, body, sc, seed=_seed(sc, seed))


def power_cut(interpreter: str, *, kills: int | None = None, save: str | None = None,
              seed: int | None = None) -> Outcome:
    """SIGKILL of the agent at random moments, then a restart: the verifier's power-cut rules hold.
    As many kills as the twin has power cuts; their moments are drawn from the seed (the twin's
    are fixed)."""
    sc = twin("power-cut")
    kills = len(faults_of(sc, "gateway_power_cut")) if kills is None else kills
    rnd = random.Random(_seed(sc, seed))

    def body(rig: Rig, out: Outcome) -> None:
        for _ in range(kills):
            rig.run(rnd.uniform(1.0, 3.0))
            rig.kill_agent()
            out.kills += 1
            rig.run(rnd.uniform(0.2, 0.8))
            rig.start_agent()
        rig.run(2.0)

    return _scenario(interpreter, save, body, sc, seed=_seed(sc, seed))


# The newest record counts as "being written when the power failed" only if its bytes reached the
# file this shortly before the kill; otherwise that kill stays a plain SIGKILL and the next one tries.
TEAR_MAX_AGE_S = 0.1
CODECS = codecs_by_code()
_TEAR_ATTEMPTS = 5  # kills per tear before giving up (the streams append every ~35 ms)


def torn_power_cut(
    interpreter: str, *, modes: Sequence[str] | None = None, save: str | None = None, seed: int | None = None,
) -> Outcome:
    """SIGKILL at random moments, then the record being written is torn (cut or garbled): recovery cuts it.
    The tears' modes are the twin's `torn_tail`s, in order."""
    sc = twin("torn-power-cut")
    if modes is None:
        modes = [f.torn_tail for f in faults_of(sc, "gateway_power_cut") if f.torn_tail]
    rnd = random.Random(_seed(sc, seed))

    def body(rig: Rig, out: Outcome) -> None:
        for i, mode in enumerate(modes):
            for _ in range(_TEAR_ATTEMPTS):
                rig.run(rnd.uniform(1.0, 2.5))
                killed = rig.kill_agent()
                out.kills += 1
                torn = rig.tear_log_tail(rnd, mode, max_age_s=TEAR_MAX_AGE_S)
                rig.run(rnd.uniform(0.2, 0.6))
                rig.start_agent()
                if torn is not None:
                    break
            else:
                raise RigError(f"no fresh record to tear after {_TEAR_ATTEMPTS} kills")
            reply = rig.command(cbor2.dumps({"id": f"torn-{i}", "op": "status"}), f"torn-{i}")
            seg = rig.spool() / torn.segment
            prefix_kept = seg.exists() and seg.read_bytes()[: torn.start] == torn.prefix
            sensor, kind_code, ts, fmap = cbor2.loads(torn.record)[:4]
            # A record is a batch's reading with ts absolute: decode it as a one-reading batch.
            reading = readings_of({3: 0, 4: [[sensor, kind_code, ts, fmap]]}, CODECS)[0]
            times = [e.t for e in rig.emissions
                     if (e.sensor, e.kind, e.fields) == (sensor, reading[1], reading[3]) and e.t <= killed]
            age = killed - max(times) if times else None
            log = (reply.get("result") or {}).get("log", {})
            if torn.segment.startswith("events/"):
                log = log.get("events", {})  # the events log's own counters
            out.tears.append(TornCheck(torn, log, prefix_kept, reading, age))
        rig.run(2.0)
        assert rig.sub is not None
        got = set()
        for p in rig.sub.payloads("up"):
            try:
                got.update(readings_of(cbor2.loads(p), CODECS))
            except (cbor2.CBORDecodeError, KeyError, TypeError, ValueError, IndexError):
                continue  # the verifier counts it as undecodable and fails the run
        for t in out.tears:
            t.delivered = t.reading in got

    return _scenario(interpreter, save, body, sc, seed=_seed(sc, seed))


def faults(interpreter: str, *, seconds: float | None = None, save: str | None = None,
           seed: int | None = None) -> Outcome:
    """A garbage-spewing device, corrupted parking frames and a Modbus slave that goes dead, then
    answers again, each when the twin says (serial_noise, garbage_device, dead_slave)."""
    sc = twin("faults")
    length = sc.duration if seconds is None else seconds
    (noise,) = faults_of(sc, "serial_noise")
    (garbage,) = faults_of(sc, "garbage_device")
    (dead,) = faults_of(sc, "dead_slave")
    # (time, what) steps of the timeline, each fault on at its `at` and off at its end
    steps = sorted([(noise.at, "noise on"), (noise.end, "noise off"), (garbage.at, "garbage on"),
                    (garbage.end, "garbage off"), (dead.at, "dead on"), (dead.end, "dead off")])

    def body(rig: Rig, out: Outcome) -> None:
        assert rig.bus is not None
        dev = next(d for d in rig.devices if d.kind == noise.bus and d.sim is not None)
        spew = next(d for d in rig.devices if d.sim is None)
        t = 0.0
        for at, what in steps:
            if at > t:
                rig.run(min(at, length) - t)
                t = min(at, length)
            if what == "noise on":
                dev.sim.set_fault("garbage", noise.rate)
            elif what == "noise off":
                dev.sim.set_fault(None, 0.0)
            elif what == "garbage on":
                spew.noise = GARBAGE_BYTES_PER_TICK
            elif what == "garbage off":
                spew.noise = 0
            elif what == "dead on":
                rig.bus.mute([dead.address])
            else:
                rig.bus.mute(())
        rig.run(max(0.0, length - t))

    return _scenario(interpreter, save, body, sc, seed=_seed(sc, seed))


COMMANDS: list[tuple[str, bytes]] = [
    ("hil-status", cbor2.dumps({"id": "hil-status", "op": "status"})),
    ("hil-set", cbor2.dumps({"id": "hil-set", "op": "set",
                             "args": {"kind": "parking", "deadband": {"mag_x": 5}}})),
    ("hil-flush", cbor2.dumps({"id": "hil-flush", "op": "flush"})),
    ("hil-unknown", cbor2.dumps({"id": "hil-unknown", "op": "self_destruct"})),
    ("malformed", b"\xff\x00\x13"),
]


def commands(interpreter: str, *, save: str | None = None, seed: int = 5) -> Outcome:
    """Operator commands on `<prefix>/<gw>/cmd` and their replies, with sensors running."""

    def body(rig: Rig, out: Outcome) -> None:
        rig.run(1.0)
        for name, payload in COMMANDS:
            out.replies[name] = rig.command(payload, None if name == "malformed" else name)
        rig.run(1.0)

    return _scenario(interpreter, save, body, seed=seed, water=(), lids=0)


def board_heap(
    interpreter: str, *, heap: str | None = None, seconds: float | None = None, save: str | None = None,
    seed: int | None = None, parking: int | None = None,
) -> Outcome:
    """Serial parking and thermometers, MQTT lids (the issue's source mix) on a board-sized MicroPython
    heap (the twin's: 136K on the 64-bit port)."""
    sc = twin("board-heap")
    length = sc.duration if seconds is None else seconds
    over: dict[str, Any] = {"seed": _seed(sc, seed)}
    if heap is not None:
        over["heap"] = heap
    if parking is not None:
        over["parking"] = parking
    return _scenario(interpreter, save, lambda rig, out: rig.run(length), sc, **over)


SCENARIOS: dict[str, Callable[..., Outcome]] = {
    "steady": steady,
    "board-heap": board_heap,
    "broker-restart": broker_restart,
    "power-cut": power_cut,
    "torn-power-cut": torn_power_cut,
    "faults": faults,
    "commands": commands,
}


def main(argv: Sequence[str] | None = None) -> int:
    lines = [f"  {name:15s} {fn.__doc__}" for name, fn in SCENARIOS.items()]
    ap = argparse.ArgumentParser(
        prog="python -m hil.rig",
        description="Run the gateway agent between simulated sensors and a private broker, then verify.",
        epilog="scenarios:\n" + "\n".join(lines),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("scenario", choices=sorted(SCENARIOS))
    ap.add_argument("--interpreter", choices=ALL_INTERPRETERS, default="cpython")
    ap.add_argument("--save", help="write the run (emissions, payloads, outages) as JSON for hil.verify")
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args(argv)
    kw: dict[str, Any] = {"save": args.save}
    if args.seed is not None:
        kw["seed"] = args.seed
    out = SCENARIOS[args.scenario](args.interpreter, **kw)
    print(out.report.summary())
    if out.status is not None:
        print("status errors:", out.status.get("errors"))
    for name, reply in out.replies.items():
        print(f"reply {name}: {reply}")
    for t in out.tears:
        w = t.write
        log = t.log
        print(f"torn {w.mode} {w.segment} [{w.start}, {w.end}) cut_at {w.cut_at} garbled {list(w.garbled)} "
              f"written {w.age_s * 1000:.0f} ms before the kill; next boot: torn_records "
              f"{log.get('torn_records')} torn_bytes {log.get('torn_bytes')}, prefix kept {t.prefix_kept}; "
              f"reading {t.reading[:2]} emitted {t.emitted_age_s} s before the kill, delivered {t.delivered}")
    print("agent exit code:", out.exit_code, "leftover processes:", out.leftovers)
    return 0 if out.report.ok and not out.leftovers else 1


if __name__ == "__main__":
    sys.exit(main())
