"""The gateway config: the JSON that provisioning writes and the agent reads at boot.

Validated once at start-up against the schema below and the rules after it, so every mistake the
agent would trip over later (a misspelt key, a deadband on a field the kind does not have, an alarm
limit nobody reads, a word order or a UART name the runtime cannot use, a value out of range) is
refused before the agent opens its log, naming the path, the bad value and, where one is close, the
valid spelling. Defaults live in the schema, in one place; docs/gateway-config.md is generated from
nothing else.

Schema entries: key -> (type, default, help). `REQUIRED` as default means the key must be present.
Durations are integers with their unit in the key name (`_ms`, `_s`), sizes in bytes (`_bytes`).

Host tools call `validate(raw)` too (provisioning, `citybrain gateway check-config`): a ConfigError
carries every problem found (`errors`, one line each; `str()` joins them with newlines), so a
tool prints them all at once. On a board this module is loaded once at boot and dropped again.
"""

REQUIRED = object()


class ConfigError(ValueError):
    """Config problems, each a line "<dotted path>: <what is wrong>" naming the bad value and,
    where one is close, the valid spelling. `errors` is the list; `str()` joins it with newlines."""

    def __init__(self, errors):
        if isinstance(errors, str):
            errors = [errors]
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


BROKER = {
    "host": (str, REQUIRED, "broker host name or address"),
    "port": (int, 1883, "broker port 1..65535 (8883 with TLS)"),
    "username": (str, None, "MQTT username (provisioning sets the gateway id)"),
    "password": (str, None, "MQTT password"),
    "tls": (bool, False, "connect with TLS"),
    "ca_file": (str, None, "CA certificate (PEM) to verify the broker with TLS; relative: beside the config"),
    "certfile": (str, None, "this gateway's TLS client certificate (PEM), for brokers that require one; "
                 "relative: beside the config"),
    "keyfile": (str, None, "the private key (PEM) of certfile"),
    "keepalive_s": (int, 60, "MQTT keepalive (>= 1); the broker declares us offline after 1.5x"),
    "client_id": (str, None, "MQTT client id (default: the gateway id)"),
    "endpoints": (list, None, "more nodes of the same broker cluster, \"host:port\" each: after host:port, "
                  "each reconnect attempt tries the next in turn (broker only)"),
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
    "batch_age_ms": (int, 1000, "send a partial batch after this long (1 s keeps readings queryable within "
                     "2 s at p99)"),
    "max_inflight": (int, None, "batches published and not yet acknowledged (default 4 on CPython; 2 on "
                     "MicroPython boards, where each holds a batch buffer of ~2.5 KB)"),
    "replay_batches_per_s": (int, 20, "pace of backlog replay after an outage (live alarms go first)"),
    "receipts": (bool, True, "keep a reading in the log until the collector's receipt says it is durable, "
                 "not only until the broker's PUBACK (docs/protocol.md, Receipt)"),
    "receipt_timeout_ms": (int, 15000, "re-send a batch (same boot and seq) this long after its PUBACK "
                           "without a receipt (doubling per re-send, up to 16x), and after every reconnect"),
    "backoff_base_ms": (int, 1000, "first reconnect delay; doubles up to the cap, full jitter"),
    "backoff_cap_ms": (int, 120000, "longest reconnect delay"),
    "status_every_s": (int, 60, "retained status period"),
}

SOURCE = {
    "kind": (str, REQUIRED, "device kind: parking, manhole, water, thermometer"),
    "transport": (str, REQUIRED, "serial, modbus or mqtt"),
    "port": (str, None, "serial device (serial, modbus): a tty path on Linux, `uart<id>[:<tx>:<rx>]` "
             "on a board"),
    "baud": (int, 9600, "serial speed: 1200, 2400, 4800, 9600, 19200, 38400, 57600 or 115200"),
    "sensors": (list, None, "sensor ids expected on this source (serial, mqtt)"),
    "slaves": (list, None, "modbus: [{address, sensor, poll_ms, function, register, word_order, map, "
               "max_gap_registers, max_read_registers}]"),
    "topic": (str, None, "mqtt: topic filter on the site broker"),
    "poll_ms": (int, 10000, "modbus: default poll interval per slave (>= 100)"),
    "timeout_ms": (int, 500, "modbus: response timeout per request (>= 1)"),
    "deadband": (dict, None, "analog field name -> absolute deadband (a number >= 0) for "
                 "report-by-exception; the fields per kind are in docs/devices.md"),
    "max_silence_s": (int, 300, "report at least this often even without change (>= 0)"),
    "alarm_limits": (dict, None, "override the kind's alarm limits (numbers), e.g. {\"fever_c\": 37.5}; "
                     "the names per kind are in docs/devices.md"),
}

SLAVE = {
    "address": (int, REQUIRED, "modbus slave address 1..247"),
    "sensor": (str, REQUIRED, "sensor id reported for this slave"),
    "poll_ms": (int, None, "poll interval, >= 100 (default: the source's poll_ms)"),
    "function": (int, 3, "3 (holding registers) or 4 (input registers)"),
    "register": (int, 0, "first register of the kind's built-in map (not with `map`, whose registers are "
                 "absolute)"),
    "word_order": (str, None, "32-bit word order: ABCD or CDAB, upper case (default: the kind's); also the "
                   "default of a map's 32-bit entries"),
    "map": (dict, None, "the vendor's register map: field -> {register, type, scale, offset, word_order} "
            "(default: the kind's built-in map; layouts in devices/water/README.md)"),
    "max_gap_registers": (int, 0, "read across up to this many unmapped registers to save a request (0: "
                          "only adjacent registers share a read; raise it only for a slave that answers "
                          "them)"),
    "max_read_registers": (int, 125, "registers per request, 1..125 (some slaves accept fewer)"),
}

REGISTER = {
    "register": (int, REQUIRED, "register address 0..65535 as on the wire (holding register 40001 is 0)"),
    "type": (str, "float32", "float32, int16, uint16, int32 or uint32"),
    "scale": (float, 1, "value = raw * scale + offset, e.g. 0.01 for a register in hundredths (not 0)"),
    "offset": (float, 0, "added after scaling"),
    "word_order": (str, None, "32-bit types: ABCD or CDAB (default: the slave's word_order)"),
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
    "ntp_host": (str, "pool.ntp.org", "NTP server, name or name:port (boards; posix without trust_os_clock)"),
}

TRANSPORTS = ("serial", "modbus", "mqtt")
# Register map value types: the index is the type code devices.common.regmap decodes (its names
# are kept here, off the board's resident heap); WIDTHS is registers per value.
TYPES = ("float32", "int16", "uint16", "int32", "uint32")
WIDTHS = (2, 1, 1, 2, 2)
BAUDS = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)  # what edge.ports.tty can set

# Least values of integer keys, whatever their section (a key means one thing everywhere).
_MIN = {"keepalive_s": 1, "budget_bytes": 4096, "segment_bytes": 1024, "sync_every_ms": 0,
        "sync_every_bytes": 0, "batch_max": 1, "batch_age_ms": 1, "max_inflight": 1,
        "replay_batches_per_s": 1, "receipt_timeout_ms": 100, "backoff_base_ms": 1, "backoff_cap_ms": 1,
        "status_every_s": 1, "poll_ms": 100, "timeout_ms": 1, "max_silence_s": 0, "register": 0,
        "max_gap_registers": 0, "max_read_registers": 1}


def _closest(key, known):
    """The known key sharing the most leading characters / letters: a cheap 'did you mean'."""
    best = None
    best_score = 0
    low = key.lower()
    for k in known:
        if k.lower() == low:
            return k  # only the case differs
        score = 0
        for a, b in zip(low, k.lower()):
            if a != b:
                break
            score += 2
        for ch in low:
            if ch in k.lower():
                score += 1
        if score > best_score:
            best, best_score = k, score
    return best


def _hint(key, known):
    hint = _closest(key, known) if isinstance(key, str) else None
    return (" (did you mean %r?)" % hint) if hint else ""


def _check(section, schema, path, errs):
    """The section with defaults filled in; each problem appended to `errs` (then the default is
    used, so the checks after it still run). None if it is not an object at all."""
    if not isinstance(section, dict):
        errs.append("%s: expected an object, got %r" % (path, section))
        return None
    out = {}
    for key in section:
        if key not in schema:
            errs.append("%s: unknown key %r%s" % (path, key, _hint(key, schema)))
    for key in schema:
        typ, default, _help = schema[key]
        value = section.get(key)
        if value is not None:
            if typ is float:  # a number: JSON writes 1.0 as 1
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            else:
                ok = isinstance(value, typ) and not (typ is int and isinstance(value, bool))
            if not ok:
                errs.append("%s.%s: expected %s, got %r" % (path, key, typ.__name__, value))
                value = None if default is REQUIRED else default
            elif typ is int and key in _MIN and value < _MIN[key]:
                errs.append("%s.%s: %r is below the least value %d" % (path, key, value, _MIN[key]))
            out[key] = value
        elif default is REQUIRED:
            errs.append("%s.%s: required (%s)" % (path, key, _help))
            out[key] = None
        else:
            out[key] = default
    return out


def _endpoints(b, path, allowed, errs):
    """[(host, port), ...]: broker.host:port first, then each "host:port" of `endpoints`."""
    eps = [(b["host"], b["port"])]
    more = b["endpoints"] or ()
    if more and not allowed:
        errs.append("%s.endpoints: only the central broker has endpoints" % path)
        return eps
    for i, ep in enumerate(more):
        host, _, port = ep.rpartition(":") if isinstance(ep, str) else ("", "", "")
        if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            errs.append("%s.endpoints[%d]: %r is not \"host:port\" (port 1..65535)" % (path, i, ep))
        else:
            eps.append((host, int(port)))
    return eps


def _number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _serial_port(name, path, board, errs):
    """A board's UARTs are `uart<id>[:<tx>:<rx>]` (edge/ports/board.py); Linux ports are tty paths."""
    if name.startswith("uart"):
        parts = name[4:].split(":")
        for part in parts:
            if not part.isdigit():
                errs.append("%s.port: %r is not uart<id>[:<tx>:<rx>] (e.g. \"uart2:17:16\")" % (path, name))
                return
        if len(parts) not in (1, 3):
            errs.append("%s.port: %r is not uart<id>[:<tx>:<rx>] (e.g. \"uart2:17:16\")" % (path, name))
    elif board:
        errs.append("%s.port: %r is not a board UART: name one as uart<id>[:<tx>:<rx>], e.g. "
                    "\"uart2:17:16\"" % (path, name))


def _kind_settings(s, codec, path, errs):
    """deadband and alarm_limits: only what the kind has, as numbers the rules can use."""
    db = s["deadband"]
    if db:
        fields = codec.FIELDS
        analog = codec.ANALOG
        for name in db:
            v = db[name]
            if name not in fields:
                errs.append("%s.deadband: %s has no field %r%s" % (
                    path, codec.KIND, name, _hint(name, fields)))
            elif fields.index(name) not in analog:
                errs.append("%s.deadband.%s: not an analog field of %s (any change reports)" % (
                    path, name, codec.KIND))
            elif not _number(v) or not v >= 0:
                errs.append("%s.deadband.%s: %r is not a number >= 0" % (path, name, v))
    lim = s["alarm_limits"]
    if lim:
        known = codec.ALARM_LIMITS
        for name in lim:
            if name not in known:
                errs.append("%s.alarm_limits: %s has no alarm limit %r%s (known: %s)" % (
                    path, codec.KIND, name, _hint(name, known), ", ".join(sorted(known))))
            elif not _number(lim[name]):
                errs.append("%s.alarm_limits.%s: %r is not a number" % (path, name, lim[name]))


def _strings(items, what, path, errs):
    """A list of distinct non-empty ids."""
    seen = {}
    for j, v in enumerate(items):
        if not isinstance(v, str) or not v:
            errs.append("%s[%d]: a %s must be non-empty text, got %r" % (path, j, what, v))
        elif "\n" in v:  # edge.rules keeps the ids in one "\n"-separated string
            errs.append("%s[%d]: a %s must not contain a line break, got %r" % (path, j, what, v))
        elif v in seen:
            errs.append("%s[%d]: %s %r is listed twice" % (path, j, what, v))
        else:
            seen[v] = j


def _modbus(s, codec, path, errs):
    if not hasattr(codec, "N_REGISTERS"):
        errs.append("%s.transport: kind %s has no Modbus register map (modbus serves: water)" % (
            path, codec.KIND))
        return
    if not s["slaves"]:
        errs.append("%s.slaves: required for transport modbus" % path)
        return
    slaves = []
    addresses = {}
    sensors = {}
    plans = []  # distinct read plans: slaves with the same layout share one (and its compiled form)
    for j, sl in enumerate(s["slaves"]):
        sp = "%s.slaves[%d]" % (path, j)
        v = _check(sl, SLAVE, sp, errs)
        if v is None:
            continue
        a = v["address"]
        if isinstance(a, int):
            if not 1 <= a <= 247:
                errs.append("%s.address: %d is outside 1..247" % (sp, a))
            elif a in addresses:
                errs.append("%s.address: %d is also slaves[%d]'s" % (sp, a, addresses[a]))
            addresses[a] = j
        if v["sensor"] in sensors:
            errs.append("%s.sensor: %r is also slaves[%d]'s" % (sp, v["sensor"], sensors[v["sensor"]]))
        sensors[v["sensor"]] = j
        if v["function"] not in (3, 4):
            errs.append("%s.function: %r must be 3 or 4" % (sp, v["function"]))
        wo = v["word_order"]
        if wo is not None:
            try:
                codec.word_order_code(wo)
            except ValueError:
                errs.append("%s.word_order: %r is not ABCD or CDAB%s" % (sp, wo, _hint(wo, ("ABCD", "CDAB"))))
        if v["poll_ms"] is None:
            v["poll_ms"] = s["poll_ms"]
        _register_map(v, sl, codec, sp, errs)
        plan = v.get("plan")
        for q in plans:
            if q == plan:
                v["plan"] = q
                break
        else:
            if plan is not None:
                plans.append(plan)
        slaves.append(v)
    s["slaves"] = slaves


def read_plan(spans, max_gap, max_read):
    """Group register spans [(register, width), ...], sorted and not overlapping, into as few reads
    as allowed: [[start, count, end], ...], read k holding spans [end of read k-1, end). A span joins
    the read before it when at most `max_gap` unmapped registers lie between (they are read and
    ignored) and the read stays within `max_read` registers. Greedy from the lowest register is
    optimal here: each read reaches as far as any read starting at its first span can."""
    reads = []
    for i in range(len(spans)):
        reg, w = spans[i]
        if reads:
            r = reads[-1]
            if reg - (r[0] + r[1]) <= max_gap and reg + w - r[0] <= max_read:
                r[1] = reg + w - r[0]
                r[2] = i + 1
                continue
        reads.append([reg, w, i + 1])
    return reads


def _register_map(v, raw, codec, sp, errs):
    """Check a slave's register map (or lay out the kind's built-in one) and compile its read plan
    into v["plan"]: {"reads": read_plan(...), "codes": 4 ints per entry (field index, byte offset
    in its read's data, type, word order), "scales": None or 3 numbers per entry (mul, div, off)},
    entries in register order (devices.common.regmap). The plan is made here, not in the source,
    so the grouping code is not resident on a board (this module is dropped after boot)."""
    n_errs = len(errs)
    fields = codec.FIELDS
    order = codec.WORD_ABCD  # the default; a bad word_order is said by the caller
    if v["word_order"] is not None:
        try:
            order = codec.word_order_code(v["word_order"])
        except ValueError:
            pass
    m = v["map"]
    entries = []  # (register, width, field index, type, order, scale, offset)
    if m is None:
        base = v["register"]
        if base + 2 * len(fields) > 0x10000:
            errs.append("%s.register: %d leaves no room for the %d registers of the map" % (
                sp, base, 2 * len(fields)))
        for i in range(len(fields)):
            entries.append((base + 2 * i, 2, i, 0, order, 1, 0))  # float32
    else:
        if isinstance(raw, dict) and "register" in raw:
            errs.append("%s.register: not with a map (its registers are absolute): drop one" % sp)
        if not m:
            errs.append("%s.map: empty: name at least one field" % sp)
        for name in m:
            ep = "%s.map.%s" % (sp, name)
            if name not in fields:
                errs.append("%s.map: %s has no field %r%s" % (sp, codec.KIND, name, _hint(name, fields)))
                continue
            e = _check(m[name], REGISTER, ep, errs)
            if e is None:
                continue
            t = e["type"]
            if t not in TYPES:
                errs.append("%s.type: %r is not one of %s%s" % (ep, t, ", ".join(TYPES), _hint(t, TYPES)))
                continue
            tc = TYPES.index(t)
            w = WIDTHS[tc]
            reg = e["register"]
            if reg is None:
                continue  # required: said by _check
            if reg + w > 0x10000:
                errs.append("%s.register: %d is past the last register 65535 for a %s" % (ep, reg, t))
            ewo = e["word_order"]
            eo = order
            if ewo is not None:
                if w == 1:
                    errs.append("%s.word_order: a %s is one register: it has no word order" % (ep, t))
                else:
                    try:
                        eo = codec.word_order_code(ewo)
                    except ValueError:
                        errs.append("%s.word_order: %r is not ABCD or CDAB%s" % (
                            ep, ewo, _hint(ewo, ("ABCD", "CDAB"))))
            sc = e["scale"]
            if not (-1e30 < sc < 1e30) or sc == 0:  # NaN fails too
                errs.append("%s.scale: %r is not a nonzero finite number" % (ep, sc))
            if not (-1e30 < e["offset"] < 1e30):
                errs.append("%s.offset: %r is not a finite number" % (ep, e["offset"]))
            entries.append((reg, w, fields.index(name), tc, eo, sc, e["offset"]))
    entries.sort(key=lambda x: x[0])
    names = {}
    for e in entries:
        names[e[2]] = "%s.map.%s" % (sp, fields[e[2]]) if m is not None else fields[e[2]]
    for k in range(1, len(entries)):
        a, b = entries[k - 1], entries[k]
        if b[0] < a[0] + a[1]:
            errs.append("%s: registers %d..%d (%s) overlap %s's %d..%d (%s)" % (
                names[b[2]], b[0], b[0] + b[1] - 1, TYPES[b[3]], names[a[2]].split(".")[-1], a[0],
                a[0] + a[1] - 1, TYPES[a[3]]))
    most = v["max_read_registers"]
    if most > 125:
        errs.append("%s.max_read_registers: %d is above Modbus's 125 per read" % (sp, most))
    elif most < 2 and any(e[1] == 2 for e in entries):
        errs.append("%s.max_read_registers: %d is less than a 32-bit value's 2 registers" % (sp, most))
    if len(errs) > n_errs:
        return
    reads = read_plan([(e[0], e[1]) for e in entries], v["max_gap_registers"], v["max_read_registers"])
    codes = []
    scales = []
    r = 0
    for k in range(len(entries)):
        reg, w, f, tc, eo, sc, off = entries[k]
        while k >= reads[r][2]:
            r += 1
        codes += (f, 2 * (reg - reads[r][0]), tc, eo)
        div = 1
        if 0 < abs(sc) < 1:  # 0.1 as a divisor of 10: 3 / 10 is exactly 0.3, 3 * 0.1 is not
            d = round(1 / sc)
            if d and abs(1 / sc - d) < 1e-6 * abs(d):
                sc, div = 1, d
        scales += (sc, div, off)
    plain = True
    for k in range(0, len(scales), 3):
        if scales[k] != 1 or scales[k + 1] != 1 or scales[k + 2] != 0:
            plain = False
    v["plan"] = {"reads": reads, "codes": codes, "scales": None if plain else scales}


def _source(src, path, cfg, board, errs):
    from devices import KINDS, load

    s = _check(src, SOURCE, path, errs)
    if s is None:
        return None
    kind = s["kind"]
    codec = None
    if kind is not None and kind not in KINDS:
        errs.append("%s.kind: unknown kind %r%s (known: %s)" % (
            path, kind, _hint(kind, KINDS), ", ".join(KINDS)))
    elif kind is not None:
        codec = load(kind)
    t = s["transport"]
    if t is not None and t not in TRANSPORTS:
        errs.append("%s.transport: %r is not one of %s%s" % (
            path, t, ", ".join(TRANSPORTS), _hint(t, TRANSPORTS)))
    if t in ("serial", "modbus"):
        if not s["port"]:
            errs.append("%s.port: required for transport %s" % (path, t))
        else:
            _serial_port(s["port"], path, board, errs)
        if s["baud"] not in BAUDS:
            errs.append("%s.baud: %r is not one of %s" % (path, s["baud"], ", ".join(str(b) for b in BAUDS)))
    if t == "mqtt":
        if not s["topic"]:
            errs.append("%s.topic: required for transport mqtt" % path)
        if cfg["site_broker"] is None:
            errs.append("%s: transport mqtt needs config.site_broker" % path)
    if s["sensors"]:
        _strings(s["sensors"], "sensor id", path + ".sensors", errs)
    if codec is not None:
        _kind_settings(s, codec, path, errs)
        if t == "modbus":
            _modbus(s, codec, path, errs)
    return s


def validate(raw, platform=None):
    """Return a complete config dict (defaults filled in) or raise ConfigError listing every problem.

    `platform` says where the config will run: "board" (serial ports must be UART names), "linux",
    or None: where this code runs (a host tool then accepts either, checking UART names' form).
    """
    errs = []
    if platform is None:
        import sys

        from edge.compat import IS_MICROPYTHON

        platform = "board" if IS_MICROPYTHON and sys.platform not in ("linux", "darwin") else None
    board = platform == "board"
    cfg = _check(raw, GATEWAY, "config", errs)
    if cfg is None:
        raise ConfigError(errs)
    gw = cfg["gateway_id"]
    if isinstance(gw, str) and (not gw or "/" in gw or "+" in gw or "#" in gw):
        errs.append("config.gateway_id: %r must be non-empty and contain no / + #" % gw)
    for name in ("broker", "site_broker"):
        if cfg[name] is not None:
            b = cfg[name] = _check(cfg[name], BROKER, "config." + name, errs)
            if b is not None and not 1 <= b["port"] <= 65535:
                errs.append("config.%s.port: %r is outside 1..65535" % (name, b["port"]))
            if b is not None:
                b["endpoints"] = _endpoints(b, "config." + name, name == "broker", errs)
            if b is not None and (b["certfile"] is None) != (b["keyfile"] is None):
                errs.append("config.%s: certfile and keyfile go together" % name)
            elif b is not None and b["certfile"] is not None and not b["tls"]:
                errs.append("config.%s.certfile: a client certificate needs tls: true" % name)
    cfg["store"] = st = _check(cfg["store"] or {}, STORE, "config.store", errs)
    if st is not None and st["segment_bytes"] > st["budget_bytes"]:
        errs.append("config.store.segment_bytes: %r is larger than budget_bytes %r" % (
            st["segment_bytes"], st["budget_bytes"]))
    cfg["uplink"] = up = _check(cfg["uplink"] or {}, UPLINK, "config.uplink", errs)
    if up is not None and up["max_inflight"] is None:
        from edge.compat import IS_MICROPYTHON

        up["max_inflight"] = 2 if IS_MICROPYTHON else 4
    sources = []
    for i, src in enumerate(cfg["sources"] or ()):
        s = _source(src, "config.sources[%d]" % i, cfg, board, errs)
        if s is not None:
            sources.append(s)
    cfg["sources"] = sources
    if errs:
        raise ConfigError(errs)
    return cfg


def load(path):
    """Read and validate a config file; JSON syntax errors become ConfigError too.

    A relative broker.ca_file (certfile, keyfile) is read from the config's folder (a board's
    image folder carries them beside its config); a file that is not there is an error naming
    it. (Here, not in edge.main: this module is dropped after boot, so the check costs no heap
    for the run.)
    """
    import json

    try:
        with open(path) as f:
            raw = json.load(f)
    except OSError as exc:
        raise ConfigError("cannot read %s: %s" % (path, exc)) from None
    except ValueError as exc:
        raise ConfigError("%s is not valid JSON: %s" % (path, exc)) from None
    from edge.checked import files

    cfg = validate(raw)
    try:
        files(cfg, path)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return cfg


def _stamp(path):
    """What the config file holds now, cheaply compared: its CRC-32 (None if unreadable)."""
    from binascii import crc32

    try:
        with open(path, "rb") as f:
            return crc32(f.read())
    except OSError:
        return None


def wait(path, every_s=5):
    """`load(path)`, and on a board whose config is bad: say so in one console line, then wait for
    a new file that validates (flashed or copied with mpremote) instead of rebooting into the same
    error for ever. Returns the good config."""
    import time

    seen = _stamp(path)
    while True:
        try:
            return load(path)
        except ConfigError as exc:
            errors = exc.errors
            more = " (+%d more)" % (len(errors) - 1) if len(errors) > 1 else ""
            print("citybrain config error: %s%s; waiting for a new %s" % (errors[0], more, path))
        while True:
            time.sleep(every_s)
            now = _stamp(path)
            if now != seen:
                seen = now
                break
