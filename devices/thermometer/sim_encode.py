"""The host-side half of the thermometer codec: lines from readings, station id checks, units and
the public limits, for simulators, tests and host tools, which import it by name
(`from devices.thermometer import sim_encode`).

Named sim_* so that `provisioning.firmware.modules_for` leaves it off a board image: a gateway only
decodes, and loaded code (every function, every module global) costs heap on MicroPython. The
codec keeps private, compile-time copies of the limits its decoder checks; the wire vectors (each
range's edges, the longest line) pin them to the public ones here.
"""

from devices.common.crc import xor8

UNITS = ("°C", "°C", "", "cm", "")  # aligned with codec.FIELDS

MAX_LINE = 128  # bytes from $ to LF inclusive
MAX_ID = 32  # bytes of UTF-8
BODY_MIN = 3000  # centi-degrees C
BODY_MAX = 4500
AMBIENT_MIN = -300  # deci-degrees C
AMBIENT_MAX = 600
DIST_MIN = 5
DIST_MAX = 250
FLAG_MASK = 0x01


def check_id(raw):
    """ValueError unless `raw` (UTF-8 bytes) is a station id a line can carry."""
    if not 1 <= len(raw) <= MAX_ID:
        raise ValueError("station id must be 1..32 bytes of UTF-8")
    for c in raw:
        if c < 0x20 or c == 0x7F or c in b",*$":
            raise ValueError("station id may not hold control bytes or , * $")


def encode(sensor_id, fields):
    """The wire line for a reading (body to 0.01, ambient to 0.1 °C): decode's exact inverse for
    values at that resolution. ValueError if the reading cannot be sent."""
    body_c, ambient_c, seq, dist, mask = fields
    raw = sensor_id.encode("utf-8")
    check_id(raw)
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
    tail = ",%d,%d.%02d,%s%d.%d,%s,%02X" % (
        seq,
        body // 100,
        body % 100,
        sign,
        amb // 10,
        amb % 10,
        "" if dist is None else str(dist),
        1 if mask else 0,
    )
    return frame(raw, tail.encode())


def frame(station, tail):
    """`$TMP,<station><tail>*XX\\r\\n` with the right checksum, unchecked (faults, test vectors)."""
    line = bytearray(b"$TMP,")
    line.extend(station)
    line.extend(tail)
    x = xor8(line, 1)
    line.extend(("*%02X\r\n" % x).encode())
    return bytes(line)
