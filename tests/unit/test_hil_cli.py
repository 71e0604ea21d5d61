"""`citybrain hil check|verify` without a rig: a bad scenario file is exit 2 with the key named; a
saved run is re-judged (exit 0 or 1) and its report redrawn."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from citybrain.cli import main


def test_check_accepts_a_shipped_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hil", "check", "city-block"]) == 0
    assert "city-block: 6 gateways, 60 s, 0 faults: OK" in capsys.readouterr().out


def test_check_refuses_a_bad_file_with_exit_2_naming_the_key(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('duration = "10s"\n[[gateways]]\nruntime = "cpython"\n'
                   '[[gateways.sensors]]\nkind = "parking"\ncount = 1\n'
                   '[[faults]]\nkind = "clock_unset_at_boot"\nat = "1s"\ngateway = "gw-01"\n')
    assert main(["hil", "check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.toml: faults[0].for: clock_unset_at_boot needs a duration > 0" in err


def test_verify_rejudges_a_saved_run_and_draws_its_report(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from devices.parking import codec as parking
    from tests.unit.test_hil_judge import HEARTBEAT, em, fmap, record, st  # the crafted-run helpers

    run = record([em(1, "gw-01", "P-1", "parking", HEARTBEAT)],
                 [st(1.5, "gw-01", "P-1", "parking", 1.01, fmap(parking, HEARTBEAT))])
    path = tmp_path / "run.json"
    path.write_text(json.dumps(run))
    assert main(["hil", "verify", str(path), "--report", str(tmp_path / "r.html")]) == 0
    out = capsys.readouterr().out
    assert "verdict: OK" in out and (tmp_path / "r.html").read_text().count('<svg class="plot"') == 4
    run["stored"] = []
    path.write_text(json.dumps(run))
    assert main(["hil", "verify", str(path)]) == 1
    assert "lost: parking gw-01 P-1" in capsys.readouterr().out
