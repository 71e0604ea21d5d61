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

This module is what a gateway runs: decode and what the agent reads from a codec (the contract
in docs/devices.md: KIND, KIND_CODE, FIELDS, ANALOG, COUNTERS, ALARM_LIMITS, MAX_PAYLOAD, alarm,
is_event). Making payloads (encode), UNITS and the other public limits (MAX_DEPTH, MAX_ID_CHARS)
live in sim_encode.py, which hosts import by name (`from devices.manhole import sim_encode`): a
board image leaves sim_* modules out, and every module global costs a board heap for the whole run.
"""

import json

from devices.common.compat import const
from devices.common.errors import DecodeError

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

MAX_PAYLOAD = const(1024)  # edge.sources.mqtt sizes its receive buffer from it

# Folded at compile time, so they cost a board nothing; sim_encode.py has the public copies.
_MAX_DEPTH = const(3)  # the message is flat; a little room for vendor extras, never a parser bomb
_MAX_ID_CHARS = const(32)

# The devices.common.errors codes this codec returns.
_BAD_LENGTH = const(2)
_BAD_VALUE = const(4)
_BAD_SYNTAX = const(5)

_F = const(0)  # float on the wire (a JSON int is accepted and becomes a float)
_B = const(1)  # JSON true/false only
_I = const(2)  # JSON integer only
_OPTIONAL = const(4)  # added to the type: the key may be missing (or null)

# Per field, aligned with FIELDS: JSON key, type, min, max. One flat tuple, four entries a field:
# on a board each tuple is a heap object, so a table of rows would cost eight more. The bounds
# are ints, which compare with a float exactly as the float would and, unlike a float constant,
# are not heap objects either.
# fmt: off
_SPEC = (
    "tilt", _F, 0, 180,
    "open", _B, 0, 0,
    "displaced", _B, 0, 0,
    "water_cm", _F + _OPTIONAL, 0, 1000,
    "ch4_ppm", _F + _OPTIONAL, 0, 1000000,
    "h2s_ppm", _F + _OPTIONAL, 0, 2000,
    "bat_mv", _I, 0, 5000,
    "rssi", _I + _OPTIONAL, -150, 0,
)
# fmt: on

ANALOG = (0, 3, 4, 5, 6, 7)
COUNTERS = ()  # no field changes by design in every message

ALARM_LIMITS = {
    "overflow_cm": 150.0,  # water in the chamber above this: "overflow" (set per well depth)
    "ch4_ppm": 5000.0,  # 10 % of methane's lower explosive limit (5 %vol): "gas"
    "h2s_ppm": 10.0,  # occupational exposure limit: "gas"
    "battery_mv": 3300,  # below this: "low_battery"
}


def decode(buf, start=0, end=-1, sensor_id=None):
    """Decode one whole MQTT payload; `sensor_id`, if given, must match the message's devId."""
    if end < 0:
        end = len(buf)
    n = end - start
    if n <= 0:
        return 0, None
    if n > MAX_PAYLOAD:
        return n, DecodeError(_BAD_LENGTH, "over 1 KB")
    # Reject nesting deeper than _MAX_DEPTH before json.loads can recurse on it.
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
            if depth > _MAX_DEPTH:
                return n, DecodeError(_BAD_SYNTAX, "nesting")
        elif c == 0x7D or c == 0x5D:
            depth -= 1
    if depth or in_str:
        # Unterminated. MicroPython 1.25's json.loads accepts '{"bat_mv":35' (a cut-off 3512); 1.29's refuses.
        return n, DecodeError(_BAD_SYNTAX, "not JSON")
    try:
        obj = json.loads(str(bytes(buf[start:end]), "utf-8"))
    except Exception:  # ValueError, UnicodeError, MemoryError on a board: all mean "not JSON"
        return n, DecodeError(_BAD_SYNTAX, "not JSON")
    if type(obj) is not dict:
        return n, DecodeError(_BAD_SYNTAX, "not JSON")  # not a JSON object, that is
    dev = obj.get("devId")
    if type(dev) is not str:
        return n, DecodeError(_BAD_SYNTAX, "devId")
    if not 0 < len(dev) <= _MAX_ID_CHARS:
        return n, DecodeError(_BAD_VALUE, "devId")
    if sensor_id is not None and dev != sensor_id:
        return n, DecodeError(_BAD_VALUE, "sensor_id")  # not the lid the topic names
    ts = obj.get("ts")
    if ts is not None and (type(ts) is not int or not 0 <= ts < 0x100000000):
        return n, DecodeError(_BAD_VALUE, "ts")
    vals = [None] * len(FIELDS)
    for i in range(len(FIELDS)):
        s = 4 * i
        key = _SPEC[s]
        typ = _SPEC[s + 1]
        v = obj.get(key)
        if v is None:
            if not typ & _OPTIONAL:
                return n, DecodeError(_BAD_SYNTAX, "missing " + key)
            continue
        typ &= ~_OPTIONAL
        t = type(v)
        if typ == _B:
            if t is not bool:
                return n, DecodeError(_BAD_SYNTAX, key)
        elif typ == _I:
            if t is not int:
                return n, DecodeError(_BAD_SYNTAX, key)
            if not _SPEC[s + 2] <= v <= _SPEC[s + 3]:
                return n, DecodeError(_BAD_VALUE, key)
        else:
            if t is not float and t is not int:
                return n, DecodeError(_BAD_SYNTAX, key)
            if t is int and not -1000000000 < v < 1000000000:
                return n, DecodeError(_BAD_VALUE, key)  # before float(): huge ints overflow it
            v = float(v)
            if not (_SPEC[s + 2] <= v <= _SPEC[s + 3]):  # also false for NaN
                return n, DecodeError(_BAD_VALUE, key)
        vals[i] = v
    return n, (dev, tuple(vals))


def alarm(fields, limits=None):
    """lid_displaced, lid_open, gas, overflow, low_battery in that priority; None if all is well.

    `limits` may hold only some keys: ALARM_LIMITS gives the rest."""
    lim = ALARM_LIMITS if limits is None else limits
    if fields[2]:
        return "lid_displaced"
    if fields[1]:
        return "lid_open"
    if (fields[4] is not None and fields[4] >= lim.get("ch4_ppm", ALARM_LIMITS["ch4_ppm"])) or (
        fields[5] is not None and fields[5] >= lim.get("h2s_ppm", ALARM_LIMITS["h2s_ppm"])
    ):
        return "gas"
    if fields[3] is not None and fields[3] > lim.get("overflow_cm", ALARM_LIMITS["overflow_cm"]):
        return "overflow"
    if fields[6] is not None and fields[6] < lim.get("battery_mv", ALARM_LIMITS["battery_mv"]):
        return "low_battery"
    return None


def is_event(fields):
    """An open or displaced lid is forwarded at once, whatever the deadband says."""
    return bool(fields[1]) or bool(fields[2])
