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


def _src(**kw):
    s = {"kind": "parking", "transport": "serial", "port": "/dev/ttyUSB0"}
    for k in kw:
        s[k] = kw[k]
    return s


def test_kind_settings_checked_at_load():
    assert _err(_with(sources=[_src(deadband={"battery_mv": -5})])) == (
        "config.sources[0].deadband.battery_mv: -5 is not a number >= 0")
    assert "(did you mean 'battery_mv'?)" in _err(_with(sources=[_src(deadband={"battery": 5})]))
    assert "not an analog field" in _err(_with(sources=[_src(deadband={"occupied": 1})]))
    msg = _err(_with(sources=[_src(kind="thermometer", alarm_limits={"fever": 38.0})]))
    assert "no alarm limit 'fever' (did you mean 'fever_c'?)" in msg
    assert "'x' is not a number" in _err(_with(sources=[_src(alarm_limits={"low_battery_mv": "x"})]))
    c = config.validate(_with(sources=[_src(kind="thermometer", alarm_limits={"fever_c": 38},
                                            deadband={"body_c": 0.2})]))
    assert c["sources"][0]["alarm_limits"] == {"fever_c": 38}


def test_modbus_word_order_addresses_and_kind():
    def bus(*slaves, kind="water"):
        return _with(sources=[_src(kind=kind, transport="modbus", slaves=list(slaves))])

    assert "'cdab' is not ABCD or CDAB (did you mean 'CDAB'?)" in _err(
        bus({"address": 1, "sensor": "W", "word_order": "cdab"}))
    assert "'BADC' is not ABCD or CDAB" in _err(bus({"address": 1, "sensor": "W", "word_order": "BADC"}))
    assert "address: 1 is also slaves[0]'s" in _err(bus({"address": 1, "sensor": "A"},
                                                        {"address": 1, "sensor": "B"}))
    assert "no Modbus register map" in _err(bus({"address": 1, "sensor": "W"}, kind="parking"))


def test_ports_ranges_and_every_error_at_once():
    assert "is not uart<id>[:<tx>:<rx>]" in _err(_with(sources=[_src(port="uart2:17")]))
    config.validate(_with(sources=[_src(port="uart2:17:16")]))
    try:
        config.validate(_with(sources=[_src(port="/dev/ttyUSB0")]), "board")
    except config.ConfigError as exc:
        assert "is not a board UART" in str(exc)
    else:
        raise AssertionError("a tty path accepted for a board")
    assert "9601 is not one of" in _err(_with(sources=[_src(baud=9601)]))
    assert "-1 is below the least value 0" in _err(_with(sources=[_src(max_silence_s=-1)]))
    assert "50 is below the least value 100" in _err(_with(sources=[_src(poll_ms=50)]))
    try:
        config.validate(_with(uplink={"batch_max": 0}, sources=[_src(sensor=["P-1"], baud=1)]))
    except config.ConfigError as exc:
        assert len(exc.errors) == 3, exc.errors
        assert "unknown key 'sensor' (did you mean 'sensors'?)" in exc.errors[1]
        assert str(exc) == "\n".join(exc.errors)
    else:
        raise AssertionError("accepted")


def test_client_certificate_needs_its_key_and_tls():
    """A gateway's TLS client certificate (brokers that require one): certfile and keyfile go
    together, and only with tls; refused at load, naming the key."""
    tls = {"host": "127.0.0.1", "tls": True, "ca_file": "ca.pem"}
    ok = dict(tls, certfile="client.crt", keyfile="client.key")
    assert config.validate(_with(broker=ok))["broker"]["certfile"] == "client.crt"
    assert "certfile and keyfile go together" in _err(_with(broker=dict(tls, certfile="client.crt")))
    assert "certfile and keyfile go together" in _err(_with(broker=dict(tls, keyfile="client.key")))
    plain = {"host": "127.0.0.1", "certfile": "client.crt", "keyfile": "client.key"}
    assert "config.broker.certfile: a client certificate needs tls: true" in _err(_with(broker=plain))
