"""The CBOR decoder behind `edge.cbor.loads`: a module of its own so a board loads it only when a
command arrives (the uplink never decodes: edge/record.py copies record bytes into batches).

It trusts nothing: every length is checked against the bytes actually present before anything is
allocated, nesting depth and item count are capped, and any malformed input raises `CBORError`
(never IndexError, KeyError, UnicodeError...). Floats are decoded bit by bit, so half floats need
no `struct` 'e' (absent on some ports).
"""

import struct

from edge.cbor import CBORError
from edge.compat import const

_INF = float("inf")
_MAX_DEPTH = const(16)
_MAX_ITEMS = const(4096)
_MAX_BIGNUM = const(64)  # bytes of a tag 2/3 magnitude we accept (ints up to 2**512)


def _half_to_float(h):
    import math

    exp = (h >> 10) & 0x1F
    mant = h & 0x3FF
    if exp == 0:
        v = math.ldexp(mant, -24)
    elif exp == 31:
        v = _INF if mant == 0 else float("nan")
    else:
        v = math.ldexp(mant | 0x400, exp - 25)
    return -v if h & 0x8000 else v


_BREAK = object()


class _Decoder:
    __slots__ = ("buf", "pos", "end", "items")

    def __init__(self, buf, end, max_items):
        self.buf = buf
        self.pos = 0
        self.end = end
        self.items = max_items

    def _take(self, n):
        p = self.pos
        if n > self.end - p:
            raise CBORError("truncated at byte %d" % p)
        self.pos = p + n
        return p

    def _arg(self, ai):
        if ai < 24:
            return ai
        if ai > 27:
            raise CBORError("reserved additional info %d" % ai)
        nb = 1 << (ai - 24)
        p = self._take(nb)
        buf = self.buf
        n = 0
        for i in range(p, p + nb):
            n = (n << 8) | buf[i]
        return n

    def _chunks(self, major):
        """Indefinite-length bytes/text: definite chunks of the same major type until break."""
        parts = []
        while True:
            p = self._take(1)
            ib = self.buf[p]
            if ib == 0xFF:
                break
            if ib >> 5 != major or ib & 31 == 31:
                raise CBORError("bad chunk in indefinite string")
            n = self._arg(ib & 31)
            q = self._take(n)
            parts.append(bytes(self.buf[q:q + n]))
        return b"".join(parts)

    def _text(self, raw):
        try:
            return raw.decode("utf-8")
        except (UnicodeError, ValueError):
            raise CBORError("invalid UTF-8 in text string") from None

    def item(self, depth):
        self.items -= 1
        if self.items < 0:
            raise CBORError("too many items")
        p = self._take(1)
        ib = self.buf[p]
        major = ib >> 5
        ai = ib & 31
        if major == 7:
            return self._simple(ai, ib)
        if ai == 31:
            return self._indefinite(major, depth)
        n = self._arg(ai)
        if major == 0:
            return n
        if major == 1:
            return -1 - n
        if major == 2 or major == 3:
            q = self._take(n)
            raw = bytes(self.buf[q:q + n])
            return raw if major == 2 else self._text(raw)
        if depth <= 0:
            raise CBORError("nesting too deep")
        if major == 4:
            if n > self.end - self.pos:  # each item needs at least one byte
                raise CBORError("array length %d exceeds input" % n)
            out = []
            for _ in range(n):
                out.append(self._value(depth - 1))
            return out
        if major == 5:
            if 2 * n > self.end - self.pos:
                raise CBORError("map length %d exceeds input" % n)
            out = {}
            for _ in range(n):
                self._pair(out, depth - 1)
            return out
        # major 6: tags. Only bignums (2, 3) are part of this protocol.
        if n != 2 and n != 3:
            raise CBORError("unsupported tag %d" % n)
        q = self.pos
        if q >= self.end or self.buf[q] >> 5 != 2 or self.buf[q] & 31 == 31:
            raise CBORError("bignum tag must hold a definite byte string")
        raw = self.item(depth - 1)
        if len(raw) > _MAX_BIGNUM:
            raise CBORError("bignum too large")
        m = int.from_bytes(raw, "big") if raw else 0
        return m if n == 2 else -1 - m

    def _value(self, depth):
        v = self.item(depth)
        if v is _BREAK:
            raise CBORError("unexpected break")
        return v

    def _pair(self, out, depth):
        k = self._value(depth)
        if isinstance(k, (list, dict)):
            raise CBORError("unhashable map key")
        if k in out:
            raise CBORError("duplicate map key %r" % (k,))
        out[k] = self._value(depth)

    def _indefinite(self, major, depth):
        if major == 2:
            return self._chunks(2)
        if major == 3:
            return self._text(self._chunks(3))
        if depth <= 0:
            raise CBORError("nesting too deep")
        if major == 4:
            out = []
            while True:
                v = self.item(depth - 1)
                if v is _BREAK:
                    return out
                out.append(v)
        if major == 5:
            out = {}
            while True:
                k = self.item(depth - 1)
                if k is _BREAK:
                    return out
                if isinstance(k, (list, dict)):
                    raise CBORError("unhashable map key")
                if k in out:
                    raise CBORError("duplicate map key %r" % (k,))
                out[k] = self._value(depth - 1)
        raise CBORError("indefinite length not allowed for major type %d" % major)

    def _simple(self, ai, ib):
        if ai == 20:
            return False
        if ai == 21:
            return True
        if ai == 22:
            return None
        if ai == 31:
            return _BREAK
        buf = self.buf
        if ai == 25:
            p = self._take(2)
            return _half_to_float((buf[p] << 8) | buf[p + 1])
        if ai == 26:
            p = self._take(4)
            return struct.unpack(">f", bytes(buf[p:p + 4]))[0]
        if ai == 27:
            p = self._take(8)
            return struct.unpack(">d", bytes(buf[p:p + 8]))[0]
        raise CBORError("unsupported simple value 0x%02x" % ib)


def loads(data, max_depth=_MAX_DEPTH, max_items=_MAX_ITEMS):
    """Decode exactly one CBOR item filling `data` (bytes-like); anything wrong is a CBORError."""
    d = _Decoder(data, len(data), max_items)
    v = d._value(max_depth)
    if d.pos != d.end:
        raise CBORError("%d trailing bytes" % (d.end - d.pos))
    return v
