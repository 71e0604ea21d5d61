"""The kind registry: the one table of device kinds, for hosts (collector, `citybrain decode`, hil).

Per kind code: the kind's name (its config key and InfluxDB measurement) and its fields in `FIELDS`
order, each with the type its codec emits and, where the codec knows one, its inclusive range:

    bool   CBOR true/false          InfluxDB boolean
    int    CBOR unsigned/negative   InfluxDB integer (`1i`)
    float  CBOR float               InfluxDB float

A field's type never changes within a protocol version (docs/protocol.md, "Versioning"): InfluxDB
fixes a field's type with the first value a shard receives, so a reading that carries another type
would make every later good reading of that field a field-type conflict. The collector refuses such
readings against this table (collector/validate.py).

Host-side only: a board's agent reads its kind code and field names from the codec it runs
(`KIND_CODE`, `FIELDS`: the copies a board needs), and never imports this module, so the table
costs a board's heap nothing. tests/portable/test_registry.py pins the codecs' copies and range
constants to this table, and decodes every codec's wire vectors to check that each emitted value
has the type registered here and lies in its range.
"""

BOOL = "bool"
INT = "int"
FLOAT = "float"
TYPES = (BOOL, INT, FLOAT)

# (code, name, ((field, type, lo, hi), ...)); lo/hi None where the codec knows no bound.
# fmt: off
TABLE = (
    (1, "parking", (
        ("occupied", BOOL, None, None),
        ("event", INT, 0, 2),  # 0 heartbeat, 1 arrival, 2 departure (the frame TYPE)
        ("seq", INT, 0, 0xFFFF),
        ("mag_x", INT, -8000, 8000),
        ("mag_y", INT, -8000, 8000),
        ("mag_z", INT, -8000, 8000),
        ("battery_mv", INT, 2000, 3800),
        ("rssi_dbm", INT, -128, 0),
    )),
    (2, "manhole", (
        ("tilt_deg", FLOAT, 0.0, 180.0),
        ("open", BOOL, None, None),
        ("displaced", BOOL, None, None),
        ("water_level_cm", FLOAT, 0.0, 1000.0),
        ("ch4_ppm", FLOAT, 0.0, 1000000.0),
        ("h2s_ppm", FLOAT, 0.0, 2000.0),
        ("battery_mv", INT, 0, 5000),
        ("rssi_dbm", INT, -150, 0),
    )),
    (3, "water", (
        ("ph", FLOAT, 0.0, 14.0),
        ("turbidity_ntu", FLOAT, 0.0, 4000.0),
        ("cod_mg_l", FLOAT, 0.0, 10000.0),
        ("nh3n_mg_l", FLOAT, 0.0, 1000.0),
        ("do_mg_l", FLOAT, 0.0, 25.0),
        ("conductivity_us_cm", FLOAT, 0.0, 200000.0),
        ("level_m", FLOAT, -1.0, 100.0),
        ("flow_m3_h", FLOAT, -100000.0, 100000.0),
        ("temp_c", FLOAT, -10.0, 60.0),
    )),
    (4, "thermometer", (
        ("body_c", FLOAT, 30.0, 45.0),
        ("ambient_c", FLOAT, -30.0, 60.0),
        ("seq", INT, 0, 0xFFFF),
        ("distance_cm", INT, 5, 250),
        ("mask", BOOL, None, None),
    )),
)
# fmt: on


class Field:
    """One field of a kind: `name`, `type` (BOOL, INT or FLOAT), inclusive `lo`/`hi` or None."""

    __slots__ = ("name", "type", "lo", "hi")

    def __init__(self, name, type, lo=None, hi=None):
        if type not in TYPES:
            raise ValueError("field %r: type %r is not one of %r" % (name, type, TYPES))
        self.name = name
        self.type = type
        self.lo = lo
        self.hi = hi

    def __repr__(self):
        return "Field(%r, %r, %r, %r)" % (self.name, self.type, self.lo, self.hi)


class Kind:
    """A kind: `code`, `name`, `fields` (Field tuple in FIELDS order), `names` (the FIELDS tuple)."""

    __slots__ = ("code", "name", "fields", "names")

    def __init__(self, code, name, fields):
        self.code = code
        self.name = name
        self.fields = tuple(f if isinstance(f, Field) else Field(*f) for f in fields)
        self.names = tuple(f.name for f in self.fields)

    def __repr__(self):
        return "Kind(%r, %r, %r)" % (self.code, self.name, self.fields)

    def codec(self):
        """The kind's codec module (devices/<name>/codec.py), imported on first use."""
        import devices

        return devices.load(self.name)


_by_code = None


def by_code():
    """{kind code: Kind}, built once."""
    global _by_code
    if _by_code is None:
        _by_code = {code: Kind(code, name, fields) for code, name, fields in TABLE}
    return _by_code


def by_name():
    """{kind name: Kind}."""
    return {k.name: k for k in by_code().values()}
