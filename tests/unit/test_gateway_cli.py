"""`citybrain gateway`: config errors are clear and exit 2; check-config hides secrets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from citybrain.cli import main


def test_check_config_fills_defaults_and_masks_password(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "gw.json"
    cfg.write_text(json.dumps({"gateway_id": "gw-1", "broker": {"host": "h", "password": "s3cret"},
                               "sources": []}))
    assert main(["gateway", "check-config", "--config", str(cfg)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["broker"]["password"] == "***"
    assert out["uplink"]["batch_max"] == 50


@pytest.mark.parametrize(("text", "message"), [
    ("{not json", "is not valid JSON"),
    ('{"gateway_id": "gw-1", "broker": {"host": "h"}, "sources": [], "uplnk": {}}',
     "unknown key 'uplnk' (did you mean 'uplink'?)"),
])
def test_bad_config_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      text: str, message: str) -> None:
    cfg = tmp_path / "gw.json"
    cfg.write_text(text)
    assert main(["gateway", "run", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gateway", "check-config", "--config", str(tmp_path / "nope.json")]) == 2
    assert "cannot read" in capsys.readouterr().err


# Each of these passed every check before and was refused (or ignored) only by the running agent.
FIELD_MISTAKES = [
    ({"kind": "parking", "transport": "serial", "port": "/dev/ttyUSB0", "deadband": {"battery_mv": -5}},
     "config.sources[0].deadband.battery_mv: -5 is not a number >= 0"),
    ({"kind": "parking", "transport": "serial", "port": "/dev/ttyUSB0", "deadband": {"battery": 5}},
     "config.sources[0].deadband: parking has no field 'battery' (did you mean 'battery_mv'?)"),
    ({"kind": "thermometer", "transport": "serial", "port": "/dev/ttyUSB0", "alarm_limits": {"fever": 38.0}},
     "config.sources[0].alarm_limits: thermometer has no alarm limit 'fever' (did you mean 'fever_c'?)"),
    ({"kind": "water", "transport": "modbus", "port": "/dev/ttyUSB1",
      "slaves": [{"address": 1, "sensor": "W-1", "word_order": "cdab"}]},
     "config.sources[0].slaves[0].word_order: 'cdab' is not ABCD or CDAB (did you mean 'CDAB'?)"),
    ({"kind": "parking", "transport": "serial", "port": "/dev/ttyUSB0", "sensor": ["P-1"]},
     "config.sources[0]: unknown key 'sensor' (did you mean 'sensors'?)"),
    ({"kind": "parking", "transport": "serial", "port": "uart2:17", "sensors": ["P-1"]},
     "config.sources[0].port: 'uart2:17' is not uart<id>[:<tx>:<rx>]"),
    # register maps: a type the gateway cannot decode, registers two fields share
    ({"kind": "water", "transport": "modbus", "port": "/dev/ttyUSB1",
      "slaves": [{"address": 1, "sensor": "W-1", "map": {"ph": {"register": 0, "type": "uint"}}}]},
     "config.sources[0].slaves[0].map.ph.type: 'uint' is not one of float32, int16, uint16, int32, uint32 "
     "(did you mean 'uint16'?)"),
    ({"kind": "water", "transport": "modbus", "port": "/dev/ttyUSB1",
      "slaves": [{"address": 1, "sensor": "W-1", "map": {"ph": {"register": 4, "type": "int32"},
                                                          "temp_c": {"register": 5, "type": "int16"}}}]},
     "config.sources[0].slaves[0].map.temp_c: registers 5..5 (int16) overlap ph's 4..5 (int32)"),
]


def test_check_config_shows_the_read_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = Path(__file__).resolve().parents[2]
    sample = json.loads((root / "devices" / "water" / "sample.json").read_text(encoding="utf-8"))
    cfg = tmp_path / "gw.json"
    cfg.write_text(json.dumps({"gateway_id": "gw-1", "broker": {"host": "h"}, "sources": [sample]}))
    assert main(["gateway", "check-config", "--config", str(cfg)]) == 0
    slaves = json.loads(capsys.readouterr().out)["sources"][0]["slaves"]
    assert [s["plan"]["reads"] for s in slaves] == [[[0, 18, 9]], [[0, 18, 9]], [[0, 9, 8]],
                                                    [[100, 20, 7], [200, 3, 9]]]


@pytest.mark.parametrize(("source", "message"), FIELD_MISTAKES)
def test_check_config_refuses_what_the_agent_would(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   source: dict[str, object], message: str) -> None:
    cfg = tmp_path / "gw.json"
    cfg.write_text(json.dumps({"gateway_id": "gw-1", "broker": {"host": "h"}, "sources": [source]}))
    assert main(["gateway", "check-config", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_every_problem_reported_at_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "gw.json"
    cfg.write_text(json.dumps({"gateway_id": "gw-1", "broker": {"host": "h"},
                               "sources": [s for s, _ in FIELD_MISTAKES]}))
    assert main(["gateway", "check-config", "--config", str(cfg)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == len(FIELD_MISTAKES)
    for i, (_, message) in enumerate(FIELD_MISTAKES):
        assert message.replace("sources[0]", f"sources[{i}]") in lines[i]


def test_run_exits_2_before_the_log_counts_a_boot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spool = tmp_path / "spool"
    cfg = tmp_path / "gw.json"
    cfg.write_text(json.dumps({
        "gateway_id": "gw-1", "broker": {"host": "127.0.0.1", "port": 9}, "store": {"dir": str(spool)},
        "sources": [{"kind": "thermometer", "transport": "serial", "port": "/dev/null",
                     "alarm_limits": {"fever": 38.0}}]}))
    assert main(["gateway", "run", "--config", str(cfg)]) == 2
    assert "alarm_limits" in capsys.readouterr().err
    assert not spool.exists()  # no log opened, so no boot counted
