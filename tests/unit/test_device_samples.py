"""Every kind's sample.json is a source block the gateway accepts, and its README shows it as is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devices import KINDS, load
from edge import config, rules

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("kind", KINDS)
def test_sample_config_is_valid_and_shown_in_the_readme(kind: str) -> None:
    codec = load(kind)
    raw = (ROOT / "devices" / kind / "sample.json").read_text(encoding="utf-8")
    sample = json.loads(raw)
    assert sample["kind"] == codec.KIND == kind
    gw = {"gateway_id": "gw-1", "broker": {"host": "b"}, "site_broker": {"host": "s"}, "sources": [sample]}
    assert config.validate(gw)["sources"][0]["kind"] == kind
    rules.ReportFilter(codec, deadbands=sample.get("deadband"))  # raises on an unknown or non-analog field
    assert set(sample.get("alarm_limits", {})) <= set(codec.ALARM_LIMITS)
    assert raw.strip() in (ROOT / "devices" / kind / "README.md").read_text(encoding="utf-8")
