"""What a board reads from a codec (docs/devices.md, "The codec contract"), checked on every kind under
both interpreters: every name there, of the right sort, and no module `__getattr__` that would
answer for names outside it (and load host-side code to do so)."""

from devices import KINDS, load

# name -> what it must be: "str", "int", "tuple", "dict" or "call"
REQUIRED = (
    ("KIND", "str"),
    ("KIND_CODE", "int"),
    ("FIELDS", "tuple"),
    ("ANALOG", "tuple"),
    ("COUNTERS", "tuple"),
    ("ALARM_LIMITS", "dict"),
    ("decode", "call"),
    ("alarm", "call"),
    ("is_event", "call"),
)
# Read only for some transports; when present, of this sort.
OPTIONAL = (
    ("MAX_PAYLOAD", "int"),  # mqtt: sizes the receive buffer (1024 without it)
    ("N_REGISTERS", "int"),  # modbus: the kind has a register map
    ("WORD_ABCD", "int"),
    ("word_order_code", "call"),
    ("bad_field", "call"),  # modbus: the kind's range check of a reading read through a register map
)


def _is(v, sort):
    if sort == "call":
        return callable(v)
    return type(v) is {"str": str, "int": int, "tuple": tuple, "dict": dict}[sort]


def test_every_codec_has_the_contract():
    for kind in KINDS:
        codec = load(kind)
        for name, sort in REQUIRED:
            assert hasattr(codec, name), "%s codec lacks %s" % (kind, name)
            assert _is(getattr(codec, name), sort), "%s.%s is not a %s" % (kind, name, sort)
        for name, sort in OPTIONAL:
            if hasattr(codec, name):
                assert _is(getattr(codec, name), sort), "%s.%s is not a %s" % (kind, name, sort)
        if hasattr(codec, "N_REGISTERS"):  # a modbus kind: edge/ reads the rest of the modbus part
            for name in ("WORD_ABCD", "word_order_code", "bad_field"):
                assert hasattr(codec, name), "%s codec has N_REGISTERS but lacks %s" % (kind, name)
        assert codec.KIND == kind
        n = len(codec.FIELDS)
        for i in codec.ANALOG + codec.COUNTERS:
            assert 0 <= i < n, "%s: field index %d out of FIELDS" % (kind, i)


def test_no_codec_answers_for_names_outside_it():
    for kind in KINDS:
        codec = load(kind)
        assert "__getattr__" not in dir(codec), kind
        assert not hasattr(codec, "encode") or kind == "water", kind  # water's encoder is still in codec.py
        assert not hasattr(codec, "UNITS") or kind == "water", kind
