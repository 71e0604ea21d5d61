"""Water-quality monitor register data: nine float32 values in 18 consecutive registers.

The Modbus RTU framing (slave, function, CRC) is handled by devices.common.modbus and the master
in edge/modbus.py; this codec turns the register DATA of one read of the whole map into fields.
A float32 occupies two registers; registers are big-endian on the wire, and the order of the two
registers is the vendor's choice:

    ABCD (default): register n = high word, n+1 = low word (IEEE 754 big-endian)
    CDAB:           register n = low word,  n+1 = high word ("word-swapped", common in
                    Chinese-made transmitters)

NaN/inf, a value outside the documented range, or a nonzero magnitude below 1e-30 is BAD_VALUE:
a probe that reports 1e38 or NaN is a broken probe, and 2e-41 is a word-order misconfiguration,
not a reading.
"""

import struct

from devices.common.compat import const
from devices.common.errors import BAD_VALUE, DecodeError
from devices.common.regmap import value

KIND = "water"
KIND_CODE = const(3)

FIELDS = (
    "ph",
    "turbidity_ntu",
    "cod_mg_l",
    "nh3n_mg_l",
    "do_mg_l",
    "conductivity_us_cm",
    "level_m",
    "flow_m3_h",
    "temp_c",
)
UNITS = ("pH", "NTU", "mg/L", "mg/L", "mg/L", "uS/cm", "m", "m3/h", "degC")
# Documented measuring ranges (inclusive); anything else is BAD_VALUE.
RANGES = (
    (0.0, 14.0),
    (0.0, 4000.0),
    (0.0, 10000.0),
    (0.0, 1000.0),
    (0.0, 25.0),
    (0.0, 200000.0),
    (-1.0, 100.0),
    (-100000.0, 100000.0),
    (-10.0, 60.0),
)

N_VALUES = const(9)
N_REGISTERS = const(18)
DATA_LEN = const(36)
WORD_ABCD = const(0)  # the word order codes devices.common.regmap reads (ABCD: high word first)
WORD_CDAB = const(1)
WORD_ORDERS = ("ABCD", "CDAB")  # index = code
DEFAULT_WORD_ORDER = "ABCD"  # what a slave's config gets when it names no word_order

ANALOG = (0, 1, 2, 3, 4, 5, 6, 7, 8)
COUNTERS = ()

ALARM_LIMITS = {
    "level_max_m": 3.0,  # "overflow": water above this level (m) at the station
    "ph_min": 6.0,  # "water_quality": pH outside 6..9 (GB 3838 surface water class I-V)
    "ph_max": 9.0,
    "cod_max_mg_l": 40.0,  # class V surface water limit
    "nh3n_max_mg_l": 2.0,  # class V surface water limit
    "do_min_mg_l": 2.0,  # class V surface water limit
}

# No probe measures 1e-30 of anything: such values are what a float whose low word is zero looks
# like when read in the wrong word order, so they are rejected rather than stored.
_TINY = 1e-30

def word_order_code(name):
    """"ABCD"/"CDAB" (config text) to WORD_ABCD/WORD_CDAB; anything else is a ValueError."""
    if name == "ABCD":
        return WORD_ABCD
    if name == "CDAB":
        return WORD_CDAB
    raise ValueError("word_order must be ABCD or CDAB, not %r" % (name,))


def bad_field(vals):
    """The index of the first value outside its field's range (NaN, inf, tiny included), or -1.
    None (a field the slave's register map does not have) is fine."""
    for i in range(N_VALUES):
        v = vals[i]
        if v is None:
            continue
        lo, hi = RANGES[i]
        if not (lo <= v <= hi) or (v != 0.0 and -_TINY < v < _TINY):  # NaN fails lo <= v
            return i
    return -1


def decode(buf, start=0, end=-1, sensor_id=None, word_order=WORD_ABCD):
    """Decode the 36 register bytes of a read of the built-in map (nine float32 from its first
    register). Other layouts are register maps in the config (devices.common.regmap)."""
    if end < 0:
        end = len(buf)
    if end - start < DATA_LEN:
        return 0, None
    vals = [None] * N_VALUES
    for i in range(N_VALUES):
        vals[i] = value(buf, start + 4 * i, 0, word_order)  # float32
    i = bad_field(vals)
    if i >= 0:
        return DATA_LEN, DecodeError(BAD_VALUE, FIELDS[i])
    return DATA_LEN, (sensor_id, tuple(vals))


def encode(sensor_id, fields, word_order=WORD_ABCD):
    """The 36 register bytes for `fields` (None is sent as NaN, as many probes do when absent)."""
    out = bytearray(DATA_LEN)
    for i in range(N_VALUES):
        v = fields[i]
        struct.pack_into(">f", out, 4 * i, float("nan") if v is None else v)
        if word_order == WORD_CDAB:
            p = 4 * i
            a, b = out[p], out[p + 1]
            out[p] = out[p + 2]
            out[p + 1] = out[p + 3]
            out[p + 2] = a
            out[p + 3] = b
    return bytes(out)


def registers(data):
    """Register data bytes as a list of 16-bit ints (for a Modbus server's register bank)."""
    return [(data[i] << 8) | data[i + 1] for i in range(0, len(data), 2)]


def f32(v):
    """`v` rounded to the nearest float32, i.e. what survives the wire exactly."""
    return struct.unpack(">f", struct.pack(">f", v))[0]


def alarm(fields, limits=None):
    """ "overflow" (level) before "water_quality" (pH, COD, NH3-N, DO); None if all is well."""
    lim = ALARM_LIMITS if limits is None else limits

    def get(key):
        return lim[key] if key in lim else ALARM_LIMITS[key]

    level = fields[6]
    if level is not None and level > get("level_max_m"):
        return "overflow"
    ph = fields[0]
    if ph is not None and (ph < get("ph_min") or ph > get("ph_max")):
        return "water_quality"
    if fields[2] is not None and fields[2] > get("cod_max_mg_l"):
        return "water_quality"
    if fields[3] is not None and fields[3] > get("nh3n_max_mg_l"):
        return "water_quality"
    if fields[4] is not None and fields[4] < get("do_min_mg_l"):
        return "water_quality"
    return None


def is_event(fields):
    """Water stations are polled: every reading is a sample, none is an event."""
    return False
