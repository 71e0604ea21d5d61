"""collector/_fastup.c (the compiled `/up` step: CBOR bytes straight to line protocol) gives byte for
byte what the pure path gives (decode.decode_batch, then Validator.batch_lines), with the same
refusals, on random, unusual and hostile payloads; and the collector falls back to the pure path,
saying so, when the build is missing, stale or switched off (CITYBRAIN_PURE_PYTHON=1)."""

from __future__ import annotations

import decimal
import logging
import math
import os
import random
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector import decode
from collector.config import DecodeConfig, GatewayInfo
from collector.validate import Reject, Validator, load_kinds

ROOT = Path(__file__).resolve().parent.parent.parent
NOW_MS = 1_780_000_000_000


def _built() -> tuple[object, str]:
    """The build, current, even where CITYBRAIN_PURE_PYTHON=1 keeps the collector off it: the tests
    of the build itself run in both modes."""
    saved = os.environ.pop("CITYBRAIN_PURE_PYTHON", None)
    try:
        return decode.load_fastup()
    finally:
        if saved is not None:
            os.environ["CITYBRAIN_PURE_PYTHON"] = saved


FASTUP, WHY = _built()
needs_build = pytest.mark.skipif(FASTUP is None, reason=f"collector/_fastup.c cannot run here: {WHY}")


@pytest.fixture(autouse=True)
def compiled_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """decode.decode_up and Validator.batch_body use the build (when there is one) in every test."""
    monkeypatch.setattr(decode, "FASTUP", FASTUP)


KINDS = load_kinds()
GATEWAYS = {"gw-1": GatewayInfo(site="wulin p3", district="xi,hu")}  # tags that need escaping


def pure_float(x: float) -> str:
    """What the pure path writes for a float (collector/hotpath.py, collector/lineproto.py)."""
    text = repr(x)
    return text[:-2] if text.endswith(".0") else text


# --- floats ----------------------------------------------------------------------------------------

EDGE_FLOATS = [
    0.0, -0.0, 1.0, -1.0, 36.6, 0.1 + 0.2, 1e16, -1e16, 1e15, 9999999999999998.0, 2.0**53, 2.0**53 - 1,
    2.0**53 + 2, 1e22, 1e23, 5e-324, -5e-324, 2.2250738585072014e-308, 2.225073858507201e-308,
    1e-3, 0.001, 0.0009999999999999998, 1e-4, 9.999e-05, 1.7976931348623157e308, 0.5, 123456789012345.6,
    6.912207126617432, 20.914989471435547, 0.40309491753578186, 583.669189453125, 4503599627370497.5,
    10.943466186523438, 195.95693969726562, 17.5, 36.5, 2.5, 0.25, 0.125, 0.375, 2.0**52 + 0.5,
]  # fmt: skip


@needs_build
def test_float_text_edges() -> None:
    assert FASTUP is not None
    for x in EDGE_FLOATS:
        assert FASTUP.float_text(x) == pure_float(x), x
    assert FASTUP.float_text(-0.0) == "-0" and FASTUP.float_text(1e16) == "1e+16"
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError):
            FASTUP.float_text(bad)


@needs_build
def test_float_text_sweep() -> None:
    """200,000 doubles of the shapes a sensor sends (short decimals, widened float32s, integers) and
    of no shape at all (random bits): the same text as repr."""
    assert FASTUP is not None
    rnd = random.Random(8)
    for _ in range(50_000):
        bits = struct.unpack("<d", rnd.getrandbits(64).to_bytes(8, "little"))[0]
        single = struct.unpack("<f", rnd.getrandbits(32).to_bytes(4, "little"))[0]
        short = round(rnd.uniform(-1e5, 1e5), rnd.randint(0, 9))
        ratio = rnd.randint(0, 10 ** rnd.randint(1, 17)) / 10 ** rnd.randint(0, 17)
        for x in (bits, single, short, ratio):
            if math.isfinite(x):
                assert FASTUP.float_text(x) == pure_float(x), x


def _ends_on_a_tie(x: float) -> bool:
    """repr(x) has k fraction digits and x * 10^k is exactly n + 1/2: repr chose between two
    equally near neighbours (a float32 widened to a double, 10.9434661865234375, is often one)."""
    text = repr(abs(x))
    if "e" in text:
        return False
    k = len(text.partition(".")[2].rstrip("0"))
    return (decimal.Decimal(abs(x)).scaleb(k) % 1) == decimal.Decimal("0.5")


@needs_build
def test_float_text_ties() -> None:
    """Where repr's digits stop at an exact tie the compiled text takes the even neighbour, as repr
    does: float32 sensor values widened to doubles, thousands of them ending on a tie."""
    assert FASTUP is not None
    rnd = random.Random(9)
    ties = 0
    for _ in range(40_000):
        x = struct.unpack("<f", struct.pack("<f", rnd.uniform(-2000, 2000) * 10 ** rnd.randint(-3, 4)))[0]
        assert FASTUP.float_text(x) == pure_float(x), x
        ties += _ends_on_a_tie(x)
    assert ties > 1000, ties  # the case under test did occur


@needs_build
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_float_text_any(x: float) -> None:
    assert FASTUP is not None and FASTUP.float_text(x) == pure_float(x)


# --- CBOR written by hand: every encoding a sender may choose --------------------------------------


def head(major: int, n: int, wide: int = 0) -> bytes:
    """A CBOR head; `wide` forces a longer argument than needed (legal, not canonical)."""
    if n < 24 and not wide:
        return bytes([major << 5 | n])
    for ai, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * size) and size >= wide:
            return bytes([major << 5 | ai]) + n.to_bytes(size, "big")
    raise ValueError(n)


def cint(v: int, wide: int = 0) -> bytes:
    return head(0, v, wide) if v >= 0 else head(1, -1 - v, wide)


def cfloat(x: float, width: int) -> bytes:
    """x as a half, single or double, when that width holds it exactly; else as a double."""
    for w, code, fmt in ((2, 0xF9, ">e"), (4, 0xFA, ">f"), (8, 0xFB, ">d")):
        if w < width:
            continue
        try:
            packed = struct.pack(fmt, x)
        except OverflowError:
            continue
        back = struct.unpack(fmt, packed)[0]
        if back == x or (math.isnan(x) and math.isnan(back)) or w == 8:
            return bytes([code]) + packed
    raise AssertionError


def ctext(s: str, wide: int = 0) -> bytes:
    b = s.encode("utf-8", "surrogatepass")
    return head(3, len(b), wide) + b


def carray(items: list[bytes], indefinite: bool = False) -> bytes:
    if indefinite:
        return b"\x9f" + b"".join(items) + b"\xff"
    return head(4, len(items)) + b"".join(items)


def cmap(pairs: list[tuple[bytes, bytes]], indefinite: bool = False) -> bytes:
    body = b"".join(k + v for k, v in pairs)
    return (b"\xbf" + body + b"\xff") if indefinite else head(5, len(pairs)) + body


widths = st.sampled_from([0, 0, 0, 1, 2, 4, 8])
# Values the C scan walks (the reading is then judged one by one, on the C route or the general one)
scalars = st.one_of(
    st.builds(cint, st.integers(-(1 << 64), (1 << 64) - 1), widths),
    st.builds(cfloat, st.floats(), st.sampled_from([2, 4, 8])),
    st.sampled_from(
        [
            b"\xf4", b"\xf5", b"\xf6", b"\xf7",  # false true null undefined
            b"\x42ab", b"\x80", b"\xa0",  # bytes, empty array and map
        ]
    ),
    st.builds(ctext, st.text(max_size=4), widths),
)  # fmt: skip
# Values the scan leaves to the pure path (the whole payload then takes it)
structural = st.sampled_from(
    [
        b"\xf8\x10", b"\xe5",  # simple values
        b"\xc1\x1a\x00\x00\x00\x01",  # a tag
        b"\x61\xff",  # text that is not UTF-8
        b"\x63\xed\xa0\x80",  # a UTF-8-encoded surrogate
        b"\x9f\x01\xff", b"\xbf\xff",  # indefinite containers
        b"\x1c", b"\xff",  # reserved additional info, a stray break
    ]
)  # fmt: skip
odd_scalars = scalars | structural


@st.composite
def good_value(draw: st.DrawFn, kind_code: int, index: int) -> bytes:
    f = KINDS[kind_code].fields[index]
    if f.type is bool:
        return draw(st.sampled_from([b"\xf4", b"\xf5"]))
    if f.type is int:
        lo = int(f.lo) if f.lo is not None else -(1 << 63)
        hi = int(f.hi) if f.hi is not None else (1 << 63) - 1
        return cint(draw(st.integers(lo, hi) | st.sampled_from([lo, hi])), draw(widths))
    lo_f = f.lo if f.lo is not None else -1e300
    hi_f = f.hi if f.hi is not None else 1e300
    x = draw(
        st.floats(lo_f, hi_f)
        | st.sampled_from([lo_f, hi_f, 0.0, -0.0]).filter(lambda v: lo_f <= v <= hi_f)
        | st.integers(0, 10**6).map(lambda n: round(lo_f + (hi_f - lo_f) * n / 10**6, 2))
    )
    return cfloat(x, draw(st.sampled_from([2, 4, 8])))


@st.composite
def fields_map(draw: st.DrawFn, kind_code: int, odd: st.SearchStrategy[bytes]) -> bytes:
    n = len(KINDS[kind_code].fields) if kind_code in KINDS else 3
    how = draw(st.integers(0, 9))
    if how <= 5 and kind_code in KINDS:  # the usual: ascending indexes, good values
        idx = sorted(draw(st.sets(st.integers(0, n - 1), min_size=1)))
        return cmap([(cint(i), draw(good_value(kind_code, i))) for i in idx])
    if how == 6 and kind_code in KINDS:  # good values in another order (rarely, an index twice)
        idx = draw(st.permutations(sorted(draw(st.sets(st.integers(0, n - 1), min_size=1)))))
        if draw(st.integers(0, 9)) == 0:
            idx = [*idx, idx[0]]
        return cmap([(cint(i), draw(good_value(kind_code, i))) for i in idx])
    # distinct indexes, each in any encoding (now and then one twice: a duplicate key)
    index = st.lists(st.integers(-2, n + 1), max_size=4, unique=True)
    keys = [cint(i, draw(widths)) for i in draw(index)]
    if keys and draw(st.integers(0, 9)) == 0:
        keys.append(keys[0])
    if odd is not scalars:  # text keys and indefinite maps: the pure path's
        keys += [ctext(t) for t in draw(st.lists(st.text(max_size=2), max_size=2, unique=True))]
        return cmap([(k, draw(odd)) for k in keys], draw(st.booleans()))
    return cmap([(k, draw(odd)) for k in keys])


@st.composite
def good_reading(draw: st.DrawFn) -> bytes:
    code = draw(st.sampled_from([1, 2, 3, 4]))
    sensor = draw(st.sampled_from(["T-1", "T-2", "P-1", "W 1", "x,y=z", "温度-1"]))
    dt = draw(st.integers(-5000, 5000))
    return carray([ctext(sensor, draw(widths)), cint(code, draw(widths)), cint(dt, draw(widths)),
                   draw(fields_map(code, scalars))])  # fmt: skip


@st.composite
def hostile_reading(draw: st.DrawFn, odd: st.SearchStrategy[bytes]) -> bytes:
    code = draw(st.sampled_from([1, 2, 3, 4, 4, 4, 9, -1, (1 << 64) - 1]))
    if draw(st.integers(0, 9)) == 0:  # not a 4-item array at all
        return draw(odd | st.builds(carray, st.lists(odd, max_size=5)))
    sensor = draw(
        st.sampled_from(["T-1", "T-2", "P-1", "W 1", "x,y=z", "温度-1"]).map(ctext)
        | st.builds(ctext, st.text(max_size=5), widths)
        | odd
    )
    kind = cint(code, draw(widths)) if draw(st.integers(0, 9)) else draw(odd)
    dt = draw(
        st.builds(cint, st.integers(-5000, 5000), widths)
        | st.builds(cint, st.integers(-(1 << 64), (1 << 64) - 1))
        | odd
    )
    fields = draw(fields_map(code, odd))
    items = [sensor, kind, dt, fields]
    if draw(st.integers(0, 9)) == 0:
        items = items[: draw(st.integers(0, 3))] + [b"\x01"] * draw(st.integers(0, 2))
    return carray(items, odd is not scalars and draw(st.booleans()))


def reading() -> st.SearchStrategy[bytes]:
    """Mostly good readings; hostile ones the C step judges (wrong types, ranges, ids, shapes:
    the general path one by one), and now and then one the scan leaves to the pure path."""
    return st.one_of(
        good_reading(), good_reading(), good_reading(), hostile_reading(scalars), hostile_reading(odd_scalars)
    )


@st.composite
def payload(draw: st.DrawFn) -> bytes:
    readings = carray(draw(st.lists(reading(), min_size=1, max_size=10)))
    pairs = [
        (cint(0), cint(1)),
        (cint(1), cint(draw(st.integers(0, 3)))),
        (cint(2), cint(draw(st.integers(0, 1 << 32)))),
        (
            cint(3),
            cint(draw(st.sampled_from([NOW_MS] * 5 + [NOW_MS - 60_000, 0, (1 << 64) - 1])), draw(widths)),
        ),
        (cint(4), readings),
    ]
    trouble = draw(st.integers(0, 29))  # 1-10: something wrong with the message itself
    if trouble == 1:
        pairs.append((cint(draw(st.sampled_from([0, 3, 4]))), cint(5)))  # a key twice
    elif trouble == 2:
        pairs.append((cint(5), ctext("gas")))  # an alarm key on /up
    elif trouble == 3:
        del pairs[draw(st.integers(0, 4))]
    elif trouble == 4:
        pairs[0] = (cint(0), draw(st.sampled_from([cint(2), cint(-1), ctext("1"), b"\xf5"])))
    elif trouble == 5:
        pairs[draw(st.integers(1, 3))] = (cint(2), cint(-5))
    elif trouble == 6:
        pairs[4] = (cint(4), draw(odd_scalars))
    pairs = draw(st.permutations(pairs)) if draw(st.booleans()) else pairs
    data = cmap(pairs, trouble == 7)
    if trouble == 8:
        data += b"\x00"  # trailing bytes
    elif trouble == 9:
        data = data[: draw(st.integers(0, max(0, len(data) - 1)))]  # truncated
    elif trouble == 10:
        data = b"\xd9\xd9\xf7" + data  # self-described CBOR (a tag)
    return data


def run_pure(v: Validator, gw: str, data: bytes) -> tuple[object, ...]:
    try:
        batch = decode.decode_batch(data, max_bytes=65536)
    except decode.Refused as r:
        return ("refused", r.reason, r.detail)
    return outcome(v.batch_body(gw, batch, NOW_MS))


def run_compiled(v: Validator, gw: str, data: bytes) -> tuple[tuple[object, ...], bool]:
    try:
        batch = decode.decode_up(data, max_bytes=65536)
    except decode.Refused as r:
        return ("refused", r.reason, r.detail), False
    return outcome(v.batch_body(gw, batch, NOW_MS)), isinstance(batch, decode.RawBatch)


def outcome(result: tuple[bytes, int, list[tuple[int, Reject, object]]]) -> tuple[object, ...]:
    body, n, rejects = result
    # the refused reading as its dead letter holds it (repr: NaN != NaN, yet the same reading)
    return ("ok", body, n, [(i, r.reason, r.detail, repr(item)) for i, r, item in rejects])


def pair(**config: int) -> tuple[Validator, Validator]:
    cfg = DecodeConfig(**config)  # type: ignore[arg-type]
    return Validator(cfg, KINDS, GATEWAYS), Validator(cfg, KINDS, GATEWAYS)


@needs_build
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(payload(), min_size=1, max_size=4), st.sampled_from(["gw-1", "gw-2"]))
def test_compiled_equals_pure(payloads: list[bytes], gw: str) -> None:
    """The same body, line count and refusals (reason, detail, the refused reading), or the same
    refusal of the whole message, payload after payload (a validator's state carries over:
    the sensor bound is 3 here, so `too_many_sensors` is reached)."""
    pure, compiled = pair(max_sensors_per_gateway=3, min_time="2020-01-01T00:00:00Z")
    for data in payloads:
        assert run_compiled(compiled, gw, data)[0] == run_pure(pure, gw, data)


@needs_build
def test_compiled_step_takes_the_usual_batches() -> None:
    """The equality above is not won by sending everything to the pure path: an edge-encoded batch
    (edge/protocol.py, what gateways send) and every encoding of its numbers take the C step."""
    from edge import protocol

    enc = protocol.BatchEncoder(1024)
    enc.begin(7, 42, NOW_MS)
    assert enc.add("T-1", 4, NOW_MS, (36.6, -0.0, 7, 250, True))
    assert enc.add("W-1", 3, NOW_MS + 5, (7.0, None, None, None, None, None, -1.0, 1e5, 5e-324))
    data = bytes(enc.finish())
    pure, compiled = pair()
    result, raw = run_compiled(compiled, "gw-1", data)
    assert raw and result == run_pure(pure, "gw-1", data)
    assert result[1] == (
        b"thermometer,district=xi\\,hu,gw=gw-1,sensor=T-1,site=wulin\\ p3 "
        b"body_c=36.6,ambient_c=-0,seq=7i,distance_cm=250i,mask=true 1780000000000\n"
        b"water,district=xi\\,hu,gw=gw-1,sensor=W-1,site=wulin\\ p3 "
        b"ph=7,level_m=-1,flow_m3_h=100000,temp_c=5e-324 1780000000005"
    )
    for wide in (0, 1, 2, 4, 8):
        body = cmap([(cint(0, wide), cfloat(36.5, 2)), (cint(2, wide), cint(9, wide))])
        items = carray([ctext("T-1", wide), cint(4, wide), cint(-3, wide), body])
        header = [(cint(k, wide), cint(v, wide)) for k, v in ((0, 1), (1, 7), (2, 43), (3, NOW_MS))]
        data = cmap([*header, (cint(4, wide), carray([items]))])
        result, raw = run_compiled(compiled, "gw-1", data)
        assert raw and result == run_pure(pure, "gw-1", data), wide
        assert result[1].endswith(b" body_c=36.5,seq=9i 1779999999997")


@needs_build
def test_hostile_payloads_refused_as_before() -> None:
    """Duplicate keys at every depth, a widened int, NaN, a bool where an int is due, text for a
    float, an int beyond int64: the same verdicts and reasons as the pure path."""

    def one(value: bytes, index: int = 0, sensor: str = "T-1") -> bytes:
        return carray([ctext(sensor), cint(4), cint(0), cmap([(cint(index), value)])])

    reading_ok = one(cfloat(37.0, 8))
    header = [(cint(k), cint(v)) for k, v in ((0, 1), (1, 7), (2, 1), (3, NOW_MS))]
    cases = {
        "dup header key": cmap([*header, (cint(3), cint(NOW_MS)), (cint(4), carray([reading_ok]))]),
        "dup field key": carray(
            [ctext("T-1"), cint(4), cint(0), cmap([(cint(0), cfloat(37.5, 8)), (cint(0), cfloat(38.5, 8))])]
        ),
        "dup field key, two encodings": carray(
            [ctext("T-1"), cint(4), cint(0), cmap([(cint(0), cfloat(37.5, 8)), (cint(0, 8), cint(1))])]
        ),
        "dup large key": carray(
            [ctext("T-1"), cint(4), cint(0), cmap([(cint(1000), cint(1)), (cint(1000, 2), cint(2))])]
        ),
        "dup negative key": carray(
            [ctext("T-1"), cint(4), cint(0), cmap([(cint(-3), cint(1)), (cint(-3), cint(2))])]
        ),
        "widened": one(cint(37)),
        "nan": one(cfloat(math.nan, 2)),
        "inf": one(cfloat(math.inf, 4), 1),
        "bool for int": one(b"\xf5", 2),
        "text for float": one(ctext("36.6")),
        "int beyond int64": one(cint(1 << 63), 2),
        "zero-width sensor": one(cfloat(37.0, 8), sensor="T\u200b1"),
        "reserved index": one(b"\xf5", 5),
    }
    pure, compiled = pair()
    seen: dict[str, tuple[object, ...]] = {}
    for name, item in cases.items():
        if name.startswith("dup header"):
            data = item
        else:
            data = cmap([*header, (cint(4), carray([reading_ok, item, reading_ok]))])
        got, _ = run_compiled(compiled, "gw-1", data)
        assert got == run_pure(pure, "gw-1", data), name
        seen[name] = got
    assert seen["dup header key"][:2] == ("refused", "duplicate_key")
    for name in ("dup field key", "dup field key, two encodings", "dup large key", "dup negative key"):
        assert seen[name][:2] == ("refused", "duplicate_key"), name
    reasons = {name: got[3][0][1] for name, got in seen.items() if got[0] == "ok" and got[3]}
    assert reasons == {
        "nan": "not_finite",
        "inf": "not_finite",
        "bool for int": "field_type",
        "text for float": "field_type",
        "int beyond int64": "out_of_range",
        "zero-width sensor": "bad_sensor_id",
        "reserved index": "bad_field",
    }
    assert seen["widened"][2] == 3 and b"body_c=37 " in seen["widened"][1]  # type: ignore[operator]


# --- which path runs -------------------------------------------------------------------------------


def _state(env: dict[str, str], cwd: Path = ROOT) -> list[str]:
    code = "from collector import decode; print(decode.FASTUP is not None); print(decode.FASTUP_STATE)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env={**os.environ, **env}, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def test_pure_python_on_request() -> None:
    assert _state({"CITYBRAIN_PURE_PYTHON": "1"}) == ["False", "CITYBRAIN_PURE_PYTHON=1"]


@needs_build
@pytest.mark.skipif(bool(os.environ.get("CITYBRAIN_PURE_PYTHON")), reason="CITYBRAIN_PURE_PYTHON is set")
def test_the_build_runs_when_current() -> None:
    assert _state({}) == ["True", "compiled"]


def _copy(tmp_path: Path, *, build: bool, stamp: str | None) -> Path:
    copy = tmp_path / "collector"
    copy.mkdir()
    for source in (ROOT / "collector").iterdir():
        if source.suffix in (".py", ".c") or (build and source.name.startswith("_fastup.")):
            (copy / source.name).write_bytes(source.read_bytes())
    if stamp is not None:
        (copy / "_fastup.build").write_text(stamp)
    return tmp_path


def test_without_a_build_the_pure_path_runs(tmp_path: Path) -> None:
    """A plain checkout (no compiled file): the pure path, and why."""
    where = _copy(tmp_path, build=False, stamp=None)
    env = {"PYTHONPATH": f"{where}{os.pathsep}{ROOT}", "CITYBRAIN_PURE_PYTHON": ""}
    assert _state(env, where) == ["False", "collector/_fastup.c is not built (scripts/setup builds it)"]


@needs_build
def test_a_stale_build_is_not_run(tmp_path: Path) -> None:
    """A build made from another _fastup.c (edited or checked out since): the pure path."""
    where = _copy(tmp_path, build=True, stamp="0" * 64)
    env = {"PYTHONPATH": f"{where}{os.pathsep}{ROOT}", "CITYBRAIN_PURE_PYTHON": ""}
    state = _state(env, where)
    assert state[0] == "False" and "changed since it was built" in state[1]


@pytest.mark.parametrize("built", [True, False], ids=["build", "no build"])
def test_the_path_is_logged_and_exported(
    built: bool, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Logged once when the pipeline starts (a warning, with the reason, for the pure path), and
    exported: the metric `compiled{module="fastup"}` and /healthz's `up_path`."""
    from collector.config import Config
    from collector.metrics import Metrics
    from collector.service import Pipeline

    if built and FASTUP is None:
        pytest.skip(f"collector/_fastup.c cannot run here: {WHY}")
    if not built:
        monkeypatch.setattr(decode, "FASTUP", None)
        monkeypatch.setattr(
            decode, "FASTUP_STATE", "collector/_fastup.c is not built (scripts/setup builds it)"
        )
    metrics = Metrics()
    with caplog.at_level(logging.INFO, logger="collector.service"):
        Pipeline(Config(), writer=None, dead_letters=None, metrics=metrics, ack=print)  # type: ignore[arg-type]
    said = [r for r in caplog.records if "/up batches" in r.getMessage()]
    assert len(said) == 1
    if built:
        assert said[0].levelno == logging.INFO and "compiled" in said[0].getMessage()
    else:
        assert said[0].levelno == logging.WARNING and "is not built" in said[0].getMessage()
    assert f'citybrain_collector_compiled{{module="fastup"}} {int(built)}' in metrics.render()
    assert decode.up_path() == ("compiled" if built else f"pure Python: {decode.FASTUP_STATE}")
