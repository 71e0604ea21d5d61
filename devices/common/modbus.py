"""Modbus RTU application data units (ADUs) for reads of registers: pure bytes in, bytes out.

Only what a polling master needs: build a read request for function 03 (holding registers) or
04 (input registers) and parse the slave's answer. The master (edge/modbus.py) owns the timing;
this module never waits and never allocates on the parse path.

Request, 8 bytes::

    +-------+----+---------+---------+---------+
    | slave | fn | address |  count  |  CRC16  |
    |  1 B  | 1B | hi | lo | hi | lo | lo | hi |
    +-------+----+---------+---------+---------+

Normal response, 5 + 2*count bytes (registers big-endian, CRC little-endian)::

    +-------+----+-------+-------------------------+---------+
    | slave | fn | bytes |  data: count registers  |  CRC16  |
    |  1 B  | 1B |  1 B  |  hi | lo | hi | lo ...  | lo | hi |
    +-------+----+-------+-------------------------+---------+

Exception response, 5 bytes (code 1 illegal function, 2 illegal address, 3 illegal value,
4 device failure, 6 busy, 0x0B gateway target failed to respond)::

    +-------+-----------+------+---------+
    | slave | fn | 0x80 | code |  CRC16  |
    +-------+-----------+------+---------+

CRC-16/MODBUS covers everything before it and is sent low byte first.
"""

from devices.common.compat import const
from devices.common.crc import crc16_modbus
from devices.common.errors import (
    BAD_CRC,
    BAD_HEADER,
    BAD_LENGTH,
    DEVICE_EXCEPTION,
    DecodeError,
)

READ_HOLDING = const(3)
READ_INPUT = const(4)
MAX_REGISTERS = const(125)  # the spec's limit for one read: 250 data bytes
MAX_ADU = const(256)  # 1 + 1 + 1 + 250 + 2 rounded up: a receive buffer of this size never overflows
REQUEST_LEN = const(8)


def build_read(buf, slave, fn, address, count):
    """Write a read request into buf[0:8] (a preallocated bytearray) and return its length, 8.

    Arguments out of the spec's range are a programming error, so they raise ValueError.
    """
    if not 1 <= slave <= 247:
        raise ValueError("slave must be 1..247")
    if fn != READ_HOLDING and fn != READ_INPUT:
        raise ValueError("function must be 3 or 4")
    if not 0 <= address <= 0xFFFF or not 1 <= count <= MAX_REGISTERS or address + count > 0x10000:
        raise ValueError("address/count out of range")
    buf[0] = slave
    buf[1] = fn
    buf[2] = address >> 8
    buf[3] = address & 0xFF
    buf[4] = count >> 8
    buf[5] = count & 0xFF
    crc = crc16_modbus(buf, 0, 6)
    buf[6] = crc & 0xFF
    buf[7] = crc >> 8
    return REQUEST_LEN


def build_response(slave, fn, data):
    """A normal read response carrying `data` (register bytes): for simulators and tests."""
    n = len(data)
    out = bytearray(5 + n)
    out[0] = slave
    out[1] = fn
    out[2] = n
    out[3 : 3 + n] = data
    crc = crc16_modbus(out, 0, 3 + n)
    out[3 + n] = crc & 0xFF
    out[4 + n] = crc >> 8
    return bytes(out)


def build_exception(slave, fn, code):
    """An exception response (function | 0x80, exception code): for simulators and tests."""
    out = bytearray(5)
    out[0] = slave
    out[1] = fn | 0x80
    out[2] = code
    crc = crc16_modbus(out, 0, 3)
    out[3] = crc & 0xFF
    out[4] = crc >> 8
    return bytes(out)


def _crc_ok(buf, start, n):
    crc = crc16_modbus(buf, start, start + n)
    return buf[start + n] == (crc & 0xFF) and buf[start + n + 1] == (crc >> 8)


def parse_response(buf, start, end, slave, fn, count):
    """Parse the answer to a read of `count` registers by function `fn` from `slave`.

    Returns `(consumed, result)`:
      * `(0, None)`: need more bytes;
      * `(consumed, offset)`: a good response; the 2*count register bytes are
        buf[offset:offset + 2*count] (no copy is made);
      * `(consumed, DecodeError)`: BAD_HEADER for bytes that are not our slave's answer (leading
        noise or another function: skipped up to the next byte equal to `slave`, at least one),
        BAD_LENGTH for a byte count that does not match the request (one byte skipped, as the
        header is then suspect), BAD_CRC (the whole frame consumed) and DEVICE_EXCEPTION for an
        exception response, whose `detail` is the exception code as an int.
    """
    if end < 0:
        end = len(buf)
    avail = end - start
    if avail < 1:
        return 0, None
    if buf[start] != slave:
        i = start + 1
        while i < end and buf[i] != slave:
            i += 1
        return i - start, DecodeError(BAD_HEADER, "not from slave")
    if avail < 2:
        return 0, None
    f = buf[start + 1]
    if f == (fn | 0x80):
        if avail < 5:
            return 0, None
        if not _crc_ok(buf, start, 3):
            return 5, DecodeError(BAD_CRC, "exception frame")
        return 5, DecodeError(DEVICE_EXCEPTION, buf[start + 2])
    if f != fn:
        return 1, DecodeError(BAD_HEADER, "function")
    if avail < 3:
        return 0, None
    n = buf[start + 2]
    if n != 2 * count:
        return 1, DecodeError(BAD_LENGTH, "byte count")
    if avail < 5 + n:
        return 0, None
    if not _crc_ok(buf, start, 3 + n):
        return 5 + n, DecodeError(BAD_CRC, "response")
    return 5 + n, start + 3
