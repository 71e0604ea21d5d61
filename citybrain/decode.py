"""Show what a citybrain wire payload (docs/protocol.md) says, with field names and UTC times.

The input is one payload: a file of raw CBOR (as published on MQTT), or hex text (spaces and line
breaks allowed, e.g. pasted from a broker log); `-` or no file reads stdin. The payload type (batch,
alarm, status, command, reply, receipt) comes from --topic when given, else from the keys. Field indices are
resolved to names and units through each device kind's FIELDS/UNITS (devices/<kind>/codec.py).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

EPILOG = """\
examples:
  citybrain decode batch.cbor                       a saved /up payload
  mosquitto_sub -N -C 1 -t city/gw-01/up | citybrain decode --topic up
  echo 'a5 00 01 01 03 02 18 2a ...' | citybrain decode      hex text, spaces allowed
  citybrain decode --json --topic city/gw-01/status status.cbor   machine-readable output

exit status: 0 decoded; 1 unreadable input, not CBOR, or not the payload type expected.
"""

TYPES = ("up", "alarm", "status", "cmd", "reply", "ack")
_TYPE_NAMES = {
    "up": "batch", "alarm": "alarm", "status": "status", "cmd": "command", "reply": "reply", "ack": "receipt"
}


class Garbage(Exception):
    """The input is not a payload we can show; the message says why, for a person."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.add_argument("file", nargs="?", default="-", help="payload file (raw CBOR or hex text); - = stdin")
    parser.add_argument(
        "--topic",
        metavar="TOPIC",
        help="payload type: up, alarm, status, cmd, reply or ack, or a full topic such as city/gw-01/up "
        "(default: guess from the keys)",
    )
    parser.add_argument(
        "--format",
        choices=("auto", "raw", "hex"),
        default="auto",
        help="input encoding (default auto: hex text if the input is only hex digits and whitespace)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def read_input(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise Garbage(f"cannot read {path}: {exc.strerror or exc}") from None


_HEX = frozenset(b"0123456789abcdefABCDEF")
_SPACE = frozenset(b" \t\r\n")


def payload_bytes(data: bytes, fmt: str = "auto") -> bytes:
    """Raw CBOR from the input: hex text (whitespace allowed) is converted, anything else kept."""
    compact = bytes(b for b in data if b not in _SPACE)
    looks_hex = bool(compact) and all(b in _HEX for b in compact) and len(compact) % 2 == 0
    if fmt == "hex" or (fmt == "auto" and looks_hex):
        try:
            return bytes.fromhex(compact.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            raise Garbage("input is not hex text (odd length or a non-hex character)") from None
    return data


def iso_ms(ms: Any) -> str:
    """UTC ISO 8601 with milliseconds; a value no calendar holds is shown as such, not raised."""
    import datetime as dt

    if type(ms) is not int:
        return f"<not a timestamp: {ms!r}>"
    try:
        t = dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)
    except (OverflowError, ValueError, OSError):
        return f"<out of range: {ms} ms>"
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


_MIN_TS = 1_577_836_800_000  # 2020-01-01T00:00:00Z: older stamps come from an unsynced clock


class Kinds:
    """Kind code -> (name, FIELDS, UNITS): names from the kind registry (devices/registry.py), units
    from the kind's host half (devices/<kind>/sim_encode.py), loaded lazily."""

    def __init__(self) -> None:
        import devices
        from devices import registry

        self.table: dict[int, tuple[str, tuple[str, ...], tuple[str, ...]]] = {}
        self._validator: Any = None
        for code, kind in registry.by_code().items():
            try:
                units = tuple(devices.load(kind.name, "sim_encode").UNITS)
            except Exception:  # no host half, or a broken one: names without units, never a crash
                units = ()
            self.table[code] = (kind.name, kind.names, units)

    def refusal(self, reading: list[Any]) -> str | None:
        """Why the collector would refuse this reading for its values (a field's type or range by
        the kind registry, a sensor id, ...): its own validator's verdict, time left out (the
        caller judges a saved payload's time itself)."""
        import time

        from collector.config import DecodeConfig
        from collector.validate import Reject, Validator, load_kinds

        if self._validator is None:
            self._validator = Validator(DecodeConfig(), load_kinds(), {})
        sensor, code, _dt, fields = reading
        now_ms = int(time.time() * 1000)
        verdict = self._validator.reading("gw", now_ms, [sensor, code, 0, fields], now_ms)
        if isinstance(verdict, Reject) and verdict.reason not in ("unknown_kind", "bad_field"):
            return f"{verdict.reason}: {verdict.detail}"
        return None

    def known(self, code: Any) -> bool:
        """True if the kind's codec is loaded, so an index outside its FIELDS is a real error."""
        entry = self.table.get(code) if type(code) is int else None
        return bool(entry and entry[1])

    def name(self, code: Any) -> str:
        entry = self.table.get(code) if type(code) is int else None
        return entry[0] if entry else f"kind#{code!r}"

    def field(self, code: Any, index: Any) -> tuple[str, str]:
        entry = self.table.get(code) if type(code) is int else None
        if entry and type(index) is int and 0 <= index < len(entry[1]):
            unit = entry[2][index] if index < len(entry[2]) else ""
            return entry[1][index], unit
        return f"#{index!r}", ""


def guess_type(m: Any) -> str:
    if isinstance(m, dict):
        if 0 in m and 4 in m:
            return "alarm" if 5 in m else "up"
        if set(m) == {0, 1, 2, 3} and isinstance(m[2], list):
            return "ack"
        if "state" in m:
            return "status"
        if "op" in m:
            return "cmd"
        if "ok" in m:
            return "reply"
    raise Garbage("CBOR decoded, but it is not a citybrain payload (use --topic to say which it is)")


def topic_type(topic: str) -> str:
    leaf = topic.rstrip("/").rsplit("/", 1)[-1]
    if leaf not in TYPES:
        raise Garbage(f"--topic {topic!r}: the last part must be one of {', '.join(TYPES)}")
    return leaf


def _value(v: Any) -> Any:
    """A JSON-safe copy: bytes become hex, map keys text."""
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, list):
        return [_value(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _value(x) for k, x in v.items()}
    return v


def interpret_batch(m: Any, kinds: Kinds, alarm: bool) -> tuple[dict[str, Any], list[str]]:
    """The batch as named data, plus problems found (each makes the exit status 1)."""
    problems: list[str] = []
    if not isinstance(m, dict):
        raise Garbage(f"a batch is a CBOR map, this is {type(m).__name__}")
    for key, name in ((0, "v"), (1, "boot"), (2, "seq"), (3, "t0")):
        if type(m.get(key)) is not int or m[key] < 0:
            problems.append(f"key {key} ({name}) must be a uint, got {m.get(key)!r}")
    readings = m.get(4)
    if not isinstance(readings, list):
        raise Garbage(f"key 4 (readings) must be an array, got {type(readings).__name__}")
    allowed = {0, 1, 2, 3, 4, 5} if alarm else {0, 1, 2, 3, 4}
    extra = [k for k in m if k not in allowed]
    if extra:
        problems.append(f"unknown keys {extra!r}")
    if alarm and (not isinstance(m.get(5), str) or len(readings) != 1):
        problems.append("an alarm needs key 5 (code text) and exactly one reading")
    t0 = m.get(3) if type(m.get(3)) is int else 0
    out_readings = []
    for i, r in enumerate(readings):
        if not (
            isinstance(r, list)
            and len(r) == 4
            and isinstance(r[0], str)
            and type(r[1]) is int
            and type(r[2]) is int
            and isinstance(r[3], dict)
        ):
            problems.append(f"reading {i} is not [sensor, kind, dt, {{index: value}}]: {r!r}"[:200])
            continue
        sensor, code, dt_ms, fields = r
        if code not in kinds.table:
            problems.append(f"reading {i}: unknown kind code {code}")
        named = {}
        for idx in sorted(fields, key=lambda k: (type(k) is not int, str(k))):
            name, unit = kinds.field(code, idx)
            named[name] = {"value": _value(fields[idx]), "unit": unit}
            if name.startswith("#") and kinds.known(code):
                problems.append(f"reading {i}: field index {idx!r} is not in {kinds.name(code)} FIELDS")
        why = kinds.refusal(r)
        if why is not None:
            problems.append(f"reading {i}: the collector refuses it: {why}")
        ts = t0 + dt_ms
        if ts < _MIN_TS:
            problems.append(f"reading {i}: timestamp {iso_ms(ts)} is before 2020 (unsynced clock)")
        out_readings.append(
            {
                "sensor": sensor,
                "kind": kinds.name(code),
                "kind_code": code,
                "ts": ts,
                "time": iso_ms(ts),
                "fields": named,
            }
        )
    out = {
        "type": "alarm" if alarm else "batch",
        "v": m.get(0),
        "boot": m.get(1),
        "seq": m.get(2),
        "t0": m.get(3),
        "t0_time": iso_ms(m.get(3)),
        "readings": out_readings,
    }
    if alarm:
        out["alarm"] = m.get(5)
    return out, problems


def interpret_text_map(m: Any, kind: str) -> tuple[dict[str, Any], list[str]]:
    if not isinstance(m, dict) or not all(isinstance(k, str) for k in m):
        raise Garbage(f"a {_TYPE_NAMES[kind]} is a CBOR map with text keys")
    out: dict[str, Any] = {"type": _TYPE_NAMES[kind]}
    out.update({k: _value(v) for k, v in m.items()})
    if kind == "status" and type(m.get("ts")) is int:
        out["ts_time"] = iso_ms(m["ts"])
    problems = []
    required = {"status": ("v", "state"), "cmd": ("id", "op"), "reply": ("id", "ok")}[kind]
    problems = [f"missing key {k!r}" for k in required if k not in m]
    return out, problems


def interpret_receipt(raw: bytes) -> tuple[dict[str, Any], list[str]]:
    """A receipt, read by the gateway's own reader (edge.protocol.decode_receipt): a refusal is the
    one problem, named as the gateway would see it."""
    from edge import cbor, protocol

    try:
        boot, up, alarm = protocol.decode_receipt(raw)
    except cbor.CBORError:
        raise Garbage("not a receipt the gateway accepts (docs/protocol.md, Receipt)") from None

    def ranges(flat: list[int]) -> list[str]:
        return [f"{lo}" if lo == hi else f"{lo}-{hi}" for lo, hi in zip(flat[::2], flat[1::2], strict=True)]

    return {"type": "receipt", "v": 1, "boot": boot, "up": ranges(up), "alarm": ranges(alarm)}, []


def render_text(doc: dict[str, Any], size: int) -> str:
    lines = []
    if doc["type"] in ("batch", "alarm"):
        head = f"{doc['type']} v{doc['v']}  boot {doc['boot']}  seq {doc['seq']}  t0 {doc['t0_time']}"
        if doc["type"] == "alarm":
            head += f"  ALARM {doc['alarm']}"
        n = len(doc["readings"])
        lines.append(f"{head}  ({n} reading{'' if n == 1 else 's'}, {size} bytes)")
        for r in doc["readings"]:
            parts = []
            for name, fv in r["fields"].items():
                v = fv["value"]
                text = "true" if v is True else "false" if v is False else str(v)
                parts.append(f"{name}={text}{(' ' + fv['unit']) if fv['unit'] else ''}")
            lines.append(f"  {r['time']}  {r['sensor']}  {r['kind']}  " + "  ".join(parts))
    else:
        lines.append(f"{doc['type']}  ({size} bytes)")
        for k, v in doc.items():
            if k in ("type", "ts_time"):
                continue
            text = "true" if v is True else "false" if v is False else "null" if v is None else str(v)
            if doc["type"] == "receipt" and isinstance(v, list):
                text = ", ".join(v) or "-"
            if k == "ts" and "ts_time" in doc:
                text += f"  ({doc['ts_time']})"
            lines.append(f"  {k}: {text}")
    return "\n".join(lines)


def decode(data: bytes, topic: str | None, fmt: str = "auto") -> tuple[dict[str, Any], list[str], int]:
    """(named document, problems, payload size) for one input; Garbage if there is nothing to show."""
    from edge import cbor

    raw = payload_bytes(data, fmt)
    if not raw:
        raise Garbage("empty input")
    try:
        m = cbor.loads(raw, 32, 1_000_000)
    except cbor.CBORError as exc:
        raise Garbage(f"not a CBOR payload ({len(raw)} bytes): {exc}") from None
    kind = topic_type(topic) if topic else guess_type(m)
    if kind == "ack":
        doc, problems = interpret_receipt(raw)
    elif kind in ("up", "alarm"):
        doc, problems = interpret_batch(m, Kinds(), kind == "alarm")
    else:
        doc, problems = interpret_text_map(m, kind)
    if topic and "/" in topic:
        doc["gw"] = topic.rstrip("/").split("/")[-2]
    return doc, problems, len(raw)


def run(args: argparse.Namespace) -> int:
    import json

    try:
        doc, problems, size = decode(read_input(args.file), args.topic, args.format)
    except Garbage as exc:
        print(f"citybrain decode: {exc}", file=sys.stderr)
        return 1
    if args.json:
        doc["problems"] = problems
        print(json.dumps(doc, ensure_ascii=False, indent=2))
    else:
        print(render_text(doc, size))
        for p in problems:
            print(f"problem: {p}", file=sys.stderr)
    return 1 if problems else 0
