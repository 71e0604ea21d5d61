"""Parking codec under hypothesis: any bytes are survived, readings are always in range and exact.

The portable tests pin the wire format with vectors; these look for the input nobody thought of:
random bytes, valid frames with bits flipped, bytes cut or inserted, and noise between frames.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from devices.common.errors import DecodeError
from devices.parking import codec, sim_encode

SETTINGS = settings(max_examples=300, deadline=None)

mag = st.integers(-sim_encode.MAG_LIMIT, sim_encode.MAG_LIMIT)
readings = st.tuples(
    st.integers(sim_encode.ADDR_MIN, sim_encode.ADDR_MAX).map(sim_encode.sensor_name),
    st.sampled_from([(False, 0), (True, 0), (True, 1), (False, 2)]),
    st.integers(0, 0xFFFF),
    mag,
    mag,
    mag,
    st.integers(sim_encode.BATT_MIN, sim_encode.BATT_MAX),
    st.one_of(st.none(), st.integers(sim_encode.RSSI_MIN, 0)),
).map(lambda t: (t[0], (t[1][0], t[1][1], *t[2:])))


def check_reading(data: bytes, start: int, consumed: int, result: Any) -> None:
    """A returned reading is well typed, in range, and exactly what its bytes say."""
    sid, f = result
    assert type(f[0]) is bool and all(type(v) is int for v in f[1:7])
    assert f[7] is None or type(f[7]) is int
    assert f[1] in (0, 1, 2) and 0 <= f[2] <= 0xFFFF
    assert all(-sim_encode.MAG_LIMIT <= v <= sim_encode.MAG_LIMIT for v in f[3:6])
    assert sim_encode.BATT_MIN <= f[6] <= sim_encode.BATT_MAX
    assert f[7] is None or sim_encode.RSSI_MIN <= f[7] <= 0
    assert sim_encode.encode(sid, f) == data[start:start + consumed]  # canonical: nothing was made up


def decode_all(data: bytes) -> tuple[list[Any], int]:
    readings_out: list[Any] = []
    errors = 0
    pos = 0
    while True:
        n, r = codec.decode(data, pos)
        assert 0 <= n <= len(data) - pos
        if n == 0:
            assert r is None
            return readings_out, errors
        if isinstance(r, DecodeError):
            errors += 1
        else:
            check_reading(data, pos, n, r)
            readings_out.append(r)
        pos += n


@SETTINGS
@given(readings)
def test_decode_inverts_encode(reading: Any) -> None:
    frame = sim_encode.encode(*reading)
    assert codec.decode(frame) == (len(frame), reading)
    assert codec.decode(b"\x00" + frame + b"\xaa\x55", 1, 1 + len(frame)) == (len(frame), reading)


@SETTINGS
@given(st.binary(max_size=300))
def test_random_bytes_never_raise(data: bytes) -> None:
    decode_all(data)


@SETTINGS
@given(st.lists(readings, min_size=1, max_size=4), st.data())
def test_mutated_frames_never_give_a_wrong_reading(items: list[Any], data: st.DataObject) -> None:
    wire = bytearray(b"".join(sim_encode.encode(*r) for r in items))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        i = data.draw(st.integers(0, max(0, len(wire) - 1)))
        if op == "flip" and wire:
            wire[i] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "cut":
            del wire[i:]
        elif op == "insert":
            wire[i:i] = data.draw(st.binary(min_size=1, max_size=8))
        elif wire:
            del wire[i:i + data.draw(st.integers(1, 8))]
    got, _ = decode_all(bytes(wire))
    # Mutations can leave frames intact, never make new ones: CRC-16 catches what they break.
    remaining = list(items)
    for r in got:
        assert r in remaining
        remaining.remove(r)


@SETTINGS
@given(st.lists(readings, min_size=1, max_size=4), st.data())
def test_one_flipped_bit_costs_exactly_its_frame(items: list[Any], data: st.DataObject) -> None:
    frames = [sim_encode.encode(*r) for r in items]
    k = data.draw(st.integers(0, len(frames) - 1))
    hit = bytearray(frames[k])
    hit[data.draw(st.integers(0, len(hit) - 1))] ^= 1 << data.draw(st.integers(0, 7))
    frames[k] = bytes(hit)
    # Traffic goes on after the hit: a LEN flipped upwards waits for up to MAX_LEN more bytes
    # before its CRC can fail, and the frames it held back then decode.
    flush = ("P-00007", (False, 0, 1, 2, 3, 4, 3500, -70))
    frames += [sim_encode.encode(*flush)] * 4
    got, errors = decode_all(b"".join(frames))
    assert got == items[:k] + items[k + 1:] + [flush] * 4
    assert errors


@SETTINGS
@given(st.lists(st.tuples(st.binary(max_size=40), readings), min_size=1, max_size=6))
def test_every_frame_survives_noise_between_frames(chunks: list[Any]) -> None:
    """Line noise and cut frames between good frames cost errors, never the good frames."""
    wire = bytearray()
    want = []
    for noise, reading in chunks:
        wire += noise.replace(b"\xaa", b"\x00")
        wire += sim_encode.encode(*reading)
        want.append(reading)
    got, _ = decode_all(bytes(wire))
    assert got == want


@SETTINGS
@given(st.lists(readings, min_size=2, max_size=5), st.data())
def test_truncated_frame_does_not_swallow_the_next(items: list[Any], data: st.DataObject) -> None:
    wire = bytearray()
    want = []
    frames = [sim_encode.encode(*r) for r in items]
    for k, reading in enumerate(items):
        frame = frames[k]
        if k % 2 == 0 and k < len(items) - 1:
            cut = data.draw(st.integers(1, len(frame) - 1))
            # If the lost tail equals the head of the next frame, the bytes *are* the whole frame
            # (it decodes, correctly) and the next one is the loss: the wire cannot tell them apart.
            assume(frame[cut:] != frames[k + 1][: len(frame) - cut])
            wire += frame[:cut]
        else:
            wire += frame
            want.append(reading)
    got, errors = decode_all(bytes(wire))
    assert got == want and errors >= len(items) // 2


KIND_DIR = Path(__file__).resolve().parents[2] / "devices" / "parking"


def test_readme_examples_decode_as_shown() -> None:
    """The README's example bytes and readings are the code's, not hand-typed guesses."""
    text = (KIND_DIR / "README.md").read_text(encoding="utf-8")
    pairs = re.findall(r"^((?:[0-9A-F]{2} )+[0-9A-F]{2})\n-> (.+)$", text, re.M)
    assert len(pairs) >= 3
    for hx, shown in pairs:
        data = bytes.fromhex(hx)
        reading = ast.literal_eval(shown)
        assert codec.decode(data) == (len(data), reading)
        assert sim_encode.encode(*reading) == data
