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

This module is what a gateway runs: decode and what the agent reads from a codec (the contract
in docs/devices.md: KIND, KIND_CODE, FIELDS, ANALOG, COUNTERS, ALARM_LIMITS, alarm, is_event).
Making frames (encode, pack, sensor_addr, sensor_name), UNITS and the public frame constants
(HEARTBEAT, MAG_LIMIT, ...) live in sim_encode.py, which hosts import by name
(`from devices.parking import sim_encode`): a board image leaves sim_* modules out, and every
module global costs a board heap for the whole run.
"""

from devices.common.compat import const
from devices.common.crc import crc16_modbus
from devices.common.errors import DecodeError

KIND = "parking"
KIND_CODE = 1

FIELDS = ("occupied", "event", "seq", "mag_x", "mag_y", "mag_z", "battery_mv", "rssi_dbm")
ANALOG = (3, 4, 5, 6, 7)
COUNTERS = (2,)  # seq changes in every frame by design: not a change worth reporting by itself

ALARM_LIMITS = {"low_battery_mv": 3300}

# Folded at compile time, so they cost a board nothing. sim_encode.py has the public copies; the
# wire vectors (extremes, each range's edges) pin the two to each other.
_ARRIVAL = const(1)  # TYPE; 0 is a heartbeat
_DEPARTURE = const(2)
_SYNC0 = const(0xAA)
_SYNC1 = const(0x55)
_BODY_LEN = const(15)  # LEN of the three v1 frame types
_MIN_LEN = const(3)  # ADDR + TYPE: the least a frame of any type carries
_MAX_LEN = const(64)  # longer is not a frame of this family (LEN is a garbage byte)
_OVERHEAD = const(5)  # sync + LEN + CRC around the body
_MAG_LIMIT = const(8000)  # mG: the magnetometer's +-8 G full scale
_BATT_MIN = const(2000)
_BATT_MAX = const(3800)
_RSSI_MIN = const(-128)  # the i8 floor; concentrators clamp weaker packets to it
_RSSI_NONE = const(0x7F)  # no radio link (RS-485): the field is absent
_ADDR_MIN = const(1)
_ADDR_MAX = const(0xFFFE)  # 0 and 0xFFFF are bus broadcast addresses, never a sensor

# The devices.common.errors codes this codec returns.
_BAD_HEADER = const(1)
_BAD_LENGTH = const(2)
_BAD_CRC = const(3)
_BAD_VALUE = const(4)
_UNSUPPORTED = const(6)


def _i16(buf, pos):
    v = buf[pos] | (buf[pos + 1] << 8)
    if v & 0x8000:
        v -= 0x10000
    return v


def decode(buf, start=0, end=-1, sensor_id=None):
    """(consumed, (sensor_id, fields) | DecodeError); (0, None) = need more bytes.

    `sensor_id` is ignored: every frame carries its own bus address.
    """
    if end < 0:
        end = len(buf)
    if end - start <= 0:
        return 0, None
    # A frame may start at AA 55, or at an AA that is the last byte (its 55 may follow).
    i = start
    while i < end and not (buf[i] == _SYNC0 and (i + 1 >= end or buf[i + 1] == _SYNC1)):
        i += 1
    if i > start:
        return i - start, DecodeError(_BAD_HEADER, "no sync")
    if end - start < 3:
        return 0, None
    ln = buf[start + 2]
    if ln < _MIN_LEN or ln > _MAX_LEN:
        return 2, DecodeError(_BAD_LENGTH, "LEN")
    total = ln + _OVERHEAD
    if end - start < total:
        return 0, None
    c = start + 3 + ln
    if crc16_modbus(buf, start, c) != buf[c] | (buf[c + 1] << 8):
        # Skip only up to the next sync inside the claimed frame: if this "frame" was a truncated
        # one, the real frame after it starts there. A sync on the frame's last byte needs the
        # byte after it to tell, so wait for it rather than decide differently on a split read.
        last = start + total - 1
        if buf[last] == _SYNC0 and last + 1 >= end:
            return 0, None
        j = start + 2
        while j <= last:
            if buf[j] == _SYNC0 and buf[j + 1] == _SYNC1:
                return j - start, DecodeError(_BAD_CRC, "crc")
            j += 1
        return total, DecodeError(_BAD_CRC, "crc")
    p = start + 3
    ftype = buf[p + 2]
    if ftype > _DEPARTURE:
        return total, DecodeError(_UNSUPPORTED, "type")
    if ln != _BODY_LEN:
        return total, DecodeError(_BAD_LENGTH, "LEN")  # not the type's
    addr = buf[p] | (buf[p + 1] << 8)
    if addr < _ADDR_MIN or addr > _ADDR_MAX:
        return total, DecodeError(_BAD_VALUE, "address")
    flags = buf[p + 5]
    if flags & 0xFE:
        return total, DecodeError(_UNSUPPORTED, "flags")
    occupied = flags == 1
    if (ftype == _ARRIVAL and not occupied) or (ftype == _DEPARTURE and occupied):
        return total, DecodeError(_BAD_VALUE, "occupied")  # contradicts the event
    mx = _i16(buf, p + 6)
    my = _i16(buf, p + 8)
    mz = _i16(buf, p + 10)
    if (
        mx < -_MAG_LIMIT
        or mx > _MAG_LIMIT
        or my < -_MAG_LIMIT
        or my > _MAG_LIMIT
        or mz < -_MAG_LIMIT
        or mz > _MAG_LIMIT
    ):
        return total, DecodeError(_BAD_VALUE, "mag field")
    batt = buf[p + 12] | (buf[p + 13] << 8)
    if batt < _BATT_MIN or batt > _BATT_MAX:
        return total, DecodeError(_BAD_VALUE, "battery_mv")
    rssi = buf[p + 14]
    if rssi == _RSSI_NONE:
        rssi = None
    else:
        if rssi & 0x80:
            rssi -= 0x100
        if rssi < _RSSI_MIN or rssi > 0:
            return total, DecodeError(_BAD_VALUE, "rssi_dbm")
    seq = buf[p + 3] | (buf[p + 4] << 8)
    # The sensor id is the address as "P-" and five digits (sim_encode.sensor_name).
    return total, ("P-%05d" % addr, (occupied, ftype, seq, mx, my, mz, batt, rssi))


def alarm(fields, limits=None):
    """ "low_battery" below the limit (the bay must be visited before the sensor goes blind)."""
    lim = ALARM_LIMITS["low_battery_mv"]
    if limits and "low_battery_mv" in limits:
        lim = limits["low_battery_mv"]
    batt = fields[6]
    if batt is not None and batt < lim:
        return "low_battery"
    return None


def is_event(fields):
    """Arrivals and departures: parking is billed from them, so they are never deadbanded away."""
    return fields[1] == _ARRIVAL or fields[1] == _DEPARTURE
