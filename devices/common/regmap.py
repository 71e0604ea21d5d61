"""Register maps: Modbus register words to numbers, by type, word order, scale and offset (pure).

A vendor's map says, per quantity, at which register it sits and how it is coded. The gateway
config names it (edge.config checks it and compiles it into a read plan); this module does the
per-poll part on the board, so it is small and allocates nothing but the values it returns.

Types (registers are big-endian on the wire; a 32-bit value spans two registers in the slave's
word order: ABCD = high word first, CDAB = low word first):

    float32  IEEE 754 single        int16 / uint16   one register
    int32 / uint32                  two registers

A value is `raw * mul / div + off`, always a float (a field keeps one type in the database).
edge.config turns a scale like 0.1 into div 10 (3 / 10 is exactly 0.3; 3 * 0.1 is not).

A compiled entry is 4 bytes of `codes`: field index, byte offset in its read's data, type, word
order; `scales` is None (all plain) or 3 floats per entry: mul, div, off.
"""

import struct

from devices.common.compat import const

T_FLOAT32 = const(0)
T_INT16 = const(1)
T_UINT16 = const(2)
T_INT32 = const(3)
T_UINT32 = const(4)
TYPES = ("float32", "int16", "uint16", "int32", "uint32")  # index = type code
WIDTHS = (2, 1, 1, 2, 2)  # registers per value, by type code

WORD_ABCD = const(0)
WORD_CDAB = const(1)
WORD_ORDERS = ("ABCD", "CDAB")

_scratch = bytearray(4)


def word_order_code(name):
    """"ABCD"/"CDAB" (config text) to WORD_ABCD/WORD_CDAB; anything else is a ValueError."""
    if name == "ABCD":
        return WORD_ABCD
    if name == "CDAB":
        return WORD_CDAB
    raise ValueError("word_order must be ABCD or CDAB, not %r" % (name,))


def value(buf, p, typ, order=WORD_ABCD, mul=1, div=1, off=0):
    """The number the register bytes at buf[p:] hold, as a float: raw * mul / div + off."""
    if typ == T_INT16 or typ == T_UINT16:
        v = (buf[p] << 8) | buf[p + 1]
        if typ == T_INT16 and v > 0x7FFF:
            v -= 0x10000
    else:
        hi = p + 2 if order == WORD_CDAB else p
        lo = p if order == WORD_CDAB else p + 2
        if typ == T_FLOAT32:
            s = _scratch
            s[0] = buf[hi]
            s[1] = buf[hi + 1]
            s[2] = buf[lo]
            s[3] = buf[lo + 1]
            v = struct.unpack(">f", s)[0]
        else:
            h = (buf[hi] << 8) | buf[hi + 1]
            if typ == T_INT32 and h > 0x7FFF:
                h -= 0x10000
            # In floats: a 32-bit int would be a heap-allocated long on a board (small ints are 31 bits).
            v = h * 65536.0 + ((buf[lo] << 8) | buf[lo + 1])
    if mul != 1 or div != 1 or off != 0:
        return v * mul / div + off
    return float(v)


def decode(buf, start, codes, scales, i, j, out):
    """Entries i..j-1 of a compiled map, read from one answer's data at buf[start:], into
    out[field index]. Returns j (the next entry)."""
    while i < j:
        k = 4 * i
        p = start + codes[k + 1]
        if scales is None:
            out[codes[k]] = value(buf, p, codes[k + 2], codes[k + 3])
        else:
            m = 3 * i
            out[codes[k]] = value(buf, p, codes[k + 2], codes[k + 3], scales[m], scales[m + 1], scales[m + 2])
        i += 1
    return j
