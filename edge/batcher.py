"""From log records to numbered batches, and from PUBACKs back to what the log may forget.

Sans-I/O: the uplink hands it records peeked from the log and the packet acknowledgements it
receives; it returns payloads to publish and, per log, the record id up to which it may be acked
(`upto`: the gateway keeps events and periodic readings in two logs, docs/store.md "Two logs").
A batch keeps its sequence number across reconnects (it is re-sent byte for byte), so the
collector's (gw, boot, seq) de-duplication recognises a redelivery. PUBACKs may complete out of
order; the logs are acked only up to the oldest batch still in flight.

Receipts (`receipts=True`, docs/protocol.md "Receipt"): a PUBACK then only says the broker has a
batch (`puback`), and the batch is delivered when the collector's receipt names its seq
(`receipted`). Until then it keeps its payload, so `due` can hand it out again, byte for byte, when
no receipt came within a timeout or after a reconnect (`resend_all`).

Stamping: a record logged before the clock was known carries (boot, uptime); `anchor(boot)` gives
that boot's UTC-minus-uptime offset once known. A record of the *current* boot without an anchor
ends the batch (it waits for the clock); one of an *older* boot without an anchor can never be
stamped honestly and is counted in `unstampable` and skipped, never sent with a guessed time.
"""

from edge import cbor, protocol, record
from edge.compat import ticks_diff


class Batch:
    def __init__(self, seq, payload, last, count, used, buf=None):
        self.seq = seq
        self.payload = payload  # None: an entry for skipped records only, delivered already
        self.buf = buf  # the pool buffer `payload` views, back to the pool on release
        # The id of its last record from each of the gateway's two logs (None: none from it),
        # indexed by the id's low bit (edge/store/log.py, "tag").
        self.last = last
        self.count = count  # readings in the payload
        self.used = used  # log records it accounts for (readings + skipped ones)
        self.acked = payload is None  # delivered: PUBACKed, or receipted with receipts on
        self.pid = 0  # the packet id while the broker has not PUBACKed it (its buffer is the client's)
        self.sent_at = None  # ticks of its last PUBACK (receipts on); None: due for a re-send
        self.first_at = None  # ticks of its first PUBACK: the age of the oldest unreceipted
        self.tries = 0  # re-sends so far: each doubles its timeout (up to 16x)


class Batcher:
    def __init__(self, boot, n_fields_of, anchor, batch_max=50, capacity=4096, pool=0, receipts=False):
        """`pool` > 0: up to that many batch buffers of `capacity` bytes, reused.

        A batch is then encoded straight into a free buffer and published from it (its payload is
        a memoryview), instead of copied out to a new bytes object per batch: a board stops
        asking the heap for ~2 KB contiguous blocks once the pool has grown to what the uplink
        really keeps in flight (a fragmented heap refuses such a block long before it is full).
        A buffer the heap refuses is not an error: the batch waits for one to be released.
        Size it for the batches that can be unreleased at once (max in flight + 1); when none is
        free, `build` returns (None, 0) until an ack releases one.
        """
        self.boot = boot
        self.n_fields_of = n_fields_of
        self.anchor = anchor
        self.batch_max = batch_max
        self.enc = protocol.BatchEncoder(0 if pool else capacity)
        # The pool's free buffers, last out first, or None without a pool (each batch is then
        # copied out of the encoder's own buffer). The first buffer now, while the heap is whole;
        # the rest only if the uplink needs them, so they start as their size (allocated when
        # taken).
        self.pool = [capacity] * (pool - 1) + [bytearray(capacity)] if pool else None
        self.seq = 0  # of the next batch
        self.inflight = []  # Batch, oldest first
        self.unstampable = 0
        self.corrupt = 0
        self.records_in_flight = 0  # log records covered by batches not yet released
        self.receipts = receipts
        self.resent = 0  # batches handed out again by `due`
        # Per log (index: a record id's low bit), the id its records may be acked up to: moved
        # by `release` over the delivered batches at the head; the agent acks the logs from it.
        self.upto = [None, None]

    def build(self, records):
        """Encode the next batch from `records` [(rid, payload), ...] (oldest first).

        Returns (batch or None, used): `used` is how many records it consumed (including skipped
        unstampable ones). None with used > 0 means only skips: call `release()` for the ack.
        """
        enc = self.enc
        free = self.pool
        started = False
        used = 0
        count = 0
        last = [None, None]
        for rid, payload in records:
            if count >= self.batch_max:
                break
            try:
                _kind, ts, boot, uptime, ts_pos, f0, f1, _code = record.parse(payload, self.n_fields_of)
            except cbor.CBORError:
                # The log's CRC passed, so this is a bug or a kind this firmware lost: count, skip.
                self.corrupt += 1
                used += 1
                last[rid & 1] = rid
                continue
            if ts is None:
                offset = self.anchor(boot)
                if offset is None:
                    if boot == self.boot:
                        break  # waits for this boot's clock
                    self.unstampable += 1
                    used += 1
                    last[rid & 1] = rid
                    continue
                ts = offset + uptime
            if not started:
                if free is not None:
                    if not free:
                        break  # every buffer holds an unreleased batch: wait for an ack
                    buf = free[-1]
                    if type(buf) is int:
                        try:
                            buf = bytearray(buf)
                        except MemoryError:
                            break  # a fragmented heap: make do with the buffers there are
                    free.pop()
                    enc.w.buf = buf
                enc.begin(self.boot, self.seq, ts)
                started = True
            # The batch reading is the record's, with dt for ts: its sensor id and kind
            # (payload[1:ts_pos]) and fields map (payload[f0:f1]) are copied as they are.
            mv = memoryview(payload)
            if not enc.add_record(mv[1:ts_pos], ts, mv[f0:f1]):
                if count == 0:
                    if free is not None:
                        free.append(enc.w.buf)
                    raise cbor.BufferFull(rid)  # this record does not fit an empty batch
                break
            count += 1
            used += 1
            last[rid & 1] = rid
        if count:
            payload = enc.finish()
            if free is None:
                batch = Batch(self.seq, bytes(payload), last, count, used)
            else:
                batch = Batch(self.seq, payload, last, count, used, enc.w.buf)
            self.seq += 1
            self.inflight.append(batch)
        elif used:
            # Only unstampable records: nothing to publish, but the log may forget them once
            # every batch before them is delivered.
            self.inflight.append(Batch(None, None, last, 0, used))
            batch = None
        else:
            return None, 0
        self.records_in_flight += used
        return batch, used

    def acked(self, seq):
        """Mark batch `seq` delivered; returns what `release` does."""
        for b in self.inflight:
            if b.seq == seq:
                b.acked = True
                break
        return self.release()

    def puback(self, seq, now_ticks):
        """The broker PUBACKed batch `seq` (at ticks `now_ticks`): delivered without receipts; with
        receipts it now waits for one (its re-send clock starts). Returns what `release` does."""
        for b in self.inflight:
            if b.seq == seq:
                b.pid = 0
                if self.receipts:
                    b.sent_at = now_ticks
                    if b.first_at is None:
                        b.first_at = now_ticks
                else:
                    b.acked = True
                break
        return self.release()

    def receipted(self, ranges):
        """The collector made these seqs durable (flat inclusive ranges [lo0, hi0, ...] of this
        boot): mark them delivered. Returns what `release` does."""
        for b in self.inflight:
            if not b.acked:
                for i in range(0, len(ranges) - 1, 2):
                    if ranges[i] <= b.seq <= ranges[i + 1]:
                        b.acked = True
                        break
        return self.release()

    def due(self, now_ticks, timeout_ms):
        """The oldest batch PUBACKed `timeout_ms` ago (doubled per earlier re-send, up to 16x: a
        collector down for hours does not get a broker queue full of copies), or marked by
        `resend_all`, with no receipt: to be re-sent with its seq and bytes; None if there is
        none. Its clock restarts."""
        for b in self.inflight:
            if not b.acked and not b.pid and b.first_at is not None and (
                    b.sent_at is None or ticks_diff(now_ticks, b.sent_at) >= timeout_ms << min(b.tries, 4)):
                b.sent_at = now_ticks
                b.tries += 1
                self.resent += 1
                return b
        return None

    def resend_all(self):
        """After a reconnect: every PUBACKed, unreceipted batch is due at once (the broker may
        have lost it; the ones it has not PUBACKed the client re-sends itself)."""
        for b in self.inflight:
            if b.first_at is not None:
                b.sent_at = None

    def unreceipted(self, now_ticks):
        """(records in batches PUBACKed but not receipted, age in ms of the oldest such batch)."""
        n = 0
        age = 0
        for b in self.inflight:
            if not b.acked and b.first_at is not None:
                n += b.count
                age = max(age, ticks_diff(now_ticks, b.first_at))
        return n, age

    def release(self):
        """Pop the delivered batches at the head, moving `upto`; returns `upto` if a batch was
        popped (the logs may be acked further), else None.

        `inflight` holds what is left: the batches to re-send after a reconnect are those not
        acked, oldest first, with their original seq.
        """
        moved = None
        upto = self.upto
        inflight = self.inflight
        # A batch receipted before its PUBACK keeps its buffer: the client may still re-send it.
        while inflight and inflight[0].acked and not inflight[0].pid:
            b = inflight.pop(0)
            if b.buf is not None:
                self.pool.append(b.buf)
                b.buf = b.payload = None
            last = b.last
            if last[0] is not None:
                upto[0] = last[0]
            if last[1] is not None:
                upto[1] = last[1]
            moved = upto
            self.records_in_flight -= b.used
        return moved
