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
"""

from devices.common.crc import xor8
from devices.common.errors import (
    BAD_CRC,
    BAD_HEADER,
    BAD_LENGTH,
    BAD_SYNTAX,
    BAD_VALUE,
    UNSUPPORTED,
    DecodeError,
)
from edge.compat import const

KIND = "thermometer"
KIND_CODE = 4

FIELDS = ("body_c", "ambient_c", "seq", "distance_cm", "mask")
UNITS = ("°C", "°C", "", "cm", "")
ANALOG = (0, 1, 3)
COUNTERS = (2,)  # seq changes in every line by design

ALARM_LIMITS = {"fever_c": 37.3}

MAX_LINE = const(128)  # bytes from $ to LF inclusive
MAX_ID = const(32)  # bytes of UTF-8
BODY_MIN = const(3000)  # centi-degrees C
BODY_MAX = const(4500)
AMBIENT_MIN = const(-300)  # deci-degrees C
AMBIENT_MAX = const(600)
DIST_MIN = const(5)
DIST_MAX = const(250)
FLAG_MASK = const(0x01)

_DOLLAR = const(0x24)
_COMMA = const(0x2C)
_STAR = const(0x2A)
_CR = const(0x0D)
_LF = const(0x0A)
_DOT = const(0x2E)
_MINUS = const(0x2D)


def _hex(c):
    if 0x30 <= c <= 0x39:
        return c - 0x30
    c |= 0x20
    if 0x61 <= c <= 0x66:
        return c - 0x57
    return -1


def _comma(buf, i, stop):
    """Index of the next comma in [i, stop), or stop."""
    while i < stop and buf[i] != _COMMA:
        i += 1
    return i


def _uint(buf, i, j, max_digits):
    """Unsigned decimal in buf[i:j], or -1 if empty, too long or not all digits."""
    if j <= i or j - i > max_digits:
        return -1
    v = 0
    while i < j:
        c = buf[i] - 0x30
        if c < 0 or c > 9:
            return -1
        v = v * 10 + c
        i += 1
    return v


def _fixed(buf, i, j, decimals):
    """buf[i:j] as "d[d].f[f]" scaled by 10**decimals (1..decimals fraction digits), or -1."""
    k = i
    while k < j and buf[k] != _DOT:
        k += 1
    if k == j or k == i or k - i > 2 or j - k - 1 < 1 or j - k - 1 > decimals:
        return -1
    whole = _uint(buf, i, k, 2)
    frac = _uint(buf, k + 1, j, decimals)
    if whole < 0 or frac < 0:
        return -1
    for _ in range(decimals - (j - k - 1)):
        frac *= 10
    return whole * (10 ** decimals) + frac


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
        return i - start, DecodeError(BAD_HEADER, "no $")
    lim = start + MAX_LINE
    if lim > end:
        lim = end
    j = start + 1
    while j < lim:
        c = buf[j]
        if c == _LF:
            break
        if c == _DOLLAR:
            return j - start, DecodeError(BAD_SYNTAX, "line cut short")
        j += 1
    if j >= lim:
        if lim == start + MAX_LINE:
            return MAX_LINE, DecodeError(BAD_LENGTH, "no line end")
        return 0, None
    n = j + 1 - start  # the whole line is consumed whatever is wrong with it
    star = j - 4
    if star <= start or buf[j - 1] != _CR or buf[star] != _STAR:
        return n, DecodeError(BAD_SYNTAX, "no *XX\\r\\n")
    h = _hex(buf[j - 3])
    lo = _hex(buf[j - 2])
    if h < 0 or lo < 0:
        return n, DecodeError(BAD_SYNTAX, "checksum digits")
    if xor8(buf, start + 1, star) != (h << 4) | lo:
        return n, DecodeError(BAD_CRC, "checksum")
    p = start + 1
    k = _comma(buf, p, star)
    if k - p != 3 or buf[p] != 0x54 or buf[p + 1] != 0x4D or buf[p + 2] != 0x50:  # "TMP"
        return n, DecodeError(UNSUPPORTED, "sentence")
    # station id
    p = k + 1
    k = p
    while k < star:
        c = buf[k]
        if c == _COMMA:
            break
        if c < 0x20 or c == 0x7F or c == _STAR:
            return n, DecodeError(BAD_SYNTAX, "station id byte")
        k += 1
    if k == p or k - p > MAX_ID or k >= star:
        return n, DecodeError(BAD_SYNTAX, "station id")
    id_start = p
    id_end = k
    # seq
    p = k + 1
    k = _comma(buf, p, star)
    seq = _uint(buf, p, k, 5)
    if seq < 0 or k >= star:
        return n, DecodeError(BAD_SYNTAX, "seq")
    # body temperature, centi-degrees
    p = k + 1
    k = _comma(buf, p, star)
    body = _fixed(buf, p, k, 2)
    if body < 0 or k >= star:
        return n, DecodeError(BAD_SYNTAX, "body")
    # ambient temperature, deci-degrees, may be negative
    p = k + 1
    k = _comma(buf, p, star)
    neg = p < k and buf[p] == _MINUS
    amb = _fixed(buf, p + 1 if neg else p, k, 1)
    if amb < 0 or k >= star:
        return n, DecodeError(BAD_SYNTAX, "ambient")
    if neg:
        amb = -amb
    # distance, may be empty
    p = k + 1
    k = _comma(buf, p, star)
    dist = None
    if k > p:
        dist = _uint(buf, p, k, 3)
        if dist < 0:
            return n, DecodeError(BAD_SYNTAX, "distance")
    if k >= star:
        return n, DecodeError(BAD_SYNTAX, "distance")
    # flags: exactly two hex digits, the last field
    p = k + 1
    if star - p != 2:
        return n, DecodeError(BAD_SYNTAX, "flags")
    h = _hex(buf[p])
    lo = _hex(buf[p + 1])
    if h < 0 or lo < 0:
        return n, DecodeError(BAD_SYNTAX, "flags")
    flags = (h << 4) | lo
    if flags & ~FLAG_MASK:
        return n, DecodeError(UNSUPPORTED, "reserved flag bits")
    if seq > 0xFFFF:
        return n, DecodeError(BAD_VALUE, "seq")
    if body < BODY_MIN or body > BODY_MAX:
        return n, DecodeError(BAD_VALUE, "body temperature")
    if amb < AMBIENT_MIN or amb > AMBIENT_MAX:
        return n, DecodeError(BAD_VALUE, "ambient temperature")
    if dist is not None and (dist < DIST_MIN or dist > DIST_MAX):
        return n, DecodeError(BAD_VALUE, "distance")
    seg = buf[id_start:id_end]  # the one copy a reading needs: its station id
    try:
        sid = str(seg, "utf-8")
    except UnicodeError:
        return n, DecodeError(BAD_SYNTAX, "station id not UTF-8")
    return n, (sid, (body / 100.0, amb / 10.0, seq, dist, flags == 1))


def _check_id(raw):
    if not 1 <= len(raw) <= MAX_ID:
        raise ValueError("station id must be 1..32 bytes of UTF-8")
    for c in raw:
        if c < 0x20 or c == 0x7F or c in (_COMMA, _STAR, _DOLLAR):
            raise ValueError("station id may not hold control bytes or , * $")


def encode(sensor_id, fields):
    """The wire line for a reading (body to 0.01, ambient to 0.1 °C): decode's exact inverse for
    values at that resolution. ValueError if the reading cannot be sent."""
    body_c, ambient_c, seq, dist, mask = fields
    raw = sensor_id.encode("utf-8")
    _check_id(raw)
    body = round(body_c * 100)
    amb = round(ambient_c * 10)
    if not BODY_MIN <= body <= BODY_MAX:
        raise ValueError("body_c out of range")
    if not AMBIENT_MIN <= amb <= AMBIENT_MAX:
        raise ValueError("ambient_c out of range")
    if not 0 <= seq <= 0xFFFF:
        raise ValueError("seq out of range")
    if dist is not None and not DIST_MIN <= dist <= DIST_MAX:
        raise ValueError("distance_cm out of range")
    sign = "-" if amb < 0 else ""
    amb = abs(amb)
    tail = ",%d,%d.%02d,%s%d.%d,%s,%02X" % (seq, body // 100, body % 100, sign, amb // 10, amb % 10,
                                           "" if dist is None else str(dist), 1 if mask else 0)
    return frame(raw, tail.encode())


def frame(station, tail):
    """`$TMP,<station><tail>*XX\\r\\n` with the right checksum, unchecked (faults, test vectors)."""
    line = bytearray(b"$TMP,")
    line.extend(station)
    line.extend(tail)
    x = xor8(line, 1)
    line.extend(("*%02X\r\n" % x).encode())
    return bytes(line)


def alarm(fields, limits=None):
    """"fever" at or above the screening threshold (37.3 °C by default; sites tune it)."""
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
