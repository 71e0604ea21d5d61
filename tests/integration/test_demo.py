"""The main job (scripts/demo's pipeline stage) keeps working: sensors to InfluxDB, checked."""

from __future__ import annotations

import pytest

from hil import demo

pytestmark = pytest.mark.integration


def test_pipeline_demo_delivers_every_reading_once_into_influxdb(capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.run("cpython", 4.0, 2) == 0
    out = capsys.readouterr().out
    assert "demo OK" in out and "MISMATCH" not in out
