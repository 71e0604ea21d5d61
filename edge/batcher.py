"""From log records to numbered batches, and from PUBACKs back to what the log may forget.

Sans-I/O: the uplink hands it records peeked from the log and the packet acknowledgements it
receives; it returns payloads to publish and the record id up to which the log may be acked.
A batch keeps its sequence number across reconnects (it is re-sent byte for byte), so the
collector's (gw, boot, seq) de-duplication recognises a redelivery. PUBACKs may complete out of
order; the log is acked only up to the oldest batch still in flight.

Stamping: a record logged before the clock was known carries (boot, uptime); `anchor(boot)` gives
that boot's UTC-minus-uptime offset once known. A record of the *current* boot without an anchor
ends the batch (it waits for the clock); one of an *older* boot without an anchor can never be
stamped honestly and is counted in `unstampable` and skipped, never sent with a guessed time.
"""

from edge import cbor, protocol, record


class Batch:
    __slots__ = ("seq", "payload", "last_rid", "count", "used", "acked", "buf")

    def __init__(self, seq, payload, last_rid, count, used, buf=None):
        self.seq = seq
        self.payload = payload
        self.buf = buf  # the pool buffer `payload` views, back to the pool on release
        self.last_rid = last_rid
        self.count = count  # readings in the payload
        self.used = used  # log records it accounts for (readings + skipped ones)
        self.acked = False


class Batcher:
    def __init__(self, boot, n_fields_of, anchor, batch_max=50, capacity=4096, pool=0):
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
        self.encoder = protocol.BatchEncoder(0 if pool else capacity)
        # The first buffer now, while the heap is whole: the rest only if the uplink needs them.
        self._free = [bytearray(capacity)] if pool else []
        self._room = pool - 1 if pool else 0  # buffers the pool may still allocate
        self._capacity = capacity
        self._pooled = pool > 0
        self.next_seq = 0
        self.inflight = []  # Batch, oldest first
        self.unstampable = 0
        self.corrupt = 0
        self.sent_readings = 0
        self.records_in_flight = 0  # log records covered by batches not yet released

    def build(self, records):
        """Encode the next batch from `records` [(rid, payload), ...] (oldest first).

        Returns (batch or None, used): `used` is how many records it consumed (including skipped
        unstampable ones). None with used > 0 means only skips: call `release()` for the ack.
        """
        enc = self.encoder
        started = False
        used = 0
        count = 0
        last_rid = None
        for rid, payload in records:
            if count >= self.batch_max:
                break
            try:
                _kind, ts, boot, uptime, ts_pos, f0, f1 = record.parse(payload, self.n_fields_of)
            except cbor.CBORError:
                # The log's CRC passed, so this is a bug or a kind this firmware lost: count, skip.
                self.corrupt += 1
                used += 1
                last_rid = rid
                continue
            if ts is None:
                offset = self.anchor(boot)
                if offset is None:
                    if boot == self.boot:
                        break  # waits for this boot's clock
                    self.unstampable += 1
                    used += 1
                    last_rid = rid
                    continue
                ts = offset + uptime
            if not started:
                if self._pooled:
                    if not self._free:
                        if not self._room or not self._grow():
                            break  # every buffer holds an unreleased batch: wait for an ack
                    enc.w.buf = self._free.pop()
                enc.begin(self.boot, self.next_seq, ts)
                started = True
            if not enc.add_record(payload, ts_pos, ts, f0, f1):
                if count == 0:
                    if self._pooled:
                        self._free.append(enc.w.buf)
                    raise ValueError("record %r does not fit an empty batch" % (rid,))
                break
            count += 1
            used += 1
            last_rid = rid
        if count == 0:
            if used:
                # Only unstampable records: nothing to publish, but the log may forget them
                # once every batch before them is delivered.
                skip = Batch(None, None, last_rid, 0, used)
                skip.acked = True
                self.inflight.append(skip)
                self.records_in_flight += used
            return None, used
        if self._pooled:
            batch = Batch(self.next_seq, enc.finish(), last_rid, count, used, enc.w.buf)
        else:
            batch = Batch(self.next_seq, bytes(enc.finish()), last_rid, count, used)
        self.records_in_flight += used
        self.next_seq += 1
        self.inflight.append(batch)
        return batch, used

    def _grow(self):
        try:
            self._free.append(bytearray(self._capacity))
        except MemoryError:
            return False  # a fragmented heap: make do with the buffers there are
        self._room -= 1
        return True

    def acked(self, seq):
        """Mark batch `seq` delivered; returns the record id the log may ack up to, or None."""
        for b in self.inflight:
            if b.seq == seq:
                b.acked = True
                break
        return self.release()

    def release(self):
        """Pop the delivered batches at the head; the record id the log may ack up to, or None."""
        upto = None
        while self.inflight and self.inflight[0].acked:
            b = self.inflight.pop(0)
            if b.buf is not None:
                self._free.append(b.buf)
                b.buf = b.payload = None
            upto = b.last_rid
            self.sent_readings += b.count
            self.records_in_flight -= b.used
        return upto

    def unacked(self):
        """Batches to re-send after a reconnect, oldest first, with their original seq."""
        return [b for b in self.inflight if not b.acked]

    def pending(self):
        return len(self.inflight)
