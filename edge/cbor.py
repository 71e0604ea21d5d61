"""A small CBOR (RFC 8949) encoder and decoder that runs on MicroPython and CPython.

Why not cbor2: the board has no cbor2, and the gateway must stream a batch into one preallocated
buffer without building the list first. The encoder writes into anything with `append(int)` and
`extend(bytes)`: a growable `bytearray`, or a `Writer` over a fixed buffer that raises `CBORError`
when full instead of growing the heap.

Output is byte-for-byte what `cbor2.dumps(value)` writes, except floats: they use the shortest of
half/single/double that holds the value exactly (cbor2's `canonical=True` float rule; plain cbor2
always writes 8-byte doubles). NaN is always f97e00 and infinities are half, as cbor2 does. Ints
beyond 64 bits are bignums (tags 2/3), as cbor2 does. Map keys are written in the dict's iteration
order; MicroPython dicts do not keep insertion order, so use `enc_map_pairs` (or headers and
items, as edge/protocol does) where the byte order matters.

The decoder is for commands from the network, so it trusts nothing: every length is checked
against the bytes actually present before anything is allocated, nesting depth and item count are
capped, and any malformed input raises `CBORError` (never IndexError, KeyError, UnicodeError...).
Floats are decoded bit by bit, so half floats need no `struct` 'e' (absent on some ports).
"""

import struct

from edge.compat import const

_INF = float("inf")
_MAX_DEPTH = const(16)
_MAX_ITEMS = const(4096)
_MAX_BIGNUM = const(64)  # bytes of a tag 2/3 magnitude we accept (ints up to 2**512)


class CBORError(ValueError):
    """Malformed, truncated, hostile or unsupported CBOR, or a value that cannot be encoded."""


class BufferFull(CBORError):
    """A fixed-size `Writer` has no room left; the caller decides (e.g. close the batch)."""


class Writer:
    """Appends into a preallocated buffer; `CBORError` when full, so the heap never grows.

    `view()` returns a memoryview into the shared buffer: it is valid until the next `reset()`.
    """

    __slots__ = ("buf", "pos")

    def __init__(self, size_or_buf):
        if isinstance(size_or_buf, int):
            size_or_buf = bytearray(size_or_buf)
        self.buf = size_or_buf
        self.pos = 0

    def reset(self):
        self.pos = 0

    def append(self, b):
        p = self.pos
        if p >= len(self.buf):
            raise BufferFull("buffer full")
        self.buf[p] = b
        self.pos = p + 1

    def extend(self, data):
        p = self.pos
        n = len(data)
        if p + n > len(self.buf):
            raise BufferFull("buffer full")
        self.buf[p:p + n] = data
        self.pos = p + n

    def view(self):
        return memoryview(self.buf)[:self.pos]


# ---------------------------------------------------------------- encoder


def enc_head(w, major, n):
    """Write a header: major type 0..7 and argument n (0 <= n < 2**64), shortest form."""
    mt = major << 5
    if n < 24:
        w.append(mt | n)
        return
    if n < 0x100:
        w.append(mt | 24)
        nb = 1
    elif n < 0x10000:
        w.append(mt | 25)
        nb = 2
    elif n < 0x100000000:
        w.append(mt | 26)
        nb = 4
    else:
        w.append(mt | 27)
        nb = 8
    shift = (nb - 1) * 8
    while shift >= 0:
        w.append((n >> shift) & 0xFF)
        shift -= 8


def enc_array_head(w, n):
    enc_head(w, 4, n)


def enc_map_head(w, n):
    enc_head(w, 5, n)


def enc_int(w, n):
    if n >= 0:
        major = 0
    else:
        major = 1
        n = -1 - n
    if n < 0x10000000000000000:
        enc_head(w, major, n)
        return
    # Bignum: tag 2 (positive) or 3 (negative), then the magnitude as a big-endian byte string.
    nb = 0
    m = n
    while m:
        m >>= 8
        nb += 1
    enc_head(w, 6, 2 + major)
    enc_head(w, 2, nb)
    w.extend(n.to_bytes(nb, "big"))


def enc_text(w, s):
    """A text string; `s` may be pre-encoded UTF-8 bytes (lets a caller cache sensor ids)."""
    if isinstance(s, str):
        s = s.encode("utf-8")
    enc_head(w, 3, len(s))
    w.extend(s)


def enc_bytes(w, b):
    enc_head(w, 2, len(b))
    w.extend(b)


_scratch = bytearray(8)  # float bits; module-level so encoding a float allocates nothing


def _tz_mant(b):
    """Trailing zero bits of the 52-bit mantissa of the big-endian double in b (52 if zero)."""
    tz = 0
    for i in range(7, 0, -1):
        v = b[i] if i > 1 else b[1] & 0x0F
        if v:
            while not v & 1:
                v >>= 1
                tz += 1
            return tz
        tz += 8
    return 52


def enc_float(w, x):
    """Shortest of half/single/double holding x exactly, decided on the double's bits.

    Bit tests instead of pack/unpack round trips: no bytes or tuple objects per float on a board.
    """
    b = _scratch
    struct.pack_into(">d", b, 0, x)
    sign = b[0] & 0x80
    exp = ((b[0] & 0x7F) << 4) | (b[1] >> 4)
    if exp == 0x7FF:
        if (b[1] & 0x0F) or b[2] or b[3] or b[4] or b[5] or b[6] or b[7]:
            w.append(0xF9)  # NaN, any payload: f97e00 like cbor2
            w.append(0x7E)
        else:
            w.append(0xF9)
            w.append(0xFC if sign else 0x7C)
        w.append(0)
        return
    tz = _tz_mant(b)
    if exp == 0:
        if tz == 52:  # +-0.0
            w.append(0xF9)
            w.append(sign)
            w.append(0)
            return
        e = -2000  # double subnormal: far below single range
    else:
        e = exp - 1023
    top10 = ((b[1] & 0x0F) << 6) | (b[2] >> 2)  # mantissa >> 42
    h = -1
    if -14 <= e <= 15:
        if tz >= 42:
            h = ((e + 15) << 10) | top10
    elif -24 <= e < -14:
        shift = 28 - e  # half subnormal m * 2**-24 == (2**52 + mant) * 2**(e - 52)
        if tz >= shift:
            h = (1 << (52 - shift)) | (top10 >> (shift - 42))
    if h >= 0:
        w.append(0xF9)
        w.append(sign | (h >> 8))
        w.append(h & 0xFF)
        return
    if (-126 <= e <= 127 and tz >= 29) or (-149 <= e < -126 and tz >= -97 - e):
        struct.pack_into(">f", b, 0, x)
        w.append(0xFA)
        n = 4
    else:
        w.append(0xFB)
        n = 8
    for i in range(n):
        w.append(b[i])


def enc_map_pairs(w, pairs, n):
    """A map from an iterable of n (key, value) pairs, without building a dict."""
    enc_head(w, 5, n)
    for k, v in pairs:
        enc(w, k)
        enc(w, v)


def enc(w, value):
    """Any supported value: None, bool, int, float, str, bytes-like, list/tuple, dict."""
    t = type(value)
    if t is bool:
        w.append(0xF5 if value else 0xF4)
    elif t is int:
        enc_int(w, value)
    elif t is str:
        enc_text(w, value)
    elif t is float:
        enc_float(w, value)
    elif value is None:
        w.append(0xF6)
    elif t is dict:
        enc_head(w, 5, len(value))
        for k in value:
            enc(w, k)
            enc(w, value[k])
    elif t is list or t is tuple:
        enc_head(w, 4, len(value))
        for v in value:
            enc(w, v)
    elif t is bytes or t is bytearray or t is memoryview:
        enc_bytes(w, value)
    elif isinstance(value, bool):
        w.append(0xF5 if value else 0xF4)
    elif isinstance(value, int):
        enc_int(w, int(value))
    elif isinstance(value, float):
        enc_float(w, float(value))
    elif isinstance(value, str):
        enc_text(w, str(value))
    elif isinstance(value, dict):
        enc(w, dict(value))
    else:
        raise CBORError("cannot encode %s" % t.__name__)


def dumps(value):
    """Encode to a new bytes object (convenience; hot paths call `enc` on their own buffer)."""
    buf = bytearray()
    enc(buf, value)
    return bytes(buf)


# ---------------------------------------------------------------- decoder


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
