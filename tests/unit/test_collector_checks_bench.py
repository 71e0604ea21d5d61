"""bench/collector_checks.py runs, prints its figures and saves them; it asserts no speed goal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import collector_checks


def test_checks_bench_prints_and_saves(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "checks.json"
    assert collector_checks.main(["--messages", "20", "--passes", "1", "--save", str(out)]) == 0
    text = capsys.readouterr().out
    assert "cbor2 decode" in text and "batch_lines" in text and "format floor" in text
    assert "/up route" in text
    saved = json.loads(out.read_text())
    assert saved["route_us"] > 0 and saved["up_path"] in text
    assert saved["readings"] == 1000 and saved["batch_lines_us"] > 0
    assert 0 < saved["format_floor_us"] < saved["batch_lines_us"] and saved["floats_per_reading"] > 1
    missing = str(tmp_path / "none")
    assert collector_checks.main(["--messages", "20", "--passes", "1", "--baseline", missing]) == 2
