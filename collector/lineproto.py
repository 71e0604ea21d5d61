"""Point -> InfluxDB line protocol, the collector's hot path (one call per reading).

The escaped series key (measurement + tags) and the escaped field keys are cached, so a steady
stream of readings from a known fleet costs a dict lookup plus the field values. Timestamps are
milliseconds: write with `precision=ms`.

What we emit is the intersection that InfluxDB 1.x, 2.x and VictoriaMetrics read back the same:

- measurement: `,` and space escaped; tag keys, tag values, field keys: `,` `=` and space escaped;
  string field values: `"` and `\\` escaped.
- Never emitted (raise `LineProtocolError`): control characters (newline, CR, tab...) anywhere, a
  name that is empty, a measurement starting with `#` (a comment line), a backslash at the end of a
  name or before a character we escape (servers disagree on `\\\\` and a trailing `\\` eats the
  separator), non-finite floats, ints outside int64. A broken line would make the server reject
  the whole batch, so refusing one point here is always cheaper.

Differences from influxdb-client's serializer (checked by tests/collector/test_lineproto.py):
fields keep the producer's order (the client sorts them; order has no meaning to the server), and
we raise where the client silently skips (non-finite floats) or writes a lossy escape (`\\n`,
trailing `\\` + space). Floats are formatted as the client does: `repr`, minus a trailing `.0`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from collector.model import FieldValue, Point

_INT_MIN = -(2**63)
_INT_MAX = 2**63 - 1
_CACHE_MAX = 100_000  # series keys; a city fleet is ~10^4-10^5 series, beyond that we just recompute

_ESC_MEASUREMENT = str.maketrans({",": "\\,", " ": "\\ "})
_ESC_KEY = str.maketrans({",": "\\,", "=": "\\=", " ": "\\ "})
_ESC_STRING = str.maketrans({'"': '\\"', "\\": "\\\\"})

# Unrepresentable: a control character, a trailing backslash, a backslash before an escaped char.
_BAD_MEASUREMENT = re.compile(r"[\x00-\x1f\x7f]|\\$|\\(?=[, \\])")
_BAD_KEY = re.compile(r"[\x00-\x1f\x7f]|\\$|\\(?=[, =\\])")
_BAD_STRING = re.compile(r"[\x00-\x1f\x7f]")


class LineProtocolError(ValueError):
    """This point cannot be written as one line that every server reads back unchanged."""


def _measurement(name: str) -> str:
    if not isinstance(name, str) or not name or name[0] == "#" or _BAD_MEASUREMENT.search(name):
        raise LineProtocolError(f"measurement {name!r} is not representable in line protocol")
    return name.translate(_ESC_MEASUREMENT)


def _key(name: str, what: str) -> str:
    if not isinstance(name, str) or not name or _BAD_KEY.search(name):
        raise LineProtocolError(f"{what} {name!r} is not representable in line protocol")
    return name.translate(_ESC_KEY)


_series_cache: dict[tuple[str, tuple[tuple[str, str], ...]], str] = {}
_field_cache: dict[str, str] = {}


def series_key(measurement: str, tags: tuple[tuple[str, str], ...]) -> str:
    """`measurement,tag=value,...` escaped; cached because a fleet repeats the same few series."""
    k = (measurement, tags)
    s = _series_cache.get(k)
    if s is None:
        parts = [_measurement(measurement)]
        for tk, tv in tags:
            parts.append(tag(tk, tv))
        s = ",".join(parts)
        if len(_series_cache) >= _CACHE_MAX:
            _series_cache.clear()
        _series_cache[k] = s
    return s


def tag(key: str, value: str) -> str:
    """`key=value` escaped: one tag of a series key, as `series_key` writes each (not cached)."""
    return _key(key, "tag key") + "=" + tag_value(value)


def tag_value(value: str) -> str:
    """A tag value escaped, as `tag` writes it after its key's `=`."""
    return _key(value, "tag value")


def field_key(name: str) -> str:
    """`name=` escaped (a field key and its equals sign), cached like series keys."""
    s = _field_cache.get(name)
    if s is None:
        s = _key(name, "field key") + "="
        if len(_field_cache) >= _CACHE_MAX:
            _field_cache.clear()
        _field_cache[name] = s
    return s


def _float(v: float) -> str:
    if v - v != 0.0:  # inf - inf and nan - nan are nan: a cheaper isfinite
        raise LineProtocolError(f"float field value {v!r} is not finite")
    s = repr(v)
    return s[:-2] if s.endswith(".0") else s


def _int(v: int) -> str:
    if _INT_MIN <= v <= _INT_MAX:
        return str(v) + "i"
    raise LineProtocolError(f"int field value {v} is outside int64")


def _bool(v: bool) -> str:
    return "true" if v else "false"


def _str(v: str) -> str:
    if _BAD_STRING.search(v):
        raise LineProtocolError(f"string field value {v!r} holds a control character")
    return '"' + v.translate(_ESC_STRING) + '"'


# Dispatch on the exact type: one dict lookup instead of an isinstance chain, and bool never
# mistaken for int. Subclasses (numpy scalars, IntEnum) fall to `_value`'s slow path.
_FORMAT: dict[type, Callable[[Any], str]] = {float: _float, int: _int, bool: _bool, str: _str}


def _value(v: FieldValue) -> str:
    fmt = _FORMAT.get(type(v))
    if fmt is not None:
        return fmt(v)
    for t in (bool, int, float, str):  # bool first: it is an int
        if isinstance(v, t):
            return _FORMAT[t](t(v))
    raise LineProtocolError(f"field value {v!r} has unsupported type {type(v).__name__}")


def _body(p: Point) -> str:
    fields = p.fields
    if not fields:
        raise LineProtocolError(f"point {p.measurement!r} has no fields")
    ts = p.ts_ms
    if type(ts) is not int:
        raise LineProtocolError(f"timestamp {ts!r} is not an int")
    fcache = _field_cache
    fmt = _FORMAT
    try:
        body = ",".join([fcache[k] + fmt[type(v)](v) for k, v in fields])
    except KeyError:  # a new field key or an unusual value type: the slow path, same result
        body = ",".join([field_key(k) + _value(v) for k, v in fields])
    key = _series_cache.get((p.measurement, p.tags))
    if key is None:
        key = series_key(p.measurement, p.tags)
    return f"{key} {body} {ts}"


def _not_unicode(p: Point, exc: UnicodeEncodeError) -> LineProtocolError:
    return LineProtocolError(f"point {p.measurement!r} holds text that is not valid Unicode: {exc}")


def line(p: Point) -> bytes:
    """One point as one line (no trailing newline), UTF-8; raises `LineProtocolError`."""
    try:
        return _body(p).encode()
    except UnicodeEncodeError as exc:  # a lone surrogate: no UTF-8 for it
        raise _not_unicode(p, exc) from None


def encode(points: Iterable[Point]) -> tuple[bytes, int, list[tuple[Point, LineProtocolError]]]:
    """(body, lines in it, [(point, error)]) for a batch: a bad point never spoils its neighbours.

    The body is newline-separated lines without a trailing newline; since no line holds a raw
    newline, `body.split(b"\\n")` recovers the lines when a sink must bisect a rejected batch.
    """
    out: list[str] = []
    good: list[Point] = []
    bad: list[tuple[Point, LineProtocolError]] = []
    for p in points:
        try:
            out.append(_body(p))
        except LineProtocolError as exc:
            bad.append((p, exc))
        else:
            good.append(p)
    try:
        return "\n".join(out).encode(), len(out), bad
    except UnicodeEncodeError:
        pass
    # Rare: some text holds a lone surrogate. Encode line by line to find and refuse just those.
    lines: list[bytes] = []
    for p, text in zip(good, out, strict=True):
        try:
            lines.append(text.encode())
        except UnicodeEncodeError as exc:
            bad.append((p, _not_unicode(p, exc)))
    return b"\n".join(lines), len(lines), bad
