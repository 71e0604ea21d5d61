"""Validate stage: raw readings and statuses -> line protocol, each bad one -> a reject with a reason.
Sans-I/O.

Every value that reaches InfluxDB passes here, on every channel (`/up`, `/alarm`, `/status`):

- ids: a gateway id is the protocol's alphabet (`A-Z a-z 0-9 _ : -`, 1-64) and, when the
  collector has a gateway registry, one of its gateways; sensor ids, alarm codes and tag values
  cannot break line protocol or hide what they are (no control, line-separator, format (zero-width,
  bidi override), private-use or unassigned characters, no trailing backslash, bounded length);
- readings: kind code known, field index inside the kind's fields, and each value of the type the
  kind registry gives (devices/registry.py) and inside its range: a value of another type is
  `field_type` (an int where a float is due is widened, nothing else is converted), a value out of
  range `out_of_range`, a NaN or infinity `not_finite`; the whole reading is refused, never stored
  with some fields left out; timestamps between `decode.min_time` and now + `decode.max_future`;
- statuses: only the documented keys become fields, each with its documented type; unknown keys
  are ignored and counted (never a field: `gw` in a status must not shadow the `gw` tag);
- cardinality: per gateway, at most `decode.max_sensors_per_gateway` sensor ids,
  `max_alarm_codes_per_gateway` alarm codes and `max_error_codes_per_gateway` error names.

A reject names the reading so the dead letter says which one; the rest of the batch is kept.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, NamedTuple

from collector import decode, hotpath, lineproto
from collector.config import GATEWAY_ID, DecodeConfig, GatewayInfo, min_time_ms
from collector.decode import Batch, RawBatch
from collector.model import FieldValue, Point

if TYPE_CHECKING:
    from collector.hotpath import FastSpec

log = logging.getLogger(__name__)

HOTPATH_SOURCE = Path(__file__).with_name("hotpath.py")
# Written by scripts/setup after a mypyc build: the sha256 of the hotpath.py it compiled.
HOTPATH_BUILD_STAMP = Path(__file__).with_name("hotpath.build")


def load_pure_hotpath() -> ModuleType:
    """collector/hotpath.py run from its source, whether or not a compiled build shadows it."""
    spec = importlib.util.spec_from_file_location("collector.hotpath_pure", HOTPATH_SOURCE)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {HOTPATH_SOURCE}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _choose_hotpath() -> tuple[ModuleType, bool]:
    """(module, compiled): the mypyc build of collector.hotpath when it is there and current."""
    built = hotpath.__file__ or ""
    if built.endswith(".py"):
        return hotpath, False  # no build: the pure-Python collector, as from a plain checkout
    if os.environ.get("CITYBRAIN_PURE_PYTHON"):
        return load_pure_hotpath(), False
    digest = hashlib.sha256(HOTPATH_SOURCE.read_bytes()).hexdigest()
    try:
        stamp = HOTPATH_BUILD_STAMP.read_text().strip()
    except OSError:
        stamp = ""
    if stamp != digest:
        # Built from another hotpath.py (edited or checked out since): the source is the truth.
        log.warning(
            "%s was not built from the current %s: running the source (rebuild: scripts/setup)",
            built,
            HOTPATH_SOURCE,
        )
        return load_pure_hotpath(), False
    return hotpath, True


_hotpath, HOTPATH_COMPILED = _choose_hotpath()
readings_lines: Callable[..., None] = _hotpath.readings_lines

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
_FLOAT_MAX = 1.7976931348623157e308  # finite: `-max <= x <= max` is false for NaN and infinities
ALARM_MEASUREMENT = "alarm"
STATUS_MEASUREMENT = "gateway_status"
ERRORS_MEASUREMENT = "sensor_errors"
# Characters that end or corrupt a line-protocol line, or that no id should contain: C0/C1 controls,
# DEL, and the Unicode line/paragraph separators some parsers treat as newlines.
_BAD_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ufeff]")
# Unicode categories refused in any text (beyond ASCII): controls, format characters (zero-width
# space and joiners, bidi overrides: an id that looks like another), surrogates, private use,
# unassigned, line and paragraph separators.
_HIDDEN = frozenset(("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"))
# An alarm code or an error name: a tag value from a fixed vocabulary (codecs' alarm(),
# devices.common.errors.NAMES): never a topic level, so `.` stays allowed.
CODE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")

# The status keys (docs/protocol.md "Status", edge.protocol.encode_status) that become fields, with
# their types: uint is an int >= 0. `ts` is the point's time and `errors` becomes `sensor_errors`.
_UINT = "uint"
STATUS_FIELDS: dict[str, type | str] = {
    "v": _UINT,
    "state": str,
    "fw": str,
    "img": str,  # the board image hash (provisioning manifest), absent on Linux gateways
    "boot": _UINT,
    "uptime_s": _UINT,
    "heap_free": _UINT,
    "spool_bytes": _UINT,
    "spool_records": _UINT,
    "spool_dropped": _UINT,
    "clock_synced": bool,
    "unreceipted": _UINT,  # readings sent and awaiting the collector's receipt (receipts on)
    "unreceipted_age_s": _UINT,  # age of the oldest batch awaiting a receipt
}

_SERIES_CACHE_MAX = 200_000  # series heads kept by batch_lines; a city district has ~10^4-10^5


class Reject(NamedTuple):
    reason: str  # stable metric label
    detail: str


class FieldSpec(NamedTuple):
    """A kind's field: its value type (bool, int or float) and inclusive range (None: no bound)."""

    name: str
    type: type
    lo: float | None = None
    hi: float | None = None


@dataclass(frozen=True)
class Kind:
    code: int
    name: str  # the measurement
    fields: tuple[FieldSpec, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)


def load_kinds() -> dict[int, Kind]:
    """The kind registry (devices/registry.py) with Python types: bool, int, float."""
    from devices import registry

    types = {registry.BOOL: bool, registry.INT: int, registry.FLOAT: float}
    return {
        code: Kind(code, k.name, tuple(FieldSpec(f.name, types[f.type], f.lo, f.hi) for f in k.fields))
        for code, k in registry.by_code().items()
    }


def _hidden(text: str) -> str | None:
    if text.isascii():
        return None
    for c in text:
        if unicodedata.category(c) in _HIDDEN:
            return f"invisible or format character U+{ord(c):04X}"
    return None


def check_text(text: object, max_len: int, *, is_id: bool = True) -> str | None:
    """Why `text` is not a safe id / tag value (or, with `is_id=False`, string field), or None.

    Ids refuse backslashes outright: servers disagree on how a backslash before an escaped character
    or at the end of a tag reads back (see collector/lineproto.py), and no real id needs one."""
    if not isinstance(text, str):
        return f"not text: {type(text).__name__}"
    if len(text) > max_len:
        return f"{len(text)} characters > {max_len}"
    if _BAD_CHARS.search(text):
        return "control or line-separator character"
    hidden = _hidden(text)
    if hidden is not None:
        return hidden
    if is_id:
        if not text:
            return "empty"
        if "\\" in text:
            return "backslash"
        if text != text.strip():
            return "leading or trailing whitespace"
    return None


def _type_name(value: object) -> str:
    return {bool: "bool", int: "int", float: "float", str: "text"}.get(type(value), type(value).__name__)


def _fast_specs(kind: Kind) -> tuple[FastSpec, ...]:
    out = []
    for f in kind.fields:
        if f.lo is not None and f.hi is not None:
            lo, hi = f.lo, f.hi
        elif f.type is float:
            lo, hi = -_FLOAT_MAX, _FLOAT_MAX
        else:
            lo, hi = INT64_MIN, INT64_MAX
        out.append((lineproto.field_key(f.name), f.type, lo, hi))
    return tuple(out)


class _Seen:
    """What one gateway has created: sensor ids, alarm codes, error names (each bounded)."""

    __slots__ = ("sensors", "alarm_codes", "error_codes")

    def __init__(self) -> None:
        self.sensors: set[str] = set()
        self.alarm_codes: set[str] = set()
        self.error_codes: set[str] = set()


def _admit(seen: set[str], item: str, bound: int) -> bool:
    if item in seen:
        return True
    if len(seen) >= bound:
        return False
    seen.add(item)
    return True


class Validator:
    def __init__(
        self,
        config: DecodeConfig,
        kinds: Mapping[int, Kind],
        gateways: Mapping[str, GatewayInfo] | None = None,
    ) -> None:
        self.config = config
        self.kinds = kinds
        self.gateways = gateways or {}
        # Only a registry can say a gateway is unknown; without one every well-formed id passes.
        self.registered_only = bool(self.gateways) and not config.accept_unregistered
        self.min_ms = min_time_ms(config)
        self.max_future_ms = int(config.max_future * 1000)
        self._seen: dict[str, _Seen] = {}
        # batch_lines caches: (gw, kind code, sensor) -> escaped "measurement,tags " (only for good,
        # admitted ids), kind code -> per field (escaped "name=", type, lo, hi).
        self._series: dict[tuple[str, int, str], str] = {}
        # (gw, kind code) -> its series key around the sensor tag (see `_frame`), None if it has none
        self._frames: dict[tuple[str, int], tuple[str, str] | None] = {}
        self._specs: dict[int, tuple[FastSpec, ...]] = {}
        # batch_body's compiled step (collector/_fastup.c): gw + "\xff" + the raw CBOR of a
        # reading's sensor and kind -> (series head as UTF-8, the kind's specs as a C capsule).
        self._raw_series: dict[bytes, tuple[bytes, object]] = {}
        self._cspecs: dict[int, object] = {}

    def check_gateway(self, gw: str) -> Reject | None:
        """Refuse a gateway id outside the protocol's alphabet, or not in the registry (if any)."""
        if not GATEWAY_ID.fullmatch(gw):
            return Reject(
                "bad_gateway_id",
                f"gateway id {gw!r}: not 1-64 of A-Z a-z 0-9 _ : - (docs/protocol.md)"[:300],
            )
        if self.registered_only and gw not in self.gateways:
            return Reject("unknown_gateway", f"gateway {gw!r} is not in the gateway registry")
        return None

    def _tags(self, gw: str, **extra: str) -> tuple[tuple[str, str], ...]:
        info = self.gateways.get(gw)
        tags = {"gw": gw, **extra}
        if info is not None:
            tags["site"], tags["district"] = info.site, info.district
        return tuple(sorted((k, v) for k, v in tags.items() if v))

    def _time(self, ts: int, now_ms: int) -> Reject | None:
        if ts < self.min_ms:
            return Reject("time_too_old", f"timestamp {ts} ms is before {self.config.min_time}")
        if ts > now_ms + self.max_future_ms:
            return Reject("time_in_future", f"timestamp {ts} ms is {(ts - now_ms) // 1000} s ahead")
        return None

    def _seen_by(self, gw: str) -> _Seen:
        seen = self._seen.get(gw)
        if seen is None:
            seen = self._seen[gw] = _Seen()
        return seen

    def _admit_sensor(self, gw: str, sensor: str) -> Reject | None:
        bound = self.config.max_sensors_per_gateway
        if _admit(self._seen_by(gw).sensors, sensor, bound):
            return None
        return Reject(
            "too_many_sensors", f"sensor {sensor!r}: gateway {gw} already has {bound} sensor ids"[:300]
        )

    def _field(self, spec: FieldSpec, value: object) -> FieldValue | Reject:
        """`value` as the field's type (an int widened to a float where a float is due), or why not."""
        t = type(value)
        want = spec.type
        if t is not want:
            if want is float and t is int and INT64_MIN <= value <= INT64_MAX:  # type: ignore[operator]
                value = float(value)  # type: ignore[arg-type]  # widened (docs/protocol.md)
                t = float
            else:
                return Reject("field_type", f"{_type_name(value)} where {want.__name__} is due"[:200])
        if t is float:
            if value - value != 0.0:  # type: ignore[operator]  # NaN or infinity
                return Reject("not_finite", f"float {value}")
        elif t is int and not INT64_MIN <= value <= INT64_MAX:  # type: ignore[operator]
            return Reject("out_of_range", f"integer {value} outside int64")
        if spec.lo is not None and spec.hi is not None and not spec.lo <= value <= spec.hi:  # type: ignore[operator]
            return Reject("out_of_range", f"{value!r} outside {spec.lo!r}..{spec.hi!r}")
        return value  # type: ignore[return-value]

    def reading(
        self, gw: str, t0: int, item: object, now_ms: int, alarm: str | None = None
    ) -> Point | Reject:
        """One `[sensor, kind, dt, fields]` -> a point (measurement = kind name, or `alarm`)."""
        if not isinstance(item, list) or len(item) != 4:
            return Reject("bad_reading", "a reading is [sensor, kind, dt, fields]")
        sensor, code, dt, fields = item
        why = check_text(sensor, self.config.max_id_len)
        if why is not None:
            return Reject("bad_sensor_id", f"sensor id {sensor!r}: {why}"[:300])
        if type(code) is not int:
            return Reject("bad_reading", f"kind must be a uint, got {code!r}"[:200])
        kind = self.kinds.get(code)
        if kind is None:
            return Reject("unknown_kind", f"kind code {code} (known: {sorted(self.kinds)})")
        too_many = self._admit_sensor(gw, sensor)
        if too_many is not None:
            return too_many
        if type(dt) is not int or not INT64_MIN <= dt <= INT64_MAX:
            return Reject("bad_reading", f"dt must be an int, got {dt!r}"[:200])
        ts = t0 + dt
        bad_time = self._time(ts, now_ms)
        if bad_time is not None:
            return bad_time
        if not isinstance(fields, dict):
            return Reject("bad_reading", f"fields must be a map, got {type(fields).__name__}")
        values: list[tuple[int, str, FieldValue]] = []
        for index, raw in fields.items():
            if type(index) is not int or not 0 <= index < len(kind.fields):
                return Reject("bad_field", f"{kind.name} has no field index {index!r}"[:200])
            spec = kind.fields[index]
            value = self._field(spec, raw)
            if isinstance(value, Reject):
                return Reject(value.reason, f"{kind.name}.{spec.name}: {value.detail}")
            values.append((index, spec.name, value))
        if not values:
            return Reject("no_fields", "a reading needs at least one field")
        values.sort()
        if alarm is None:
            tags = self._tags(gw, sensor=sensor)
            measurement = kind.name
        else:
            if not CODE.fullmatch(alarm):
                return Reject("bad_alarm", f"alarm code {alarm!r}: not 1-64 of A-Z a-z 0-9 _ . : -"[:300])
            bound = self.config.max_alarm_codes_per_gateway
            if not _admit(self._seen_by(gw).alarm_codes, alarm, bound):
                return Reject(
                    "too_many_alarm_codes", f"alarm code {alarm!r}: gateway {gw} already has {bound}"
                )
            tags = self._tags(gw, sensor=sensor, kind=kind.name, code=alarm)
            measurement = ALARM_MEASUREMENT
        return Point(measurement, tags, tuple((name, v) for _, name, v in values), ts)

    def batch_lines(self, gw: str, batch: Batch, now_ms: int) -> tuple[list[str], list[tuple[int, Reject]]]:
        """`batch`, but straight to line protocol: the hot path (one call per `/up` message).

        The same judgement and the same bytes as `lineproto.encode(self.batch(...)[0])`
        (tests/unit/test_collector_lines.py checks both ways), without a Point per reading: the
        escaped series key of a (gateway, kind, sensor) and each kind's escaped field keys are
        computed once, and a reading that is unusual in any way (wrong shape, a value of another
        type or out of range, ...) takes the general path so its verdict and reason are the
        general ones."""
        if batch.alarm is not None:
            return self._lines_slow(gw, batch, now_ms)
        lines: list[str] = []
        rejects: list[tuple[int, Reject]] = []
        t0 = batch.t0
        # dt bounds for a good timestamp (and an int64 dt, as `reading` requires)
        lo = max(self.min_ms - t0, INT64_MIN)
        hi = min(now_ms + self.max_future_ms - t0, INT64_MAX)

        def slow(index: int, item: object) -> None:
            self._line_slow(gw, t0, item, now_ms, None, index, lines, rejects)

        readings_lines(
            gw, batch.readings, t0, lo, hi, self._series, self._specs, self._series_head, slow, lines
        )
        return lines, rejects

    def batch_body(
        self, gw: str, batch: Batch | RawBatch, now_ms: int
    ) -> tuple[bytes, int, list[tuple[int, Reject, object]]]:
        """A batch (or alarm) as one line-protocol body: (body, lines in it, [(index, reject,
        reading)]), the reading being the refused item as decoded (for its dead letter).

        A `RawBatch` (decode.decode_up, when collector/_fastup.c is built) goes from its CBOR
        bytes to the body in one C pass: the readings `batch_lines` would take fast, decoded,
        judged and formatted there without a Python object per reading, and every other one
        decoded on its own and judged by the general path (`_line_slow`), in order. The body is
        byte for byte what `batch_lines` gives for the same payload decoded by `decode_batch`
        (tests/unit/test_collector_fastup.py)."""
        rejects: list[tuple[int, Reject, object]] = []
        if not isinstance(batch, RawBatch):
            lines, bad = self.batch_lines(gw, batch, now_ms)
            rejects = [(i, r, batch.readings[i]) for i, r in bad]
            return "\n".join(lines).encode(), len(lines), rejects
        fastup = decode.FASTUP
        if fastup is None:  # a RawBatch made while the module was there: decode it the usual way
            plain = decode.decode_batch(batch.payload, max_bytes=len(batch.payload))
            return self.batch_body(gw, plain, now_ms)
        t0 = batch.t0
        payload = batch.payload
        lo = max(self.min_ms - t0, INT64_MIN)
        hi = min(now_ms + self.max_future_ms - t0, INT64_MAX)
        if hi < lo:  # no dt gives a good time (t0 far in the future): every reading is judged slow
            lo, hi = 0, -1

        def head(code: int, sensor: str) -> tuple[bytes, object] | None:
            text = self._series.get((gw, code, sensor))
            if text is None:
                text = self._series_head(gw, code, sensor)
                if text is None:
                    return None
            cspec = self._cspecs.get(code)
            if cspec is None:
                cspec = self._cspecs[code] = fastup.make_spec(self._specs[code])
            return text.encode(), cspec

        def slow(index: int, start: int, end: int) -> str | None:
            item = decode.decode_cbor(bytes(payload[start:end]), len(payload))
            out: list[str] = []
            plain: list[tuple[int, Reject]] = []
            self._line_slow(gw, t0, item, now_ms, None, index, out, plain)
            if plain:
                rejects.append((index, plain[0][1], item))
            return out[0] if out else None

        body, n = fastup.lines(
            payload,
            batch.readings_at,
            t0,
            lo,
            hi,
            gw.encode("utf-8", "surrogatepass") + b"\xff",
            self._raw_series,
            _SERIES_CACHE_MAX,
            head,
            slow,
        )
        return body, n, rejects

    def _series_head(self, gw: str, code: int, sensor: str) -> str | None:
        """`measurement,tags ` for a reading's series, cached; None if the general path must judge.

        The sensor is admitted here as `reading` admits it (after its id and kind are known), so
        both paths count the same sensors."""
        kind = self.kinds.get(code)
        if kind is None or check_text(sensor, self.config.max_id_len) is not None:
            return None
        if self._admit_sensor(gw, sensor) is not None:
            return None
        frame = self._frames[(gw, code)] if (gw, code) in self._frames else self._frame(gw, kind)
        if frame is None:
            return None
        try:
            if code not in self._specs:
                self._specs[code] = _fast_specs(kind)
            head = frame[0] + lineproto.tag_value(sensor) + frame[1]
            head.encode()  # a lone surrogate has no UTF-8: the general path refuses it
        except (lineproto.LineProtocolError, UnicodeEncodeError):
            return None
        if len(self._series) >= _SERIES_CACHE_MAX:
            self._series.clear()
        self._series[(gw, code, sensor)] = head
        return head

    def _frame(self, gw: str, kind: Kind) -> tuple[str, str] | None:
        """`lineproto.series_key(kind.name, self._tags(gw, sensor=s)) + " "` for any sensor s, cut
        around the sensor's value: (`measurement,<tags sorted before "sensor">,sensor=`, `<,tags
        after> `), or None when the gateway's tags cannot be written (no sensor of it then can).
        A new series then costs one escaped tag value, not a whole series key: 6.5 -> 2.5 us per
        series; the bench's 25,000 series, each new for its first reading, made the whole key
        ~0.3 us of the collector's ~3.5 us per reading (docs/benchmarks.md)."""
        tags = self._tags(gw)
        try:
            before = lineproto.series_key(kind.name, tuple(t for t in tags if t[0] < "sensor"))
            after = "".join("," + lineproto.tag(k, v) for k, v in tags if k > "sensor")
            frame: tuple[str, str] | None = (before + ",sensor=", after + " ")  # `sensor`: nothing to escape
        except lineproto.LineProtocolError:
            frame = None
        if len(self._frames) >= _SERIES_CACHE_MAX:
            self._frames.clear()
        self._frames[(gw, kind.code)] = frame
        return frame

    def _lines_slow(self, gw: str, batch: Batch, now_ms: int) -> tuple[list[str], list[tuple[int, Reject]]]:
        lines: list[str] = []
        rejects: list[tuple[int, Reject]] = []
        for i, item in enumerate(batch.readings):
            self._line_slow(gw, batch.t0, item, now_ms, batch.alarm, i, lines, rejects)
        return lines, rejects

    def _line_slow(
        self,
        gw: str,
        t0: int,
        item: object,
        now_ms: int,
        alarm: str | None,
        index: int,
        lines: list[str],
        rejects: list[tuple[int, Reject]],
    ) -> None:
        result = self.reading(gw, t0, item, now_ms, alarm)
        if isinstance(result, Reject):
            rejects.append((index, result))
            return
        try:
            lines.append(lineproto.line(result).decode())
        except lineproto.LineProtocolError as exc:
            # What the writer would dead-letter as unserializable; refused here, by the same name.
            rejects.append((index, Reject("unserializable", str(exc))))

    def batch(self, gw: str, batch: Batch, now_ms: int) -> tuple[list[Point], list[tuple[int, Reject]]]:
        """Points for the good readings and (index, reject) for the bad ones: the general path,
        the oracle `batch_lines` is checked against."""
        points: list[Point] = []
        rejects: list[tuple[int, Reject]] = []
        for i, item in enumerate(batch.readings):
            result = self.reading(gw, batch.t0, item, now_ms, batch.alarm)
            if isinstance(result, Reject):
                rejects.append((i, result))
            else:
                points.append(result)
        return points, rejects

    def status_lines(
        self, gw: str, status: Mapping[str, object], now_ms: int
    ) -> tuple[list[str], list[Reject], int]:
        """`status` as line protocol: (lines, rejects, unknown keys ignored)."""
        points, rejects, ignored = self.status(gw, status, now_ms)
        lines: list[str] = []
        for p in points:
            try:
                lines.append(lineproto.line(p).decode())
            except lineproto.LineProtocolError as exc:
                rejects.append(Reject("unserializable", str(exc)))
        return lines, rejects, ignored

    def status(
        self, gw: str, status: Mapping[str, object], now_ms: int
    ) -> tuple[list[Point], list[Reject], int]:
        """A status map (edge/protocol.py `encode_status`) -> one `gateway_status` point, plus one
        `sensor_errors` point per (sensor, error code) from its `errors` map; and the number of
        keys ignored because the protocol does not define them.

        Time is the map's `ts` (UTC ms) when the gateway clock is synced, else the arrival time. `None`
        values mean "not known" and are left out; a documented key with a value of another type is
        rejected (and left out); rejects of one kind are grouped, one per reason."""
        rejects: list[Reject] = []
        ts = now_ms
        raw_ts = status.get("ts")
        if raw_ts is not None:
            if type(raw_ts) is int and self._time(raw_ts, now_ms) is None:
                ts = raw_ts
            else:
                rejects.append(
                    Reject("bad_status", f"ts {raw_ts!r} is not a valid UTC ms time; arrival time used"[:200])
                )
        points: list[Point] = []
        fields: list[tuple[str, FieldValue]] = []
        ignored = 0
        for key, raw in sorted(status.items()):
            if key == "ts":
                continue
            if key == "errors":
                if raw is None:
                    continue
                if not isinstance(raw, dict):
                    rejects.append(Reject("bad_status", f"errors is {_type_name(raw)}, not a map"))
                    continue
                total = self._sensor_errors(gw, raw, ts, points, rejects)
                fields.append(("errors_total", total))
                continue
            want = STATUS_FIELDS.get(key)
            if want is None:
                ignored += 1  # a newer gateway's key, or a spoof (`gw`, `site`): never a field
                continue
            if raw is None:
                continue
            why = self._status_value(want, raw)
            if why is not None:
                rejects.append(Reject("bad_status", f"status {key}: {why}"[:200]))
                continue
            fields.append((key, raw))  # type: ignore[arg-type]
        if fields:
            points.insert(0, Point(STATUS_MEASUREMENT, self._tags(gw), tuple(fields), ts))
        else:
            rejects.append(Reject("bad_status", "status has no usable entries"))
        return points, _grouped(rejects), ignored

    def _status_value(self, want: type | str, raw: object) -> str | None:
        t = type(raw)
        if want == _UINT:
            if t is not int or not 0 <= raw <= INT64_MAX:  # type: ignore[operator]
                return f"{_type_name(raw)} {raw!r} where a uint is due"
        elif t is not want:
            return f"{_type_name(raw)} where {want.__name__ if isinstance(want, type) else want} is due"
        elif t is str:
            return check_text(raw, self.config.max_string_len, is_id=False)
        return None

    def _sensor_errors(
        self, gw: str, errors: dict[object, object], ts: int, out: list[Point], rejects: list[Reject]
    ) -> int:
        """`{sensor: {code_name: count}}` -> `sensor_errors` points; returns the total count."""
        total = 0
        seen = self._seen_by(gw)
        for sensor, codes in errors.items():
            why = check_text(sensor, self.config.max_id_len)
            if why is not None or not isinstance(codes, dict):
                rejects.append(Reject("bad_status", f"errors entry {sensor!r}: {why or 'not a map'}"[:200]))
                continue
            too_many = self._admit_sensor(gw, sensor)  # type: ignore[arg-type]
            if too_many is not None:
                rejects.append(too_many)
                continue
            for code, count in codes.items():
                if not isinstance(code, str) or not CODE.fullmatch(code):
                    rejects.append(Reject("bad_status", f"errors {sensor!r}: error name {code!r}"[:200]))
                    continue
                if type(count) is not int or not 0 <= count <= INT64_MAX:
                    rejects.append(Reject("bad_status", f"errors {sensor!r}.{code} = {count!r}"[:200]))
                    continue
                bound = self.config.max_error_codes_per_gateway
                if not _admit(seen.error_codes, code, bound):
                    rejects.append(
                        Reject(
                            "too_many_error_codes", f"error name {code!r}: gateway {gw} already has {bound}"
                        )
                    )
                    continue
                total += count
                out.append(
                    Point(
                        ERRORS_MEASUREMENT,
                        self._tags(gw, sensor=sensor, code=code),  # type: ignore[arg-type]
                        (("count", count),),
                        ts,
                    )
                )
        return total


def _grouped(rejects: list[Reject]) -> list[Reject]:
    """One reject per reason (the first one's detail, plus how many more): a hostile status with a
    thousand bad entries is one dead letter per reason, not a thousand copies of its payload."""
    first: dict[str, Reject] = {}
    more: dict[str, int] = {}
    for r in rejects:
        if r.reason in first:
            more[r.reason] += 1
        else:
            first[r.reason] = r
            more[r.reason] = 0
    return [
        r if not more[reason] else Reject(reason, f"{r.detail} (and {more[reason]} more)")
        for reason, r in first.items()
    ]
