"""bench/payload_size.py runs, reports the CBOR/JSON ratio, and saves and compares figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
SCRIPT = ROOT / "bench" / "payload_size.py"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120,
                          cwd=str(ROOT))


def test_bench_reports_ratio_and_saves(tmp_path: Path) -> None:
    saved = tmp_path / "figures.json"
    r = _run("--save", str(saved))
    assert "ratio" in r.stdout and "B/reading" in r.stdout, r.stdout + r.stderr
    fig = json.loads(saved.read_text())
    assert fig["readings"] == 50
    assert fig["ratio"] == round(fig["cbor_bytes"] / fig["json_bytes"], 4)
    assert set(fig["sources"]) == {"parking", "manhole", "water", "thermometer"}
    assert r.returncode == (0 if fig["ratio"] <= 0.35 else 1)


def test_bench_baseline_flags_growth(tmp_path: Path) -> None:
    base = tmp_path / "base.json"
    _run("--save", str(base))
    same = _run("--baseline", str(base))
    assert "baseline" in same.stdout and "+0.0%" in same.stdout, same.stdout
    fig = json.loads(base.read_text())
    fig["cbor_per_reading"] = fig["cbor_per_reading"] / 2  # pretend we used to be twice as small
    base.write_text(json.dumps(fig))
    grown = _run("--baseline", str(base))
    assert grown.returncode == 1 and "grew" in grown.stdout, grown.stdout
    bad = _run("--baseline", str(tmp_path / "missing.json"))
    assert bad.returncode == 2 and "cannot read baseline" in bad.stderr
