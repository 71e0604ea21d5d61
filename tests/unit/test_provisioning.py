"""Provisioning: registry, secrets, generated configs and broker files, firmware image contents."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from citybrain.cli import main
from edge import config as edge_config
from provisioning.credentials import mosquitto_hash, verify
from provisioning.fleet import Fleet, FleetError
from provisioning.render import acl_text, gateway_config

PARKING_SOURCE = {"kind": "parking", "transport": "serial", "port": "/dev/ttyUSB0", "sensors": ["P-00012"]}


def make_fleet(tmp_path: Path) -> Fleet:
    fleet = Fleet.create(tmp_path / "fleet", broker_host="127.0.0.1", broker_port=1883, tls=False)
    fleet.add_gateway("gw-xihu-0001", site="文三路", district="西湖区", sources=[PARKING_SOURCE])
    fleet.save()
    return Fleet.load(tmp_path / "fleet")


def test_hash_verifies_and_is_salted() -> None:
    h1, h2 = mosquitto_hash("s3cret"), mosquitto_hash("s3cret")
    assert h1 != h2 and h1.startswith("$7$101$")
    assert verify("s3cret", h1) and not verify("s3cret!", h1)


def test_secret_file_private_and_not_in_registry(tmp_path: Path) -> None:
    fleet = make_fleet(tmp_path)
    password = fleet.password("gw-xihu-0001")
    mode = stat.S_IMODE((fleet.secrets_dir / "gw-xihu-0001.password").stat().st_mode)
    assert mode == 0o600
    assert password not in fleet.path.read_text()
    assert verify(password, fleet.gateway("gw-xihu-0001").password_hash)


def test_bad_ids_and_duplicates_are_clear_errors(tmp_path: Path) -> None:
    fleet = make_fleet(tmp_path)
    with pytest.raises(FleetError, match="topic level"):
        fleet.add_gateway("gw/evil")
    with pytest.raises(FleetError, match="exists"):
        fleet.add_gateway("gw-xihu-0001")
    with pytest.raises(FleetError, match="unknown gateway 'nope'"):
        fleet.gateway("nope")


def test_gateway_config_validates_with_the_agents_own_code(tmp_path: Path) -> None:
    fleet = make_fleet(tmp_path)
    cfg = gateway_config(fleet, "gw-xihu-0001")
    checked = edge_config.validate(cfg)
    assert checked["broker"]["username"] == "gw-xihu-0001"
    assert checked["broker"]["password"] == fleet.password("gw-xihu-0001")
    fleet.gateway("gw-xihu-0001").sources = [{"kind": "parking", "transport": "serial"}]
    with pytest.raises(FleetError, match=r"gw-xihu-0001: config.sources\[0\].port"):
        gateway_config(fleet, "gw-xihu-0001")


def test_acl_pins_gateways_to_their_subtree() -> None:
    text = acl_text("city", "collector", "operator")
    assert "pattern write city/%u/up" in text
    assert "pattern read city/%u/cmd" in text
    assert "pattern write city/+/" not in text


def test_cli_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "fleet"
    sources = tmp_path / "sources.json"
    sources.write_text(json.dumps([PARKING_SOURCE]))
    assert main(["provision", "init", "--dir", str(d), "--broker-host", "mqtt.local"]) == 0
    assert main(["provision", "add-gateway", "--dir", str(d), "--id", "gw-1", "--sources", str(sources),
                 "--district", "西湖区"]) == 0
    assert main(["provision", "render", "--dir", str(d), "--service-user", "collector=pw1"]) == 0
    cfg = json.loads((d / "out" / "gateways" / "gw-1" / "config.json").read_text())
    assert cfg["broker"]["host"] == "mqtt.local" and cfg["sources"] == [PARKING_SOURCE]
    passwd = (d / "out" / "mosquitto" / "passwd").read_text().splitlines()
    assert [line.split(":")[0] for line in passwd] == ["gw-1", "collector"]
    assert 'district = "西湖区"' in (d / "out" / "collector" / "gateways.toml").read_text()
    # a second init must not clobber the fleet
    assert main(["provision", "init", "--dir", str(d), "--broker-host", "x"]) == 1
    assert "refusing to overwrite" in capsys.readouterr().err


def test_build_image_holds_only_configured_kinds(tmp_path: Path) -> None:
    from provisioning.firmware import build, image_hash, read_manifest

    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"gateway_id": "gw-1", "broker": {"host": "h"}, "sources": [PARKING_SOURCE]}))
    out = tmp_path / "image"
    size = build(cfg, out, progress=lambda _line: None)
    names = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert "manifest.json" in names and "config.json" in names
    assert "edge/config.mpy" in names and "devices/common/crc.mpy" in names
    assert not any(n.startswith("devices/water") for n in names)
    assert not any(n.endswith(".py") for n in names)
    assert size == sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    manifest = read_manifest(out)
    assert set(manifest["files"]) == names - {"manifest.json"}
    assert manifest["gateway_id"] == "gw-1" and manifest["image"] == image_hash(manifest["files"])
    # An image changed after build is refused before anything touches a board.
    (out / "edge" / "config.mpy").write_bytes(b"x")
    with pytest.raises(FleetError, match=r"edge/config\.mpy changed since build"):
        read_manifest(out)


def test_gateway_config_doc_is_current() -> None:
    from provisioning.configdoc import EXAMPLE, render

    doc = Path(__file__).resolve().parents[2] / "docs" / "gateway-config.md"
    assert doc.read_text() == render(), "run: python -m provisioning.configdoc > docs/gateway-config.md"
    edge_config.validate(EXAMPLE)


def test_init_with_tls_and_ca_file(tmp_path: Path) -> None:
    d = tmp_path / "fleet"
    assert main(["provision", "init", "--dir", str(d), "--broker-host", "mqtt.city", "--tls",
                 "--ca-file", "/etc/citybrain/ca.pem"]) == 0
    broker = Fleet.load(d).broker
    assert broker == {"host": "mqtt.city", "port": 8883, "tls": True, "ca_file": "/etc/citybrain/ca.pem"}
    assert main(["provision", "init", "--dir", str(tmp_path / "f2"), "--broker-host", "h",
                 "--ca-file", "x.pem"]) == 1


def test_build_puts_the_ca_into_the_image(tmp_path: Path) -> None:
    """Finding 9: with TLS the CA file was not in the image, and the board stopped at boot."""
    from provisioning.firmware import build, read_manifest

    pem = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    (tmp_path / "fleet-ca.pem").write_bytes(pem)
    cfg = tmp_path / "config.json"
    tls = {"host": "h", "port": 8883, "tls": True, "ca_file": "/etc/citybrain/ca.pem"}
    cfg.write_text(json.dumps({"gateway_id": "gw-1", "broker": tls, "sources": []}))
    out = tmp_path / "image"
    build(cfg, out, progress=lambda _line: None, ca_file=tmp_path / "fleet-ca.pem")
    assert (out / "ca.pem").read_bytes() == pem
    assert json.loads((out / "config.json").read_text())["broker"]["ca_file"] == "ca.pem"  # beside the config
    assert "ca.pem" in read_manifest(out)["files"]
    # Without --ca-file, a CA the config names and build cannot find stops the build.
    with pytest.raises(FleetError, match="pass --ca-file"):
        build(cfg, out, progress=lambda _line: None)
    # ... and a CA beside the config is found by itself.
    tls["ca_file"] = "fleet-ca.pem"
    cfg.write_text(json.dumps({"gateway_id": "gw-1", "broker": tls, "sources": []}))
    build(cfg, out, progress=lambda _line: None)
    assert (out / "ca.pem").read_bytes() == pem
    # TLS without any CA builds, with a warning that the board will not verify the broker.
    del tls["ca_file"]
    cfg.write_text(json.dumps({"gateway_id": "gw-1", "broker": tls, "sources": []}))
    said: list[str] = []
    build(cfg, out, progress=said.append)
    assert any("will NOT verify the broker" in line for line in said) and not (out / "ca.pem").exists()
