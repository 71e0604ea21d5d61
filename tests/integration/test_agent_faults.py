"""Bad devices next to good ones: a serial device that spews garbage, a parking bus with corrupted
frames, and a Modbus slave that goes dead for a while (hil/scenarios/rig-faults.toml). Good readings
still arrive exactly once, every error is counted in the retained status (`errors`), and the agent
does not crash."""

from __future__ import annotations

import pytest

from hil import scenarios
from hil.rig import INTERPRETERS

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("interpreter", INTERPRETERS)
def test_garbage_and_dead_slave_are_counted_not_fatal(interpreter: str) -> None:
    out = scenarios.faults(interpreter, seconds=5.0)
    report = out.report
    assert report.ok, report.summary()
    for kind in ("parking", "thermometer", "manhole"):
        assert report.kinds[kind].received >= report.kinds[kind].expected > 3, report.summary()
    assert report.kinds["water"].received > 0  # the live slaves are still polled
    status = out.status
    assert status is not None and status["state"] == "online"
    errors = status["errors"]
    (dead,) = scenarios.faults_of(scenarios.twin("faults"), "dead_slave")
    assert errors.get(f"W-{dead.address:02d}", {}).get("modbus_timeout", 0) > 0, errors
    # Two serial ports report decode errors under their port name (a path; sensor ids are not):
    # the garbage device, and the parking bus with corrupted frames.
    port_errors = [who for who, row in errors.items() if who.startswith("/") and sum(row.values()) > 0]
    assert len(port_errors) == 2, errors
    if interpreter == "cpython":
        assert out.exit_code == 0
    assert out.leftovers == []
