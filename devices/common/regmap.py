"""Register maps: Modbus register words to numbers, by type, word order, scale and offset (pure).

A vendor's map says, per quantity, at which register it sits and how it is coded. The gateway
config names it (edge.config checks it and compiles it into a read plan, off the board's resident
heap); this module is the per-poll part, so it is small, defines no public names beyond its two
functions (each is an interned name for the whole run on a board) and allocates nothing but the
values it returns.

Type codes, the index of their name in edge.config.TYPES (registers are big-endian on the wire;
a 32-bit value spans two registers in the slave's word order):

    0 float32 (IEEE 754 single)   1 int16   2 uint16   3 int32   4 uint32

Word orders (devices.water.codec.WORD_ABCD / WORD_CDAB): 0 ABCD = high word first, 1 CDAB = low
word first. A value is `raw * mul / div + off`, always a float (a field keeps one type in the
database); edge.config turns a scale like 0.1 into div 10 (3 / 10 is exactly 0.3; 3 * 0.1 is not).

A compiled entry is 4 bytes of `codes`: field index, byte offset in its read's data, type, word
order; `scales` is None (all plain) or 3 numbers per entry: mul, div, off.
"""

import struct

from devices.common.compat import const

_FLOAT32 = const(0)
_INT16 = const(1)
_UINT16 = const(2)
_INT32 = const(3)
_CDAB = const(1)

_scratch = bytearray(4)


def value(buf, p, t, w=0, a=1, b=1, c=0):
    """The number the register bytes at buf[p:] hold, as a float: type t (code), word order w,
    raw * a / b + c (mul, div, off; short names: each argument name is interned on a board)."""
    if t == _INT16 or t == _UINT16:
        v = (buf[p] << 8) | buf[p + 1]
        if t == _INT16 and v > 0x7FFF:
            v -= 0x10000
    else:
        hi = p + 2 if w == _CDAB else p
        lo = p if w == _CDAB else p + 2
        if t == _FLOAT32:
            s = _scratch
            s[0] = buf[hi]
            s[1] = buf[hi + 1]
            s[2] = buf[lo]
            s[3] = buf[lo + 1]
            v = struct.unpack(">f", s)[0]
        else:
            v = (buf[hi] << 8) | buf[hi + 1]
            if t == _INT32 and v > 0x7FFF:
                v -= 0x10000
            # In floats: a 32-bit int would be a heap-allocated long on a board (small ints are 31 bits).
            v = v * 65536.0 + ((buf[lo] << 8) | buf[lo + 1])
    # One operation per step that is not the identity: on a board each float result is a heap object.
    if a != 1:
        v = v * a
    if b != 1:
        v = v / b
    if c != 0:
        v = v + c
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
