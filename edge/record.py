"""How one reading is kept in the store-and-forward log: a small CBOR array per record.

    stamped:    [sensor, kind, ts_ms, {index: value}]
    unstamped:  [sensor, kind, null,  {index: value}, boot, uptime_ms]

Unstamped records were taken before the clock was known (edge/clock.py); the uplink stamps them
with the boot's anchor when they leave the log. CBOR keeps bool/int/float apart, as the wire does.
The store treats the bytes as opaque; only this module knows their layout, and the uplink never
decodes a record: `parse` finds its parts and the batch copies them (see `BatchEncoder.add_record`).
"""

from edge import cbor
from edge.cbor import CBORError
from edge.protocol import enc_fields


def encode(w, sensor, kind, ts_ms, fields, boot=0, uptime_ms=0):
    """Write one record into `w` (a reset `cbor.Writer` or bytearray); ts_ms None = unstamped."""
    if ts_ms is None:
        w.append(0x86)
    else:
        w.append(0x84)
    cbor.enc_text(w, sensor)
    cbor.enc_head(w, 0, kind)
    if ts_ms is None:
        w.append(0xF6)
    else:
        cbor.enc_int(w, ts_ms)
    enc_fields(w, fields)
    if ts_ms is None:
        cbor.enc_head(w, 0, boot)
        cbor.enc_head(w, 0, uptime_ms)


def _head(b, p, end):
    """(major type, argument, next position) of the item head at p; floats' bits are the argument."""
    if p >= end:
        raise CBORError("truncated record")
    ib = b[p]
    ai = ib & 31
    p += 1
    if ai < 24:
        return ib >> 5, ai, p
    if ai > 27:
        raise CBORError("not a definite-length item")
    nb = 1 << (ai - 24)
    if p + nb > end:
        raise CBORError("truncated record")
    n = 0
    for i in range(p, p + nb):
        n = (n << 8) | b[i]
    return ib >> 5, n, p + nb


def _skip(b, p, end):
    """Position after the item at p (field values: numbers, bools, null, text, bignums)."""
    major, n, p = _head(b, p, end)
    if major == 2 or major == 3:
        p += n
        if p > end:
            raise CBORError("truncated record")
    elif major == 6:
        p = _skip(b, p, end)
    elif major == 4 or major == 5:
        raise CBORError("nested field value")
    return p


def parse(payload, n_fields_of):
    """Where a record's parts are, without decoding it: (kind, ts_ms or None, boot, uptime_ms,
    ts_pos, fields_start, fields_end).

    The uplink copies `payload[1:ts_pos]` (sensor and kind) and `payload[fields_start:fields_end]`
    (the fields map) into the batch as they are: the batch reading differs from the record only
    in carrying dt instead of ts (docs/protocol.md). `n_fields_of(kind)` (None for a kind this
    firmware does not run) bounds the field indexes. A record that does not parse raises
    CBORError: the log's CRC makes that a bug, not wire noise.
    """
    b = payload
    end = len(b)
    if end < 1 or (b[0] != 0x84 and b[0] != 0x86):
        raise CBORError("not a reading record")
    major, n, p = _head(b, 1, end)
    if major != 3 or p + n > end:
        raise CBORError("bad sensor id")
    major, kind, p = _head(b, p + n, end)
    if major != 0:
        raise CBORError("bad kind")
    ts_pos = p
    if p < end and b[p] == 0xF6:
        ts = None
        p += 1
    else:
        major, ts, p = _head(b, p, end)
        if major != 0:
            raise CBORError("bad timestamp")
    f0 = p
    major, n, p = _head(b, p, end)
    nf = n_fields_of(kind)
    if major != 5 or nf is None:
        raise CBORError("bad fields for kind %d" % kind)
    for _ in range(n):
        major, i, p = _head(b, p, end)
        if major != 0 or i >= nf:
            raise CBORError("field index out of range for kind %d" % kind)
        p = _skip(b, p, end)
    f1 = p
    boot = 0
    uptime = 0
    if b[0] == 0x86:
        major, boot, p = _head(b, p, end)
        m2, uptime, p = _head(b, p, end)
        if major != 0 or m2 != 0:
            raise CBORError("bad boot or uptime")
    if p != end:
        raise CBORError("trailing bytes in record")
    return kind, ts, boot, uptime, ts_pos, f0, f1
