"""A small CBOR (RFC 8949) encoder and decoder that runs on MicroPython and CPython.

Why not cbor2: the board has no cbor2, and the gateway must stream a batch into one preallocated
buffer without building the list first. The encoder writes into anything with `append(int)` and
`extend(bytes)`: a growable `bytearray`, or a `Writer` over a fixed buffer that raises `CBORError`
when full instead of growing the heap.

Output is byte-for-byte what `cbor2.dumps(value)` writes, except floats: they use the shortest of
half/single/double that holds the value exactly (cbor2's `canonical=True` float rule; plain cbor2
always writes 8-byte doubles). NaN is always f97e00 and infinities are half, as cbor2 does. Ints
beyond 64 bits are bignums (tags 2/3), as cbor2 does. Map keys are written in the dict's iteration
order; MicroPython dicts do not keep insertion order, so use `enc_map_pairs` (or a header and
the items, as edge/protocol does) where the byte order matters.

The decoder (edge/cbor_decode.py, behind `loads`) is for commands from the network only, so a
board loads it on the first command, not at boot.
"""

import struct


class CBORError(ValueError):
    """Malformed, truncated, hostile or unsupported CBOR, or a value that cannot be encoded."""


class BufferFull(CBORError):
    """A fixed-size `Writer` has no room left; the caller decides (e.g. close the batch)."""


class Writer:
    """Appends into a preallocated buffer; `CBORError` when full, so the heap never grows.

    `Writer(n)` allocates its n-byte buffer once. `view()` returns a memoryview into the shared
    buffer: it is valid until the next `reset()`. No `__slots__` (nor on the classes of
    edge/protocol.py and edge/batcher.py): MicroPython ignores them, and their tuple of names
    would only cost the board's heap.
    """

    def __init__(self, n):
        self.buf = bytearray(n)
        self.pos = 0

    def reset(self):
        self.pos = 0

    def append(self, b):
        p = self.pos
        if p >= len(self.buf):
            raise BufferFull
        self.buf[p] = b
        self.pos = p + 1

    def extend(self, data):
        p = self.pos
        n = len(data)
        if p + n > len(self.buf):
            raise BufferFull
        self.buf[p : p + n] = data
        self.pos = p + n

    def view(self):
        return memoryview(self.buf)[: self.pos]


# ---------------------------------------------------------------- encoder


def enc_head(w, major, n):
    """Write a header: major type 0..7 and argument n (0 <= n < 2**64), shortest form: n in the
    header byte below 24, else in the next 1, 2, 4 or 8 bytes (additional info 24..27)."""
    mt = major << 5
    if n < 24:
        w.append(mt | n)
        return
    if n < 0x100:
        w.append(mt | 24)
        w.append(n)
        return
    if n < 0x10000:
        w.append(mt | 25)
        top = 8
    elif n < 0x100000000:
        w.append(mt | 26)
        top = 24
    else:
        w.append(mt | 27)
        top = 56
    for shift in range(top, -1, -8):  # n's bytes, big-endian
        w.append((n >> shift) & 0xFF)


def enc_int(w, n):
    if n >= 0:
        major = 0
    else:
        major = 1
        n = -1 - n
    if not n >> 64:
        enc_head(w, major, n)
        return
    # Bignum: tag 2 (positive) or 3 (negative), then the magnitude as a big-endian byte string.
    nb = 9
    while n >> (nb << 3):
        nb += 1
    enc_head(w, 6, 2 + major)
    enc(w, n.to_bytes(nb, "big"))


def enc_text(w, s):
    """A text string; `s` may be pre-encoded UTF-8 bytes (lets a caller cache sensor ids)."""
    if isinstance(s, str):
        s = s.encode()
    enc_head(w, 3, len(s))
    w.extend(s)


_scratch = bytearray(8)  # float bits; module-level so encoding a float allocates nothing


def enc_float(w, value):
    """Shortest of half/single/double holding the value exactly, decided on the double's bits.

    Bit tests instead of pack/unpack round trips: no bytes or tuple objects per float on a board.
    A format holds the value when its exponent e is in the format's range (subnormals included)
    and no set mantissa bit is one the format lacks: the low 42 of the double's 52 for half, 29
    for single, and one more per step of e below the format's normal range (-14, -126).
    """
    b = _scratch
    struct.pack_into(">d", b, 0, value)
    sign = b[0] & 0x80
    exp = ((b[0] & 0x7F) << 4) | (b[1] >> 4)
    # Trailing zero bits of the 52-bit mantissa (52 if it is zero).
    tz = 0
    for i in range(7, 0, -1):
        v = b[i] if i > 1 else b[1] & 0x0F
        if v:
            while not v & 1:
                v >>= 1
                tz += 1
            break
        tz += 8
    else:
        tz = 52
    e = exp - 1023  # a double subnormal (exp 0) is far below the single range too
    if exp == 0x7FF:
        if tz < 52:
            sign = 0  # NaN, any sign and payload: f97e00 like cbor2
            h = 0x7E00
        else:
            h = 0x7C00  # infinity
    elif exp == 0 and tz == 52:
        h = 0  # +-0.0
    elif -24 <= e <= 15 and tz >= 42 and tz >= 28 - e:
        top = 0x400 | ((b[1] & 0x0F) << 6) | (b[2] >> 2)  # the implicit 1, then the top 10 mantissa bits
        h = ((e + 14) << 10) + top if e >= -14 else top >> (-14 - e)  # normal, else subnormal
    else:
        h = -1
    if h >= 0:
        w.append(0xF9)
        w.append(sign | (h >> 8))
        w.append(h & 0xFF)
        return
    if -149 <= e <= 127 and tz >= 29 and tz >= -97 - e:
        struct.pack_into(">f", b, 0, value)
        w.append(0xFA)
        n = 4
    else:
        w.append(0xFB)
        n = 8
    for i in range(n):
        w.append(b[i])


def enc_map_pairs(w, items, n):
    """A map from an iterable of n (key, value) pairs, without building a dict."""
    enc_head(w, 5, n)
    for k, v in items:
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
        enc_map_pairs(w, value.items(), len(value))
    elif t is list or t is tuple:
        enc_head(w, 4, len(value))
        for v in value:
            enc(w, v)
    elif t is bytes or t is bytearray or t is memoryview:
        enc_head(w, 2, len(value))
        w.extend(value)
    else:
        for base in (int, float, str, dict):  # a subclass (IntEnum, OrderedDict...) as its base
            if isinstance(value, base):
                enc(w, base(value))  # type: ignore[arg-type]  # mypy cannot narrow `base` per loop turn
                return
        raise CBORError("cannot encode %s" % t.__name__)


def dumps(value):
    """Encode to a new bytes object (convenience; hot paths call `enc` on their own buffer)."""
    buf = bytearray()
    enc(buf, value)
    return bytes(buf)


def loads(data, *limits):
    """Decode exactly one CBOR item filling `data`; anything wrong is a CBORError.

    `limits`: optional nesting depth (default 16) and item count (default 4096), passed on to the
    decoder. It lives in edge.cbor_decode, loaded on first use: a gateway decodes only commands.
    """
    from edge.cbor_decode import loads

    return loads(data, *limits)
