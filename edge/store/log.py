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
tail of the last one. Record ids are ints `((segment - first segment at boot) * span + end offset)
<< 1 | tag` (span = 1 << k, k = bits of segment_bytes; `tag` 0 or 1 tells the gateway's two logs
apart, docs/store.md "Two logs"): they grow with log order, compare with `<`, and need no lookup
table to ack.

Memory on a board: this module stays loaded for the whole run, so the format constants only this
package needs are folded `_CONST`s, and what runs once per boot (recovery, argument checks) lives
in edge/store/boot.py, which is dropped again after it ran.
"""

import struct
from binascii import crc32

from edge.compat import const, ticks_diff, ticks_ms

MAGIC = const(0xA5)  # public for hil/rig.py, which tears records on purpose
HEADER = const(7)  # magic, u16 length, u32 crc (public: tests, benches and hil/rig.py use it)
_MAX_PAYLOAD = const(0xFFFF)
_STATE_MAGIC = const(0x314C6263)  # b"cbL1" read as a u32 LE: an int const, not a bytes object
_TYPE_CHECKING = const(0)  # true for mypy only (scripts/board_types.py --always-true): see Log
if _TYPE_CHECKING:
    from typing import Any


class StoreError(Exception):
    """Root error of the store: a record the log cannot take, a misuse of ack, a failed write."""


class Log:
    """The on-flash log. Opening it runs boot recovery: truncates a torn tail, bumps the boot counter.

    budget_bytes     cap on segment bytes on flash; the oldest segments are dropped (and counted)
                     to make room, so it must hold at least two segments.
    segment_bytes    size at which a new segment starts (< 1 MiB); a multiple of the flash block.
    sync_every_ms    periodic (non-urgent) appends are made durable at most this long after they
    sync_every_bytes   were written, or once this many bytes are pending, whichever comes first.
                     `urgent=True` appends (events, alarms) are synced before `append` returns.
    clock            ticks_ms-style clock (injectable for tests).
    files            filesystem object (edge.store.Files or a fault-injecting stand-in).
    tag              0 or 1, the low bit of every record id this log hands out (see above).

    `peer`: another Log sharing `budget_bytes` (the gateway's events log and its periodic log,
    docs/store.md "Two logs"), or None. Over budget, the oldest segment of whichever of the two
    has more segments is dropped.

    `boot_end` is the id of the end of the log as this boot found it: records up to it were
    taken by an earlier boot.

    Counters reported in status (this boot): `boot`, `appended`, `pending` (records not yet
    acked) and `pending_bytes` (their bytes), `flash_bytes` (segment bytes on flash),
    `dropped_records`/`dropped_bytes` (unacked records lost to budget eviction),
    `evicted_in_flight` (evicted after peek: delivered from RAM unless the board reboots),
    `torn_records`/`torn_bytes` (damaged records skipped: torn tail at boot, corruption at read),
    `syncs` (durable commits of the log, not counting the state file).

    Every attribute is set up by edge.store.boot.recover; the private state:
    _segs, _sizes, _counts   the segments, oldest first, in parallel lists: id, bytes, records not
                             yet acked; the last one is the active segment, open in `_active`.
    _span, _base             record ids: (segment - _base) * _span + end offset.
    _cursor                  rid of the first unacked byte; its segment is always _segs[0].
    _moved_at                when the cursor first moved after `state` was last written
                             (None: `state` holds it). Like records, it is saved sync_every_ms
                             later, which caps the cursor saves at one per sync_every_ms.
    _read                    next position peek reads; cursor <= read <= durable end.
    _inflight                rids handed out by peek and not yet acked, in order.
    _unsynced, _unsynced_since   bytes of the active segment not yet written, since when: they
                             wait in `_wbuf` (write-behind, at most sync_every_bytes). The
                             durable end of the active segment is its size minus `_unsynced`.
    _spilled                 bytes written from a full buffer but not yet synced: the group
                             sync still comes at sync_every_ms or sync_every_bytes, as offline.
    _mark, _mark_at          the records after id `_mark` (-1: none) were all taken at or after
                             `_mark_at`: `_unsynced_since` moves there once everything before
                             `_mark` is acked or synced (poll), so the group sync is due
                             sync_every_ms after the oldest record at risk, give or take one mark.
    _skip                    bytes of _segs[0] acked while in `_wbuf`, so never written: its file
                             offset is the record offset minus `_skip` (only segs[0] has any,
                             and only past them is ever read).
    _tainted                 a write failed: a partial record may sit at the tail, so the next
                             append starts a new segment.
    _seg_path                `dir + "/seg-%06d.log"`: the path of segment n is `_seg_path % n`.
    _hdr, _lenmv             the preallocated record header and a view of its length bytes (the
                             CRC's first bytes, sliced once: a slice allocates).
    """

    if _TYPE_CHECKING:
        # The attributes edge.store.boot.recover sets, declared for the board type check (which
        # checks every use of them). `if 0:` after const folding: mpy-cross drops the block and
        # CPython never runs it, so a board pays nothing for it.
        dir: str
        budget_bytes: int
        tag: int
        peer: Any
        segment_bytes: int
        sync_every_ms: int
        sync_every_bytes: int
        clock: Any
        files: Any
        boot: int
        boot_end: int
        appended: int
        pending: int
        flash_bytes: int
        dropped_records: int
        evicted_in_flight: int
        dropped_bytes: int
        torn_records: int
        torn_bytes: int
        syncs: int
        _segs: list
        _sizes: list
        _counts: list
        _active: Any
        _span: int
        _base: int
        _cursor: int
        _moved_at: Any
        _read: int
        _inflight: list
        _unsynced: int
        _unsynced_since: int
        _mark: int
        _mark_at: int
        _wbuf: bytearray
        _wmv: memoryview
        _skip: int
        _spilled: int
        skipped_bytes: int
        _tainted: bool
        _seg_path: str
        _hdr: bytearray
        _lenmv: memoryview

    def __init__(
        self,
        path,
        budget_bytes=1048576,
        segment_bytes=65536,
        sync_every_ms=10000,
        sync_every_bytes=4096,
        clock=ticks_ms,
        files=None,
        tag=0,
    ):
        # Argument checks, the state below and boot recovery run once: their code is a module
        # of its own (edge/store/boot.py) that a board drops again, unless the caller loaded it
        # to open several logs (edge/start.py: loading it twice fragments a board's heap).
        import sys

        from edge.compat import unload

        kept = "edge.store.boot" in sys.modules
        from edge.store import boot

        boot.recover(
            self, path, budget_bytes, segment_bytes, sync_every_ms, sync_every_bytes, clock, files, tag
        )
        if not kept:
            unload(boot.__name__)

    def _save_state(self):
        """Write `state`: b"cbL1", boot, cursor segment, cursor offset (u32 LE each), then the
        crc32 of those 16 bytes (checked by edge.store.boot)."""
        cur = self._cursor
        seg = cur // self._span + self._base
        off = cur % self._span
        if seg == self._segs[-1]:
            # Not past the written end: records still in RAM land after it if they are written.
            off = min(off, self._sizes[-1] - self._unsynced)
        head = struct.pack("<IIII", _STATE_MAGIC, self.boot, seg, off - self._skip)
        self.files.write_atomic(self.dir + "/state", head + struct.pack("<I", crc32(head)))
        self._moved_at = None

    # ---- writing ----------------------------------------------------------------------------

    def append(self, payload, urgent=False):
        """Store one record; returns its id. Urgent records are durable when this returns."""
        n = len(payload)
        need = HEADER + n
        if n > _MAX_PAYLOAD or need > self.segment_bytes:
            raise StoreError("record too large")
        fs = self.files
        segs = self._segs
        sizes = self._sizes
        if self._tainted or sizes[-1] + need > self.segment_bytes:
            # Seal the active segment (durable before the next one exists) and start a new one.
            self._flush()
            self._active.close()  # (closed again, harmlessly, if the open below failed)
            seg = segs[-1] + 1
            self._active = fs.open(self._seg_path % seg, "ab")
            segs.append(seg)
            sizes.append(0)
            self._counts.append(0)
            self._tainted = False
        peer = self.peer
        while self.flash_bytes + need + (0 if peer is None else peer.flash_bytes) > self.budget_bytes:
            # Over budget (shared with `peer`): drop the oldest segment of whichever log has more.
            victim = self if peer is None or len(segs) >= len(peer._segs) else peer
            if len(victim._segs) < 2:
                break
            victim._evict()
        hdr = self._hdr
        hdr[0] = MAGIC
        hdr[1] = n & 0xFF
        hdr[2] = n >> 8
        struct.pack_into("<I", hdr, 3, crc32(payload, crc32(self._lenmv)))
        cap = len(self._wbuf)
        behind = not urgent and need <= cap
        if behind:
            # Periodic: kept in RAM until the group sync, which writes it only if it is not
            # acked by then (a receipt that came back in time saves its flash write).
            if self._unsynced + need > cap and not self._compact(need):
                self._spill(need)  # full of unacked records: the oldest written, synced on schedule
            b = self._unsynced
            wmv = self._wmv
            wmv[b : b + HEADER] = hdr
            wmv[b + HEADER : b + need] = payload
            if b == 0 and not self._spilled:
                self._unsynced_since = self.clock()
                self._mark = -1
            elif self._mark < 0:
                # Records from here on were taken from now on: once everything before them is
                # acked or synced, the group sync is due sync_every_ms after now, not after the
                # first record's time (at 20 readings/s the buffer never empties, and that stale
                # time synced it every sync_every_ms: bench/edge_flash.py).
                self._mark = (segs[-1] - self._base) * self._span + sizes[-1]
                self._mark_at = self.clock()
            self._unsynced = b + need
        else:
            # Urgent (or larger than the buffer): after what waits in RAM (log order), both made
            # durable by one sync.
            self._flush(False)
            try:
                fs.write(self._active, hdr)
                fs.write(self._active, payload)
            except OSError as exc:
                self._tainted = True  # a partial record may sit at the tail: continue in a new segment
                # `from None`: MicroPython warns on chaining; the errno travels in args instead.
                raise StoreError("write failed", *exc.args) from None
            fs.sync(self._active)
            self.syncs += 1
            self._spilled = 0
        sizes[-1] += need
        self._counts[-1] += 1
        self.flash_bytes += need
        self.pending += 1
        self.appended += 1
        if behind and self._unsynced + self._spilled >= self.sync_every_bytes:
            self._compact(0)
            if self._unsynced + self._spilled >= self.sync_every_bytes:
                self.sync()
        else:
            self.poll()
        return ((segs[-1] - self._base) * self._span + sizes[-1]) << 1 | self.tag

    def _evict(self):
        """Drop the oldest segment (never the active one) to make room in the budget. What was
        not acked in it is counted as dropped, except the records peek already handed out (in a
        published batch awaiting its receipt, or about to be batched): those are still delivered
        from RAM and counted as `evicted_in_flight`, so that delivered + dropped adds up to what
        was taken."""
        segs = self._segs
        span = self._span
        end = self._cursor % span  # end of what is acked or handed out in it
        unacked = self._counts[0]
        self._cursor = (segs[1] - self._base) * span  # the next segment's start
        inf = self._inflight
        k = 0
        while k < len(inf) and inf[k] < self._cursor:
            end = inf[k] % span
            k += 1
        del inf[:k]
        self.dropped_records += unacked - k
        self.evicted_in_flight += k
        self.dropped_bytes += self._sizes[0] - end
        self._drop_passed()

    def _acked_prefix(self, used):
        """Bytes at the start of the RAM buffer (`used` bytes in use) that are acked already."""
        if self._cursor // self._span + self._base != self._segs[-1]:
            return 0
        return min(used, max(0, self._cursor % self._span - (self._sizes[-1] - used)))

    def _compact(self, room):
        """Drop the acked records at the start of the RAM buffer (they are never written) and
        move the rest down; True if `room` bytes are then free. Their group sync stays due at
        the same time: a power cut still costs at most sync_every_ms of unacked records."""
        u = self._unsynced
        k = self._acked_prefix(u)
        if k:
            self._wmv[0 : u - k] = self._wmv[k:u]
            self._unsynced = u - k
            self._skip += k
            self.skipped_bytes += k
            self.flash_bytes -= k
            if self._moved_at is None:
                self._moved_at = self.clock()  # the saved cursor stopped at the written end
        return self._unsynced + room <= len(self._wbuf)

    def _spill(self, room):
        """Write the oldest records waiting in RAM (none is acked: `_compact` ran) until `room`
        bytes are free, and move the rest down: the younger ones may still be receipted before
        they are due (writing the whole buffer wrote 27 of 29 KB at 20 readings/s, bench/edge_flash.py).
        Not synced: the group sync keeps its schedule, as for a record written by `_flush`."""
        u = self._unsynced
        wb = self._wbuf
        j = 0
        while u - j + room > len(wb):
            j += HEADER + (wb[j + 1] | (wb[j + 2] << 8))
        try:
            self.files.write(self._active, self._wmv[0:j])
        except OSError as exc:
            self._tainted = True  # what did not reach flash is found torn by peek, counted
            raise StoreError("write failed", *exc.args) from None
        self._wmv[0 : u - j] = self._wmv[j:u]
        self._unsynced = u - j
        self._spilled += j

    def _flush(self, sync=True):
        """Write (and `sync`) the records waiting in RAM, except those already acked (skipped:
        they never cost a flash write). Acks are in log order, so the acked ones are a prefix."""
        u = self._unsynced
        k = self._acked_prefix(u)
        self._unsynced = 0
        if k:
            # Acked before written: everything before it is acked too, so only segs[0] (the
            # active one here) ever has a gap, and nothing before the gap is read again.
            self._skip += k
            self.skipped_bytes += k
            self.flash_bytes -= k
            if self._moved_at is None:
                self._moved_at = self.clock()  # the saved cursor stopped at the written end
        if k < u:
            try:
                self.files.write(self._active, self._wmv[k:u])
            except OSError as exc:
                self._tainted = True  # what did not reach flash is found torn by peek, counted
                raise StoreError("write failed", *exc.args) from None
            self._spilled += u - k
        if sync and self._spilled:
            self.files.sync(self._active)
            self.syncs += 1
            self._spilled = 0

    def poll(self):
        """Run the deferred work that is due: group sync of periodic records, cursor save.

        Call it from the agent's loop (every second or so) so that a quiet period still commits.
        """
        now = self.clock()
        mark = self._mark
        if mark >= 0 and max(self._cursor, (self._segs[-1] - self._base) * self._span + self._sizes[-1]
                             - self._unsynced - self._spilled) >= mark:
            self._unsynced_since = self._mark_at  # what was older is acked or synced
            self._mark = -1
        if (self._unsynced or self._spilled) and ticks_diff(now, self._unsynced_since) >= self.sync_every_ms:
            self.sync()
        elif self._moved_at is not None and ticks_diff(now, self._moved_at) >= self.sync_every_ms:
            self._save_state()

    def sync(self):
        """Make every appended, unacked record durable now (and the ack cursor, if its interval is due)."""
        self._flush()
        self.poll()  # nothing unsynced now: saves the cursor if that is due

    def close(self):
        """Sync records and cursor; the log must not be used afterwards."""
        self.sync()
        if self._moved_at is not None:
            self._save_state()
        if self._active is not None:
            self._active.close()
            self._active = None

    def _drop_passed(self):
        """Delete the leading segments wholly before the cursor (never the active one); their
        records not yet acked (none, unless evicted or damaged ones were skipped) leave `pending`.
        """
        segs = self._segs
        start = (segs[0] - self._base) * self._span  # rid of the first segment's start
        while len(segs) > 1 and self._cursor >= start + self._sizes[0]:
            self.files.remove(self._seg_path % segs.pop(0))
            self.flash_bytes -= self._sizes.pop(0) - self._skip
            self._skip = 0
            self.pending -= self._counts.pop(0)
            start = (segs[0] - self._base) * self._span
        self._cursor = max(self._cursor, start)  # the cursor is always in the first segment
        self._read = max(self._read, self._cursor)
        if self._moved_at is None:
            self._moved_at = self.clock()

    # ---- reading and acknowledging ----------------------------------------------------------

    def peek(self, max_records=32, max_bytes=4096):
        """Up to `max_records` unacked records after the last peek: a list of (id, payload).

        Continues where the previous peek stopped (no re-reading); `rewind` starts again at the
        ack cursor, e.g. after a lost connection. At least one record is returned if any is
        ready, even one larger than `max_bytes`. Records still waiting in RAM for their group
        sync are handed out too (deliver first: docs/store.md, "Write-behind").
        """
        out = []
        total = 0
        hdr = self._hdr
        segs = self._segs
        last = len(segs) - 1
        i = segs.index(self._read // self._span + self._base)
        f = None
        try:
            while len(out) < max_records:
                off = self._read % self._span
                limit = self._sizes[i]
                if i == last:
                    limit -= self._unsynced  # the durable end
                    if off >= limit and self._unsynced and off < self._sizes[i]:
                        # Waiting in RAM (written by itself, so no CRC to check).
                        b = off - limit
                        wb = self._wbuf
                        n = wb[b + 1] | (wb[b + 2] << 8)
                        if out and total + n > max_bytes:
                            break
                        payload = bytes(self._wmv[b + HEADER : b + HEADER + n])
                        total += n
                        self._read += HEADER + n
                        self._inflight.append(self._read)
                        out.append((self._read << 1 | self.tag, payload))
                        continue
                if off >= limit:
                    if i == last:
                        break
                    if f is not None:
                        f.close()
                        f = None
                    i += 1
                    self._read = (segs[i] - self._base) * self._span
                    continue
                if f is None:
                    f = self.files.open(self._seg_path % segs[i], "rb")
                f.seek(off - self._skip if i == 0 else off)
                payload = None
                if f.readinto(hdr) == HEADER and hdr[0] == MAGIC:
                    n = hdr[1] | (hdr[2] << 8)
                    if off + HEADER + n <= limit:
                        if out and total + n > max_bytes:
                            break
                        payload = f.read(n)
                        crc = crc32(payload, crc32(self._lenmv))
                        if len(payload) != n or crc != struct.unpack_from("<I", hdr, 3)[0]:
                            payload = None
                if payload is None:
                    # Damaged after boot (bit rot): skip the rest of what is readable here.
                    self.torn_records += 1
                    self.torn_bytes += limit - off
                    self._read += limit - off
                    continue
                total += n
                self._read += HEADER + n
                self._inflight.append(self._read)
                out.append((self._read << 1 | self.tag, payload))
        finally:
            if f is not None:
                f.close()
        return out

    def rewind(self):
        """Forget what peek handed out: the next peek starts again at the oldest unacked record."""
        self._read = self._cursor
        self._inflight.clear()

    def ack(self, rid, before=None):
        """Records up to and including `rid` were delivered: drop them. Returns how many were acked.

        `before`: a record id that must stay (an alarm awaiting its receipt): only the records
        handed out before it are dropped, the rest stay until a later ack.
        Stale ids (already acked or evicted) are ignored; an id that peek did not hand out is a
        StoreError. The cursor reaches flash at the next due sync/poll or at close; a power cut
        before that re-delivers those records after reboot (at-least-once, see docs/store.md).
        """
        inf = self._inflight
        rid >>= 1
        if before is not None:
            before >>= 1
        if before is not None and rid >= before:
            k = 0
            while k < len(inf) and inf[k] < before:
                k += 1
            if not k:
                return 0
            rid = inf[k - 1]
        if rid <= self._cursor:
            return 0
        try:
            n = inf.index(rid) + 1
        except ValueError:
            raise StoreError("ack of a record not peeked") from None
        for i in range(n):
            self._counts[self._segs.index(inf[i] // self._span + self._base)] -= 1
        self.pending -= n
        del inf[:n]
        self._cursor = rid
        self._drop_passed()
        return n

    # ---- status -----------------------------------------------------------------------------

    @property
    def unpeeked(self):
        """Records not yet acked that peek has not handed out."""
        return self.pending - len(self._inflight)

    @property
    def pending_bytes(self):
        return self.flash_bytes + self._skip - self._cursor % self._span

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
            "unwritten_bytes": self._unsynced,
            "write_behind_bytes": len(self._wbuf),
            "skipped_bytes": self.skipped_bytes,
            "bytes_written": self.files.written,
        }
