"""The CBOR decoder behind `edge.cbor.loads`: a module of its own so a board loads it only when a
command arrives (the uplink never decodes: edge/record.py copies record bytes into batches).

It trusts nothing: every length is checked against the bytes actually present before anything is
allocated, nesting depth and item count are capped, and any malformed input raises `CBORError`
(never IndexError, KeyError, UnicodeError...). Floats are decoded bit by bit, so half floats need
no `struct` 'e' (absent on some ports).

Every name a board loads with it is interned for good (a first command loads it mid-run, and new
names can make a new qstr pool, ~4.5 KB in one block: docs/gateway.md, "a first command"), so it
is one method that decodes any item and two helpers, with names the agent has already interned.
"""

import struct

from edge.cbor import CBORError
from edge.compat import const

_MAX_DEPTH = const(16)
_MAX_ITEMS = const(4096)
_MAX_BIGNUM = const(64)  # bytes of a tag 2/3 magnitude we accept (ints up to 2**512)


class _Decoder:
    __slots__ = ("buf", "pos", "end", "items")

    def __init__(self, buf, end, items):
        self.buf = buf
        self.pos = 0
        self.end = end
        self.items = items

    def _take(self, n):
        p = self.pos
        if n > self.end - p:
            raise CBORError("truncated at byte %d" % p)
        self.pos = p + n
        return p

    def _uint(self, b):
        """The argument of the head byte `b` (its additional info, or the bytes after it)."""
        ai = b & 31
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

    def decode(self, nesting):
        """One item, nesting at most `nesting` levels; `...` (Ellipsis, which no item decodes to)
        for a break, which only an indefinite-length item's caller accepts."""
        self.items -= 1
        if self.items < 0:
            raise CBORError("too many items")
        buf = self.buf
        b = buf[self._take(1)]
        major = b >> 5
        if major == 7:
            ai = b & 31
            if ai == 20:
                return False
            if ai == 21:
                return True
            if ai == 22:
                return None
            if ai == 31:
                return ...
            if ai == 25:  # half float, bit by bit
                import math

                p = self._take(2)
                h = (buf[p] << 8) | buf[p + 1]
                exp = (h >> 10) & 0x1F
                mant = h & 0x3FF
                if exp == 0:
                    v = math.ldexp(mant, -24)
                elif exp == 31:
                    v = float("inf") if mant == 0 else float("nan")
                else:
                    v = math.ldexp(mant | 0x400, exp - 25)
                return -v if h & 0x8000 else v
            if ai == 26:
                p = self._take(4)
                return struct.unpack(">f", bytes(buf[p:p + 4]))[0]
            if ai == 27:
                p = self._take(8)
                return struct.unpack(">d", bytes(buf[p:p + 8]))[0]
            raise CBORError("unsupported simple value 0x%02x" % b)
        indefinite = b & 31 == 31  # items (or string chunks) until a break
        if indefinite and (major < 2 or major == 6):
            raise CBORError("indefinite length not allowed for major type %d" % major)
        n = 0 if indefinite else self._uint(b)
        if major == 0:
            return n
        if major == 1:
            return -1 - n
        if major < 4:  # byte or text string; an indefinite one is definite chunks of its type
            if indefinite:
                parts = []
                while True:
                    c = buf[self._take(1)]
                    if c == 0xFF:
                        break
                    if c >> 5 != major or c & 31 == 31:
                        raise CBORError("bad chunk in indefinite string")
                    m = self._uint(c)
                    q = self._take(m)
                    parts.append(bytes(buf[q:q + m]))
                raw = b"".join(parts)
            else:
                q = self._take(n)
                raw = bytes(buf[q:q + n])
            if major == 2:
                return raw
            try:
                return raw.decode("utf-8")
            except (UnicodeError, ValueError):
                raise CBORError("invalid UTF-8 in text string") from None
        if nesting <= 0:
            raise CBORError("nesting too deep")
        if major < 6:  # array (4) or map (5)
            # each item needs at least one byte
            if not indefinite and (major - 3) * n > self.end - self.pos:
                raise CBORError("%s length %d exceeds input" % ("array" if major == 4 else "map", n))
            out = [] if major == 4 else {}
            i = 0
            while indefinite or i < n:
                i += 1
                k = self.decode(nesting - 1)
                if k is ...:
                    if indefinite:
                        return out
                    raise CBORError("unexpected break")
                if major == 4:
                    out.append(k)  # type: ignore[attr-defined]  # a list: mypy cannot narrow `out` by major
                    continue
                if isinstance(k, (list, dict)):
                    raise CBORError("unhashable map key")
                if k in out:
                    raise CBORError("duplicate map key %r" % (k,))
                v = self.decode(nesting - 1)
                if v is ...:
                    raise CBORError("unexpected break")
                out[k] = v  # type: ignore[index]  # a dict, as above
            return out
        # major 6: tags. Only bignums (2, 3) are part of this protocol.
        if n != 2 and n != 3:
            raise CBORError("unsupported tag %d" % n)
        q = self.pos
        if q >= self.end or buf[q] >> 5 != 2 or buf[q] & 31 == 31:
            raise CBORError("bignum tag must hold a definite byte string")
        raw = self.decode(nesting - 1)
        if len(raw) > _MAX_BIGNUM:
            raise CBORError("bignum too large")
        m = int.from_bytes(raw, "big") if raw else 0
        return m if n == 2 else -1 - m


def loads(data, nesting=_MAX_DEPTH, items=_MAX_ITEMS):
    """Decode exactly one CBOR item filling `data` (bytes-like); anything wrong is a CBORError."""
    d = _Decoder(data, len(data), items)
    v = d.decode(nesting)
    if v is ...:
        raise CBORError("unexpected break")
    if d.pos != d.end:
        raise CBORError("%d trailing bytes" % (d.end - d.pos))
    return v
