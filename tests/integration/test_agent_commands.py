"""Operator commands to a running agent over the broker: CBOR on `<prefix>/<gw>/cmd`, the reply
on `<prefix>/<gw>/reply`, on both interpreters, while sensors keep reporting."""

from __future__ import annotations

import pytest

from hil import scenarios
from hil.rig import INTERPRETERS

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("interpreter", INTERPRETERS)
def test_command_round_trip(interpreter: str) -> None:
    out = scenarios.commands(interpreter)
    r = out.replies
    status = r["hil-status"]
    assert status["ok"] is True and status["error"] is None
    assert status["result"]["errors"] == {} and status["result"]["log"]["boot"] == 1
    assert r["hil-set"] == {"id": "hil-set", "ok": True, "error": None, "result": {"sources": 1}}
    assert r["hil-flush"]["ok"] is True and "pending" in r["hil-flush"]["result"]
    unknown = r["hil-unknown"]
    assert unknown["ok"] is False and unknown["error"].startswith("unknown_op")
    assert unknown["id"] == "hil-unknown" and unknown["result"] is None
    bad = r["malformed"]
    assert bad["ok"] is False and bad["id"] is None and bad["error"].startswith("bad_cbor")
    assert out.report.ok, out.report.summary()  # the sensors were not disturbed
    assert out.leftovers == []
