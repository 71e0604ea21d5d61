"""Smart manhole lid messages: one flat JSON object per MQTT payload (UTF-8, at most 1 KB).

    {"devId":"MH-0123","ts":1764140000,"tilt":2.5,"open":false,"displaced":false,
     "water_cm":35.0,"ch4_ppm":12.0,"h2s_ppm":0.4,"bat_mv":3520,"rssi":-87}

The payload is the frame: `decode` always consumes the whole of buf[start:end], and a payload
that is not exactly one valid message is a typed error (BAD_LENGTH oversized, BAD_SYNTAX not
one JSON object / wrong JSON type / missing key / too deeply nested, BAD_VALUE out of range).
Numbers are never coerced from strings and booleans never from 0/1: a lid that sends "2.5" or 1
has a firmware problem the operator must see. Unknown keys are ignored (lid firmware adds keys).
"ts" (the lid's own clock, Unix seconds) is checked but not kept: NB-IoT lids' clocks drift, so
the gateway stamps the time of arrival.
"""

import json

from devices.common.errors import BAD_LENGTH, BAD_SYNTAX, BAD_VALUE, DecodeError
from edge.compat import const

KIND = "manhole"
KIND_CODE = const(2)

FIELDS = (
    "tilt_deg",
    "open",
    "displaced",
    "water_level_cm",
    "ch4_ppm",
    "h2s_ppm",
    "battery_mv",
    "rssi_dbm",
)
UNITS = ("deg", "", "", "cm", "ppm", "ppm", "mV", "dBm")

MAX_PAYLOAD = const(1024)
MAX_DEPTH = const(3)  # the message is flat; a little room for vendor extras, never a parser bomb
MAX_ID_CHARS = const(32)

_F = const(0)  # float on the wire (a JSON int is accepted and becomes a float)
_B = const(1)  # JSON true/false only
_I = const(2)  # JSON integer only

# JSON key, type, min, max, required; aligned with FIELDS. Floats keep `_DECIMALS` places in encode.
_SPEC = (
    ("tilt", _F, 0.0, 180.0, True),
    ("open", _B, 0, 0, True),
    ("displaced", _B, 0, 0, True),
    ("water_cm", _F, 0.0, 1000.0, False),
    ("ch4_ppm", _F, 0.0, 1000000.0, False),
    ("h2s_ppm", _F, 0.0, 2000.0, False),
    ("bat_mv", _I, 0, 5000, True),
    ("rssi", _I, -150, 0, False),
)
_DECIMALS = (1, 0, 0, 1, 1, 2, 0, 0)

ANALOG = (0, 3, 4, 5, 6, 7)

ALARM_LIMITS = {
    "overflow_cm": 150.0,  # water in the chamber above this: "overflow" (set per well depth)
    "ch4_ppm": 5000.0,  # 10 % of methane's lower explosive limit (5 %vol): "gas"
    "h2s_ppm": 10.0,  # occupational exposure limit: "gas"
    "battery_mv": 3300,  # below this: "low_battery"
}


def _depth_ok(buf, start, end):
    """Reject nesting deeper than MAX_DEPTH before json.loads can recurse on it."""
    depth = 0
    in_str = False
    esc = False
    for i in range(start, end):
        c = buf[i]
        if in_str:
            if esc:
                esc = False
            elif c == 0x5C:  # backslash
                esc = True
            elif c == 0x22:
                in_str = False
        elif c == 0x22:
            in_str = True
        elif c == 0x7B or c == 0x5B:  # { [
            depth += 1
            if depth > MAX_DEPTH:
                return False
        elif c == 0x7D or c == 0x5D:
            depth -= 1
    return True


def decode(buf, start=0, end=-1, sensor_id=None):
    """Decode one whole MQTT payload; `sensor_id`, if given, must match the message's devId."""
    if end < 0:
        end = len(buf)
    n = end - start
    if n <= 0:
        return 0, None
    if n > MAX_PAYLOAD:
        return n, DecodeError(BAD_LENGTH, "payload over 1 KB")
    if not _depth_ok(buf, start, end):
        return n, DecodeError(BAD_SYNTAX, "nested too deep")
    try:
        obj = json.loads(str(bytes(buf[start:end]), "utf-8"))
    except Exception:  # ValueError, UnicodeError, MemoryError on a board: all mean "not JSON"
        return n, DecodeError(BAD_SYNTAX, "not JSON")
    if type(obj) is not dict:
        return n, DecodeError(BAD_SYNTAX, "not an object")
    dev = obj.get("devId")
    if type(dev) is not str:
        return n, DecodeError(BAD_SYNTAX, "devId")
    if not 0 < len(dev) <= MAX_ID_CHARS:
        return n, DecodeError(BAD_VALUE, "devId length")
    if sensor_id is not None and dev != sensor_id:
        return n, DecodeError(BAD_VALUE, "devId mismatch")
    ts = obj.get("ts")
    if ts is not None and (type(ts) is not int or not 0 <= ts < 0x100000000):
        return n, DecodeError(BAD_VALUE, "ts")
    vals = [None] * len(_SPEC)
    for i in range(len(_SPEC)):
        key, typ, lo, hi, required = _SPEC[i]
        v = obj.get(key)
        if v is None:
            if required:
                return n, DecodeError(BAD_SYNTAX, "missing " + key)
            continue
        t = type(v)
        if typ == _B:
            if t is not bool:
                return n, DecodeError(BAD_SYNTAX, key)
        elif typ == _I:
            if t is not int:
                return n, DecodeError(BAD_SYNTAX, key)
            if not lo <= v <= hi:
                return n, DecodeError(BAD_VALUE, key)
        else:
            if t is not float and t is not int:
                return n, DecodeError(BAD_SYNTAX, key)
            if t is int and not -1000000000 < v < 1000000000:
                return n, DecodeError(BAD_VALUE, key)  # before float(): huge ints overflow it
            v = float(v)
            if not (lo <= v <= hi):  # also false for NaN
                return n, DecodeError(BAD_VALUE, key)
        vals[i] = v
    return n, (dev, tuple(vals))


def _quote(s):
    """A JSON string, non-ASCII kept as UTF-8 so both interpreters emit the same bytes."""
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch == '"' or ch == "\\":
            out.append("\\" + ch)
        elif o < 0x20:
            out.append("\\u%04x" % o)
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _fixed(v, d):
    """`v` with `d` decimals by integer arithmetic: identical text on CPython and MicroPython."""
    scale = 10**d
    q = int(v * scale + (0.5 if v >= 0 else -0.5))
    sign = "-" if q < 0 else ""
    q = -q if q < 0 else q
    if d == 0:
        return sign + str(q)
    frac = str(q % scale)
    return sign + str(q // scale) + "." + "0" * (d - len(frac)) + frac


def encode(sensor_id, fields, ts=None, corrupt=None):
    """The JSON payload for `fields` (None fields left out).

    `corrupt` names a FIELDS entry to send as a JSON string (the simulator's "bad_crc" fault:
    JSON has no CRC, so a type-corrupted field stands in for a damaged frame).
    """
    parts = ['{"devId":', _quote(sensor_id)]
    if ts is not None:
        parts.append(',"ts":' + str(ts))
    for i in range(len(_SPEC)):
        v = fields[i]
        if v is None:
            continue
        key, typ = _SPEC[i][0], _SPEC[i][1]
        if typ == _B:
            text = "true" if v else "false"
        elif typ == _I:
            text = str(v)
        else:
            text = _fixed(v, _DECIMALS[i])
        if corrupt == FIELDS[i]:
            text = '"' + text + '"'
        parts.append(',"' + key + '":' + text)
    parts.append("}")
    return "".join(parts).encode("utf-8")


def alarm(fields, limits=None):
    """lid_displaced, lid_open, gas, overflow, low_battery in that priority; None if all is well."""
    lim = ALARM_LIMITS if limits is None else limits

    def get(key):
        return lim[key] if key in lim else ALARM_LIMITS[key]

    if fields[2]:
        return "lid_displaced"
    if fields[1]:
        return "lid_open"
    if (fields[4] is not None and fields[4] >= get("ch4_ppm")) or (
        fields[5] is not None and fields[5] >= get("h2s_ppm")
    ):
        return "gas"
    if fields[3] is not None and fields[3] > get("overflow_cm"):
        return "overflow"
    if fields[6] is not None and fields[6] < get("battery_mv"):
        return "low_battery"
    return None


def is_event(fields):
    """An open or displaced lid is forwarded at once, whatever the deadband says."""
    return bool(fields[1]) or bool(fields[2])
