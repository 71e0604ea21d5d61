"""Readings of the usual shape as line protocol: the inner loops of the collector's hot path.

This module is the one part of the collector that may run compiled: `scripts/setup` builds it with
mypyc (`mypyc collector/hotpath.py`, from the dev dependencies) when a C compiler is there, and
`collector.validate` imports whichever is present (the compiled module shadows this file; it falls
back to this file when the build is missing, older than this file, or `CITYBRAIN_PURE_PYTHON=1`).
This source is the oracle: tests/unit/test_collector_hotpath.py checks that the compiled module
returns exactly what this file returns on hypothesis-generated fields. Keep it self-contained
(no imports from the collector) and plain: mypyc compiles what mypy can type.

Measured (docs/benchmarks.md): ~2.7 us per reading interpreted, ~2.1 compiled; ~1.1 us of either is
CPython's own `repr` of the floats, which floats need to round-trip exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# Per field, by index: (escaped "name=", type, lo, hi), the bounds always set: a float field without
# a range gets the finite floats (so NaN and infinities fail), an int field int64. The bounds are
# `Any`, not `float`: mypyc holds a `float` as a C double, where the int64 bound 2**63 - 1 becomes
# 2**63 and lets 2**63 through (tests/unit/test_collector_hotpath.py, every bound).
FastSpec = tuple[str, type, Any, Any]


def fields_text(specs: tuple[FastSpec, ...], fields: dict[object, object]) -> str | None:
    """`k=v,...` for a map whose values all have their field's type and range, in ascending index
    order (as gateways encode it), else None: the general path then judges (and sorts) it.

    Another type (an int to widen included) or a value out of range (NaN included) returns None.
    Dispatching on the value's own type first, as before the type checks, measured fastest."""
    parts: list[str] = []
    last = -1
    n = len(specs)
    for index, value in fields.items():
        if type(index) is not int:
            return None
        i: int = index  # an exact int (checked above): a native int once compiled
        if not last < i < n:
            return None
        last = i
        key, want, lo, hi = specs[i]
        t = type(value)
        if t is float:
            f: float = value  # type: ignore[assignment]
            if want is not float or not lo <= f <= hi:
                return None
            text = repr(f)
            if text[-2:] == ".0":
                text = text[:-2]
            parts.append(key + text)
        elif t is int:
            v: int = value  # type: ignore[assignment]
            if want is not int or not lo <= v <= hi:
                return None
            parts.append(f"{key}{v}i")
        elif t is bool and want is bool:
            parts.append(key + ("true" if value else "false"))
        else:
            return None
    return ",".join(parts) if parts else None


def readings_lines(
    gw: str,
    readings: list[object],
    t0: int,
    lo: int,
    hi: int,
    series: dict[tuple[str, int, str], str],
    specs: dict[int, tuple[FastSpec, ...]],
    series_head: Callable[[str, int, str], str | None],
    slow: Callable[[int, object], None],
    lines: list[str],
) -> None:
    """Append to `lines` the line of each reading `[sensor, kind, dt, {index: value}]` of the usual
    shape (`dt` within lo..hi, a known series, values of their field's type and range); hand any
    other to `slow(index, item)`, in order, so the lines keep the readings' order.

    `series` caches (gw, kind code, sensor) -> `measurement,tags ` and `series_head` makes a missing
    one (None: the general path must judge the reading); `specs` holds each kind's FastSpecs (there
    for every code `series_head` accepted)."""
    i = -1
    for item in readings:
        i += 1
        if type(item) is list and len(item) == 4:
            sensor = item[0]
            code = item[1]
            dt = item[2]
            fields = item[3]
            head: str | None = None
            if type(sensor) is str and type(code) is int:
                head = series.get((gw, code, sensor))
                if head is None:
                    head = series_head(gw, code, sensor)
            if head is not None and type(dt) is int and lo <= dt <= hi and type(fields) is dict:
                text = fields_text(specs[code], fields)
                if text is not None:
                    lines.append(f"{head}{text} {t0 + dt}")
                    continue
        slow(i, item)
