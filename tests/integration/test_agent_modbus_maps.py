"""The gateway agent (CPython and the MicroPython unix port) polling a bus of water stations in
three register layouts (the built-in one and the two vendor maps of devices/water/sample.json)
served by pymodbus: every reading it uplinks is exactly what the slave serves, as pymodbus reads
the registers back, and each station is read by as few requests as its map allows."""

from __future__ import annotations

import json
from pathlib import Path

import cbor2
import pytest

from hil.rig import INTERPRETERS, Rig
from hil.verify import _codecs, readings_of

pytestmark = pytest.mark.integration

SAMPLE = Path(__file__).resolve().parents[2] / "devices" / "water" / "sample.json"


@pytest.mark.parametrize("interpreter", INTERPRETERS)
def test_agent_reads_vendor_register_maps(interpreter: str) -> None:
    layouts = [s for s in json.loads(SAMPLE.read_text(encoding="utf-8"))["slaves"] if "map" in s]
    assert len(layouts) == 2
    with Rig(interpreter, parking=0, thermometers=0, lids=0, water=((1, "ABCD"),), water_layouts=layouts,
             poll_ms=300) as rig:
        assert rig.agent is not None
        rig.start_agent()
        rig.run(3.0)
        rig.drain()
        report = rig.verify()
        assert report.ok, report.summary()
        water = report.kinds["water"]
        assert water.received >= 6 and water.invented == 0, report.summary()
        assert rig.sub is not None
        codecs = _codecs()
        sensors = {r[0] for p in rig.sub.payloads("up") for r in readings_of(cbor2.loads(p), codecs)}
        assert sensors == {"W-01", "WQ-Gongchen-03", "WQ-Sanbao-Sluice-04"}, sensors
        status = rig.last_status()
        assert status is not None and status["errors"] == {}, status
    assert rig.leftovers() == []
