"""A power cut tears the record being written; SIGKILL alone never does (the OS keeps what write()
accepted). The rig kills the agent at a random moment, then cuts the active segment inside its
newest record, or garbles a few of its bytes, as flash does when power fails mid-append. The next
boot must cut exactly that record, count it, keep every byte before it, and the run must still
keep the verifier's power-cut rules (docs/hil.md, "Torn writes")."""

from __future__ import annotations

import pytest

from hil import scenarios
from hil.rig import INTERPRETERS

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("interpreter", INTERPRETERS)
def test_torn_log_writes_are_cut_and_counted(interpreter: str) -> None:
    modes = ("truncate", "garbage", "truncate")
    out = scenarios.torn_power_cut(interpreter, modes=modes, seed=21 if interpreter == "cpython" else 22)
    report = out.report
    assert report.ok, report.summary()
    for kind in ("parking", "thermometer", "manhole"):
        assert report.kinds[kind].expected > 0, report.summary()
    assert [t.write.mode for t in out.tears] == list(modes)
    assert out.kills >= len(modes)
    for t in out.tears:
        w = t.write
        # The newest record at the kill, written moments before it: the one a power cut interrupts.
        assert w.age_s <= scenarios.TEAR_MAX_AGE_S, t
        if w.mode == "truncate":
            assert w.start < w.cut_at < w.end, t  # part of the record reached flash
        else:
            assert w.start <= min(w.garbled) and max(w.garbled) < w.end, t  # the magic byte too (hil/rig.py)
        # Recovery cut exactly the torn record (whatever part reached flash) and kept what preceded it.
        torn_bytes = w.cut_at - w.start if w.mode == "truncate" else w.end - w.start
        assert (t.log["torn_records"], t.log["torn_bytes"]) == (1, torn_bytes), t
        assert t.prefix_kept, t
    # Not vacuous: some torn reading had not been published before the kill, so the tear lost it
    # and only the verifier's window (it was read moments before the power cut) excused it.
    assert any(not t.delivered for t in out.tears), out.tears
    assert out.status is not None and out.status["boot"] == 1 + out.kills
    if interpreter == "cpython":
        assert out.exit_code == 0  # no crash: a clean SIGTERM stop at the end
    assert out.leftovers == []
