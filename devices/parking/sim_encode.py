"""The host-side half of the parking codec: frames from readings, sensor ids, units and the frame
constants, for simulators, tests and host tools, which import it by name
(`from devices.parking import sim_encode`).

Named sim_* so that `provisioning.firmware.modules_for` leaves it off a board image: a gateway only
decodes, and loaded code (every function, every module global) costs heap on MicroPython. The
codec keeps private, compile-time copies of the constants its decoder checks; the wire vectors
(extremes, each range's edges) pin them to the public ones here.
"""

from devices.common.crc import crc16_modbus

UNITS = ("", "", "", "mG", "mG", "mG", "mV", "dBm")  # aligned with codec.FIELDS

HEARTBEAT = 0  # TYPE, and a reading's "event" field
ARRIVAL = 1
DEPARTURE = 2

SYNC0 = 0xAA
SYNC1 = 0x55
BODY_LEN = 15  # LEN of the three v1 frame types
FRAME_LEN = 20  # sync(2) + LEN(1) + body(15) + CRC(2)
MIN_LEN = 3  # ADDR + TYPE: the least a frame of any type carries
MAX_LEN = 64  # longer is not a frame of this family (LEN is a garbage byte)

MAG_LIMIT = 8000  # mG: the magnetometer's +-8 G full scale
BATT_MIN = 2000
BATT_MAX = 3800
RSSI_MIN = -128  # the i8 floor; concentrators clamp weaker packets to it
RSSI_NONE = 0x7F  # no radio link (RS-485): the field is absent
ADDR_MIN = 1
ADDR_MAX = 0xFFFE  # 0 and 0xFFFF are bus broadcast addresses, never a sensor


def sensor_name(addr):
    """The sensor id a bus address is reported under: "P-" and five digits (as codec.decode names it)."""
    return "P-%05d" % addr


def sensor_addr(sensor_id):
    """Bus address of "P-00012" (or of an int address); ValueError for anything else."""
    if isinstance(sensor_id, int):
        addr = sensor_id
    else:
        # Only the canonical form, so that an id names one sensor: "P-12" would decode as "P-00012".
        if len(sensor_id) != 7 or sensor_id[:2] != "P-":
            raise ValueError("parking sensor id must look like P-00012: %r" % (sensor_id,))
        addr = 0
        for ch in sensor_id[2:]:
            if ch < "0" or ch > "9":
                raise ValueError("parking sensor id must look like P-00012: %r" % (sensor_id,))
            addr = addr * 10 + ord(ch) - 48
    if addr < ADDR_MIN or addr > ADDR_MAX:
        raise ValueError("parking sensor address out of range: %r" % (sensor_id,))
    return addr


def pack(addr, ftype, seq, flags, mx, my, mz, batt, rssi_byte):
    """The raw frame for these wire values, unchecked (the simulator's faults and test vectors)."""
    f = bytearray(FRAME_LEN)
    f[0] = SYNC0
    f[1] = SYNC1
    f[2] = BODY_LEN
    f[3] = addr & 0xFF
    f[4] = (addr >> 8) & 0xFF
    f[5] = ftype & 0xFF
    f[6] = seq & 0xFF
    f[7] = (seq >> 8) & 0xFF
    f[8] = flags & 0xFF
    i = 9
    for v in (mx, my, mz, batt):
        f[i] = v & 0xFF
        f[i + 1] = (v >> 8) & 0xFF
        i += 2
    f[17] = rssi_byte & 0xFF
    crc = crc16_modbus(f, 0, 18)
    f[18] = crc & 0xFF
    f[19] = crc >> 8
    return bytes(f)


def encode(sensor_id, fields):
    """The wire frame for a reading: the exact inverse of decode; ValueError if it cannot be one."""
    occupied, event, seq, mx, my, mz, batt, rssi = fields
    addr = sensor_addr(sensor_id)
    if event not in (HEARTBEAT, ARRIVAL, DEPARTURE):
        raise ValueError("event must be 0, 1 or 2")
    if (event == ARRIVAL and not occupied) or (event == DEPARTURE and occupied):
        raise ValueError("event contradicts occupied")
    if not 0 <= seq <= 0xFFFF:
        raise ValueError("seq out of range")
    for v in (mx, my, mz):
        if not -MAG_LIMIT <= v <= MAG_LIMIT:
            raise ValueError("magnetic field out of range")
    if not BATT_MIN <= batt <= BATT_MAX:
        raise ValueError("battery out of range")
    if rssi is None:
        rssi = RSSI_NONE
    elif not RSSI_MIN <= rssi <= 0:
        raise ValueError("rssi out of range")
    return pack(addr, event, seq, 1 if occupied else 0, mx, my, mz, batt, rssi)
