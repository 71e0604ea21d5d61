"""How one reading is kept in the store-and-forward log: a small CBOR array per record.

    stamped:    [sensor, kind, ts_ms, {index: value}]
    unstamped:  [sensor, kind, null,  {index: value}, boot, uptime_ms]

Unstamped records were taken before the clock was known (edge/clock.py); the uplink stamps them
with the boot's anchor when they leave the log. CBOR keeps bool/int/float apart, as the wire does.
The store treats the bytes as opaque; only this module knows their layout.
"""

from edge import cbor


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
    n = 0
    for v in fields:
        if v is not None:
            n += 1
    cbor.enc_head(w, 5, n)
    i = 0
    for v in fields:
        if v is not None:
            cbor.enc_head(w, 0, i)
            cbor.enc(w, v)
        i += 1
    if ts_ms is None:
        cbor.enc_head(w, 0, boot)
        cbor.enc_head(w, 0, uptime_ms)


def decode(payload, n_fields_of):
    """(sensor, kind, ts_ms or None, fields tuple, boot, uptime_ms) from a record.

    `n_fields_of(kind)` gives the kind's field count, to rebuild the positional tuple. A record
    that does not parse raises cbor.CBORError: the log's CRC makes that a bug, not wire noise.
    """
    item = cbor.loads(payload)
    if not isinstance(item, list) or len(item) not in (4, 6):
        raise cbor.CBORError("not a reading record")
    sensor, kind, ts, fmap = item[0], item[1], item[2], item[3]
    n = n_fields_of(kind)
    fields = [None] * n
    for i in fmap:
        if not 0 <= i < n:
            raise cbor.CBORError("field index %d out of range for kind %d" % (i, kind))
        fields[i] = fmap[i]
    boot = 0
    uptime = 0
    if len(item) == 6:
        boot, uptime = item[4], item[5]
    return sensor, kind, ts, tuple(fields), boot, uptime
