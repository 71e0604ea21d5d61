"""Parking-bay sensor frames: binary, self-delimiting, CRC-16/MODBUS; layout in README.md.

    0    1    2    3..4  5     6..7  8      9..10  11..12 13..14 15..16 17    18..19
    +----+----+----+-----+-----+-----+------+------+------+------+------+-----+-------+
    | AA | 55 |LEN |ADDR |TYPE | SEQ |FLAGS |MAG_X |MAG_Y |MAG_Z |BATT  |RSSI |CRC16  |
    +----+----+----+-----+-----+-----+------+------+------+------+------+-----+-------+
    LEN = bytes 3..17 (15); multi-byte fields little-endian; CRC over bytes 0..17.

The same frame travels on an RS-485 bus (sensors polled or free-running) and out of a LoRa
concentrator's UART (which fills RSSI; on RS-485 RSSI is 0x7F = absent). Arrival and departure
frames are what parking is billed from, so a frame is either exact or an error: the CRC, the
length, every range and the type/occupied consistency are checked before a reading is returned.

On a CRC failure only the bytes up to the next sync inside the claimed frame are skipped: a
truncated frame then costs one error and the frame that follows it still decodes.
"""

from devices.common.crc import crc16_modbus
from devices.common.errors import BAD_CRC, BAD_HEADER, BAD_LENGTH, BAD_VALUE, UNSUPPORTED, DecodeError
from edge.compat import const

KIND = "parking"
KIND_CODE = 1

FIELDS = ("occupied", "event", "seq", "mag_x", "mag_y", "mag_z", "battery_mv", "rssi_dbm")
UNITS = ("", "", "", "mG", "mG", "mG", "mV", "dBm")
ANALOG = (3, 4, 5, 6, 7)
COUNTERS = (2,)  # seq changes in every frame by design: not a change worth reporting by itself

HEARTBEAT = const(0)
ARRIVAL = const(1)
DEPARTURE = const(2)

ALARM_LIMITS = {"low_battery_mv": 3300}

SYNC0 = const(0xAA)
SYNC1 = const(0x55)
BODY_LEN = const(15)  # LEN of the three v1 frame types
FRAME_LEN = const(20)  # sync(2) + LEN(1) + body(15) + CRC(2)
MIN_LEN = const(3)  # ADDR + TYPE: the least a frame of any type carries
MAX_LEN = const(64)  # longer is not a frame of this family (LEN is a garbage byte)

MAG_LIMIT = const(8000)  # mG: the magnetometer's +-8 G full scale
BATT_MIN = const(2000)
BATT_MAX = const(3800)
RSSI_MIN = const(-128)  # the i8 floor; concentrators clamp weaker packets to it
RSSI_NONE = const(0x7F)  # no radio link (RS-485): the field is absent
ADDR_MIN = const(1)
ADDR_MAX = const(0xFFFE)  # 0 and 0xFFFF are bus broadcast addresses, never a sensor

_OVERHEAD = const(5)  # sync + LEN + CRC around the body


def sensor_name(addr):
    """The sensor id a bus address is reported under: "P-" and five digits."""
    return "P-%05d" % addr


def _i16(buf, i):
    v = buf[i] | (buf[i + 1] << 8)
    if v & 0x8000:
        v -= 0x10000
    return v


def _sync_at(buf, i, end):
    """True if a frame may start at i: AA 55, or AA as the last byte (the 55 may follow)."""
    return buf[i] == SYNC0 and (i + 1 >= end or buf[i + 1] == SYNC1)


def decode(buf, start=0, end=-1, sensor_id=None):
    """(consumed, (sensor_id, fields) | DecodeError); (0, None) = need more bytes.

    `sensor_id` is ignored: every frame carries its own bus address.
    """
    if end < 0:
        end = len(buf)
    if end - start <= 0:
        return 0, None
    i = start
    while i < end and not _sync_at(buf, i, end):
        i += 1
    if i > start:
        return i - start, DecodeError(BAD_HEADER, "no sync")
    if end - start < 3:
        return 0, None
    ln = buf[start + 2]
    if ln < MIN_LEN or ln > MAX_LEN:
        return 2, DecodeError(BAD_LENGTH, "LEN out of range")
    total = ln + _OVERHEAD
    if end - start < total:
        return 0, None
    c = start + 3 + ln
    if crc16_modbus(buf, start, c) != buf[c] | (buf[c + 1] << 8):
        # Skip only up to the next sync inside the claimed frame: if this "frame" was a truncated
        # one, the real frame after it starts there. A sync on the frame's last byte needs the
        # byte after it to tell, so wait for it rather than decide differently on a split read.
        last = start + total - 1
        if buf[last] == SYNC0 and last + 1 >= end:
            return 0, None
        j = start + 2
        while j <= last:
            if buf[j] == SYNC0 and buf[j + 1] == SYNC1:
                return j - start, DecodeError(BAD_CRC, "crc")
            j += 1
        return total, DecodeError(BAD_CRC, "crc")
    p = start + 3
    ftype = buf[p + 2]
    if ftype > DEPARTURE:
        return total, DecodeError(UNSUPPORTED, "frame type")
    if ln != BODY_LEN:
        return total, DecodeError(BAD_LENGTH, "LEN for frame type")
    addr = buf[p] | (buf[p + 1] << 8)
    if addr < ADDR_MIN or addr > ADDR_MAX:
        return total, DecodeError(BAD_VALUE, "address")
    flags = buf[p + 5]
    if flags & 0xFE:
        return total, DecodeError(UNSUPPORTED, "reserved flag bits")
    occupied = flags == 1
    if (ftype == ARRIVAL and not occupied) or (ftype == DEPARTURE and occupied):
        return total, DecodeError(BAD_VALUE, "event contradicts occupied flag")
    mx = _i16(buf, p + 6)
    my = _i16(buf, p + 8)
    mz = _i16(buf, p + 10)
    if (mx < -MAG_LIMIT or mx > MAG_LIMIT or my < -MAG_LIMIT or my > MAG_LIMIT
            or mz < -MAG_LIMIT or mz > MAG_LIMIT):
        return total, DecodeError(BAD_VALUE, "magnetic field")
    batt = buf[p + 12] | (buf[p + 13] << 8)
    if batt < BATT_MIN or batt > BATT_MAX:
        return total, DecodeError(BAD_VALUE, "battery")
    rssi = buf[p + 14]
    if rssi == RSSI_NONE:
        rssi = None
    else:
        if rssi & 0x80:
            rssi -= 0x100
        if rssi < RSSI_MIN or rssi > 0:
            return total, DecodeError(BAD_VALUE, "rssi")
    seq = buf[p + 3] | (buf[p + 4] << 8)
    return total, (sensor_name(addr), (occupied, ftype, seq, mx, my, mz, batt, rssi))


def __getattr__(name):
    """pack, encode and sensor_addr live in sim_encode: only simulators and tests make frames,
    so a board image (which leaves out sim* modules) does not carry them on its heap."""
    if name in ("pack", "encode", "sensor_addr"):
        from devices.parking import sim_encode

        return getattr(sim_encode, name)
    raise AttributeError(name)


def alarm(fields, limits=None):
    """"low_battery" below the limit (the bay must be visited before the sensor goes blind)."""
    lim = ALARM_LIMITS["low_battery_mv"]
    if limits and "low_battery_mv" in limits:
        lim = limits["low_battery_mv"]
    batt = fields[6]
    if batt is not None and batt < lim:
        return "low_battery"
    return None


def is_event(fields):
    """Arrivals and departures: parking is billed from them, so they are never deadbanded away."""
    return fields[1] == ARRIVAL or fields[1] == DEPARTURE
