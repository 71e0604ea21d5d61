"""The checks every device kind's wire vectors go through, shared by tests/portable/test_<kind>.py.

Runs on both interpreters (imported by the MicroPython runner like any portable module).
A vector is `(name, hex, expected_consumed, expected)` (devices/<kind>/vectors.py).
"""

from binascii import unhexlify

from devices.common.errors import BAD_HEADER, DecodeError


def same(a, b):
    """Equal with the same types (True is not 1 on the wire); floats to 1e-9 (MicroPython literals)."""
    if isinstance(a, tuple):
        return isinstance(b, tuple) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return abs(a - b) <= 1e-9 * max(1.0, abs(a))
    return a == b


def matches(result, expected):
    """`expected` is a reading `(sensor, fields)` or an error code from devices.common.errors."""
    if isinstance(expected, int):
        return isinstance(result, DecodeError) and result.code == expected
    return same(result, expected)


def stream(codec, data, cuts):
    """Decode `data` arriving in reads that end at `cuts` into events (consumed, result), merging
    runs of BAD_HEADER, whose count depends on where a read happened to end."""
    buf = bytearray()
    pos = 0
    events = []
    for cut in cuts:
        buf.extend(data[len(buf):cut])
        while True:
            n, r = codec.decode(buf, pos, len(buf))
            assert 0 <= n <= len(buf) - pos
            if n == 0:
                assert r is None
                break
            pos += n
            if events and isinstance(r, DecodeError) and r.code == BAD_HEADER:
                last = events[-1][1]
                if isinstance(last, DecodeError) and last.code == BAD_HEADER:
                    events[-1] = (events[-1][0] + n, last)
                    continue
            events.append((n, r))
    return events


def same_events(a, b):
    if len(a) != len(b):
        return False
    for (n1, r1), (n2, r2) in zip(a, b):
        if n1 != n2:
            return False
        if isinstance(r1, DecodeError):
            if not (isinstance(r2, DecodeError) and r1.code == r2.code):
                return False
        elif not same(r1, r2):
            return False
    return True


def check_vectors_whole(codec, vectors):
    """Each vector alone, and again at an offset inside a bigger buffer with an explicit end."""
    for name, hx, consumed, expected in vectors:
        data = unhexlify(hx)
        n, r = codec.decode(data)
        assert n == consumed, name
        if consumed == 0:
            assert r is None, name
        else:
            assert matches(r, expected), name
        padded = b"\x00\x00" + data + b"\xaa"
        n2, r2 = codec.decode(padded, 2, 2 + len(data))
        assert n2 == n and (r2 is None) == (r is None), name
        if r is not None:
            assert matches(r2, expected), name


def check_vectors_split(codec, vectors):
    """A stream framing gives the same events however the bytes are split in two."""
    for name, hx, _consumed, _expected in vectors:
        data = unhexlify(hx)
        whole = stream(codec, data, [len(data)])
        for k in range(1, len(data)):
            assert same_events(stream(codec, data, [k, len(data)]), whole), (name, k)


def check_vectors_byte_by_byte(codec, vectors):
    for name, hx, _consumed, _expected in vectors:
        data = unhexlify(hx)
        assert same_events(stream(codec, data, range(1, len(data) + 1)),
                           stream(codec, data, [len(data)])), name


class Receiver:
    """A gateway's serial reader in miniature: bytes in as they come, readings and errors out."""

    def __init__(self, codec):
        self.codec = codec
        self.buf = bytearray()
        self.readings = 0
        self.errors = 0

    def feed(self, data, expected):
        """Decode what `data` completes; each reading must be the next of `expected` (popped)."""
        self.buf.extend(data)
        pos = 0
        while True:
            n, r = self.codec.decode(self.buf, pos, len(self.buf))
            assert 0 <= n <= len(self.buf) - pos
            if n == 0:
                break
            pos += n
            if isinstance(r, DecodeError):
                self.errors += 1
            else:
                assert expected, "a reading nobody sent: %r" % (r,)
                assert same(r, expected.pop(0))
                self.readings += 1
        if pos:
            self.buf = bytearray(self.buf[pos:])
