"""A power-loss-safe, bounded, append-only log of readings on flash (store-and-forward).

A reading counts as taken once `append` returns; it leaves the log only when the broker's PUBACK
for the batch that carried it is passed to `ack`. Layout (see docs/store.md):

    <dir>/seg-000042.log   segments, append-only, one record after another
    <dir>/state            boot counter + ack cursor, replaced atomically (write .tmp, rename)

    record:  0      1        3                7
             +------+--------+----------------+-------------- ... --+
             | 0xA5 | len LE | crc32 LE       | payload (len bytes) |
             +------+--------+----------------+-------------- ... --+
             crc32 covers the two len bytes and the payload, so a torn or flipped length is caught.

Why this shape: appending never rewrites earlier bytes (write amplification ~1 at the file
level), a torn tail is found by the first record whose magic/length/CRC fails, and the ack cursor
is a few bytes in a file rewritten at most once per sync interval. Only the last segment is ever
appended to; a segment is synced before the next one is started, so a power cut can only tear the
tail of the last one. Record ids are ints `(segment - first segment at boot) << k | end offset`
(k = bits of segment_bytes): they grow with log order, compare with `<`, and need no lookup
table to ack.
"""

import struct
from binascii import crc32

from edge.compat import const, ticks_diff, ticks_ms, unload
from edge.store.fs import Files

MAGIC = const(0xA5)
HEADER = const(7)  # magic, u16 length, u32 crc
MAX_PAYLOAD = const(0xFFFF)
_MAX_SEGMENT = const(1048576)
STATE_MAGIC = b"cbL1"
STATE_LEN = const(20)  # magic, boot u32, cursor seg u32, cursor offset u32, crc32


class StoreError(Exception):
    """Root error of the store: a record the log cannot take, a misuse of ack, a failed write."""


def seg_name(seg):
    return "seg-%06d.log" % seg


class Log:
    """The on-flash log. Opening it runs boot recovery: truncates a torn tail, bumps the boot counter.

    budget_bytes     cap on segment bytes on flash; the oldest segments are dropped (and counted)
                     to make room, so it must hold at least two segments.
    segment_bytes    size at which a new segment starts (< 1 MiB); a multiple of the flash block.
    sync_every_ms    periodic (non-urgent) appends are made durable at most this long after they
    sync_every_bytes   were written, or once this many bytes are pending, whichever comes first.
                     `urgent=True` appends (events, alarms) are synced before `append` returns.
    clock            ticks_ms-style clock (injectable for tests).
    files            filesystem object (edge.store.fs.Files or a fault-injecting stand-in).
    """

    def __init__(self, dirpath, budget_bytes=1048576, segment_bytes=65536, sync_every_ms=10000,
                 sync_every_bytes=4096, clock=ticks_ms, files=None):
        if segment_bytes <= HEADER or segment_bytes >= _MAX_SEGMENT:
            raise ValueError("segment_bytes must be in (7, 1 MiB)")
        if budget_bytes < 2 * segment_bytes:
            raise ValueError("budget_bytes must hold at least two segments")
        self.dir = dirpath
        self.budget_bytes = budget_bytes
        self.segment_bytes = segment_bytes
        self.sync_every_ms = sync_every_ms
        self.sync_every_bytes = sync_every_bytes
        self._clock = clock
        # Record ids: (segment - first segment of this boot) << shift | offset, shift just wide
        # enough for segment_bytes, so ids stay small ints (no heap) for as long as possible.
        shift = 1
        while (1 << shift) <= segment_bytes:
            shift += 1
        self._shift = shift
        self._mask = (1 << shift) - 1
        self._base = 0
        self.files = files if files is not None else Files()
        self._hdr = bytearray(HEADER)
        self._hmv = memoryview(self._hdr)
        self._lenmv = self._hmv[1:3]  # the CRC's first bytes, sliced once (a slice allocates)
        # Counters reported in status (this boot).
        self.boot = 0
        self.appended = 0
        self.pending = 0  # records not yet acked
        self.flash_bytes = 0  # segment bytes on flash
        self.dropped_records = 0  # unacked records lost to budget eviction
        self.evicted_in_flight = 0  # evicted after peek: delivered from RAM unless the board reboots
        self.dropped_bytes = 0
        self.torn_records = 0  # damaged records skipped (torn tail at boot, corruption at read)
        self.torn_bytes = 0
        self.syncs = 0  # durable commits of the log (not counting state-file writes)
        # Segments, oldest first, in three parallel lists; the last one is the active segment.
        self._segs = []
        self._sizes = []
        self._counts = []
        self._first_acked = 0  # records of _segs[0] before the cursor
        self._cursor = 0  # rid of the first unacked byte; its segment is always _segs[0]
        self._read = 0  # next position peek reads; cursor <= read <= synced end
        self._inflight = []  # rids handed out by peek and not yet acked, in order
        self._inf_head = 0
        self._active = None
        self._synced = 0  # durable end of the active segment
        self._unsynced = 0
        self._unsynced_since = 0
        self._cursor_dirty = False
        self._cursor_saved_at = 0
        self._tainted = False
        # Boot recovery runs once: its code is a module of its own that a board drops again.
        from edge.store import boot

        boot.recover(self)
        unload("edge.store.boot")

    # ---- boot -------------------------------------------------------------------------------

    def _rid(self, seg, off):
        return ((seg - self._base) << self._shift) | off

    def _seg_of(self, rid):
        return (rid >> self._shift) + self._base

    def _path(self, seg):
        return self.dir + "/" + seg_name(seg)

    def _save_state(self):
        data = bytearray(STATE_LEN)
        data[0:4] = STATE_MAGIC
        struct.pack_into("<III", data, 4, self.boot, self._seg_of(self._cursor),
                         self._cursor & self._mask)
        struct.pack_into("<I", data, 16, crc32(data[0:16]) & 0xFFFFFFFF)
        self.files.write_atomic(self.dir + "/state", data)
        self._cursor_dirty = False

    # ---- writing ----------------------------------------------------------------------------

    def append(self, payload, urgent=False):
        """Store one record; returns its id. Urgent records are durable when this returns."""
        n = len(payload)
        need = HEADER + n
        if n > MAX_PAYLOAD or need > self.segment_bytes:
            raise StoreError("record too large")
        if self._tainted or self._sizes[-1] + need > self.segment_bytes:
            self._roll()
        while self.flash_bytes + need > self.budget_bytes and len(self._segs) > 1:
            self._evict()
        hdr = self._hdr
        hdr[0] = MAGIC
        hdr[1] = n & 0xFF
        hdr[2] = n >> 8
        struct.pack_into("<I", hdr, 3, crc32(payload, crc32(self._lenmv)) & 0xFFFFFFFF)
        try:
            self.files.write(self._active, hdr)
            self.files.write(self._active, payload)
        except OSError as exc:
            self._tainted = True  # a partial record may sit at the tail: continue in a new segment
            # `from None`: MicroPython warns on chaining; the errno travels in args instead.
            raise StoreError("write failed", exc.args[0] if exc.args else 0) from None
        if self._unsynced == 0:
            self._unsynced_since = self._clock()
        self._unsynced += need
        self._sizes[-1] += need
        self._counts[-1] += 1
        self.flash_bytes += need
        self.pending += 1
        self.appended += 1
        rid = self._rid(self._segs[-1], self._sizes[-1])
        if urgent or self._unsynced >= self.sync_every_bytes:
            self.sync()
        else:
            self.poll()
        return rid

    def poll(self):
        """Run the deferred work that is due: group sync of periodic records, cursor save.

        Call it from the agent's loop (every second or so) so that a quiet period still commits.
        """
        now = self._clock()
        if self._unsynced and ticks_diff(now, self._unsynced_since) >= self.sync_every_ms:
            self.sync()
        elif self._cursor_dirty and ticks_diff(now, self._cursor_saved_at) >= self.sync_every_ms:
            self._save_state()
            self._cursor_saved_at = now

    def sync(self):
        """Make every appended record durable now (and the ack cursor, if its interval is due)."""
        if self._unsynced:
            self.files.sync(self._active)
            self._unsynced = 0
            self._synced = self._sizes[-1]
            self.syncs += 1
        now = self._clock()
        if self._cursor_dirty and ticks_diff(now, self._cursor_saved_at) >= self.sync_every_ms:
            self._save_state()
            self._cursor_saved_at = now

    def close(self):
        """Sync records and cursor; the log must not be used afterwards."""
        self.sync()
        if self._cursor_dirty:
            self._save_state()
        if self._active is not None:
            self.files.close(self._active)
            self._active = None

    def _roll(self):
        """Seal the active segment (durable before the next one exists) and start a new one."""
        if self._unsynced:
            self.files.sync(self._active)
            self._unsynced = 0
            self.syncs += 1
        self.files.close(self._active)
        self._active = None
        seg = self._segs[-1] + 1
        self._active = self.files.open_append(self._path(seg))
        self._segs.append(seg)
        self._sizes.append(0)
        self._counts.append(0)
        self._synced = 0
        self._tainted = False

    def _evict(self):
        """Drop the oldest segment to make room; what was not acked in it is counted as dropped.

        Records of it that peek already handed out (in a published batch awaiting PUBACK, or
        about to be batched) are still delivered from RAM: they are counted as
        `evicted_in_flight`, not as dropped, so delivered + dropped adds up to what was taken.
        """
        off = self._cursor & self._mask
        unacked = self._counts[0] - self._first_acked
        seg = self._segs[0]
        inf = self._inflight
        handed_out = 0
        end = off  # end offset of the last handed-out record of this segment
        for i in range(self._inf_head, len(inf)):
            if self._seg_of(inf[i]) != seg:
                break
            handed_out += 1
            end = inf[i] & self._mask
        self.dropped_records += unacked - handed_out
        self.evicted_in_flight += handed_out
        self.dropped_bytes += self._sizes[0] - end
        self.pending -= unacked
        self._delete_first()
        inf = self._inflight
        i = self._inf_head
        while i < len(inf) and inf[i] < self._cursor:
            i += 1
        self._inf_head = i
        if self._read < self._cursor:
            self._read = self._cursor
        self._cursor_dirty = True

    def _delete_first(self):
        self.files.remove(self._path(self._segs[0]))
        self.flash_bytes -= self._sizes[0]
        self._segs.pop(0)
        self._sizes.pop(0)
        self._counts.pop(0)
        self._first_acked = 0
        self._cursor = self._rid(self._segs[0], 0)

    def _normalize_cursor(self):
        """Delete leading segments the cursor has passed entirely (never the active one)."""
        while len(self._segs) > 1 and (self._cursor & self._mask) >= self._sizes[0]:
            self._delete_first()
            self._cursor_dirty = True
        if self._read < self._cursor:
            self._read = self._cursor

    # ---- reading and acknowledging ----------------------------------------------------------

    def peek(self, max_records=32, max_bytes=4096):
        """Up to `max_records` durable, unacked records after the last peek: a list of (id, payload).

        Continues where the previous peek stopped (no re-reading); `rewind` starts again at the
        ack cursor, e.g. after a lost connection. At least one record is returned if any is
        ready, even one larger than `max_bytes`. Only synced records are returned: call `sync`
        first to publish periodic records before their group commit.
        """
        out = []
        total = 0
        fs = self.files
        hdr = self._hmv
        segs = self._segs
        i = self._seg_index(self._seg_of(self._read))
        f = None
        fseg = -1
        try:
            while len(out) < max_records:
                seg = segs[i]
                off = self._read & self._mask
                limit = self._synced if i == len(segs) - 1 else self._sizes[i]
                if off >= limit:
                    if i == len(segs) - 1:
                        break
                    i += 1
                    self._read = self._rid(segs[i], 0)
                    continue
                if fseg != seg:
                    if f is not None:
                        fs.close(f)
                    f = fs.open_read(self._path(seg))
                    fseg = seg
                f.seek(off)
                n = -1
                if f.readinto(hdr) == HEADER and hdr[0] == MAGIC:
                    n = hdr[1] | (hdr[2] << 8)
                if n >= 0 and out and total + n > max_bytes:
                    break
                payload = f.read(n) if 0 <= n and off + HEADER + n <= limit else None
                good = payload is not None and len(payload) == n
                if good:
                    crc = crc32(payload, crc32(self._lenmv)) & 0xFFFFFFFF
                    good = crc == struct.unpack_from("<I", hdr, 3)[0]
                if not good:
                    # Damaged after boot (bit rot): skip the rest of what is readable here.
                    self.torn_records += 1
                    self.torn_bytes += limit - off
                    self._read = self._rid(seg, limit)
                    continue
                total += n
                self._read = self._rid(seg, off + HEADER + n)
                self._inflight.append(self._read)
                out.append((self._read, payload))
        finally:
            if f is not None:
                fs.close(f)
        return out

    def _seg_index(self, seg):
        segs = self._segs
        for i in range(len(segs)):
            if segs[i] >= seg:
                return i
        return len(segs) - 1

    def rewind(self):
        """Forget what peek handed out: the next peek starts again at the oldest unacked record."""
        self._read = self._cursor
        self._inflight.clear()
        self._inf_head = 0

    def ack(self, rid):
        """Records up to and including `rid` were delivered: drop them. Returns how many were acked.

        Stale ids (already acked or evicted) are ignored; an id that peek did not hand out is a
        StoreError. The cursor reaches flash at the next due sync/poll or at close; a power cut
        before that re-delivers those records after reboot (at-least-once, see docs/store.md).
        """
        if rid <= self._cursor:
            return 0
        inf = self._inflight
        i = self._inf_head
        if rid > self._read or i >= len(inf):
            raise StoreError("ack of a record that was not peeked")
        n = 0
        while i < len(inf) and inf[i] <= rid:
            seg = self._seg_of(inf[i])
            while self._segs[0] < seg:
                self._delete_first()  # every record in it precedes rid: all acked
            self._first_acked += 1
            i += 1
            n += 1
        if n == 0 or inf[i - 1] != rid:
            raise StoreError("ack of a record that was not peeked")
        if i == len(inf):
            inf.clear()
            i = 0
        self._inf_head = i
        self._cursor = rid
        self.pending -= n
        self._cursor_dirty = True
        self._normalize_cursor()
        return n

    # ---- status -----------------------------------------------------------------------------

    @property
    def pending_bytes(self):
        return self.flash_bytes - (self._cursor & self._mask)

    def stats(self):
        """Counters for the status message (allocates: call it at status time, not per reading)."""
        return {
            "boot": self.boot,
            "flash_bytes": self.flash_bytes,
            "segments": len(self._segs),
            "pending_records": self.pending,
            "pending_bytes": self.pending_bytes,
            "appended": self.appended,
            "dropped_records": self.dropped_records,
            "evicted_in_flight": self.evicted_in_flight,
            "dropped_bytes": self.dropped_bytes,
            "torn_records": self.torn_records,
            "torn_bytes": self.torn_bytes,
            "syncs": self.syncs,
            "bytes_written": self.files.written,
        }
