"""Provisioning: registry, secrets, generated configs and broker files, firmware image contents."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest

from citybrain.cli import main
from edge import config as edge_config
from provisioning.credentials import mosquitto_hash, verify
from provisioning.fleet import Fleet, FleetError
from provisioning.render import acl_text, gateway_config, render

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
    # No '.' in a gateway id: nats-server 2.9's MQTT listener drops a client publishing one in a topic.
    with pytest.raises(FleetError, match="topic level"):
        fleet.add_gateway("gw.xihu.2")
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


def test_acl_names_every_account_and_has_no_patterns(tmp_path: Path) -> None:
    """Finding 4: `pattern` lines applied to service accounts too (the operator could publish
    `city/operator/up`); now each account has its own block and its role's rules only."""
    fleet = make_fleet(tmp_path)
    fleet.add_service_user("my-collector-backup", "operator")  # no role by substring
    fleet.add_service_user("collector-1", "collector")
    text = acl_text(fleet)
    assert "pattern" not in [line.split(" ")[0] for line in text.splitlines()]
    blocks = {b.splitlines()[1]: b.splitlines()[2:] for b in text.split("\n\n")[1:] if b.strip()}
    assert blocks["user gw-xihu-0001"] == [
        "topic write city/gw-xihu-0001/up", "topic write city/gw-xihu-0001/alarm",
        "topic write city/gw-xihu-0001/status", "topic write city/gw-xihu-0001/reply",
        "topic read city/gw-xihu-0001/cmd", "topic read city/gw-xihu-0001/ack"]
    assert blocks["user my-collector-backup"] == [
        "topic write city/+/cmd", "topic read city/+/reply", "topic read city/+/status"]
    assert "topic read $share/+/city/+/up" in blocks["user collector-1"]
    # The collector writes receipts (`ack`) and nothing else.
    assert [line for line in blocks["user collector-1"] if " write " in line] == ["topic write city/+/ack"]


def test_gateway_ids_and_service_names_never_collide(tmp_path: Path) -> None:
    fleet = make_fleet(tmp_path)
    fleet.add_service_user("ops", "operator")
    for reserved in ("collector", "operator", "ops", "mosquitto"):
        with pytest.raises(FleetError, match=r"reserved|service account"):
            fleet.add_gateway(reserved)
    with pytest.raises(FleetError, match="exists already"):
        fleet.add_service_user("gw-xihu-0001", "collector")
    with pytest.raises(FleetError, match="role 'admin'"):
        fleet.add_service_user("x", "admin")


def test_cli_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "fleet"
    sources = tmp_path / "sources.json"
    sources.write_text(json.dumps([PARKING_SOURCE]))
    assert main(["provision", "init", "--dir", str(d), "--broker-host", "mqtt.local"]) == 0
    assert main(["provision", "add-gateway", "--dir", str(d), "--id", "gw-1", "--sources", str(sources),
                 "--district", "西湖区"]) == 0
    assert main(["provision", "add-service-user", "--dir", str(d), "--name", "collector",
                 "--role", "collector"]) == 0
    assert main(["provision", "render", "--dir", str(d)]) == 0
    cfg = json.loads((d / "out" / "gateways" / "gw-1" / "config.json").read_text())
    assert cfg["broker"]["host"] == "mqtt.local" and cfg["sources"] == [PARKING_SOURCE]
    passwd = (d / "out" / "mosquitto" / "passwd").read_text().splitlines()
    assert [line.split(":")[0] for line in passwd] == ["gw-1", "collector"]
    assert 'district = "西湖区"' in (d / "out" / "collector" / "gateways.toml").read_text()
    # a second init must not clobber the fleet
    assert main(["provision", "init", "--dir", str(d), "--broker-host", "x"]) == 1
    assert "refusing to overwrite" in capsys.readouterr().err


def test_render_keeps_service_accounts_and_says_what_changed(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Finding 5: `render` without `--service-user` dropped the collector from passwd."""
    d = tmp_path / "fleet"
    assert main(["provision", "init", "--dir", str(d), "--broker-host", "h"]) == 0
    assert main(["provision", "add-gateway", "--dir", str(d), "--id", "gw-1"]) == 0
    assert main(["provision", "add-service-user", "--dir", str(d), "--name", "collector-1",
                 "--role", "collector"]) == 0
    assert main(["provision", "add-service-user", "--dir", str(d), "--name", "ops",
                 "--role", "operator"]) == 0
    fleet = Fleet.load(d)
    ops_password = fleet.service_secret_path("ops").read_text().strip()
    assert verify(ops_password, fleet.service_users["ops"].password_hash)
    assert main(["provision", "render", "--dir", str(d)]) == 0
    first = capsys.readouterr().out
    assert "RESTART Mosquitto" in first
    passwd = d / "out" / "mosquitto" / "passwd"
    before = passwd.read_text()
    assert [line.split(":")[0] for line in before.splitlines()] == ["gw-1", "collector-1", "ops"]
    assert main(["provision", "render", "--dir", str(d)]) == 0
    again = capsys.readouterr().out
    assert passwd.read_text() == before  # hashes come from the registry: stable
    assert "0 written, 0 removed" in again and "no reload needed" in again
    assert main(["provision", "rotate-password", "--dir", str(d), "--user", "ops"]) == 0
    assert main(["provision", "render", "--dir", str(d)]) == 0
    out = capsys.readouterr().out
    assert f"wrote {passwd}" in out and "reload Mosquitto" in out and "RESTART" not in out
    assert "broker accounts (+ added, - revoked, ~ new password): ~ops\n" in out
    assert [line.split(":")[0] for line in passwd.read_text().splitlines()] == ["gw-1", "collector-1", "ops"]


def test_secret_files_are_never_readable_by_others(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Finding 6: render wrote config.json (holding the password) and passwd, then chmod-ed them.

    Every chmod, rename and fsync is a moment to look: no file holding a secret may then be
    readable by group or others, even for an instant.
    """
    fleet = make_fleet(tmp_path)
    fleet.add_service_user("collector", "collector", "s3rvice-pw")
    fleet.save()
    secrets = [fleet.password("gw-xihu-0001"), "s3rvice-pw", fleet.gateway("gw-xihu-0001").password_hash]
    seen = _watch_secret_files(tmp_path, secrets, monkeypatch, lambda: render(fleet, tmp_path / "out"))
    assert {"config.json", "passwd", "fleet.json", "gw-xihu-0001.password", "collector.password"} <= seen


def _watch_secret_files(root: Path, secrets: list[str], monkeypatch: pytest.MonkeyPatch,
                        action: Any) -> set[str]:
    """Run `action` under umask 022, looking at every file under `root` at each chmod, rename and
    fsync: none holding one of `secrets` may be readable by group or others, even for an instant.
    Returns the names of the files seen holding a secret."""
    import os

    seen: set[str] = set()

    def look() -> None:
        for p in root.rglob("*"):
            if p.is_file() and any(s in p.read_text(errors="replace") for s in secrets):
                seen.add(p.name)
                mode = stat.S_IMODE(p.stat().st_mode)
                assert mode & 0o077 == 0, f"{p} readable by others ({mode:o}) while holding a secret"

    def spy(real):  # type: ignore[no-untyped-def]
        def wrapper(*a, **kw):  # type: ignore[no-untyped-def]
            look()
            return real(*a, **kw)
        return wrapper

    monkeypatch.setattr(os, "replace", spy(os.replace))
    monkeypatch.setattr(os, "chmod", spy(os.chmod))
    monkeypatch.setattr(os, "fsync", spy(os.fsync))
    monkeypatch.setattr(Path, "chmod", spy(Path.chmod))
    old = os.umask(0o022)
    try:
        action()
    finally:
        os.umask(old)
        monkeypatch.undo()
    look()
    return seen


def test_the_board_image_keeps_its_secrets_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Finding 6: `build/<gw>/config.json` held the broker password at mode 0644. The image's
    config.json, config.checked (the validated config: the password again) and a client key are
    0600 from their first byte; the rest of the image (code, CA, manifest) is public."""
    from provisioning.firmware import build

    d = tmp_path / "fleet"
    assert main(["provision", "init", "--dir", str(d), "--broker-host", "127.0.0.1", "--tls"]) == 0
    assert main(["provision", "tls-init", "--dir", str(d), "--name", "127.0.0.1"]) == 0
    fleet = Fleet.load(d)
    fleet.add_gateway("gw-1", sources=[PARKING_SOURCE])
    fleet.save()
    assert main(["provision", "tls-client", "--dir", str(d), "--name", "gw-1"]) == 0
    assert main(["provision", "render", "--dir", str(d)]) == 0
    fleet = Fleet.load(d)
    key = fleet.client_key_path("gw-1").read_text().splitlines()[1]
    image = tmp_path / "image"
    seen = _watch_secret_files(image.parent, [fleet.password("gw-1"), key], monkeypatch, lambda: build(
        d / "out" / "gateways" / "gw-1" / "config.json", image, progress=lambda _line: None))
    assert {"config.json", "config.checked", "client.key"} <= seen
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in image.iterdir() if p.is_file()}
    assert modes == {"config.json": 0o600, "config.checked": 0o600, "client.key": 0o600,
                     "client.crt": 0o644, "ca.pem": 0o644, "manifest.json": 0o644}, modes


def test_add_and_edit_gateway_run_the_agents_validator(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """Finding 7: a config mistake is refused at the desk, naming the key; nothing is registered."""
    d = tmp_path / "fleet"
    assert main(["provision", "init", "--dir", str(d), "--broker-host", "h"]) == 0
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"kind": "parking", "transport": "serial", "port": "/dev/ttyS0",
                                "sensor": ["P-1"]}]))
    assert main(["provision", "add-gateway", "--dir", str(d), "--id", "gw-1", "--sources", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "gw-1: config.sources[0]: unknown key 'sensor' (did you mean 'sensors'?)" in err
    assert Fleet.load(d).gateways == {} and not (d / "secrets" / "gw-1.password").exists()
    good = tmp_path / "good.json"
    good.write_text(json.dumps([PARKING_SOURCE]))
    assert main(["provision", "add-gateway", "--dir", str(d), "--id", "gw-1", "--sources", str(good)]) == 0
    options = tmp_path / "options.json"
    options.write_text(json.dumps({"store": {"budget": 4096}}))
    edit = ["provision", "edit-gateway", "--dir", str(d), "--id", "gw-1"]
    assert main([*edit, "--options", str(options)]) == 1
    assert "config.store: unknown key 'budget'" in capsys.readouterr().err
    assert main(["provision", "edit-gateway", "--dir", str(d), "--id", "gw-1", "--sources", str(bad)]) == 1
    assert Fleet.load(d).gateway("gw-1").sources == [PARKING_SOURCE]  # unchanged
    options.write_text(json.dumps({"broker": {"host": "evil"}}))
    assert main([*edit, "--options", str(options)]) == 1
    assert "managed by the registry" in capsys.readouterr().err
    # The issue's own examples, silently ignored on the pole before: a deadband on a field the kind
    # does not have, or below zero, and an alarm limit by a wrong name.
    for source, said in (
            ({**PARKING_SOURCE, "deadband": {"battery": -5}},
             "config.sources[0].deadband: parking has no field 'battery' (did you mean 'battery_mv'?)"),
            ({**PARKING_SOURCE, "deadband": {"battery_mv": -5}},
             "config.sources[0].deadband.battery_mv: -5 is not a number >= 0"),
            ({**PARKING_SOURCE, "kind": "thermometer", "alarm_limits": {"fever": 38.0}},
             "config.sources[0].alarm_limits: thermometer has no alarm limit 'fever' (did you mean"
             " 'fever_c'?)")):
        bad.write_text(json.dumps([source]))
        assert main([*edit, "--sources", str(bad)]) == 1
        assert said in capsys.readouterr().err
        assert main(["provision", "add-gateway", "--dir", str(d), "--id", "gw-2", "--sources", str(bad)]) == 1
        assert said in capsys.readouterr().err
    assert Fleet.load(d).gateway("gw-1").sources == [PARKING_SOURCE] and "gw-2" not in Fleet.load(d).gateways
    # A fleet.json or config.json edited by hand: render and build refuse it too, naming the key.
    assert main(["provision", "render", "--dir", str(d)]) == 0
    config = d / "out" / "gateways" / "gw-1" / "config.json"
    raw = json.loads(config.read_text())
    raw["sources"][0]["deadband"] = {"battery": -5}
    config.write_text(json.dumps(raw))
    assert main(["provision", "build", "--config", str(config), "--out", str(tmp_path / "image")]) == 1
    assert "config.sources[0].deadband: parking has no field 'battery'" in capsys.readouterr().err
    registry = json.loads((d / "fleet.json").read_text())
    registry["gateways"]["gw-1"]["sources"][0]["alarm_limits"] = {"fever": 38.0}
    (d / "fleet.json").write_text(json.dumps(registry))
    assert main(["provision", "render", "--dir", str(d)]) == 1
    said = "gw-1: config.sources[0].alarm_limits: parking has no alarm limit 'fever'"
    assert said in capsys.readouterr().err


def test_site_broker_and_set_broker_keep_credentials(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Finding 8: manhole lids over MQTT need a site broker; the broker can change after init; a
    gateway's own broker settings never drop its credentials."""
    d = tmp_path / "fleet"
    lids = tmp_path / "lids.json"
    lids.write_text(json.dumps([{"kind": "manhole", "transport": "mqtt", "topic": "lids/#",
                                 "sensors": ["M-1"]}]))
    assert main(["provision", "init", "--dir", str(d), "--broker-host", "h"]) == 0
    assert main(["provision", "add-gateway", "--dir", str(d), "--id", "gw-1", "--sources", str(lids)]) == 1
    assert "transport mqtt needs config.site_broker" in capsys.readouterr().err
    monkeypatch.setenv("T_SITE_PW", "lid-pw")
    assert main(["provision", "add-gateway", "--dir", str(d), "--id", "gw-1", "--sources", str(lids),
                 "--site-broker", "192.168.4.1:1884", "--site-broker-user", "gw",
                 "--site-broker-password-env", "T_SITE_PW"]) == 0
    assert "lid-pw" not in (d / "fleet.json").read_text()
    assert main(["provision", "set-broker", "--dir", str(d), "--port", "1999"]) == 0
    assert main(["provision", "set-broker", "--dir", str(d), "--id", "gw-1", "--host", "10.0.0.5"]) == 0
    assert main(["provision", "render", "--dir", str(d)]) == 0
    cfg = json.loads((d / "out" / "gateways" / "gw-1" / "config.json").read_text())
    fleet = Fleet.load(d)
    assert cfg["broker"] == {"host": "10.0.0.5", "port": 1999, "tls": False, "username": "gw-1",
                             "password": fleet.password("gw-1")}
    assert cfg["site_broker"] == {"host": "192.168.4.1", "port": 1884, "username": "gw", "password": "lid-pw"}
    assert "listener 1999 " in (d / "out" / "mosquitto" / "conf.d" / "citybrain.conf").read_text()
    capsys.readouterr()
    assert main(["provision", "show", "--dir", str(d), "--id", "gw-1"]) == 0
    shown = capsys.readouterr().out
    assert "lid-pw" not in shown and fleet.password("gw-1") not in shown and '"host": "10.0.0.5"' in shown
    assert main(["provision", "set-broker", "--dir", str(d), "--id", "gw-1", "--reset"]) == 0
    assert Fleet.load(d).broker_for("gw-1")["host"] == "h"
    edge_config.validate(cfg)
    # The site broker moves: its login stays (the username was dropped, the password kept, and the
    # site broker would have refused the gateway).
    assert main(["provision", "edit-gateway", "--dir", str(d), "--id", "gw-1", "--site-broker",
                 "192.168.4.2"]) == 0
    assert main(["provision", "render", "--dir", str(d)]) == 0
    cfg = json.loads((d / "out" / "gateways" / "gw-1" / "config.json").read_text())
    assert cfg["site_broker"] == {"host": "192.168.4.2", "port": 1883, "username": "gw", "password": "lid-pw"}
    # The broker's CA can be given after init, and TLS switched on: every config gets it.
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    assert main(["provision", "set-broker", "--dir", str(d), "--tls", "--port", "8883",
                 "--ca-file", str(ca)]) == 0
    assert main(["provision", "render", "--dir", str(d)]) == 0
    cfg = json.loads((d / "out" / "gateways" / "gw-1" / "config.json").read_text())
    assert cfg["broker"] == {"host": "h", "port": 8883, "tls": True, "ca_file": "ca.pem", "username": "gw-1",
                             "password": Fleet.load(d).password("gw-1")}
    assert (d / "out" / "gateways" / "gw-1" / "ca.pem").read_text() == ca.read_text()


def test_remove_gateway_revokes_at_next_render(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "fleet"
    assert main(["provision", "init", "--dir", str(d), "--broker-host", "h"]) == 0
    for gid in ("gw-1", "gw-2"):
        assert main(["provision", "add-gateway", "--dir", str(d), "--id", gid]) == 0
    assert main(["provision", "render", "--dir", str(d)]) == 0
    assert main(["provision", "remove-gateway", "--dir", str(d), "--id", "gw-2"]) == 0
    assert not (d / "secrets" / "gw-2.password").exists()
    capsys.readouterr()
    assert main(["provision", "render", "--dir", str(d)]) == 0
    said = capsys.readouterr().out
    assert "): -gw-2\n" in said and f"removed {d / 'out' / 'gateways' / 'gw-2'}" in said
    out = d / "out"
    assert sorted(p.name for p in (out / "gateways").iterdir()) == ["gw-1"]
    assert "gw-2" not in (out / "mosquitto" / "passwd").read_text()
    assert "gw-2" not in (out / "mosquitto" / "acl").read_text()
    assert "gw-2" not in (out / "collector" / "gateways.toml").read_text()
    assert (d / ".gitignore").read_text().splitlines()[1:] == ["secrets/", "out/"]


def test_every_action_help_shows_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from provisioning.cli import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    actions: Any = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert {"init", "set-broker", "add-gateway", "edit-gateway", "remove-gateway", "rotate-password",
            "add-service-user", "remove-service-user", "list", "show", "render", "build",
            "flash"} <= set(actions)
    for name in actions:
        with pytest.raises(SystemExit):
            main(["provision", name, "--help"])
        text = capsys.readouterr().out
        assert f"  citybrain provision {name} --" in text, name


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


def test_build_writes_the_checked_config_the_board_boots_from(tmp_path: Path, micropython32: str) -> None:
    """Issue 10, finding 5: edge.config's complete validation runs here, not on the board (its names
    stay interned for the whole run: ~6 KB at 128 sensors). The image's config.checked carries the
    validated config and the hash of config.json; the 32-bit unix port boots from it without
    importing edge.config, and a hand edit of config.json on the board is validated there again."""
    import subprocess

    from edge.main import load_config
    from provisioning.firmware import build, read_manifest

    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"gateway_id": "gw-1", "broker": {"host": "h"}, "sources": [PARKING_SOURCE]}))
    out = tmp_path / "image"
    build(cfg, out, progress=lambda _line: None)
    assert "config.checked" in read_manifest(out)["files"]
    head, body = (out / "config.checked").read_text().split("\n", 1)
    assert head.endswith(" 0.1.0") and len(head.split()[0]) == 64  # sha256, the edge version
    checked = json.loads(body)
    assert checked["uplink"]["max_inflight"] is None  # the board fills in its own default
    checked["uplink"]["max_inflight"] = 4
    assert checked == json.loads(json.dumps(load_config(str(out / "config.json"))))
    probe = ("import sys\nsys.path[0] = ''\nfrom edge.main import load_config\n"
             "c = load_config('config.json')\n"
             "print(c['gateway_id'], c['uplink']['max_inflight'], 'edge.config' in sys.modules, "
             "c['sources'][0]['sensors'])\n")

    def boot() -> str:
        run = subprocess.run([micropython32, "-X", "heapsize=128K", "-c", probe], cwd=out,
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stdout + run.stderr
        return run.stdout

    assert boot() == "gw-1 2 False ['P-00012']\n"
    # A hand edit on the board: said on the console and validated there, never the stale checked copy.
    text = (out / "config.json").read_text()
    (out / "config.json").write_text(text.replace("P-00012", "P-00013"))
    said = boot()
    assert "config.json changed since `citybrain provision build` checked it" in said
    assert said.endswith("gw-1 2 False ['P-00013']\n"), said


def test_a_board_missing_its_ca_file_names_it_at_boot(tmp_path: Path, micropython32: str) -> None:
    """Finding 9: a TLS config whose CA file is not on the board crashed it with a bare `OSError:
    [Errno 2] ENOENT` that named no file. On the path a board boots (the image's config.checked,
    32-bit MicroPython) the agent stops before the uplink, naming the key and the file."""
    import subprocess

    from provisioning.firmware import build

    (tmp_path / "ca.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"gateway_id": "gw-1", "broker": {"host": "h", "port": 8883, "tls": True,
                                                              "ca_file": "ca.pem"}, "sources": []}))
    out = tmp_path / "image"
    build(cfg, out, progress=lambda _line: None)
    boot = "import sys\nsys.path[0] = ''\nimport edge.main\nedge.main.main('config.json')\n"

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run([micropython32, "-X", "heapsize=128K", "-c", boot], cwd=out,
                              capture_output=True, text=True, timeout=60)

    (out / "ca.pem").unlink()
    said = run()
    assert said.returncode == 2, said.stdout + said.stderr
    assert "config error: config.broker.ca_file: ca.pem is not on this gateway" in said.stdout, said.stdout
    assert "Errno" not in said.stdout + said.stderr and "Traceback" not in said.stdout + said.stderr


def test_gateway_config_doc_is_current() -> None:
    from provisioning.configdoc import EXAMPLE, render

    doc = Path(__file__).resolve().parents[2] / "docs" / "gateway-config.md"
    assert doc.read_text() == render(), "run: python -m provisioning.configdoc > docs/gateway-config.md"
    edge_config.validate(EXAMPLE)


def test_tls_without_ca_warns_at_init_render_and_build(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """Finding 9: MicroPython boards do not verify the broker without a CA file: say so each time."""
    d = tmp_path / "fleet"
    assert main(["provision", "init", "--dir", str(d), "--broker-host", "mqtt.city", "--tls"]) == 0
    assert "MicroPython boards will NOT verify" in capsys.readouterr().err
    assert main(["provision", "add-gateway", "--dir", str(d), "--id", "gw-1"]) == 0
    assert main(["provision", "render", "--dir", str(d)]) == 0
    assert "MicroPython boards will NOT verify" in capsys.readouterr().err
    assert main(["provision", "build", "--config", str(d / "out" / "gateways" / "gw-1" / "config.json"),
                 "--out", str(tmp_path / "image")]) == 0
    assert "MicroPython boards will NOT verify" in "".join(capsys.readouterr())


def test_init_with_tls_and_ca_file_ships_the_ca(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    d = tmp_path / "fleet"
    assert main(["provision", "init", "--dir", str(d), "--broker-host", "mqtt.city", "--tls",
                 "--ca-file", str(ca)]) == 0
    assert "NOT verify" not in capsys.readouterr().err
    broker = Fleet.load(d).broker
    assert broker == {"host": "mqtt.city", "port": 8883, "tls": True, "ca_file": "ca.pem"}
    assert main(["provision", "add-gateway", "--dir", str(d), "--id", "gw-1"]) == 0
    assert main(["provision", "render", "--dir", str(d)]) == 0
    gw_dir = d / "out" / "gateways" / "gw-1"
    assert (gw_dir / "ca.pem").read_text() == ca.read_text()  # beside config.json: the image's input
    assert json.loads((gw_dir / "config.json").read_text())["broker"]["ca_file"] == "ca.pem"
    conf = (d / "out" / "mosquitto" / "conf.d" / "citybrain.conf").read_text()
    assert "cafile /etc/mosquitto/citybrain/ca.pem" in conf and "use_username_as_clientid true" in conf
    assert main(["provision", "init", "--dir", str(tmp_path / "f2"), "--broker-host", "h",
                 "--ca-file", str(ca)]) == 1
    assert main(["provision", "set-broker", "--dir", str(d), "--no-ca-file"]) == 0
    assert main(["provision", "render", "--dir", str(d)]) == 0
    assert not (gw_dir / "ca.pem").exists()


def test_tls_init_makes_a_p256_ca_and_broker_certificate(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    d = tmp_path / "fleet"
    assert main(["provision", "init", "--dir", str(d), "--broker-host", "mqtt.city", "--tls"]) == 0
    assert main(["provision", "tls-init", "--dir", str(d), "--name", "mqtt.city", "--name", "10.0.0.2"]) == 0
    ca = x509.load_pem_x509_certificate((d / "ca.pem").read_bytes())
    crt = x509.load_pem_x509_certificate((d / "tls" / "broker.crt").read_bytes())
    assert crt.issuer == ca.subject
    crt.verify_directly_issued_by(ca)
    key = crt.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    san = crt.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["mqtt.city"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.2"]
    assert stat.S_IMODE((d / "secrets" / "tls" / "ca.key").stat().st_mode) == 0o600
    assert Fleet.load(d).broker["ca_file"] == "ca.pem"
    assert main(["provision", "add-gateway", "--dir", str(d), "--id", "gw-1"]) == 0
    capsys.readouterr()
    assert main(["provision", "render", "--dir", str(d)]) == 0
    assert "NOT verify" not in capsys.readouterr().err
    broker_dir = d / "out" / "mosquitto"
    assert stat.S_IMODE((broker_dir / "broker.key").stat().st_mode) == 0o600
    assert (broker_dir / "ca.pem").read_bytes() == (d / "ca.pem").read_bytes()
    assert (d / "out" / "gateways" / "gw-1" / "ca.pem").read_bytes() == (d / "ca.pem").read_bytes()
    # A new broker certificate under the same CA: the gateways' ca.pem does not change.
    before = (d / "ca.pem").read_bytes()
    assert main(["provision", "tls-init", "--dir", str(d), "--name", "mqtt2.city", "--keep-ca"]) == 0
    assert (d / "ca.pem").read_bytes() == before
    # A CA imported with --ca-file has no key here: tls-init says so instead of replacing it.
    assert main(["provision", "init", "--dir", str(tmp_path / "f2"), "--broker-host", "h", "--tls",
                 "--ca-file", str(d / "ca.pem")]) == 0
    assert main(["provision", "tls-init", "--dir", str(tmp_path / "f2")]) == 1
    assert "its key is not here" in capsys.readouterr().err


def test_nothing_from_the_command_line_can_add_lines_to_the_broker_files(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Prefix, listen address and conf dir go verbatim into the ACL and citybrain.conf."""
    d = tmp_path / "fleet"
    for bad in (["--prefix", "city\ntopic readwrite #"], ["--prefix", "city/+"],
                ["--listen", "0.0.0.0\nallow_anonymous true"], ["--conf-dir", "/etc/m q"],
                ["--conf-dir", "relative"]):
        assert main(["provision", "init", "--dir", str(d), "--broker-host", "h", *bad]) == 1, bad
        assert not (d / "fleet.json").exists(), bad  # refused before anything was written
    assert "prefix" in capsys.readouterr().err
    ca = tmp_path / "not-a-ca.pem"
    ca.write_text("hello")
    assert main(["provision", "init", "--dir", str(d), "--broker-host", "h", "--tls",
                 "--ca-file", str(ca)]) == 1
    assert not (d / "fleet.json").exists()
    assert main(["provision", "init", "--dir", str(d), "--broker-host", "h"]) == 0
    assert main(["provision", "set-broker", "--dir", str(d), "--listen", "x y", "--port", "1999"]) == 1
    assert Fleet.load(d).broker["port"] == 1883  # a refused set-broker changes nothing


def test_build_says_when_an_esp32_would_refuse_the_config(tmp_path: Path) -> None:
    """A board's serial ports are UART names: a tty path passes the desk's checks (a Linux gateway
    takes it) but an ESP32 refuses it at boot. `build` makes board images, so it says so there."""
    from provisioning.firmware import build

    cfg = tmp_path / "config.json"
    said: list[str] = []
    for port, warned in (("/dev/ttyUSB0", True), ("uart2:17:16", False)):
        cfg.write_text(json.dumps({"gateway_id": "gw-1", "broker": {"host": "h"},
                                   "sources": [{**PARKING_SOURCE, "port": port}]}))
        said.clear()
        build(cfg, tmp_path / "image", progress=said.append)
        warnings = [line for line in said if line.startswith("warning:")]
        assert bool(warnings) == warned, said
    assert main(["provision", "build", "--config", str(cfg), "--out", str(tmp_path / "image")]) == 0
    cfg.write_text(json.dumps({"gateway_id": "gw-1", "broker": {"host": "h"}, "sources": [PARKING_SOURCE]}))
    said.clear()
    build(cfg, tmp_path / "image", progress=said.append)
    assert ("warning: an ESP32 refuses this config at boot: config.sources[0].port: '/dev/ttyUSB0' is not a"
            " board UART") in said[-1], said


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


def test_render_writes_nats_accounts_with_the_acl_and_keeps_hashes_on_rerender(tmp_path: Path) -> None:
    fleet = make_fleet(tmp_path)
    fleet.add_service_user("col-1", "collector", "pw-col")
    fleet.save()
    fleet = Fleet.load(tmp_path / "fleet")
    out = tmp_path / "out"
    render(fleet, out)
    acc = out / "nats" / "accounts.conf"
    text = acc.read_text()
    assert stat.S_IMODE(acc.stat().st_mode) == 0o600
    assert ('publish: {allow: ["city.gw-xihu-0001.up", "city.gw-xihu-0001.alarm", "city.gw-xihu-0001.status",'
            ' "city.gw-xihu-0001.reply"]}') in text
    assert 'subscribe: {allow: ["city.gw-xihu-0001.cmd", "city.gw-xihu-0001.ack", "$MQTT.sub.>"]}' in text
    assert 'allowed_connection_types: ["MQTT"]' in text and fleet.password("gw-xihu-0001") not in text
    assert text.count("$2a$") == 2 and "pw-col" not in text
    report = render(fleet, out)  # bcrypt salts are random: the old hashes are kept while they verify
    assert acc in report.unchanged and acc.read_text() == text
    fleet.rotate_service_password("col-1", "pw-new")
    fleet.save()
    report = render(Fleet.load(tmp_path / "fleet"), out)
    assert acc in report.written and report.broker_reload


def _examples(help_text: str) -> list[list[str]]:
    """The `citybrain provision ...` command lines of a --help text, continuation lines joined and
    trailing comments dropped, split as a shell would."""
    import shlex

    lines: list[str] = []
    pending = ""
    for raw in help_text.splitlines():
        line = raw.strip()
        if pending:
            line, pending = pending + " " + line, ""
        elif not line.startswith("citybrain provision "):
            continue
        if line.endswith("\\"):
            pending = line[:-1].strip()
            continue
        lines.append(line.split("  #")[0].split(" # ")[0].strip())
    return [shlex.split(line) for line in lines]


def test_every_example_in_the_help_is_a_command_the_parser_takes(capsys: pytest.CaptureFixture[str]) -> None:
    """`citybrain provision --help` and every action's --help: each example line parses as written
    (the right action, options that exist, their values of the right type), so an example cannot
    drift from the options it shows."""
    from citybrain.cli import build_parser

    with pytest.raises(SystemExit):
        main(["provision", "--help"])
    top = _examples(capsys.readouterr().out)
    assert len(top) >= 6, top  # the day's order: init ... flash
    parser = build_parser()
    provision: Any = parser._subparsers._group_actions[0].choices["provision"]  # type: ignore[union-attr,index]
    actions = provision._subparsers._group_actions[0].choices
    seen = {argv[2] for argv in top}
    for name in actions:
        with pytest.raises(SystemExit):
            main(["provision", name, "--help"])
        examples = _examples(capsys.readouterr().out)
        assert examples, f"{name}: no example in its --help"
        for argv in examples + [a for a in top if a[2] == name]:
            assert argv[2] == name or argv in top, (name, argv)
            try:
                args = parser.parse_args(argv[1:])
            except SystemExit:
                raise AssertionError(f"{name}: example does not parse: {' '.join(argv)}"
                                     f"\n{capsys.readouterr().err}") from None
            assert args.action == name
        seen.add(name)
    assert seen == set(actions)


def test_client_certificate_travels_from_tls_client_to_the_image(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """`tls-client`: the fleet CA signs a certificate whose common name is the account; `render`
    puts it and its key (0600) beside the gateway's config, whose broker block names them; `build`
    takes both into the image (key 0600, in the manifest, so flash verifies them); `--require`
    puts require_certificate and use_identity_as_username into the listener and refuses to render a
    gateway without one; removing the gateway deletes its key."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    from provisioning.firmware import build, read_manifest

    d = tmp_path / "fleet"
    assert main(["provision", "init", "--dir", str(d), "--broker-host", "127.0.0.1", "--tls"]) == 0
    assert main(["provision", "add-gateway", "--dir", str(d), "--id", "gw-1"]) == 0
    assert main(["provision", "tls-client", "--dir", str(d), "--name", "gw-1"]) == 1  # no CA yet
    assert main(["provision", "tls-init", "--dir", str(d), "--name", "127.0.0.1"]) == 0
    assert main(["provision", "tls-client", "--dir", str(d), "--name", "nobody"]) == 1
    assert main(["provision", "tls-client", "--dir", str(d), "--all"]) == 0
    fleet = Fleet.load(d)
    cert = x509.load_pem_x509_certificate(fleet.client_cert_path("gw-1").read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "gw-1"
    assert stat.S_IMODE(fleet.client_key_path("gw-1").stat().st_mode) == 0o600
    assert main(["provision", "render", "--dir", str(d)]) == 0
    gw = d / "out" / "gateways" / "gw-1"
    cfg = json.loads((gw / "config.json").read_text())
    assert cfg["broker"]["certfile"] == "client.crt" and cfg["broker"]["keyfile"] == "client.key"
    assert (gw / "client.crt").read_bytes() == fleet.client_cert_path("gw-1").read_bytes()
    assert stat.S_IMODE((gw / "client.key").stat().st_mode) == 0o600
    conf = d / "out" / "mosquitto" / "conf.d" / "citybrain.conf"
    assert "require_certificate" not in conf.read_text()
    image = tmp_path / "image"
    build(gw / "config.json", image, progress=lambda _line: None)
    assert (image / "client.key").read_bytes() == (gw / "client.key").read_bytes()
    assert stat.S_IMODE((image / "client.key").stat().st_mode) == 0o600
    assert {"client.crt", "client.key", "ca.pem"} <= set(read_manifest(image)["files"])

    assert main(["provision", "tls-client", "--dir", str(d), "--require"]) == 0
    assert main(["provision", "add-gateway", "--dir", str(d), "--id", "gw-2"]) == 0
    assert main(["provision", "render", "--dir", str(d)]) == 1  # gw-2 has no certificate
    assert main(["provision", "tls-client", "--dir", str(d), "--all"]) == 0
    assert main(["provision", "render", "--dir", str(d)]) == 0
    text = conf.read_text()
    assert "require_certificate true" in text and "use_identity_as_username true" in text
    assert "crlfile /etc/mosquitto/citybrain/crl.pem" in text
    ca = x509.load_pem_x509_certificate(fleet.ca_path.read_bytes())

    def crl_serials() -> set[int]:
        crl = x509.load_pem_x509_crl((d / "out" / "mosquitto" / "crl.pem").read_bytes())
        assert crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
        assert crl.next_update_utc == ca.not_valid_after_utc  # it never lapses before the CA does
        return {c.serial_number for c in crl}

    assert crl_serials() == set()
    gw2 = x509.load_pem_x509_certificate(fleet.client_cert_path("gw-2").read_bytes()).serial_number
    gw1 = x509.load_pem_x509_certificate(fleet.client_cert_path("gw-1").read_bytes()).serial_number
    assert main(["provision", "remove-gateway", "--dir", str(d), "--id", "gw-2"]) == 0
    assert not fleet.client_key_path("gw-2").exists()
    assert main(["provision", "tls-client", "--dir", str(d), "--name", "gw-1"]) == 0  # replaces gw-1's
    capsys.readouterr()
    assert main(["provision", "render", "--dir", str(d)]) == 0
    assert crl_serials() == {gw1, gw2}
    assert "RESTART Mosquitto" in capsys.readouterr().out  # Mosquitto reads its crlfile at start
    # A new CA: the old one's revocations mean nothing; render signs an empty CRL with the new CA.
    # `tls-client --all` then re-issues every certificate the new CA did not sign.
    assert main(["provision", "tls-init", "--dir", str(d), "--name", "127.0.0.1"]) == 0
    assert main(["provision", "tls-client", "--dir", str(d), "--all"]) == 0
    ca = x509.load_pem_x509_certificate(fleet.ca_path.read_bytes())
    x509.load_pem_x509_certificate(fleet.client_cert_path("gw-1").read_bytes()).verify_directly_issued_by(ca)
    assert main(["provision", "render", "--dir", str(d)]) == 0
    assert crl_serials() == set()
