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

The decoder (edge/cbor_decode.py, behind `loads`) is for commands from the network only, so a
board loads it on the first command, not at boot.
"""

import struct

from edge.compat import const

_MAX_DEPTH = const(16)
_MAX_ITEMS = const(4096)


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


def loads(data, max_depth=_MAX_DEPTH, max_items=_MAX_ITEMS):
    """Decode exactly one CBOR item filling `data`; anything wrong is a CBORError.

    The decoder lives in edge.cbor_decode, loaded on first use: a gateway decodes only commands.
    """
    from edge.cbor_decode import loads

    return loads(data, max_depth, max_items)
