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
    src = {"kind": "parking", "transport": "serial", "port": "/dev/x", "sensors": ["P-1", "P-2\nP-3"]}
    assert _err(_with(sources=[src])) == ("config.sources[0].sensors[1]: a sensor id must not contain "
                                          "a line break, got 'P-2\\nP-3'")


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


def _bus(*slaves):
    return _with(sources=[_src(kind="water", transport="modbus", slaves=list(slaves))])


def _plan(slave):
    return config.validate(_bus(slave))["sources"][0]["slaves"][0]["plan"]


def test_register_map_types_and_fields_checked():
    assert _err(_bus({"address": 1, "sensor": "W", "map": {"ph": {"register": 0, "type": "float"}}})) == (
        "config.sources[0].slaves[0].map.ph.type: 'float' is not one of float32, int16, uint16, int32, "
        "uint32 (did you mean 'float32'?)")
    assert "map: water has no field 'temp' (did you mean 'temp_c'?)" in _err(
        _bus({"address": 1, "sensor": "W", "map": {"temp": {"register": 0}}}))
    assert "map.ph: unknown key 'reg' (did you mean 'register'?)" in _err(
        _bus({"address": 1, "sensor": "W", "map": {"ph": {"reg": 0}}}))
    assert "map.ph.register: required" in _err(_bus({"address": 1, "sensor": "W", "map": {"ph": {}}}))
    assert "map.ph.scale: 0 is not a nonzero finite number" in _err(
        _bus({"address": 1, "sensor": "W", "map": {"ph": {"register": 0, "type": "uint16", "scale": 0}}}))
    assert "map.ph.scale: expected float, got '0.01'" in _err(
        _bus({"address": 1, "sensor": "W", "map": {"ph": {"register": 0, "scale": "0.01"}}}))
    assert "map.ph.word_order: a uint16 is one register: it has no word order" in _err(
        _bus({"address": 1, "sensor": "W",
              "map": {"ph": {"register": 0, "type": "uint16", "word_order": "CDAB"}}}))
    assert "map.ph.word_order: 'BADC' is not ABCD or CDAB" in _err(
        _bus({"address": 1, "sensor": "W", "map": {"ph": {"register": 0, "word_order": "BADC"}}}))
    assert "map.ph.register: 65535 is past the last register 65535 for a int32" in _err(
        _bus({"address": 1, "sensor": "W", "map": {"ph": {"register": 65535, "type": "int32"}}}))
    assert "slaves[0].map: empty" in _err(_bus({"address": 1, "sensor": "W", "map": {}}))
    assert "slaves[0].register: not with a map" in _err(
        _bus({"address": 1, "sensor": "W", "register": 0, "map": {"ph": {"register": 0}}}))


def test_register_map_overlaps_refused():
    msg = _err(_bus({"address": 1, "sensor": "W", "map": {
        "ph": {"register": 10}, "temp_c": {"register": 11, "type": "int16"}, "do_mg_l": {"register": 12}}}))
    assert msg == ("config.sources[0].slaves[0].map.temp_c: registers 11..11 (int16) overlap ph's 10..11 "
                   "(float32)"), msg
    # every overlap at once, with the other problems of the config
    try:
        config.validate(_bus({"address": 1, "sensor": "W", "max_read_registers": 126, "map": {
            "ph": {"register": 0, "type": "int32"}, "do_mg_l": {"register": 1, "type": "uint16"},
            "temp_c": {"register": 2, "type": "float32"}, "level_m": {"register": 3, "type": "int16"}}}))
    except config.ConfigError as exc:
        assert len(exc.errors) == 3, exc.errors
        assert "map.do_mg_l: registers 1..1 (uint16) overlap ph's 0..1 (int32)" in exc.errors[0]
        assert "map.level_m: registers 3..3 (int16) overlap temp_c's 2..3 (float32)" in exc.errors[1]
        assert "max_read_registers: 126 is above Modbus's 125 per read" in exc.errors[2]
    else:
        raise AssertionError("overlaps accepted")


def test_read_plan_groups_within_gap_and_limit():
    assert config.read_plan([(0, 2), (2, 2), (4, 1)], 0, 125) == [[0, 5, 3]]
    # a gap of 2 unmapped registers: bridged only when allowed
    assert config.read_plan([(0, 2), (4, 1)], 0, 125) == [[0, 2, 1], [4, 1, 2]]
    assert config.read_plan([(0, 2), (4, 1)], 2, 125) == [[0, 5, 2]]
    assert config.read_plan([(0, 2), (4, 1)], 1, 125) == [[0, 2, 1], [4, 1, 2]]
    # 125 registers a read at most (the spec), or fewer if the slave says so
    spans = [(2 * i, 2) for i in range(70)]
    assert config.read_plan(spans, 0, 125) == [[0, 124, 62], [124, 16, 70]]
    assert config.read_plan(spans, 0, 40) == [[0, 40, 20], [40, 40, 40], [80, 40, 60], [120, 20, 70]]
    assert config.read_plan([(0, 1), (124, 1)], 200, 125) == [[0, 125, 2]]
    assert config.read_plan([(0, 1), (125, 1)], 200, 125) == [[0, 1, 1], [125, 1, 2]]


def test_builtin_map_is_the_default_plan():
    plan = _plan({"address": 1, "sensor": "W", "register": 100, "word_order": "CDAB"})
    assert plan["reads"] == [[100, 18, 9]] and plan["scales"] is None
    assert list(plan["codes"][:8]) == [0, 0, 0, 1, 1, 4, 0, 1]  # ph float32 CDAB at byte 0, turbidity at 4


def test_vendor_map_plan():
    plan = _plan({"address": 1, "sensor": "W", "word_order": "CDAB", "max_gap_registers": 8, "map": {
        "flow_m3_h": {"register": 100, "type": "int32", "scale": 0.001},
        "ph": {"register": 110, "word_order": "ABCD"},
        "nh3n_mg_l": {"register": 202, "type": "uint16", "scale": 0.5, "offset": -1}}})
    assert plan["reads"] == [[100, 12, 2], [202, 1, 3]]
    # flow (field 7) int32 CDAB at byte 0; ph (0) float32 ABCD at byte 20; nh3n (3) uint16 in read 2
    assert list(plan["codes"]) == [7, 0, 3, 1, 0, 20, 0, 0, 3, 0, 2, 1]
    assert list(plan["scales"]) == [1, 1000, 0, 1, 1, 0, 1, 2, -1]  # 0.001 as a divisor, 0.5 as / 2


def test_broker_endpoints_are_host_port_after_the_first():
    c = config.validate(_with(broker={"host": "n1", "port": 1884, "endpoints": ["n2:1885", "10.0.0.3:1883"]}))
    assert c["broker"]["endpoints"] == [("n1", 1884), ("n2", 1885), ("10.0.0.3", 1883)]
    assert config.validate(_with())["broker"]["endpoints"] == [("127.0.0.1", 1883)]
    msg = _err(_with(broker={"host": "h", "endpoints": ["n2", "n3:0", 5]}))
    assert "config.broker.endpoints[0]: 'n2' is not \"host:port\"" in msg
    assert "config.broker.endpoints[1]" in msg and "config.broker.endpoints[2]" in msg
    assert _err(_with(broker={"host": "h", "endpoints": "n2:1"})) == (
        "config.broker.endpoints: expected list, got 'n2:1'")


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
