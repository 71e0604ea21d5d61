"""Decode stage: topic and payload bytes -> a structurally checked batch or status map. Sans-I/O.

This stage answers "is this a citybrain message at all?": it caps the size before decoding, decodes
CBOR strictly (one item, no trailing bytes), and checks the batch header (docs/protocol.md). A failure
here refuses the whole message with a stable reason code. Readings stay raw: judging each one (kind,
types, ranges, time, ids) is the validate stage's job, so one bad reading never costs its neighbours.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Final

import cbor2

UP: Final = "up"
ALARM: Final = "alarm"
STATUS: Final = "status"
CHANNELS: Final = (UP, ALARM, STATUS)

SCHEMA_VERSION: Final = 1

# Batch map keys (docs/protocol.md, "Batch").
K_VERSION, K_BOOT, K_SEQ, K_T0, K_READINGS, K_ALARM = 0, 1, 2, 3, 4, 5
_BATCH_KEYS = frozenset((K_VERSION, K_BOOT, K_SEQ, K_T0, K_READINGS))


class Refused(Exception):
    """A whole message is refused: `reason` is a stable metric label, `detail` is for people."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Batch:
    version: int
    boot: int
    seq: int
    t0: int
    readings: list[object]  # raw items, judged one by one by the validate stage
    alarm: str | None = None  # the alarm code on `/alarm`


@dataclass(frozen=True)
class RawBatch:
    """A `/up` batch the compiled scan (collector/_fastup.c) accepted: its header decoded, its
    readings still CBOR, `payload[readings_at:]` being the readings array. The scan accepts only
    what `decode_batch` accepts too (the whole payload walked: strict CBOR, no key twice, the header
    as `decode_batch` checks it); anything else is decoded by `decode_batch`, which judges it."""

    version: int
    boot: int
    seq: int
    t0: int
    payload: bytes
    readings_at: int
    alarm: None = None


# The compiled `/up` step: collector/_fastup.c, built by scripts/setup (scripts/build_fastup.py),
# which writes the sha256 of the source it compiled to _fastup.build.
FASTUP_SOURCE = Path(__file__).with_name("_fastup.c")
FASTUP_BUILD_STAMP = Path(__file__).with_name("_fastup.build")


def load_fastup() -> tuple[ModuleType | None, str]:
    """(module, why): collector._fastup when it is built from the current source and not switched
    off by CITYBRAIN_PURE_PYTHON=1, else (None, why the pure path runs)."""
    if os.environ.get("CITYBRAIN_PURE_PYTHON"):
        return None, "CITYBRAIN_PURE_PYTHON=1"
    not_built = "collector/_fastup.c is not built (scripts/setup builds it)"
    try:
        from collector import _fastup  # type: ignore[attr-defined]
    except ImportError:
        return None, not_built
    try:
        stamp = FASTUP_BUILD_STAMP.read_text().strip()
    except OSError:
        return None, not_built
    if stamp != hashlib.sha256(FASTUP_SOURCE.read_bytes()).hexdigest():
        return None, "collector/_fastup.c changed since it was built (rebuild: scripts/setup)"
    return _fastup, "compiled"


FASTUP, FASTUP_STATE = load_fastup()


def up_path() -> str:
    """What runs `/up` batches, for /healthz: "compiled", or "pure Python: <why>"."""
    return "compiled" if FASTUP is not None else f"pure Python: {FASTUP_STATE}"


def decode_up(payload: bytes, *, max_bytes: int) -> Batch | RawBatch:
    """A `/up` batch: the compiled scan's `RawBatch` when it accepts the payload, else
    `decode_batch`'s `Batch` (or its refusal): the same verdicts either way."""
    if FASTUP is not None and len(payload) <= max_bytes:
        head = FASTUP.scan(payload)
        if head is not None:
            return RawBatch(SCHEMA_VERSION, head[0], head[1], head[2], payload, head[3])
    return decode_batch(payload, max_bytes=max_bytes)


def parse_topic(prefix: str, topic: str) -> tuple[str, str]:
    """(gateway id, channel) from `<prefix>/<gw>/<channel>`; the topic is the only source of the id."""
    head = prefix + "/"
    if not topic.startswith(head):
        raise Refused("bad_topic", f"topic {topic!r} is not under {prefix!r}")
    parts = topic[len(head) :].split("/")
    if len(parts) != 2 or not parts[0] or parts[1] not in CHANNELS:
        raise Refused("bad_topic", f"topic {topic!r} is not <prefix>/<gw>/(up|alarm|status)")
    return parts[0], parts[1]


def batch_key(payload: bytes, max_bytes: int) -> tuple[int, int] | None:
    """(boot, seq) of a batch or alarm this stage refused, when its header still holds them (two
    uints under keys 1 and 2), else None: what the receipt of a message dead-lettered whole names."""
    if len(payload) > max_bytes:
        return None
    try:
        m = cbor2.loads(payload)
    except Exception:  # any malformed input: there is no key to find
        return None
    if not isinstance(m, dict):
        return None
    boot, seq = m.get(K_BOOT), m.get(K_SEQ)
    if type(boot) is int and type(seq) is int and 0 <= boot < 2**64 and 0 <= seq < 2**64:
        return boot, seq
    return None


def decode_cbor(payload: bytes, max_bytes: int) -> object:
    """Exactly one CBOR item, no more than `max_bytes`; anything else is refused, never raised raw.

    A map holding a key twice is refused as `duplicate_key` (docs/protocol.md: readers refuse it;
    last-one-wins would let a sender show one value to one reader and another to the next).
    Semantic tags are not part of the protocol; cbor2 returns them as `CBORTag` (or datetime, ...)
    objects, which the validate stage refuses as `bad_type` where they appear."""
    if len(payload) > max_bytes:
        raise Refused("too_large", f"{len(payload)} bytes > limit {max_bytes}")
    if not payload:
        raise Refused("bad_cbor", "empty payload")
    fp = io.BytesIO(payload)
    try:
        # Duplicate keys are refused inside cbor2's decoder (cbor2 >= 6.1.1), in any map at any
        # depth: a batch with `t0` twice, a fields map {0: 37.5, 0: 38.5}, a status with `state`
        # twice. Measured on the bench workload, decoding costs the same with the check as without.
        item = cbor2.CBORDecoder(fp, allow_duplicate_keys=False).decode()
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError, MemoryError) as exc:
        text = f"{type(exc).__name__}: {exc}"[:300]
        raise Refused("duplicate_key" if "duplicate map key" in text.lower() else "bad_cbor", text) from None
    if fp.tell() != len(payload):
        raise Refused("bad_cbor", f"{len(payload) - fp.tell()} trailing bytes after the CBOR item")
    return item


def _uint(m: dict[object, object], key: int, name: str) -> int:
    v = m.get(key)
    if type(v) is not int or v < 0 or v >= 1 << 64:
        raise Refused("bad_header", f"key {key} ({name}) must be a uint, got {v!r}"[:200])
    return v


def decode_batch(payload: bytes, *, max_bytes: int, alarm: bool = False) -> Batch:
    """A `/up` batch or, with `alarm`, an `/alarm` message (the batch map with one reading and key 5)."""
    m = decode_cbor(payload, max_bytes)
    if not isinstance(m, dict):
        raise Refused("bad_header", f"expected a CBOR map, got {type(m).__name__}")
    version = m.get(K_VERSION)
    if type(version) is not int:
        raise Refused("bad_header", f"key 0 (schema version) must be a uint, got {version!r}"[:200])
    if version != SCHEMA_VERSION:
        raise Refused("bad_version", f"schema version {version}, this collector reads {SCHEMA_VERSION}")
    boot = _uint(m, K_BOOT, "boot")
    seq = _uint(m, K_SEQ, "seq")
    t0 = _uint(m, K_T0, "t0")
    readings = m.get(K_READINGS)
    if not isinstance(readings, list):
        raise Refused("bad_header", f"key 4 (readings) must be an array, got {type(readings).__name__}")
    code: str | None = None
    if alarm:
        code = m.get(K_ALARM)
        if not isinstance(code, str) or not code:
            raise Refused("bad_alarm", f"key 5 (alarm code) must be non-empty text, got {code!r}"[:200])
        if len(readings) != 1:
            raise Refused("bad_alarm", f"an alarm carries exactly one reading, got {len(readings)}")
        unknown = set(m) - _BATCH_KEYS - {K_ALARM}
    else:
        unknown = set(m) - _BATCH_KEYS
    if unknown:
        # A newer sender may add keys; ignoring them silently would hide a version mismatch.
        raise Refused("bad_header", f"unknown batch keys {sorted(map(repr, unknown))}"[:200])
    return Batch(version, boot, seq, t0, readings, code)


def decode_status(payload: bytes, *, max_bytes: int) -> dict[str, object]:
    """A `/status` map with text keys; each entry is judged by the validate stage."""
    m = decode_cbor(payload, max_bytes)
    if not isinstance(m, dict):
        raise Refused("bad_status", f"expected a CBOR map, got {type(m).__name__}")
    if not all(isinstance(k, str) for k in m):
        raise Refused("bad_status", "status keys must be text")
    return m
