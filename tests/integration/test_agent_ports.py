"""Ports that come back: every serial adapter and the Modbus bus's adapter are pulled mid-run and
plugged back under the same names (new ptys, as udev's by-id links give), and readings resume
without an agent restart: the parking frames written after the replug all arrive, the pymodbus
slave is polled again, and each loss is counted (`port_down`) in the retained status."""

from __future__ import annotations

import cbor2
import pytest

from hil.rig import INTERPRETERS, Rig
from hil.verify import codecs_by_code, readings_of

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("interpreter", INTERPRETERS)
def test_unplugged_ports_resume_without_restart(interpreter: str) -> None:
    with Rig(interpreter, parking=2, thermometers=0, lids=0, water=((1, "ABCD"),), speed=10.0,
             poll_ms=200) as rig:
        assert rig.agent is not None and rig.sub is not None
        rig.start_agent()
        rig.run(1.5)
        rig.unplug()
        rig.run(2.5)  # the agent finds the ports dead and gone, and backs off
        back = rig.replug()  # returns when the agent has reopened the serial ports
        rig.run(6.0)
        rig.drain()
        assert rig.agent.alive() and rig.agent.starts == 1, rig.agent.log_tail()
        report = rig.verify()
        # With what the agent said and counted: a departure was lost once in ~45 loaded runs
        # (2026-12-07, not reproduced since; docs/hil.md "Not done yet").
        assert report.ok, (report.summary(), rig.last_status(), rig.agent.log_tail(3000))
        parking = [e for e in rig.emissions if e.kind == "parking" and e.t > back]
        assert len(parking) > 3 and report.kinds["parking"].lost == 0, report.summary()
        codecs = codecs_by_code()
        water_after = [r for p in rig.sub.payloads("up") for r in readings_of(cbor2.loads(p), codecs)
                       if r[1] == "water" and r[2] / 1000 > back]
        assert len(water_after) >= 3, rig.agent.log_tail()
        status = rig.last_status()
        assert status is not None
        errors = status["errors"]
        assert errors.get(rig.devices[0].path, {}).get("port_down", 0) >= 1, errors
        assert errors.get(rig.bus.path if rig.bus else "", {}).get("port_down", 0) >= 1, errors
    assert rig.leftovers() == []
