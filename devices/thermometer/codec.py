"""Body-temperature screening stations: one NMEA-like ASCII line per person screened.

    $TMP,<station>,<seq>,<body_c>,<ambient_c>,<distance_cm>,<flags>*<XX>\r\n

    station      1..32 bytes of UTF-8 (Chinese ids are common), no control bytes, no , * $
    seq          0..65535, +1 per person (wraps): a gap is a lost line
    body_c       dd.d or dd.dd, 30.00..45.00 (outside = BAD_VALUE: not a person, or a fault)
    ambient_c    [-]d.d or [-]dd.d, -30.0..60.0
    distance_cm  empty (no rangefinder) or 5..250
    flags        two hex digits: bit 0 = mask worn; bits 1..7 reserved (set = UNSUPPORTED)
    XX           XOR of the bytes between $ and *, two hex digits (either case accepted)

A line is the bytes from `$` to the first LF, which must follow a CR. A second `$` before the LF
means the line was cut short (a reset, a truncated write): that stub is one BAD_SYNTAX and the new
line decodes. A `$` with no LF within MAX_LINE bytes is consumed as BAD_LENGTH, so a station
spewing noise cannot stall the parser. Every line is a person screened, so each reading is an
event (see is_event).

This module is what a gateway runs: decode and what the agent reads from a codec (the contract
in docs/devices.md: KIND, KIND_CODE, FIELDS, ANALOG, COUNTERS, ALARM_LIMITS, alarm, is_event).
Making lines (encode, frame, check_id), UNITS and the public limits (MAX_LINE, BODY_MIN, ...)
live in sim_encode.py, which hosts import by name (`from devices.thermometer import sim_encode`):
a board image leaves sim_* modules out, and every module global costs a board heap for the whole run.
"""

from devices.common.compat import const
from devices.common.crc import xor8
from devices.common.errors import DecodeError

KIND = "thermometer"
KIND_CODE = 4

FIELDS = ("body_c", "ambient_c", "seq", "distance_cm", "mask")
ANALOG = (0, 1, 3)
COUNTERS = (2,)  # seq changes in every line by design

ALARM_LIMITS = {"fever_c": 37.3}

# Folded at compile time, so they cost a board nothing. sim_encode.py has the public copies; the
# wire vectors (each range's edges, the longest line) pin the two to each other.
_MAX_LINE = const(128)  # bytes from $ to LF inclusive
_MAX_ID = const(32)  # bytes of UTF-8
_BODY_MIN = const(3000)  # centi-degrees C
_BODY_MAX = const(4500)
_AMBIENT_MIN = const(-300)  # deci-degrees C
_AMBIENT_MAX = const(600)
_DIST_MIN = const(5)
_DIST_MAX = const(250)
_FLAG_MASK = const(0x01)

_DOLLAR = const(0x24)
_COMMA = const(0x2C)
_STAR = const(0x2A)
_CR = const(0x0D)
_LF = const(0x0A)
_DOT = const(0x2E)
_MINUS = const(0x2D)

# The devices.common.errors codes this codec returns.
_BAD_HEADER = const(1)
_BAD_LENGTH = const(2)
_BAD_CRC = const(3)
_BAD_VALUE = const(4)
_BAD_SYNTAX = const(5)
_UNSUPPORTED = const(6)


def _hex(c):
    if 0x30 <= c <= 0x39:
        return c - 0x30
    c |= 0x20
    if 0x61 <= c <= 0x66:
        return c - 0x57
    return -1


def _comma(buf, pos, stop):
    """Index of the next comma in buf[pos:stop], or stop."""
    while pos < stop and buf[pos] != _COMMA:
        pos += 1
    return pos


def _uint(buf, start, end, n):
    """Unsigned decimal in buf[start:end], or -1 if empty, longer than n digits or not all digits."""
    if end <= start or end - start > n:
        return -1
    v = 0
    for i in range(start, end):
        c = buf[i] - 0x30
        if c < 0 or c > 9:
            return -1
        v = v * 10 + c
    return v


def _fixed(buf, start, end, n):
    """buf[start:end] as "d[d].f[f]" scaled by 10**n (1..n fraction digits), or -1."""
    dot = start
    while dot < end and buf[dot] != _DOT:
        dot += 1
    places = end - dot - 1  # fraction digits
    if dot == end or dot == start or dot - start > 2 or places < 1 or places > n:
        return -1
    whole = _uint(buf, start, dot, 2)
    frac = _uint(buf, dot + 1, end, n)
    if whole < 0 or frac < 0:
        return -1
    for _ in range(n - places):
        frac *= 10
    return whole * (10**n) + frac


def decode(buf, start=0, end=-1, sensor_id=None):
    """(consumed, (station id, fields) | DecodeError); (0, None) = need more bytes.

    `sensor_id` is ignored: every line names its station.
    """
    if end < 0:
        end = len(buf)
    if end <= start:
        return 0, None
    i = start
    while i < end and buf[i] != _DOLLAR:
        i += 1
    if i > start:
        return i - start, DecodeError(_BAD_HEADER, "no $")
    lim = start + _MAX_LINE
    if lim > end:
        lim = end
    j = start + 1
    while j < lim:
        c = buf[j]
        if c == _LF:
            break
        if c == _DOLLAR:
            return j - start, DecodeError(_BAD_SYNTAX, "cut short")
        j += 1
    if j >= lim:
        if lim == start + _MAX_LINE:
            return _MAX_LINE, DecodeError(_BAD_LENGTH, "no LF")
        return 0, None
    n = j + 1 - start  # the whole line is consumed whatever is wrong with it
    star = j - 4
    if star <= start or buf[j - 1] != _CR or buf[star] != _STAR:
        return n, DecodeError(_BAD_SYNTAX, "checksum")  # no "*XX" CR LF at the end
    h = _hex(buf[j - 3])
    lo = _hex(buf[j - 2])
    if h < 0 or lo < 0:
        return n, DecodeError(_BAD_SYNTAX, "checksum")
    if xor8(buf, start + 1, star) != (h << 4) | lo:
        return n, DecodeError(_BAD_CRC, "checksum")
    p = start + 1
    k = _comma(buf, p, star)
    if k - p != 3 or buf[p] != 0x54 or buf[p + 1] != 0x4D or buf[p + 2] != 0x50:  # "TMP"
        return n, DecodeError(_UNSUPPORTED, "sentence")
    # station id
    p = k + 1
    k = p
    while k < star:
        c = buf[k]
        if c == _COMMA:
            break
        if c < 0x20 or c == 0x7F or c == _STAR:
            return n, DecodeError(_BAD_SYNTAX, "station id")
        k += 1
    if k == p or k - p > _MAX_ID or k >= star:
        return n, DecodeError(_BAD_SYNTAX, "station id")
    id_start = p
    id_end = k
    # seq
    p = k + 1
    k = _comma(buf, p, star)
    seq = _uint(buf, p, k, 5)
    if seq < 0 or k >= star:
        return n, DecodeError(_BAD_SYNTAX, "seq")
    # body temperature, centi-degrees
    p = k + 1
    k = _comma(buf, p, star)
    body = _fixed(buf, p, k, 2)
    if body < 0 or k >= star:
        return n, DecodeError(_BAD_SYNTAX, "body_c")
    # ambient temperature, deci-degrees, may be negative
    p = k + 1
    k = _comma(buf, p, star)
    neg = p < k and buf[p] == _MINUS
    amb = _fixed(buf, p + 1 if neg else p, k, 1)
    if amb < 0 or k >= star:
        return n, DecodeError(_BAD_SYNTAX, "ambient_c")
    if neg:
        amb = -amb
    # distance, may be empty
    p = k + 1
    k = _comma(buf, p, star)
    dist = None
    if k > p:
        dist = _uint(buf, p, k, 3)
        if dist < 0:
            return n, DecodeError(_BAD_SYNTAX, "distance_cm")
    if k >= star:
        return n, DecodeError(_BAD_SYNTAX, "distance_cm")
    # flags: exactly two hex digits, the last field
    p = k + 1
    if star - p != 2:
        return n, DecodeError(_BAD_SYNTAX, "flags")
    h = _hex(buf[p])
    lo = _hex(buf[p + 1])
    if h < 0 or lo < 0:
        return n, DecodeError(_BAD_SYNTAX, "flags")
    flags = (h << 4) | lo
    if flags & ~_FLAG_MASK:
        return n, DecodeError(_UNSUPPORTED, "flags")
    if seq > 0xFFFF:
        return n, DecodeError(_BAD_VALUE, "seq")
    if body < _BODY_MIN or body > _BODY_MAX:
        return n, DecodeError(_BAD_VALUE, "body_c")
    if amb < _AMBIENT_MIN or amb > _AMBIENT_MAX:
        return n, DecodeError(_BAD_VALUE, "ambient_c")
    if dist is not None and (dist < _DIST_MIN or dist > _DIST_MAX):
        return n, DecodeError(_BAD_VALUE, "distance_cm")
    seg = buf[id_start:id_end]  # the one copy a reading needs: its station id
    try:
        sid = str(seg, "utf-8")
    except UnicodeError:
        return n, DecodeError(_BAD_SYNTAX, "station id")  # not UTF-8
    return n, (sid, (body / 100.0, amb / 10.0, seq, dist, flags == 1))


def alarm(fields, limits=None):
    """ "fever" at or above the screening threshold (37.3 °C by default; sites tune it)."""
    lim = ALARM_LIMITS["fever_c"]
    if limits and "fever_c" in limits:
        lim = limits["fever_c"]
    body = fields[0]
    if body is not None and body >= lim:
        return "fever"
    return None


def is_event(fields):
    """Every line is an event: it is one person screened, not a sample of a slowly changing
    signal, so a deadband must never drop one (the screened count and every fever are the point)."""
    return True
