"""Validate stage: raw readings -> points, each bad one -> a reject with a reason. Sans-I/O.

Every value that reaches InfluxDB passes here: kind code known, field index inside the kind's FIELDS,
types kept apart (bool / int / float / text, as the CBOR major type said), ints inside int64, floats
finite, timestamps between `decode.min_time` and now + `decode.max_future`, ids and tag values that
cannot break line protocol (no control or line-separator characters, no trailing backslash, bounded
length). A reject names the reading so the dead letter says which one; the rest of the batch is kept.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

from collector import lineproto
from collector.config import DecodeConfig, GatewayInfo, min_time_ms
from collector.decode import Batch
from collector.model import FieldValue, Point

log = logging.getLogger(__name__)

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
ALARM_MEASUREMENT = "alarm"
STATUS_MEASUREMENT = "gateway_status"
ERRORS_MEASUREMENT = "sensor_errors"
_STATUS_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
# Characters that end or corrupt a line-protocol line, or that no id should contain: C0/C1 controls,
# DEL, and the Unicode line/paragraph separators some parsers treat as newlines.
_BAD_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ufeff]")


_SERIES_CACHE_MAX = 200_000  # series heads kept by batch_lines; a city district has ~10^4-10^5


class Reject(NamedTuple):
    reason: str  # stable metric label
    detail: str


@dataclass(frozen=True)
class Kind:
    code: int
    name: str  # the measurement
    fields: tuple[str, ...]


def load_kinds() -> dict[int, Kind]:
    """The kind table from devices/<kind>/codec.py (KIND_CODE, FIELDS); a kind that fails to import is
    logged and left out, so its readings are dead-lettered as unknown_kind rather than crashing."""
    import devices

    kinds: dict[int, Kind] = {}
    for name in devices.KINDS:
        try:
            mod = devices.load(name)
            kinds[int(mod.KIND_CODE)] = Kind(int(mod.KIND_CODE), name, tuple(mod.FIELDS))
        except Exception as exc:  # a broken codec module must not stop the other kinds
            log.error("device kind %s unavailable: %s", name, exc)
    return kinds


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
    if is_id:
        if not text:
            return "empty"
        if "\\" in text:
            return "backslash"
        if text != text.strip():
            return "leading or trailing whitespace"
    return None


def _fields_text(keys: tuple[str, ...], fields: dict[object, object]) -> str | None:
    """`k=v,...` for a map of plain bool/int/float values in ascending index order (as gateways
    encode it), else None: the general path then judges (and sorts) it."""
    parts: list[str] = []
    last = -1
    n = len(keys)
    for index, value in fields.items():
        if type(index) is not int or not last < index < n:
            return None
        last = index
        t = type(value)
        if t is float:
            if value - value != 0.0:  # type: ignore[operator]  # NaN or infinity
                return None
            text = repr(value)
            if text[-2:] == ".0":
                text = text[:-2]
            parts.append(keys[index] + text)
        elif t is bool:
            parts.append(keys[index] + ("true" if value else "false"))
        elif t is int:
            if not INT64_MIN <= value <= INT64_MAX:  # type: ignore[operator]
                return None
            parts.append(f"{keys[index]}{value}i")
        else:  # text, and everything that is refused: the general path says why
            return None
    return ",".join(parts) if parts else None


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
        self.min_ms = min_time_ms(config)
        self.max_future_ms = int(config.max_future * 1000)
        # batch_lines caches: (gw, kind code, sensor) -> escaped "measurement,tags " (only for good
        # ids), kind code -> escaped "field=" keys by index.
        self._series: dict[tuple[str, int, str], str] = {}
        self._fields_eq: dict[int, tuple[str, ...]] = {}

    def check_gateway(self, gw: str) -> Reject | None:
        why = check_text(gw, self.config.max_id_len)
        return None if why is None else Reject("bad_gateway_id", f"gateway id {gw!r}: {why}"[:300])

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

    def _value(self, value: object) -> FieldValue | Reject:
        if type(value) is bool:
            return value
        if type(value) is int:
            if not INT64_MIN <= value <= INT64_MAX:
                return Reject("out_of_range", f"integer {value} outside int64")
            return value
        if type(value) is float:
            if not math.isfinite(value):
                return Reject("not_finite", f"float {value}")
            return value
        if type(value) is str:
            why = check_text(value, self.config.max_string_len, is_id=False)
            if why is not None:
                return Reject("bad_string", f"string field: {why}")
            return value
        return Reject("bad_type", f"field value of type {type(value).__name__}")

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
            value = self._value(raw)
            if isinstance(value, Reject):
                return Reject(value.reason, f"{kind.name}.{kind.fields[index]}: {value.detail}")
            values.append((index, kind.fields[index], value))
        if not values:
            return Reject("no_fields", "a reading needs at least one field")
        values.sort()
        if alarm is None:
            tags = self._tags(gw, sensor=sensor)
            measurement = kind.name
        else:
            why = check_text(alarm, self.config.max_id_len)
            if why is not None:
                return Reject("bad_alarm", f"alarm code {alarm!r}: {why}"[:300])
            tags = self._tags(gw, sensor=sensor, kind=kind.name, code=alarm)
            measurement = ALARM_MEASUREMENT
        return Point(measurement, tags, tuple((name, v) for _, name, v in values), ts)

    def batch_lines(self, gw: str, batch: Batch, now_ms: int) -> tuple[list[str], list[tuple[int, Reject]]]:
        """`batch`, but straight to line protocol: the hot path (one call per `/up` message).

        The same judgement and the same bytes as `lineproto.encode(self.batch(...)[0])`
        (tests/unit/test_collector_lines.py checks both ways), without a Point per reading: the
        escaped series key of a (gateway, kind, sensor) and each kind's escaped field keys are
        computed once, and a reading that is unusual in any way (wrong shape, a text value, a value
        out of range, ...) takes the general path so its verdict and reason are the general ones."""
        if batch.alarm is not None:
            return self._lines_slow(gw, batch, now_ms)
        lines: list[str] = []
        rejects: list[tuple[int, Reject]] = []
        t0 = batch.t0
        # dt bounds for a good timestamp (and an int64 dt, as `reading` requires)
        lo = max(self.min_ms - t0, INT64_MIN)
        hi = min(now_ms + self.max_future_ms - t0, INT64_MAX)
        series = self._series
        prefixes = self._fields_eq
        for i, item in enumerate(batch.readings):
            if type(item) is list and len(item) == 4:
                sensor, code, dt, fields = item
                head = None
                if type(sensor) is str and type(code) is int:
                    head = series.get((gw, code, sensor))
                    if head is None:
                        head = self._series_head(gw, code, sensor)
                if head is not None and type(dt) is int and lo <= dt <= hi and type(fields) is dict:
                    text = _fields_text(prefixes[code], fields)
                    if text is not None:
                        lines.append(f"{head}{text} {t0 + dt}")
                        continue
            self._line_slow(gw, t0, item, now_ms, None, i, lines, rejects)
        return lines, rejects

    def _series_head(self, gw: str, code: int, sensor: str) -> str | None:
        """`measurement,tags ` for a reading's series, cached; None if the general path must judge."""
        kind = self.kinds.get(code)
        if kind is None or check_text(sensor, self.config.max_id_len) is not None:
            return None
        try:
            if code not in self._fields_eq:
                self._fields_eq[code] = tuple(lineproto._field_key(name) for name in kind.fields)
            head = lineproto.series_key(kind.name, self._tags(gw, sensor=sensor)) + " "
            head.encode()  # a lone surrogate has no UTF-8: the general path refuses it
        except (lineproto.LineProtocolError, UnicodeEncodeError):
            return None
        if len(self._series) >= _SERIES_CACHE_MAX:
            self._series.clear()
        self._series[(gw, code, sensor)] = head
        return head

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
        """Points for the good readings and (index, reject) for the bad ones."""
        points: list[Point] = []
        rejects: list[tuple[int, Reject]] = []
        for i, item in enumerate(batch.readings):
            result = self.reading(gw, batch.t0, item, now_ms, batch.alarm)
            if isinstance(result, Reject):
                rejects.append((i, result))
            else:
                points.append(result)
        return points, rejects

    def status(self, gw: str, status: Mapping[str, object], now_ms: int) -> tuple[list[Point], list[Reject]]:
        """A status map (edge/protocol.py `encode_status`) -> one `gateway_status` point, plus one
        `sensor_errors` point per (sensor, error code) from its `errors` map.

        Time is the map's `ts` (UTC ms) when the gateway clock is synced, else the arrival time. `None`
        values mean "not known" and are left out; other unusable entries are rejected one by one."""
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
        for key, raw in sorted(status.items()):
            if key == "ts" or raw is None:
                continue
            if not _STATUS_KEY.fullmatch(key):
                rejects.append(Reject("bad_status", f"status key {key!r} is not an identifier"[:200]))
                continue
            if key == "errors" and isinstance(raw, dict):
                total, bad = self._sensor_errors(gw, raw, ts, points)
                rejects.extend(bad)
                fields.append(("errors_total", total))
                continue
            value = self._value(raw)
            if isinstance(value, Reject):
                rejects.append(Reject("bad_status", f"status {key}: {value.detail}"))
                continue
            fields.append((key, value))
        if fields:
            points.insert(0, Point(STATUS_MEASUREMENT, self._tags(gw), tuple(fields), ts))
        else:
            rejects.append(Reject("bad_status", "status has no usable entries"))
        return points, rejects

    def _sensor_errors(
        self, gw: str, errors: dict[object, object], ts: int, out: list[Point]
    ) -> tuple[int, list[Reject]]:
        """`{sensor: {code_name: count}}` -> `sensor_errors` points; returns the total count."""
        total = 0
        rejects: list[Reject] = []
        for sensor, codes in errors.items():
            why = check_text(sensor, self.config.max_id_len)
            if why is not None or not isinstance(codes, dict):
                rejects.append(Reject("bad_status", f"errors entry {sensor!r}: {why or 'not a map'}"[:200]))
                continue
            for code, count in codes.items():
                why = check_text(code, self.config.max_id_len)
                if why is not None or type(count) is not int or not 0 <= count <= INT64_MAX:
                    rejects.append(Reject("bad_status", f"errors {sensor!r}.{code!r} = {count!r}"[:200]))
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
        return total, rejects
