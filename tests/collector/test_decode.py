"""Decode stage: topics, size cap, strict CBOR, batch header checks; hostile bytes are refused with a
reason and never raise anything else."""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector import decode

NOW_MS = 1_780_000_000_000


def batch(**over: object) -> bytes:
    m: dict[int, object] = {0: 1, 1: 7, 2: 42, 3: NOW_MS, 4: [["P-1", 1, 0, {0: True}]]}
    for k, v in over.items():
        key = int(k[1:])
        if v is None:
            del m[key]
        else:
            m[key] = v
    return cbor2.dumps(m)


def test_topic() -> None:
    assert decode.parse_topic("city", "city/gw-1/up") == ("gw-1", "up")
    assert decode.parse_topic("city", "city/网关/alarm") == ("网关", "alarm")
    assert decode.parse_topic("a/b", "a/b/gw/status") == ("gw", "status")
    for bad in ("town/gw/up", "city/gw/cmd", "city//up", "city/gw/up/x", "city/up", "cityx/gw/up"):
        with pytest.raises(decode.Refused) as exc:
            decode.parse_topic("city", bad)
        assert exc.value.reason == "bad_topic"


def test_good_batch() -> None:
    b = decode.decode_batch(batch(), max_bytes=65536)
    assert (b.version, b.boot, b.seq, b.t0, b.alarm) == (1, 7, 42, NOW_MS, None)
    assert b.readings == [["P-1", 1, 0, {0: True}]]


def test_batch_from_the_edge_encoder() -> None:
    """The gateway's streaming encoder and the collector agree on the contract."""
    protocol = pytest.importorskip("edge.protocol")
    enc = protocol.BatchEncoder(1024)
    enc.begin(3, 9, NOW_MS)
    assert enc.add("温度-1", 4, NOW_MS + 1500, (21.5, None, 3))
    assert enc.add("P-2", 1, NOW_MS - 20, (False,))
    b = decode.decode_batch(bytes(enc.finish()), max_bytes=65536)
    assert (b.boot, b.seq, b.t0) == (3, 9, NOW_MS)
    assert b.readings == [["温度-1", 4, 1500, {0: 21.5, 2: 3}], ["P-2", 1, -20, {0: False}]]
    alarm = protocol.encode_alarm(enc, 3, 1, "fever", "T-1", 4, NOW_MS, (39.5,))
    a = decode.decode_batch(bytes(alarm), max_bytes=65536, alarm=True)
    assert a.alarm == "fever" and a.readings == [["T-1", 4, 0, {0: 39.5}]]


def test_alarm() -> None:
    a = decode.decode_batch(batch(k5="lid_open"), max_bytes=65536, alarm=True)
    assert a.alarm == "lid_open"
    cases = [
        (batch(), "bad_alarm"),  # no code
        (batch(k5=3), "bad_alarm"),
        (batch(k5=""), "bad_alarm"),
        (batch(k5="gas", k4=[]), "bad_alarm"),
        (batch(k5="gas", k4=[["a", 1, 0, {0: 1}], ["b", 1, 0, {0: 1}]]), "bad_alarm"),
    ]
    for payload, reason in cases:
        with pytest.raises(decode.Refused) as exc:
            decode.decode_batch(payload, max_bytes=65536, alarm=True)
        assert exc.value.reason == reason
    with pytest.raises(decode.Refused) as exc:  # key 5 on /up is not part of a batch
        decode.decode_batch(batch(k5="gas"), max_bytes=65536)
    assert exc.value.reason == "bad_header"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "bad_cbor"),
        (b"\xff", "bad_cbor"),
        (b"\xa5\x00", "bad_cbor"),  # truncated
        (batch() + b"\x00", "bad_cbor"),  # trailing bytes
        (b"\x9b\x00\x00\x00\x10\x00\x00\x00\x00", "bad_cbor"),  # array claiming 2^36 items
        (b"\x81" * 10_000, "bad_cbor"),  # nesting bomb
        (cbor2.dumps([1, 2]), "bad_header"),
        (cbor2.dumps({"v": 1}), "bad_header"),
        (batch(k0=2), "bad_version"),
        (batch(k0="1"), "bad_header"),
        (batch(k0=None), "bad_header"),
        (batch(k1=-1), "bad_header"),
        (batch(k2=1.5), "bad_header"),
        (batch(k2=True), "bad_header"),
        (batch(k3=None), "bad_header"),
        (batch(k4={}), "bad_header"),
        (batch(k9=0), "bad_header"),
        (b"\x00" * 70_000, "too_large"),
    ],
)
def test_refused(payload: bytes, reason: str) -> None:
    with pytest.raises(decode.Refused) as exc:
        decode.decode_batch(payload, max_bytes=65536)
    assert exc.value.reason == reason
    assert exc.value.detail


def test_status() -> None:
    assert decode.decode_status(cbor2.dumps({"v": 1, "state": "online"}), max_bytes=1024) == {
        "v": 1,
        "state": "online",
    }
    for payload in (cbor2.dumps([1]), cbor2.dumps({1: "x"}), b"\xa1"):
        with pytest.raises(decode.Refused):
            decode.decode_status(payload, max_bytes=1024)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_escape(data: bytes) -> None:
    try:
        decode.decode_batch(data, max_bytes=256, alarm=len(data) % 2 == 0)
        decode.decode_status(data, max_bytes=256)
    except decode.Refused as exc:
        assert exc.reason in {"too_large", "bad_cbor", "bad_header", "bad_version", "bad_alarm", "bad_status"}


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=60), st.integers(min_value=0))
def test_mutated_batches_never_escape(noise: bytes, where: int) -> None:
    good = bytearray(batch())
    i = where % len(good)
    good[i : i + len(noise)] = noise
    try:
        result = decode.decode_batch(bytes(good), max_bytes=65536)
    except decode.Refused as exc:
        assert exc.reason and exc.detail
    else:
        assert isinstance(result.readings, list) and result.version == 1


def cbor_map(*pairs: tuple[object, object]) -> bytes:
    """A CBOR map written pair by pair, so it can hold a key twice (cbor2 cannot write that)."""
    assert len(pairs) < 24
    return bytes([0xA0 + len(pairs)]) + b"".join(cbor2.dumps(k) + cbor2.dumps(v) for k, v in pairs)


class Raw:
    """Bytes spliced into a hand-written CBOR map as one value."""

    def __init__(self, data: bytes) -> None:
        self.data = data


def raw_map(*pairs: tuple[object, object]) -> bytes:
    out = bytes([0xA0 + len(pairs)])
    for k, v in pairs:
        out += cbor2.dumps(k) + (v.data if isinstance(v, Raw) else cbor2.dumps(v))
    return out


def reading_with(fields: bytes) -> Raw:
    """`[["T-1", 4, 0, <fields>]]` with the fields map given as bytes."""
    return Raw(b"\x81\x84" + cbor2.dumps("T-1") + b"\x04\x00" + fields)


@pytest.mark.parametrize(
    ("payload", "kind"),
    [
        # t0 twice: which one is the batch's time (and its dedup key)?
        (cbor_map((0, 1), (1, 7), (2, 42), (3, NOW_MS), (3, NOW_MS + 1), (4, [])), "up"),
        # a fields map {0: 37.5, 0: 38.5}: a reader that keeps the first stores another temperature
        (
            raw_map((0, 1), (1, 7), (2, 42), (3, NOW_MS), (4, reading_with(cbor_map((0, 37.5), (0, 38.5))))),
            "up",
        ),
        # an alarm with two codes
        (
            raw_map(
                (0, 1),
                (1, 7),
                (2, 1),
                (3, NOW_MS),
                (4, reading_with(cbor_map((0, 39.0)))),
                (5, "fever"),
                (5, "none"),
            ),
            "alarm",
        ),
        (cbor_map(("v", 1), ("state", "online"), ("state", "offline")), "status"),
        (
            raw_map(
                ("v", 1), ("errors", Raw(raw_map(("P-1", Raw(cbor_map(("bad_crc", 1), ("bad_crc", 9)))))))
            ),
            "status",
        ),
    ],
    ids=["batch_t0_twice", "fields_key_twice", "alarm_code_twice", "status_state_twice", "errors_code_twice"],
)
def test_duplicate_map_keys_are_refused(payload: bytes, kind: str) -> None:
    # The same payloads with each key once decode (so the refusal is about the duplicate alone).
    with pytest.raises(decode.Refused) as exc:
        if kind == "status":
            decode.decode_status(payload, max_bytes=65536)
        else:
            decode.decode_batch(payload, max_bytes=65536, alarm=kind == "alarm")
    assert exc.value.reason == "duplicate_key", exc.value
    assert "uplicate" in exc.value.detail


def test_same_maps_without_the_duplicate_decode() -> None:
    fields = reading_with(cbor_map((0, 37.5), (2, 7)))
    b = decode.decode_batch(raw_map((0, 1), (1, 7), (2, 42), (3, NOW_MS), (4, fields)), max_bytes=65536)
    assert b.readings == [["T-1", 4, 0, {0: 37.5, 2: 7}]]
    status = raw_map(
        ("v", 1), ("errors", Raw(raw_map(("P-1", Raw(cbor_map(("bad_crc", 1), ("timeout", 9)))))))
    )
    assert decode.decode_status(status, max_bytes=65536) == {
        "v": 1,
        "errors": {"P-1": {"bad_crc": 1, "timeout": 9}},
    }
