"""edge.cbor against the reference implementation, cbor2, on generated values.

The encoder's float rule is cbor2's `canonical=True` rule (shortest exact of half/single/double),
so generated maps are built in canonical key order and compared with `cbor2.dumps(canonical=True)`;
float-free values must also equal plain `cbor2.dumps`. The decoder must read back whatever cbor2
writes, and on any other bytes raise only CBORError.
"""

from __future__ import annotations

import math
from typing import Any

import cbor2
from hypothesis import given, settings
from hypothesis import strategies as st

from edge import cbor

SETTINGS = settings(max_examples=300, deadline=None)

ints = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=-(2**64) - 2, max_value=2**64 + 2),
    st.integers(min_value=-(2**400), max_value=2**400),
    st.sampled_from([0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1, 2**64, -(2**64) - 1]),
)
floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True),
    st.floats(width=32, allow_subnormal=True),
    st.floats(width=16, allow_subnormal=True),
    st.sampled_from([0.0, -0.0, 5.960464477539063e-08, 65504.0, 65520.0, 3.4028234663852886e38]),
)
texts = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=20)
scalars = st.one_of(st.none(), st.booleans(), ints, floats, texts, st.binary(max_size=20))
keys = st.one_of(st.integers(min_value=-(2**40), max_value=2**40), texts)


def _canonical_key(k: Any) -> tuple[int, bytes]:
    enc = cbor2.dumps(k, canonical=True)
    return (len(enc), enc)


def _canonical_map(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    d = dict(pairs)
    return {k: d[k] for k in sorted(d, key=_canonical_key)}


values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.lists(st.tuples(keys, children), max_size=5).map(_canonical_map),
    ),
    max_leaves=25,
)
float_free = st.recursive(
    st.one_of(st.none(), st.booleans(), ints, texts, st.binary(max_size=20)),
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(keys, children, max_size=5),
    ),
    max_leaves=25,
)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a):
            return math.isnan(b)
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@SETTINGS
@given(values)
def test_encoder_matches_cbor2_canonical(value: Any) -> None:
    assert cbor.dumps(value) == cbor2.dumps(value, canonical=True)


@SETTINGS
@given(float_free)
def test_encoder_matches_cbor2_default_without_floats(value: Any) -> None:
    assert cbor.dumps(value) == cbor2.dumps(value)


@SETTINGS
@given(floats)
def test_float_is_shortest_exact(x: float) -> None:
    enc = cbor.dumps(x)
    if not math.isnan(x):
        assert _same(cbor2.loads(enc), x)
    # cbor2's default (always double) must decode to the same value through our decoder.
    assert _same(cbor.loads(cbor2.dumps(x)), cbor2.loads(cbor2.dumps(x)))


@SETTINGS
@given(values)
def test_decoder_round_trips_cbor2_output(value: Any) -> None:
    assert _same(cbor.loads(cbor2.dumps(value)), value)
    assert _same(cbor.loads(cbor2.dumps(value, canonical=True)), value)


@SETTINGS
@given(st.binary(max_size=64))
def test_decoder_fuzz_random_bytes(data: bytes) -> None:
    try:
        cbor.loads(data)
    except cbor.CBORError:
        pass


@SETTINGS
@given(values, st.data())
def test_decoder_fuzz_mutated(value: Any, data: st.DataObject) -> None:
    enc = bytearray(cbor2.dumps(value))
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if op == "cut" or not enc:
            enc = enc[: data.draw(st.integers(min_value=0, max_value=len(enc)))]
        elif op == "flip":
            i = data.draw(st.integers(min_value=0, max_value=len(enc) - 1))
            enc[i] = data.draw(st.integers(min_value=0, max_value=255))
        else:
            i = data.draw(st.integers(min_value=0, max_value=len(enc)))
            enc[i:i] = data.draw(st.binary(min_size=1, max_size=3))
    try:
        out = cbor.loads(bytes(enc))
    except cbor.CBORError:
        return
    # Whatever we accept, cbor2 must read as the same value (no invented data).
    assert _same(out, cbor2.loads(bytes(enc)))


field_values = st.one_of(st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(allow_nan=False))
readings = st.tuples(
    texts.filter(bool),
    st.integers(min_value=1, max_value=4),
    st.integers(min_value=-(2**33), max_value=2**33),
    st.lists(field_values, max_size=6).map(tuple),
)


@settings(max_examples=100, deadline=None)
@given(
    st.integers(min_value=0, max_value=2**32),
    st.integers(min_value=0, max_value=2**32),
    st.integers(min_value=1_577_836_800_000, max_value=4_102_444_800_000),
    st.lists(readings, max_size=40),
)
def test_batch_matches_cbor2(boot: int, seq: int, t0: int, rs: list[tuple[Any, ...]]) -> None:
    """A streamed batch is exactly cbor2's encoding of the documented map (header patched right)."""
    from edge import protocol

    enc = protocol.BatchEncoder(16384)
    enc.begin(boot, seq, t0)
    for sensor, kind, dt, fields in rs:
        assert enc.add(sensor, kind, t0 + dt, fields)
    expected = {
        0: 1,
        1: boot,
        2: seq,
        3: t0,
        4: [[s, k, dt, {i: v for i, v in enumerate(f) if v is not None}] for s, k, dt, f in rs],
    }
    assert bytes(enc.finish()) == cbor2.dumps(expected, canonical=True)


@settings(max_examples=100, deadline=None)
@given(
    st.integers(min_value=0, max_value=2**32),
    st.integers(min_value=1_577_836_800_000, max_value=4_102_444_800_000),
    st.lists(st.tuples(readings, st.booleans(), st.integers(0, 2**40)), min_size=1, max_size=30),
)
def test_batch_from_log_records_matches_cbor2(boot: int, t0: int, rs: list[tuple[Any, ...]]) -> None:
    """The uplink copies record bytes into a batch (no decode): still exactly cbor2's encoding,
    for stamped records and for unstamped ones stamped with their boot's anchor."""
    from collector.decode import K_BOOT, K_READINGS, K_SEQ, K_T0, K_VERSION
    from edge import batcher, record

    recs = []
    expected = []
    for i, ((sensor, kind, dt, fields), unstamped, uptime) in enumerate(rs):
        ts = t0 + dt
        w = cbor.Writer(1024)
        if unstamped:
            record.encode(w, sensor, kind, None, fields, boot, uptime)
            ts = t0 - 10**9 + uptime
        else:
            record.encode(w, sensor, kind, ts, fields)
        recs.append((i, bytes(w.view())))
        expected.append((sensor, kind, ts, {j: v for j, v in enumerate(fields) if v is not None}))
    b = batcher.Batcher(boot, lambda kind: 6, {boot: t0 - 10**9}.get, batch_max=len(recs), capacity=65536)
    batch, used = b.build(recs)
    assert batch is not None and used == len(recs) and b.corrupt == 0
    first = expected[0][2]
    doc = {
        K_VERSION: 1,
        K_BOOT: boot,
        K_SEQ: 0,
        K_T0: first,
        K_READINGS: [[s, k, ts - first, f] for s, k, ts, f in expected],
    }
    assert batch.payload == cbor2.dumps(doc, canonical=True)


command_maps = st.dictionaries(
    st.sampled_from(["id", "op", "args", "v", "x"]),
    st.one_of(values, st.sampled_from(["status", "set", "reboot", "flush", "c-1"])),
    max_size=5,
)


@SETTINGS
@given(st.one_of(st.binary(max_size=64), command_maps.map(cbor2.dumps)))
def test_decode_command_never_raises(data: bytes) -> None:
    from edge import command

    r = command.decode_command(data)
    if isinstance(r, command.Command):
        assert r.op in ("status", "set", "reboot", "flush")
        assert isinstance(r.id, str) and isinstance(r.args, dict)
    else:
        assert isinstance(r, command.CommandError)
        # the codes of docs/protocol.md, "Command (`/cmd`) and reply"
        assert r.code in ("bad_cbor", "bad_command", "unknown_op", "unsupported_version")


seq_ranges = st.lists(
    st.tuples(st.integers(0, 2**40), st.integers(0, 2**20)).map(lambda t: [t[0], t[0] + t[1]]),
    max_size=32,
).map(lambda rs: [n for r in rs for n in r])


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=2**40), seq_ranges, seq_ranges)
def test_receipt_matches_cbor2(boot: int, up: list[int], alarm: list[int]) -> None:
    """The collector's receipt is cbor2's canonical encoding of the documented map, and the gateway's
    reader decodes it back exactly."""
    from collector.receipts import encode_receipt
    from edge import protocol

    data = encode_receipt(boot, up, alarm)
    assert data == cbor2.dumps({0: 1, 1: boot, 2: up, 3: alarm}, canonical=True)
    assert protocol.decode_receipt(data) == (boot, up, alarm)
    # cbor2's default (non-canonical) writer gives the same bytes here: ints and arrays only.
    assert protocol.decode_receipt(cbor2.dumps({0: 1, 1: boot, 2: up, 3: alarm})) == (boot, up, alarm)


def test_receipt_vector_is_the_collectors_encoding() -> None:
    from collector.receipts import encode_receipt
    from tests.portable.test_protocol import RECEIPT_HEX

    assert encode_receipt(7, [40, 42, 45, 45], [3, 3]).hex() == RECEIPT_HEX


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_decode_receipt_never_crashes(data: bytes) -> None:
    """Any bytes: a receipt or a CBORError, nothing else."""
    from edge import cbor, protocol

    try:
        protocol.decode_receipt(data)
    except cbor.CBORError:
        pass
