"""The gateway's wire payloads (docs/protocol.md), pure: topics in, bytes out, no I/O.

Batches are streamed: `BatchEncoder` writes each reading into one preallocated buffer as it is
added, so a gateway never holds a list of readings or a dict per message. The readings array
header is reserved at its longest (3 bytes) and patched at `finish()` to the shortest form by
moving the short map prefix in front of it, so the output is preferred CBOR, identical to what
cbor2 writes for the same map.

Commands, the only payloads the gateway reads, are in edge/command.py: a board loads that module
when the first command arrives, not at boot.
"""

from edge import cbor
from edge.compat import const

VERSION = const(1)
PREFIX = "city"

UP = "up"
ALARM = "alarm"
STATUS = "status"
CMD = "cmd"
REPLY = "reply"
ACK = "ack"
LEAVES = (UP, ALARM, STATUS, CMD, REPLY, ACK)

# Batch map keys (docs/protocol.md; collector/decode.py has the same table).
_K_V = const(0)
_K_BOOT = const(1)
_K_SEQ = const(2)
_K_T0 = const(3)
_K_READINGS = const(4)
_K_ALARM = const(5)

# Receipt map keys (docs/protocol.md, "Receipt").
_R_V = const(0)
_R_BOOT = const(1)
_R_UP = const(2)
_R_ALARM = const(3)
_RECEIPT_RANGES = const(32)  # at most this many (lo, hi) ranges per channel in one receipt
RECEIPT_RANGES = _RECEIPT_RANGES

_MAX_READINGS = const(0xFFFF)  # a uint16 count: the longest readings header, reserved by begin


def topic(gw, leaf, prefix=PREFIX):
    """`<prefix>/<gw>/<leaf>`; an unknown leaf, or a gateway id that would escape its subtree,
    is a ValueError (edge/config.py has already refused such an id with a full message)."""
    if leaf not in LEAVES or not gw or "/" in gw or "+" in gw or "#" in gw:
        raise ValueError("bad topic", gw, leaf)
    return prefix + "/" + gw + "/" + leaf


def parse_topic(name, prefix=PREFIX):
    """(gw, leaf) for a gateway topic under prefix, or None if it is not one."""
    parts = name.split("/")
    want = prefix.split("/")
    n = len(want)
    if len(parts) != n + 2 or parts[:n] != want or not parts[n] or parts[n + 1] not in LEAVES:
        return None
    return parts[n], parts[n + 1]


def enc_fields(w, fields):
    """A reading's fields (a tuple or list) as {index: value}, skipping None: no dict is built."""
    cbor.enc_head(w, 5, len(fields) - fields.count(None))
    i = 0
    for v in fields:
        if v is not None:
            cbor.enc_head(w, 0, i)
            cbor.enc(w, v)
        i += 1


class BatchEncoder:
    """Streams batches (and alarms) into one fixed buffer allocated once.

    Use: `begin(boot, seq, t0)`, then `add(...)` per reading until it returns False (full, the
    reading was not added: finish and start the next batch with it), then `finish()`. The
    memoryview `finish()` returns points into the shared buffer: publish it before `begin` again.
    """

    def __init__(self, capacity=2048):
        self.w = cbor.Writer(capacity)
        self.count = 0
        self.t0 = 0
        self.alarm = None
        self._head = -1

    def begin(self, boot, seq, t0, alarm=None):
        w = self.w
        w.reset()
        self.count = 0
        self.t0 = t0
        self.alarm = alarm
        w.append(0xA6 if alarm is not None else 0xA5)
        w.append(_K_V)
        cbor.enc_head(w, 0, VERSION)
        w.append(_K_BOOT)
        cbor.enc_head(w, 0, boot)
        w.append(_K_SEQ)
        cbor.enc_head(w, 0, seq)
        w.append(_K_T0)
        cbor.enc_head(w, 0, t0)
        w.append(_K_READINGS)
        self._head = w.pos
        cbor.enc_head(w, 4, _MAX_READINGS)  # the longest array header (3 bytes), patched at finish

    def add(self, sensor, kind, ts, fields):
        """Append `[sensor, kind, dt, {index: value}]`, dt = ts - t0 (UTC ms); False if it does
        not fit (nothing added).

        `sensor` may be str or its UTF-8 bytes (cache them to avoid an encode per reading).
        """
        if self._head < 0:
            raise cbor.CBORError  # add() outside begin()..finish()
        if self.count >= _MAX_READINGS:
            return False
        w = self.w
        mark = w.pos
        try:
            w.append(0x84)
            cbor.enc_text(w, sensor)
            cbor.enc_head(w, 0, kind)
            cbor.enc_int(w, ts - self.t0)
            enc_fields(w, fields)
        except cbor.BufferFull:
            w.pos = mark
            return False
        except cbor.CBORError:
            w.pos = mark
            raise
        self.count += 1
        return True

    def add_record(self, head, ts, fields):
        """Append a log record's reading as `[sensor, kind, dt, {fields}]` from its encoded parts
        (edge/record.py `parse` finds them): `head` the sensor id and kind, `fields` the fields
        map, both copied as they are; False if it does not fit (nothing added)."""
        if self._head < 0:
            raise cbor.CBORError  # add() outside begin()..finish()
        if self.count >= _MAX_READINGS:
            return False
        w = self.w
        mark = w.pos
        try:
            w.append(0x84)
            w.extend(head)
            cbor.enc_int(w, ts - self.t0)
            w.extend(fields)
        except cbor.BufferFull:
            w.pos = mark
            return False
        self.count += 1
        return True

    def finish(self):
        """Patch the readings count (and append the alarm code); return a view of the payload."""
        head = self._head
        if head < 0:
            raise cbor.CBORError  # finish() without begin()
        n = self.count
        w = self.w
        if self.alarm is not None:
            if n != 1:
                raise cbor.CBORError  # an alarm carries exactly one reading
            w.append(_K_ALARM)
            cbor.enc_text(w, self.alarm)
        # The shortest count header goes at the end of the 3 bytes reserved at `head`; the map
        # prefix before it moves up by `shift` bytes to meet it, and the payload starts there.
        end = w.pos
        shift = 2 if n < 24 else 1 if n < 0x100 else 0
        w.pos = head + shift
        cbor.enc_head(w, 4, n)
        w.pos = end
        buf = w.buf
        buf[shift : head + shift] = buf[:head]
        self._head = -1
        return memoryview(buf)[shift:end]


def encode_alarm(enc, boot, seq, code, sensor, kind, ts, fields):
    """An alarm: a batch of exactly this reading (t0 = its ts, dt = 0) plus key 5 = code.

    Returns a view into the `BatchEncoder`'s buffer, like `BatchEncoder.finish`.
    """
    enc.begin(boot, seq, ts, code)
    if not enc.add(sensor, kind, ts, fields):
        raise cbor.BufferFull  # the alarm does not fit the encoder's buffer
    return enc.finish()


def encode_status(
    w,
    state,
    fw,
    boot,
    uptime_s,
    heap_free,
    spool_bytes,
    spool_records,
    spool_dropped,
    clock_synced,
    ts,
    errors,
    image=None,
    unreceipted=None,
):
    """The retained status map. `ts` is UTC ms, or None while the clock is unsynced;
    `errors` is {sensor: {code_name: count}}; `image` the board image's hash (key `img`, left out
    when None); `unreceipted` (readings, age ms of the oldest) awaiting a receipt (keys
    `unreceipted` and `unreceipted_age_s`, left out when None: receipts off). Writes into `w`
    (bytearray or cbor.Writer)."""
    pairs = (
        ("v", VERSION),
        ("state", state),
        ("fw", fw),
        ("boot", boot),
        ("uptime_s", uptime_s),
        ("heap_free", heap_free),
        ("spool_bytes", spool_bytes),
        ("spool_records", spool_records),
        ("spool_dropped", spool_dropped),
        ("clock_synced", bool(clock_synced)),
        ("ts", ts),
        ("errors", errors),
        ("img", image),
    )
    if image is None:
        pairs = pairs[:-1]
    if unreceipted is not None:
        pairs += (("unreceipted", unreceipted[0]), ("unreceipted_age_s", unreceipted[1] // 1000))
    cbor.enc_map_pairs(w, pairs, len(pairs))


def will_payload(fw, boot):
    """The last-will status (retained, published by the broker when the gateway vanishes).

    Registered at connect time, so it carries only what cannot go stale.
    """
    w = bytearray()
    cbor.enc_map_pairs(w, (("v", VERSION), ("state", "offline"), ("fw", fw), ("boot", boot)), 4)
    return bytes(w)


# ---------------------------------------------------------------- receipts (`<prefix>/<gw>/ack`)
# The gateway only reads receipts; the collector writes them (collector/receipts.py
# `encode_receipt`), so a board does not carry the encoder.


def _uint(buf, pos, major):
    """(argument, next pos) of the header at `pos`, which must be of major type `major` with a
    definite argument; CBORError otherwise (or when the bytes end)."""
    b = buf[pos]
    if b >> 5 != major:
        raise cbor.CBORError  # type
    ai = b & 0x1F
    pos += 1
    if ai < 24:
        return ai, pos
    if ai > 27:
        raise cbor.CBORError  # length
    n = 1 << (ai - 24)
    if pos + n > len(buf):
        raise cbor.CBORError  # short
    v = 0
    for i in range(pos, pos + n):
        v = (v << 8) | buf[i]
    return v, pos + n


def decode_receipt(buf):
    """(boot, up, alarm) from a receipt's bytes, `up` and `alarm` flat lists of inclusive seq
    ranges [lo0, hi0, ...]; a CBORError for anything else (wrong type, version other than 1,
    odd count or lo > hi, more than 32 ranges, trailing bytes). Keys other than 0-3 holding a
    uint or an array of uints are skipped (compatible additions); keys 0 and 1 are required."""
    try:
        n, pos = _uint(buf, 0, 5)
        boot = None
        version = None
        up = []
        alarm = []
        seen = 0
        for _ in range(n):
            key, pos = _uint(buf, pos, 0)
            if key < 8:
                if seen & (1 << key):
                    raise cbor.CBORError  # duplicate key
                seen |= 1 << key
            if buf[pos] >> 5 == 4:
                count, pos = _uint(buf, pos, 4)
                if count > 2 * _RECEIPT_RANGES:
                    raise cbor.CBORError  # too many ranges
                out = up if key == _R_UP else alarm if key == _R_ALARM else None
                if out is not None and count & 1:
                    raise cbor.CBORError  # odd range count
                for _ in range(count):
                    v, pos = _uint(buf, pos, 0)
                    if out is not None:
                        out.append(v)
                if out is not None:
                    for i in range(0, count, 2):
                        if out[i] > out[i + 1]:
                            raise cbor.CBORError  # range lo > hi
            else:
                v, pos = _uint(buf, pos, 0)
                if key == _R_V:
                    version = v
                elif key == _R_BOOT:
                    boot = v
                elif key == _R_UP or key == _R_ALARM:
                    raise cbor.CBORError  # ranges not an array
        if pos != len(buf):
            raise cbor.CBORError  # trailing bytes
    except IndexError:
        raise cbor.CBORError from None  # short
    if version != VERSION or boot is None:
        raise cbor.CBORError  # version or boot
    return boot, up, alarm
