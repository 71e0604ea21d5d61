"""Outages around the gateway agent: a broker restart loses nothing; a power cut (SIGKILL at a
random moment, possibly mid-append, then a restart) loses only what the verifier's rules allow:
no event older than ~300 ms, no periodic reading older than one group-sync interval."""

from __future__ import annotations

import pytest

from hil import scenarios
from hil.rig import INTERPRETERS

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("interpreter", INTERPRETERS)
def test_broker_restart_loses_nothing(interpreter: str) -> None:
    out = scenarios.broker_restart(interpreter, seconds=6.0)
    report = out.report
    assert out.broker_restarts == 1
    assert report.ok, report.summary()
    for kind in ("parking", "thermometer", "manhole"):
        k = report.kinds[kind]
        assert k.excusable == 0 and k.received >= k.expected > 5, report.summary()
    assert out.leftovers == []


@pytest.mark.parametrize("interpreter", INTERPRETERS)
def test_power_cuts_keep_the_rules(interpreter: str) -> None:
    out = scenarios.power_cut(interpreter, kills=2, seed=11 if interpreter == "cpython" else 12)
    report = out.report
    assert out.kills == 2
    assert report.ok, report.summary()
    for kind in ("parking", "thermometer", "manhole"):
        assert report.kinds[kind].expected > 0, report.summary()
    assert out.status is not None and out.status["boot"] >= 3  # two reboots after the first boot
    assert out.leftovers == []
