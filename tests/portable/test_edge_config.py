"""Gateway config validation: defaults, unknown keys named with a hint, per-transport rules."""

from edge import config

BASE = {"gateway_id": "gw-xihu-0001", "broker": {"host": "127.0.0.1"}, "sources": []}


def _err(raw):
    try:
        config.validate(raw)
    except config.ConfigError as exc:
        return str(exc)
    return None


def _with(**changes):
    raw = {}
    for k in BASE:
        raw[k] = BASE[k]
    for k in changes:
        raw[k] = changes[k]
    return raw


def test_defaults_filled():
    c = config.validate(_with())
    assert c["prefix"] == "city"
    assert c["broker"]["port"] == 1883
    assert c["store"]["sync_every_ms"] == 10000
    assert c["uplink"]["batch_max"] == 50


def test_unknown_key_named_with_hint():
    assert _err(_with(brokr={})) == "config: unknown key 'brokr' (did you mean 'broker'?)"
    msg = _err(_with(broker={"host": "h", "prot": 1}))
    assert msg == "config.broker: unknown key 'prot' (did you mean 'port'?)"


def test_required_and_types():
    raw = _with()
    del raw["broker"]
    assert _err(raw).startswith("config.broker: required")
    assert _err(_with(broker={"host": "h", "port": "1883"})) == "config.broker.port: expected int, got '1883'"
    assert _err(_with(broker={"host": "h", "tls": 1})) == "config.broker.tls: expected bool, got 1"


def test_gateway_id_cannot_escape_topic():
    assert "gateway_id" in _err(_with(gateway_id="a/b"))
    assert "gateway_id" in _err(_with(gateway_id="#"))


def test_sources_checked():
    src = {"kind": "lamp", "transport": "serial", "port": "/dev/ttyS1"}
    assert "unknown kind 'lamp'" in _err(_with(sources=[src]))
    src = {"kind": "parking", "transport": "serial"}
    assert _err(_with(sources=[src])) == "config.sources[0].port: required for transport serial"
    src = {"kind": "manhole", "transport": "mqtt", "topic": "lids/+"}
    assert "site_broker" in _err(_with(sources=[src]))
    src = {"kind": "water", "transport": "modbus", "port": "/dev/x",
           "slaves": [{"address": 300, "sensor": "W"}]}
    assert "1..247" in _err(_with(sources=[src]))


def test_modbus_slave_inherits_poll():
    src = {"kind": "water", "transport": "modbus", "port": "/dev/x", "poll_ms": 2500,
           "slaves": [{"address": 3, "sensor": "W-3"}, {"address": 4, "sensor": "W-4", "poll_ms": 100}]}
    c = config.validate(_with(sources=[src]))
    assert c["sources"][0]["slaves"][0]["poll_ms"] == 2500
    assert c["sources"][0]["slaves"][1]["poll_ms"] == 100
