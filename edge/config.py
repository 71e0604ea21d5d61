"""The gateway config: the JSON that provisioning writes and the agent reads at boot.

Validated once at start-up against the schema below, so a typo is a clear error that names the key
(and suggests the closest valid one) instead of a gateway that silently ignores a sensor. Defaults
live in the schema, in one place; docs/gateway-config.md is generated from nothing else.

Schema entries: key -> (type, default, help). `REQUIRED` as default means the key must be present.
Durations are integers with their unit in the key name (`_ms`, `_s`), sizes in bytes (`_bytes`).
"""

REQUIRED = object()


class ConfigError(ValueError):
    """A config problem, with the dotted path of the offending key."""


BROKER = {
    "host": (str, REQUIRED, "broker host name or address"),
    "port": (int, 1883, "broker port (8883 with TLS)"),
    "username": (str, None, "MQTT username (provisioning sets the gateway id)"),
    "password": (str, None, "MQTT password"),
    "tls": (bool, False, "connect with TLS"),
    "ca_file": (str, None, "CA certificate (PEM) to verify the broker with TLS; relative: beside the config"),
    "keepalive_s": (int, 60, "MQTT keepalive; the broker declares us offline after 1.5x"),
    "client_id": (str, None, "MQTT client id (default: the gateway id)"),
}

STORE = {
    "dir": (str, "spool", "directory of the store-and-forward log (on flash)"),
    "budget_bytes": (int, 1048576, "log size cap; the oldest segments are evicted (and counted) past it"),
    "segment_bytes": (int, 65536, "size of one log segment file"),
    "sync_every_ms": (int, 10000, "group-sync periodic telemetry at most this often (events sync at once)"),
    "sync_every_bytes": (int, 4096, "... or when this many unsynced bytes are pending"),
}

UPLINK = {
    "batch_max": (int, 50, "readings per batch"),
    "batch_age_ms": (int, 2000, "send a partial batch after this long"),
    "max_inflight": (int, None, "batches published and not yet acknowledged (default 4 on CPython; 2 on "
                     "MicroPython boards, where each holds a batch buffer of ~2.5 KB)"),
    "replay_batches_per_s": (int, 20, "pace of backlog replay after an outage (live alarms go first)"),
    "backoff_base_ms": (int, 1000, "first reconnect delay; doubles up to the cap, full jitter"),
    "backoff_cap_ms": (int, 120000, "longest reconnect delay"),
    "status_every_s": (int, 60, "retained status period"),
}

SOURCE = {
    "kind": (str, REQUIRED, "device kind: parking, manhole, water, thermometer"),
    "transport": (str, REQUIRED, "serial, modbus or mqtt"),
    "port": (str, None, "serial device (serial, modbus)"),
    "baud": (int, 9600, "serial speed"),
    "sensors": (list, None, "sensor ids expected on this source (serial, mqtt)"),
    "slaves": (list, None, "modbus: [{address, sensor, poll_ms, function, register, word_order}]"),
    "topic": (str, None, "mqtt: topic filter on the site broker"),
    "poll_ms": (int, 10000, "modbus: default poll interval per slave"),
    "timeout_ms": (int, 500, "modbus: response timeout per request"),
    "deadband": (dict, None, "field name -> absolute deadband for report-by-exception"),
    "max_silence_s": (int, 300, "report at least this often even without change"),
    "alarm_limits": (dict, None, "override the kind's alarm limits, e.g. {\"fever_c\": 37.5}"),
}

SLAVE = {
    "address": (int, REQUIRED, "modbus slave address 1..247"),
    "sensor": (str, REQUIRED, "sensor id reported for this slave"),
    "poll_ms": (int, None, "poll interval (default: the source's poll_ms)"),
    "function": (int, 3, "3 (holding registers) or 4 (input registers)"),
    "register": (int, 0, "first register of the value block"),
    "word_order": (str, None, "float32 word order: ABCD or CDAB (default: the kind's)"),
}

GATEWAY = {
    "gateway_id": (str, REQUIRED, "this gateway's id; also its MQTT topic level"),
    "prefix": (str, "city", "topic prefix: <prefix>/<gateway_id>/up ..."),
    "site": (str, None, "site name (informative; the collector's registry is authoritative)"),
    "broker": (dict, REQUIRED, "the central broker"),
    "site_broker": (dict, None, "a local broker that MQTT sensors (manhole lids) publish to"),
    "store": (dict, None, "store-and-forward log"),
    "uplink": (dict, None, "batching and publishing"),
    "sources": (list, REQUIRED, "serial, modbus and mqtt sources"),
    "trust_os_clock": (bool, False, "CPython gateways whose OS runs NTP: trust time.time() once past 2020"),
    "ntp_host": (str, "pool.ntp.org", "boards: NTP server"),
}

TRANSPORTS = ("serial", "modbus", "mqtt")


def _closest(key, known):
    """The known key sharing the most leading characters / letters: a cheap 'did you mean'."""
    best = None
    best_score = 0
    for k in known:
        score = 0
        for a, b in zip(key, k):
            if a != b:
                break
            score += 2
        for ch in key:
            if ch in k:
                score += 1
        if score > best_score:
            best, best_score = k, score
    return best


def _check(section, schema, path):
    if not isinstance(section, dict):
        raise ConfigError("%s: expected an object" % path)
    out = {}
    for key in section:
        if key not in schema:
            hint = _closest(key, schema)
            raise ConfigError(
                "%s: unknown key %r%s" % (path, key, (" (did you mean %r?)" % hint) if hint else "")
            )
    for key in schema:
        typ, default, _help = schema[key]
        if key in section and section[key] is not None:
            value = section[key]
            ok = isinstance(value, typ) and not (typ is int and isinstance(value, bool))
            if typ is float and isinstance(value, int) and not isinstance(value, bool):
                ok = True
            if not ok:
                raise ConfigError(
                    "%s.%s: expected %s, got %r" % (path, key, typ.__name__, value)
                )
            out[key] = value
        elif default is REQUIRED:
            raise ConfigError("%s.%s: required (%s)" % (path, key, _help))
        else:
            out[key] = default
    return out


def validate(raw):
    """Return a complete config dict (defaults filled in) or raise ConfigError naming the key."""
    from devices import KINDS

    cfg = _check(raw, GATEWAY, "config")
    gw = cfg["gateway_id"]
    if not gw or "/" in gw or "+" in gw or "#" in gw:
        raise ConfigError("config.gateway_id: must be non-empty and contain no / + #")
    cfg["broker"] = _check(cfg["broker"], BROKER, "config.broker")
    if cfg["site_broker"] is not None:
        cfg["site_broker"] = _check(cfg["site_broker"], BROKER, "config.site_broker")
    cfg["store"] = _check(cfg["store"] or {}, STORE, "config.store")
    cfg["uplink"] = up = _check(cfg["uplink"] or {}, UPLINK, "config.uplink")
    if up["max_inflight"] is None:
        from edge.compat import IS_MICROPYTHON

        up["max_inflight"] = 2 if IS_MICROPYTHON else 4
    elif up["max_inflight"] < 1:
        raise ConfigError("config.uplink.max_inflight: must be at least 1")
    sources = []
    for i, src in enumerate(cfg["sources"]):
        path = "config.sources[%d]" % i
        s = _check(src, SOURCE, path)
        if s["kind"] not in KINDS:
            raise ConfigError("%s.kind: unknown kind %r (known: %s)" % (path, s["kind"], ", ".join(KINDS)))
        t = s["transport"]
        if t not in TRANSPORTS:
            raise ConfigError("%s.transport: %r is not one of %s" % (path, t, ", ".join(TRANSPORTS)))
        if t in ("serial", "modbus") and not s["port"]:
            raise ConfigError("%s.port: required for transport %s" % (path, t))
        if t == "mqtt":
            if not s["topic"]:
                raise ConfigError("%s.topic: required for transport mqtt" % path)
            if cfg["site_broker"] is None:
                raise ConfigError("%s: transport mqtt needs config.site_broker" % path)
        if t == "modbus":
            if not s["slaves"]:
                raise ConfigError("%s.slaves: required for transport modbus" % path)
            slaves = []
            for j, sl in enumerate(s["slaves"]):
                sp = "%s.slaves[%d]" % (path, j)
                v = _check(sl, SLAVE, sp)
                if not 1 <= v["address"] <= 247:
                    raise ConfigError("%s.address: %d is outside 1..247" % (sp, v["address"]))
                if v["function"] not in (3, 4):
                    raise ConfigError("%s.function: must be 3 or 4" % sp)
                if v["poll_ms"] is None:
                    v["poll_ms"] = s["poll_ms"]
                slaves.append(v)
            s["slaves"] = slaves
        sources.append(s)
    cfg["sources"] = sources
    return cfg


def load(path):
    """Read and validate a config file; JSON syntax errors become ConfigError too.

    A relative broker.ca_file is read from the config's folder (a board's image folder carries
    its CA beside its config); a CA file that is not there is an error naming it. (Here, not in
    edge.main: this module is dropped after boot, so the check costs no heap for the run.)
    """
    import json
    import os

    try:
        with open(path) as f:
            raw = json.load(f)
    except OSError as exc:
        raise ConfigError("cannot read %s: %s" % (path, exc)) from None
    except ValueError as exc:
        raise ConfigError("%s is not valid JSON: %s" % (path, exc)) from None
    cfg = validate(raw)
    b = cfg["broker"]
    ca = b["ca_file"]
    if ca:
        if ca[0] != "/" and "/" in path:
            b["ca_file"] = ca = path.rsplit("/", 1)[0] + "/" + ca
        try:
            os.stat(ca)
        except OSError:
            raise ConfigError("config.broker.ca_file: %s is not on this gateway" % ca) from None
    return cfg
