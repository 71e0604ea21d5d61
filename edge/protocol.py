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
LEAVES = (UP, ALARM, STATUS, CMD, REPLY)

# Batch map keys.
K_V = const(0)
K_BOOT = const(1)
K_SEQ = const(2)
K_T0 = const(3)
K_READINGS = const(4)
K_ALARM = const(5)

_HEAD_RESERVE = const(3)  # 0x99 + uint16 count: the longest array header a batch can need
_MAX_READINGS = const(0xFFFF)


def topic(gw, leaf, prefix=PREFIX):
    """`<prefix>/<gw>/<leaf>`; a gateway id that would escape its subtree is a ValueError."""
    if leaf not in LEAVES:
        raise ValueError("unknown topic leaf %r" % (leaf,))
    if not gw or "/" in gw or "+" in gw or "#" in gw:
        raise ValueError("bad gateway id %r" % (gw,))
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
    """A reading's fields as {index: value}, skipping None: no dict is built."""
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


class BatchEncoder:
    """Streams batches (and alarms) into one fixed buffer allocated once.

    Use: `begin(boot, seq, t0)`, then `add(...)` per reading until it returns False (full, the
    reading was not added: finish and start the next batch with it), then `finish()`. The
    memoryview `finish()` returns points into the shared buffer: publish it before `begin` again.
    """

    __slots__ = ("w", "count", "t0", "alarm", "_head")

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
        w.append(K_V)
        cbor.enc_head(w, 0, VERSION)
        w.append(K_BOOT)
        cbor.enc_head(w, 0, boot)
        w.append(K_SEQ)
        cbor.enc_head(w, 0, seq)
        w.append(K_T0)
        cbor.enc_head(w, 0, t0)
        w.append(K_READINGS)
        self._head = w.pos
        w.extend(b"\x99\x00\x00")

    def add(self, sensor, kind, ts_ms, fields):
        """Append `[sensor, kind, dt, {index: value}]`; False if it does not fit (nothing added).

        `sensor` may be str or its UTF-8 bytes (cache them to avoid an encode per reading).
        """
        if self._head < 0:
            raise cbor.CBORError("add() outside begin()/finish()")
        if self.count >= _MAX_READINGS:
            return False
        w = self.w
        mark = w.pos
        try:
            w.append(0x84)
            cbor.enc_text(w, sensor)
            cbor.enc_head(w, 0, kind)
            cbor.enc_int(w, ts_ms - self.t0)
            enc_fields(w, fields)
        except cbor.BufferFull:
            w.pos = mark
            return False
        except cbor.CBORError:
            w.pos = mark
            raise
        self.count += 1
        return True

    def add_record(self, rec, ts_pos, ts_ms, f0, f1):
        """Append a log record's reading (edge/record.py `parse`) as `[sensor, kind, dt, {fields}]`,
        copying its sensor, kind and fields bytes as they are; False if it does not fit."""
        if self._head < 0:
            raise cbor.CBORError("add() outside begin()/finish()")
        if self.count >= _MAX_READINGS:
            return False
        w = self.w
        mark = w.pos
        mv = memoryview(rec)
        try:
            w.append(0x84)
            w.extend(mv[1:ts_pos])
            cbor.enc_int(w, ts_ms - self.t0)
            w.extend(mv[f0:f1])
        except cbor.BufferFull:
            w.pos = mark
            return False
        self.count += 1
        return True

    def finish(self):
        """Patch the readings count (and append the alarm code); return a view of the payload."""
        head = self._head
        if head < 0:
            raise cbor.CBORError("finish() without begin()")
        n = self.count
        w = self.w
        if self.alarm is not None:
            if n != 1:
                raise cbor.CBORError("an alarm carries exactly one reading")
            w.append(K_ALARM)
            cbor.enc_text(w, self.alarm)
        buf = w.buf
        if n < 24:
            size = 1
        elif n < 0x100:
            size = 2
        else:
            size = 3
        shift = _HEAD_RESERVE - size
        # Shortest header at the end of the reserved gap, then the map prefix moved up to meet it.
        if size == 1:
            buf[head + 2] = 0x80 | n
        elif size == 2:
            buf[head + 1] = 0x98
            buf[head + 2] = n
        else:
            buf[head + 1] = n >> 8
            buf[head + 2] = n & 0xFF
        i = head - 1 if shift else -1
        while i >= 0:
            buf[i + shift] = buf[i]
            i -= 1
        self._head = -1
        return memoryview(buf)[shift:w.pos]


def encode_alarm(encoder, boot, seq, code, sensor, kind, ts_ms, fields):
    """An alarm: a batch of exactly this reading (t0 = its ts, dt = 0) plus key 5 = code.

    Returns a view into the encoder's buffer, like `BatchEncoder.finish`.
    """
    encoder.begin(boot, seq, ts_ms, code)
    if not encoder.add(sensor, kind, ts_ms, fields):
        raise cbor.CBORError("alarm does not fit the buffer")
    return encoder.finish()


def encode_status(w, state, fw, boot, uptime_s, heap_free, spool_bytes, spool_records,
                  spool_dropped, clock_synced, ts, errors):
    """The retained status map. `ts` is UTC ms, or None while the clock is unsynced;
    `errors` is {sensor: {code_name: count}}. Writes into `w` (bytearray or cbor.Writer)."""
    cbor.enc_head(w, 5, 12)
    cbor.enc_text(w, "v")
    cbor.enc_int(w, VERSION)
    cbor.enc_text(w, "state")
    cbor.enc_text(w, state)
    cbor.enc_text(w, "fw")
    cbor.enc_text(w, fw)
    cbor.enc_text(w, "boot")
    cbor.enc_int(w, boot)
    cbor.enc_text(w, "uptime_s")
    cbor.enc_int(w, uptime_s)
    cbor.enc_text(w, "heap_free")
    cbor.enc(w, heap_free)
    cbor.enc_text(w, "spool_bytes")
    cbor.enc_int(w, spool_bytes)
    cbor.enc_text(w, "spool_records")
    cbor.enc_int(w, spool_records)
    cbor.enc_text(w, "spool_dropped")
    cbor.enc_int(w, spool_dropped)
    cbor.enc_text(w, "clock_synced")
    cbor.enc(w, bool(clock_synced))
    cbor.enc_text(w, "ts")
    cbor.enc(w, ts)
    cbor.enc_text(w, "errors")
    cbor.enc(w, errors)


def will_payload(fw, boot):
    """The last-will status (retained, published by the broker when the gateway vanishes).

    Registered at connect time, so it carries only what cannot go stale.
    """
    w = bytearray()
    cbor.enc_head(w, 5, 4)
    cbor.enc_text(w, "v")
    cbor.enc_int(w, VERSION)
    cbor.enc_text(w, "state")
    cbor.enc_text(w, "offline")
    cbor.enc_text(w, "fw")
    cbor.enc_text(w, fw)
    cbor.enc_text(w, "boot")
    cbor.enc_int(w, boot)
    return bytes(w)
