"""How one reading is kept in the store-and-forward log: a small CBOR array per record.

    stamped:    [sensor, kind, ts_ms, {index: value}]
    unstamped:  [sensor, kind, null,  {index: value}, boot, uptime_ms]
    + an alarm code (text) as the last item when the reading raised an alarm (5 or 7 items)

Unstamped records were taken before the clock was known (edge/clock.py); the uplink stamps them
with the boot's anchor when they leave the log. The alarm code lets a reboot find the alarms
whose receipt had not come yet and publish them again (docs/gateway.md, "Alarms").
CBOR keeps bool/int/float apart, as the wire does.
The store treats the bytes as opaque; only this module knows their layout, and the uplink never
decodes a record: `parse` finds its parts and the batch copies them (see `BatchEncoder.add_record`).
"""

from edge import cbor
from edge.cbor import CBORError
from edge.protocol import enc_fields


def encode(w, sensor, kind, ts, fields, boot=0, uptime_ms=0, alarm=None):
    """Write one record into `w` (a reset `cbor.Writer` or bytearray); `ts` is UTC ms, or None
    for unstamped (then boot and uptime_ms say when it was taken); `alarm` the code it raised."""
    w.append((0x86 if ts is None else 0x84) | (0 if alarm is None else 1))
    cbor.enc_text(w, sensor)
    cbor.enc_head(w, 0, kind)
    if ts is None:
        w.append(0xF6)
    else:
        cbor.enc_int(w, ts)
    enc_fields(w, fields)
    if ts is None:
        cbor.enc_head(w, 0, boot)
        cbor.enc_head(w, 0, uptime_ms)
    if alarm is not None:
        cbor.enc_text(w, alarm)


def _head(b, pos, end):
    """(major type, argument, next position) of the item head at pos; floats' bits are the argument."""
    if pos >= end:
        raise CBORError("bad record")  # truncated
    ib = b[pos]
    ai = ib & 31
    pos += 1
    if ai < 24:
        return ib >> 5, ai, pos
    if ai > 27:
        raise CBORError("bad record")  # not a definite-length item
    nb = 1 << (ai - 24)
    if pos + nb > end:
        raise CBORError("bad record")  # truncated
    n = 0
    for i in range(pos, pos + nb):
        n = (n << 8) | b[i]
    return ib >> 5, n, pos + nb


def parse(payload, n_fields_of):
    """Where a record's parts are, without decoding it: (kind, ts_ms or None, boot, uptime_ms,
    ts_pos, fields_start, fields_end, alarm code or None).

    The uplink copies `payload[1:ts_pos]` (sensor and kind) and `payload[fields_start:fields_end]`
    (the fields map) into the batch as they are: the batch reading differs from the record only
    in carrying dt instead of ts (docs/protocol.md). `n_fields_of(kind)` (None for a kind this
    firmware does not run) bounds the field indexes. A record that does not parse raises
    CBORError("bad record"), whatever the fault (each check says which): the log's CRC makes it
    a bug, not wire noise, and the uplink only counts it, so one message keeps the board's heap
    free of a string per case.
    """
    b = payload
    end = len(b)
    if end < 1 or b[0] < 0x84 or b[0] > 0x87:
        raise CBORError("bad record")  # not a reading record
    major, n, p = _head(b, 1, end)
    m2, kind, p = _head(b, p + n, end)  # past `end` (a bad record) if the sensor id is truncated
    if major != 3 or m2 != 0:
        raise CBORError("bad record")  # the sensor id is not text, or the kind not a uint
    ts_pos = p
    if p < end and b[p] == 0xF6:
        ts = None
        p += 1
    else:
        major, ts, p = _head(b, p, end)
        if major != 0:
            raise CBORError("bad record")  # the timestamp is neither null nor a uint
    f0 = p
    major, n, p = _head(b, p, end)
    nf = n_fields_of(kind)
    if major != 5 or nf is None:
        raise CBORError("bad record")  # no fields map, or a kind this firmware does not run
    for _ in range(n):
        major, i, p = _head(b, p, end)
        if major != 0 or i >= nf:
            raise CBORError("bad record")  # field index out of range for the kind
        # Skip the value: a number, bool, null, text or bytes, possibly tagged (bignums).
        major, i, p = _head(b, p, end)
        while major == 6:
            major, i, p = _head(b, p, end)
        if major == 2 or major == 3:
            p += i  # past the end if truncated: the next head or the final check says so
        elif major == 4 or major == 5:
            raise CBORError("bad record")  # a nested field value
    f1 = p
    boot = 0
    uptime = 0
    if b[0] >= 0x86:
        major, boot, p = _head(b, p, end)
        m2, uptime, p = _head(b, p, end)
        if major != 0 or m2 != 0:
            raise CBORError("bad record")  # boot or uptime is not a uint
    code = None
    if b[0] & 1:
        major, n, p = _head(b, p, end)
        if major != 3 or p + n != end:
            raise CBORError("bad record")  # the alarm code is not text, or not the last item
        code = bytes(b[p:end]).decode()
        p = end
    if p != end:
        raise CBORError("bad record")  # trailing bytes
    return kind, ts, boot, uptime, ts_pos, f0, f1, code
