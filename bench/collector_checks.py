"""What the collector's input checks cost, per reading, in CPU time (no services).

Why: issue 8 put every check on the hot path (duplicate CBOR map keys refused in the decoder, each
field's type and range against the kind registry, sensor bounds per gateway), and the collector's
own CPU is what limits its throughput on a shared 2-core box. This measures the stages alone on
the throughput bench's workload (bench/collector_throughput.py: 50-reading batches of all four
kinds from the device simulators, 50 gateway ids):

- `cbor2`: cbor2's decoder alone, duplicate keys allowed (what cbor2 does by default) and refused
  (what collector/decode.py asks for), interleaved;
- `decode`: collector.decode.decode_batch (strict CBOR, duplicates refused, header checks);
- `batch_lines`: the hot path, validate + line protocol, joined and encoded as the pipeline does;
- `general`: the general path it must equal (Validator.batch -> Points -> lineproto.encode);
- `/up route`: what the collector runs per `/up` payload: decode.decode_up + Validator.batch_body,
  the compiled step of collector/_fastup.c (bytes straight to line protocol) when it is built,
  else the pure path (decode_batch + batch_lines);
- `format floor`: `repr()` of every float value and `str()` of every int value of the workload
  alone, the C formatting `batch_lines` cannot do without (floats must round-trip exactly), so
  what compiling the hot path could at best remove is `batch_lines` minus this.

CPU time (`time.process_time`), best of `--passes` passes: other processes on a shared machine
slow the wall clock, not this process's CPU seconds (much).

    python bench/collector_checks.py                       # figures now
    CITYBRAIN_PURE_PYTHON=1 python bench/collector_checks.py   # the same without the mypyc build
    python bench/collector_checks.py --save /tmp/checks.json
    python bench/collector_checks.py --baseline /tmp/checks.json   # batch_lines +15 % fails

Goal (issue 8): the checks cost the hot path at most a few percent; no absolute goal is asserted
here (bench/collector_throughput.py holds the end-to-end one).
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import cbor2  # noqa: E402

from bench import baseline  # noqa: E402
from bench.collector_throughput import PREFIX, Workload  # noqa: E402


def _best_us(fn: Callable[[], None], readings: int, passes: int) -> float:
    best = float("inf")
    for _ in range(passes):
        started = time.process_time()
        fn()
        best = min(best, time.process_time() - started)
    return best / readings * 1e6


def measure(messages: int, passes: int) -> dict[str, Any]:
    from collector import decode, lineproto, validate
    from collector.config import DecodeConfig
    from collector.validate import Validator, load_kinds

    wl = Workload(messages * 50, 50, int(time.time() * 1000) - 3_600_000)
    msgs = [(decode.parse_topic(PREFIX, t)[0], p) for t, p in wl.messages()]
    batches = [(gw, decode.decode_batch(p, max_bytes=1 << 20)) for gw, p in msgs]
    n = sum(len(b.readings) for _, b in batches)
    now_ms = int(time.time() * 1000)

    def cbor(dup: bool) -> Callable[[], None]:
        def run() -> None:
            for _, p in msgs:
                cbor2.CBORDecoder(io.BytesIO(p), allow_duplicate_keys=dup).decode()

        return run

    def decode_all() -> None:
        for _, p in msgs:
            decode.decode_batch(p, max_bytes=1 << 20)

    fast = Validator(DecodeConfig(), load_kinds(), {})
    slow = Validator(DecodeConfig(), load_kinds(), {})
    for gw, b in batches:  # warm the caches (series keys, admitted sensors); check the workload
        if fast.batch_lines(gw, b, now_ms)[1] or slow.batch(gw, b, now_ms)[1]:
            raise SystemExit("bench: the workload has refused readings")

    def hot() -> None:
        for gw, b in batches:
            "\n".join(fast.batch_lines(gw, b, now_ms)[0]).encode()

    route_v = Validator(DecodeConfig(), load_kinds(), {})

    def route() -> None:
        for gw, p in msgs:
            route_v.batch_body(gw, decode.decode_up(p, max_bytes=1 << 20), now_ms)

    route()  # warm its caches too

    def general() -> None:
        for gw, b in batches:
            lineproto.encode(slow.batch(gw, b, now_ms)[0])

    # the workload's readings are all [sensor, kind, dt, {index: value}] (checked above)
    values = [x for _, b in batches for r in b.readings for x in r[3].values()]  # type: ignore[index]
    floats = [x for x in values if type(x) is float]
    ints = [x for x in values if type(x) is int]

    def format_floor() -> None:
        for x in floats:
            repr(x)
        for i in ints:
            str(i)

    allowed = refused = float("inf")
    for _ in range(passes):  # interleaved, so both see the same machine
        allowed = min(allowed, _best_us(cbor(True), n, 1))
        refused = min(refused, _best_us(cbor(False), n, 1))
    return {
        "readings": n,
        "cbor_dup_allowed_us": allowed,
        "cbor_dup_refused_us": refused,
        "decode_us": _best_us(decode_all, n, passes),
        "batch_lines_us": _best_us(hot, n, passes),
        "general_us": _best_us(general, n, passes),
        "route_us": _best_us(route, n, passes),
        "up_path": decode.up_path(),
        "format_floor_us": _best_us(format_floor, n, passes),
        "hotpath_compiled": validate.HOTPATH_COMPILED,
        "floats_per_reading": len(floats) / n,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=2000, help="50-reading batches (default 2000)")
    parser.add_argument("--passes", type=int, default=15, help="passes per stage; the best counts")
    parser.add_argument(
        "--tolerance", type=float, default=0.15, help="allowed batch_lines growth vs --baseline"
    )
    baseline.add_arguments(parser)
    args = parser.parse_args(argv)
    saved = baseline.read(args.baseline, "batch_lines_us") if args.baseline else None
    if args.baseline and saved is None:
        return 2
    fig = measure(args.messages, args.passes)
    dup_cost = fig["cbor_dup_refused_us"] - fig["cbor_dup_allowed_us"]
    print(f"readings         {fig['readings']}  (CPU time per reading, best of {args.passes})")
    built = (
        "compiled by mypyc"
        if fig["hotpath_compiled"]
        else "pure Python (CITYBRAIN_PURE_PYTHON=1 or no build)"
    )
    print(f"hot path         collector/hotpath.py {built}")
    print(
        f"cbor2 decode     {fig['cbor_dup_allowed_us']:.3f} us duplicate keys allowed, "
        f"{fig['cbor_dup_refused_us']:.3f} us refused ({dup_cost:+.3f} us)"
    )
    print(f"decode stage     {fig['decode_us']:.3f} us  (strict CBOR, duplicates refused, header)")
    print(
        f"batch_lines      {fig['batch_lines_us']:.3f} us  (hot path: types, ranges, bounds, line protocol)"
    )
    print(f"general path     {fig['general_us']:.3f} us  (the oracle: Points, then lineproto.encode)")
    print(
        f"/up route        {fig['route_us']:.3f} us  (decode_up + batch_body, payload bytes to line "
        f"protocol: {fig['up_path']})"
    )
    print(
        f"format floor     {fig['format_floor_us']:.3f} us  (repr of {fig['floats_per_reading']:.1f} floats "
        "and str of the ints per reading: C work batch_lines keeps even compiled)"
    )
    if args.save:
        baseline.save(args.save, fig)
    if saved is not None:
        limit = float(saved["batch_lines_us"]) * (1 + args.tolerance)
        if fig["batch_lines_us"] > limit:
            now = fig["batch_lines_us"]
            print(f"FAIL: batch_lines {now:.3f} us > {limit:.3f} us (baseline +{args.tolerance:.0%})")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
