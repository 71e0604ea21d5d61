"""collector/hotpath.py compiled by mypyc (scripts/setup) returns exactly what its source returns,
and the collector picks the source when the build is missing, stale or switched off.
(tests/unit/test_collector_lines.py runs the whole hot path against the general path with both.)"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector import hotpath, validate
from collector.hotpath import FastSpec
from collector.validate import FieldSpec as F
from collector.validate import Kind, _fast_specs, load_kinds

ROOT = Path(__file__).resolve().parent.parent.parent
PURE = validate.load_pure_hotpath()
BUILT = not (hotpath.__file__ or "").endswith(".py")
needs_build = pytest.mark.skipif(
    not BUILT, reason="collector/hotpath.py is not compiled here (scripts/setup builds it with mypyc)"
)

ODD_KIND = Kind(
    9,
    "odd",
    (
        F("a b", bool),
        F("n", int),
        F("x", float),
        F("r", float, -1.0, 1.0),
        F("m", int, -(1 << 53) - 1, 1 << 60),
    ),
)
SPECS = [_fast_specs(k) for k in (*load_kinds().values(), ODD_KIND)]

keys = st.one_of(st.integers(-2, 10), st.booleans(), st.sampled_from([0.0, 1.0]), st.text(max_size=2))
values = st.one_of(
    st.booleans(),
    st.integers(-(1 << 64), 1 << 64),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1.0, 45.0, 1e16, 1e22, 5e-324, 36.6, 0.1 + 0.2]),
    # the int64 edges: a bound held as a C double would be 2**63 and let 2**63 through
    st.sampled_from([(1 << 63) - 1, 1 << 63, (1 << 63) + 1, -(1 << 63), -(1 << 63) - 1, (1 << 53) + 1]),
    st.text(max_size=3),
    st.none(),
)


def _good_value(spec: FastSpec) -> st.SearchStrategy[object]:
    _, want, lo, hi = spec
    if want is float:
        return st.one_of(
            st.floats(lo, hi), st.sampled_from([lo, hi, 0.0, -0.0, 1.0]).filter(lambda x: lo <= x <= hi)
        )
    if want is int:
        return st.integers(int(lo), int(hi))
    return st.booleans()


@needs_build
@settings(max_examples=500, deadline=None)
@given(spec=st.sampled_from(SPECS), fields=st.dictionaries(keys, values, max_size=10))
def test_compiled_equals_source_on_any_map(spec: tuple[FastSpec, ...], fields: dict[object, object]) -> None:
    assert hotpath.fields_text(spec, fields) == PURE.fields_text(spec, fields)


@needs_build
@settings(max_examples=500, deadline=None)
@given(data=st.data())
def test_compiled_equals_source_on_good_readings(data: st.DataObject) -> None:
    """Values of the field's type and range, in index order: the lines the collector writes."""
    spec = data.draw(st.sampled_from(SPECS))
    chosen = data.draw(st.lists(st.sampled_from(range(len(spec))), unique=True, min_size=1).map(sorted))
    fields: dict[object, object] = {i: data.draw(_good_value(spec[i])) for i in chosen}
    text = PURE.fields_text(spec, fields)
    assert text is not None and hotpath.fields_text(spec, fields) == text


@needs_build
@pytest.mark.skipif(bool(os.environ.get("CITYBRAIN_PURE_PYTHON")), reason="CITYBRAIN_PURE_PYTHON is set")
def test_the_collector_runs_the_build() -> None:
    assert validate.HOTPATH_COMPILED and validate.readings_lines is hotpath.readings_lines


def _chosen(env: dict[str, str]) -> str:
    code = (
        "from collector import validate; print(validate.HOTPATH_COMPILED, validate.readings_lines.__module__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_pure_python_on_request() -> None:
    # with a build, the source is loaded beside it; without one, the plain import is the source
    source = "collector.hotpath_pure" if BUILT else "collector.hotpath"
    assert _chosen({"CITYBRAIN_PURE_PYTHON": "1"}) == f"False {source}"


def test_without_a_build_the_source_runs(tmp_path: Path) -> None:
    """A plain checkout: the collector package without any compiled file."""
    copy = tmp_path / "collector"
    copy.mkdir()
    for source in (ROOT / "collector").glob("*.py"):
        (copy / source.name).write_bytes(source.read_bytes())
    env = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}", "CITYBRAIN_PURE_PYTHON": ""}
    code = "from collector import validate; print(validate.HOTPATH_COMPILED, validate._hotpath.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env={**os.environ, **env}, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", str(copy / "hotpath.py")]


@needs_build
def test_compiled_equals_source_at_every_bound() -> None:
    """Each field's bounds and their neighbours, one field at a time and all fields together.

    Found by this test: bounds typed `float` were held as C doubles by the build, so the int64
    bound 2**63 - 1 became 2**63 and 2**63 itself passed as an int field's value."""
    for spec in SPECS:
        for i, (_, want, lo, hi) in enumerate(spec):
            if want is int:
                edges: list[object] = [lo - 1, lo, lo + 1, hi - 1, hi, hi + 1]
            elif want is float:
                edges = [
                    math.nextafter(lo, -math.inf),
                    lo,
                    hi,
                    math.nextafter(hi, math.inf),
                    math.inf,
                    math.nan,
                ]
            else:
                edges = [True, False, 0, 1]
            for value in edges:
                fields: dict[object, object] = {i: value}
                assert hotpath.fields_text(spec, fields) == PURE.fields_text(spec, fields), (spec[i], value)
