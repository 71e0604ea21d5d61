"""bench/collector_throughput.py runs end to end (--quick: real Mosquitto, InfluxDB and VictoriaMetrics,
the collector as a subprocess), prints its figures, verifies what it wrote, and saves and compares
figures. No speed is asserted: goals are the bench's business, not a test's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent.parent
SCRIPT = ROOT / "bench" / "collector_throughput.py"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", *args], capture_output=True, text=True, timeout=300, cwd=ROOT
    )


def test_quick_run_prints_figures_and_saves(tmp_path: Path) -> None:
    saved = tmp_path / "figures.json"
    r = _run("--save", str(saved))
    out = r.stdout + r.stderr
    assert r.returncode == 0, out  # --quick: no goal can fail it, only a lost or doubled reading
    for label in (
        "readings/s end to end",
        "readings per CPU-second",
        "us per reading",
        "us collector CPU per reading:",
        "ceiling",
        "collector/ceiling",
        "verified",
    ):
        assert label in r.stdout, out
    assert "field types: ok" in r.stdout and "PROBLEM" not in r.stdout, out
    fig = json.loads(saved.read_text())
    assert fig["readings"] == 20_000 and fig["store"] == "influxdb"
    assert fig["rate"] > 0 and fig["ceiling_rate"] > 0
    assert fig["ratio"] == pytest.approx(fig["rate"] / fig["ceiling_rate"], rel=0.01)
    cpu = fig["collector_cpu_user_s"] + fig["collector_cpu_sys_s"]
    assert cpu > 0 and fig["collector_cpu_s"] == pytest.approx(cpu, abs=0.02)
    # collector_cpu_s is saved rounded to 10 ms, i.e. 0.25 us per reading over 20,000 readings
    assert fig["cpu_us_per_reading"] == pytest.approx(fig["collector_cpu_s"] / 20_000 * 1e6, abs=0.3)

    fig["rate"] = fig["rate"] * 100  # pretend we used to be a hundred times faster
    saved.write_text(json.dumps(fig))
    slower = _run("--no-ceiling", "--store", "vm", "--baseline", str(saved))
    assert slower.returncode == 1 and "fell" in slower.stdout, slower.stdout + slower.stderr
    assert "store victoriametrics" in slower.stdout and "PROBLEM" not in slower.stdout, slower.stdout

    bad = _run("--no-ceiling", "--baseline", str(tmp_path / "missing.json"))
    assert bad.returncode == 2 and "cannot read baseline" in bad.stderr
