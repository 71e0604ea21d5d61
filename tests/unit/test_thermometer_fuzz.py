"""Thermometer codec under hypothesis: any bytes are survived, readings are always in range and exact.

Random bytes, lines with bytes flipped, cut or inserted, noise between lines, any UTF-8 station id.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from devices.common.errors import BAD_LENGTH, DecodeError
from devices.thermometer import codec, sim_encode

SETTINGS = settings(max_examples=300, deadline=None)

station = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters=",*$"),
    min_size=1,
    max_size=12,
).filter(lambda s: len(s.encode("utf-8")) <= sim_encode.MAX_ID)
readings = st.tuples(
    st.one_of(station, st.sampled_from(["杭州东站-3", "西湖-B2", "GATE-01"])),
    st.tuples(
        st.integers(sim_encode.BODY_MIN, sim_encode.BODY_MAX).map(lambda c: c / 100.0),
        st.integers(sim_encode.AMBIENT_MIN, sim_encode.AMBIENT_MAX).map(lambda d: d / 10.0),
        st.integers(0, 0xFFFF),
        st.one_of(st.none(), st.integers(sim_encode.DIST_MIN, sim_encode.DIST_MAX)),
        st.booleans(),
    ),
)


def check_reading(result: Any) -> None:
    """A returned reading is well typed, in range, and survives a round trip unchanged."""
    sid, f = result
    assert type(sid) is str and 1 <= len(sid.encode("utf-8")) <= sim_encode.MAX_ID
    assert type(f[0]) is float and type(f[1]) is float and type(f[2]) is int and type(f[4]) is bool
    assert f[3] is None or type(f[3]) is int
    assert 30.0 <= f[0] <= 45.0 and -30.0 <= f[1] <= 60.0 and 0 <= f[2] <= 0xFFFF
    assert f[3] is None or sim_encode.DIST_MIN <= f[3] <= sim_encode.DIST_MAX
    line = sim_encode.encode(sid, f)
    assert codec.decode(line) == (len(line), result)


def decode_all(data: bytes) -> tuple[list[Any], list[int]]:
    out: list[Any] = []
    errors: list[int] = []
    pos = 0
    while True:
        n, r = codec.decode(data, pos)
        assert 0 <= n <= len(data) - pos
        assert n <= sim_encode.MAX_LINE or isinstance(r, DecodeError)  # a line is never longer
        if n == 0:
            assert r is None
            # what is held back is less than a line: a noisy port cannot make the reader hoard
            assert len(data) - pos < sim_encode.MAX_LINE
            return out, errors
        if isinstance(r, DecodeError):
            errors.append(r.code)
        else:
            check_reading(r)
            out.append(r)
        pos += n


@SETTINGS
@given(readings)
def test_decode_inverts_encode(reading: Any) -> None:
    line = sim_encode.encode(*reading)
    assert codec.decode(line) == (len(line), reading)
    assert codec.decode(b"x" + line + b"$", 1, 1 + len(line)) == (len(line), reading)


@SETTINGS
@given(st.binary(max_size=400))
def test_random_bytes_never_raise(data: bytes) -> None:
    decode_all(data)


@SETTINGS
@given(st.binary(min_size=sim_encode.MAX_LINE - 1, max_size=400).map(
    lambda b: b"$" + b.replace(b"\n", b"N").replace(b"$", b"S")))
def test_line_without_end_is_bad_length(data: bytes) -> None:
    n, r = codec.decode(data)
    assert n == sim_encode.MAX_LINE and isinstance(r, DecodeError) and r.code == BAD_LENGTH


@SETTINGS
@given(st.lists(readings, min_size=1, max_size=4), st.data())
def test_mutated_lines_never_give_a_wrong_reading(items: list[Any], data: st.DataObject) -> None:
    wire = bytearray(b"".join(sim_encode.encode(*r) for r in items))
    for _ in range(data.draw(st.integers(1, 3))):
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
    # Checked inside decode_all: every reading that comes out is typed, in range and round-trips.
    # (The NMEA XOR checksum lets two flips of the same bit in two bytes through, so unlike the
    # parking CRC it cannot promise a mutated line never decodes; see README.md.)
    decode_all(bytes(wire))


@SETTINGS
@given(st.lists(readings, min_size=1, max_size=4), st.data())
def test_one_flipped_bit_costs_exactly_its_line(items: list[Any], data: st.DataObject) -> None:
    lines = [sim_encode.encode(*r) for r in items]
    k = data.draw(st.integers(0, len(lines) - 1))
    hit = bytearray(lines[k])
    i = data.draw(st.integers(0, len(hit) - 1))
    hit[i] ^= 1 << data.draw(st.integers(0, 7))
    same_digit = i >= len(hit) - 4 and chr(hit[i]).upper() == chr(lines[k][i]).upper()
    lines[k] = bytes(hit)
    flush = ("GATE-09", (36.6, 20.0, 1, 50, True))  # traffic goes on: a line without its LF ends
    lines.append(sim_encode.encode(*flush))
    got, errors = decode_all(b"".join(lines))
    if same_digit:  # "*5c" for "*5C": the checksum digits are read in either case
        assert got == [*items, flush]
        return
    assert got == items[:k] + items[k + 1:] + [flush]
    assert errors


@SETTINGS
@given(st.lists(st.tuples(st.binary(max_size=60), readings), min_size=1, max_size=6))
def test_every_line_survives_noise_between_lines(chunks: list[Any]) -> None:
    """Noise and cut lines between good lines cost errors, never the good lines."""
    wire = bytearray()
    want = []
    for noise, reading in chunks:
        wire += noise.replace(b"$", b"#")
        wire += sim_encode.encode(*reading)
        want.append(reading)
    got, _ = decode_all(bytes(wire))
    assert got == want


@SETTINGS
@given(st.lists(readings, min_size=2, max_size=5), st.data())
def test_cut_line_does_not_swallow_the_next(items: list[Any], data: st.DataObject) -> None:
    wire = bytearray()
    want = []
    for k, reading in enumerate(items):
        line = sim_encode.encode(*reading)
        if k % 2 == 0 and k < len(items) - 1:
            wire += line[: data.draw(st.integers(1, len(line) - 2))]  # the LF never made it
        else:
            wire += line
            want.append(reading)
    got, errors = decode_all(bytes(wire))
    assert got == want and len(errors) >= len(items) // 2


KIND_DIR = Path(__file__).resolve().parents[2] / "devices" / "thermometer"


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
