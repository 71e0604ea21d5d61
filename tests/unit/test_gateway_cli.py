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
