"""Batcher: numbering, ack ordering, re-send with the same seq, and clock stamping rules."""

from edge import batcher, cbor, record

# Batch map keys (docs/protocol.md, "Batch").
K_BOOT = 1
K_SEQ = 2
K_T0 = 3
K_READINGS = 4


def _n(kind):
    return 3


def _rec(sensor, ts, fields=(1, 2.5, True), boot=0, uptime=0):
    w = cbor.Writer(128)
    record.encode(w, sensor, 1, ts, fields, boot=boot, uptime_ms=uptime)
    return bytes(w.view())


def _records(n, start=0, ts=1795676640000, log=0):
    """Records as a log hands them out: ids grow, and their low bit says which of the gateway's
    two logs (0 periodic, 1 events: edge/store/log.py)."""
    return [(2 * (start + i) + log, _rec("S-%d" % (start + i), ts + i)) for i in range(n)]


def test_batches_numbered_and_sized():
    b = batcher.Batcher(7, _n, lambda boot: None, batch_max=3)
    recs = _records(7)
    first, used = b.build(recs)
    assert used == 3 and first.seq == 0 and first.count == 3 and first.last == [4, None]
    doc = cbor.loads(first.payload)
    assert doc[K_BOOT] == 7 and doc[K_SEQ] == 0
    assert doc[K_T0] == 1795676640000
    assert [r[2] for r in doc[K_READINGS]] == [0, 1, 2]
    second, used = b.build(recs[3:])
    assert second.seq == 1 and second.last == [10, None]


def test_log_acked_only_up_to_oldest_in_flight():
    b = batcher.Batcher(1, _n, lambda boot: None, batch_max=2)
    recs = _records(6)
    b.build(recs)
    b.build(recs[2:])
    b.build(recs[4:])
    assert b.acked(1) is None  # batch 0 still in flight
    assert b.acked(0) == [6, None]  # 0 and 1 delivered: records up to 3 (id 6)
    assert [x.seq for x in b.inflight if not x.acked] == [2]
    assert b.records_in_flight == 2
    assert b.acked(2) == [10, None]
    assert b.records_in_flight == 0 and b.inflight == []


def test_resend_keeps_seq_and_bytes():
    b = batcher.Batcher(1, _n, lambda boot: None, batch_max=2)
    batch, _ = b.build(_records(2))
    again = [x for x in b.inflight if not x.acked]  # what a reconnect re-sends
    assert len(again) == 1 and again[0].seq == batch.seq and again[0].payload == batch.payload


def test_unstamped_waits_for_own_boot_clock_and_old_boot_is_counted():
    anchors = {}
    b = batcher.Batcher(5, _n, anchors.get, batch_max=10)
    recs = [
        (0, _rec("old", None, boot=4, uptime=10)),
        (2, _rec("new", None, boot=5, uptime=2000)),
        (4, _rec("later", 1795676650000)),
    ]
    batch, used = b.build(recs)
    assert batch is None and used == 1 and b.unstampable == 1  # boot 4 never got a clock
    assert b.release() == [0, None]  # the skipped record may leave the log
    batch, used = b.build(recs[1:])
    assert batch is None and used == 0  # boot 5's record waits for the clock
    anchors[5] = 1795676640000
    batch, used = b.build(recs[1:])
    assert used == 2
    doc = cbor.loads(batch.payload)
    assert doc[K_T0] == 1795676642000  # anchor + uptime
    assert doc[K_READINGS][1][2] == 8000


def test_pooled_buffers_bound_batches_and_come_back_on_release():
    b = batcher.Batcher(1, _n, lambda boot: None, batch_max=2, capacity=256, pool=2)
    recs = _records(8)
    first, used = b.build(recs)
    second, _ = b.build(recs[2:])
    assert used == 2 and first.seq == 0 and second.seq == 1
    kept = bytes(first.payload)
    assert b.build(recs[4:]) == (None, 0)  # both buffers hold unreleased batches
    assert bytes(first.payload) == kept  # a refused build wrote nothing into them
    assert cbor.loads(first.payload)[K_READINGS][1][0] == "S-1"
    assert b.acked(1) is None  # acked out of order: still held until batch 0 is delivered
    assert b.build(recs[4:]) == (None, 0)
    assert b.acked(0) == [6, None]
    third, used = b.build(recs[4:])
    assert used == 2 and third.seq == 2
    assert cbor.loads(third.payload)[K_READINGS][0][0] == "S-4"


def test_pooled_batch_bytes_match_copied_batch_bytes():
    recs = _records(5)
    copied = batcher.Batcher(3, _n, lambda boot: None, batch_max=5)
    pooled = batcher.Batcher(3, _n, lambda boot: None, batch_max=5, capacity=512, pool=1)
    assert bytes(pooled.build(recs)[0].payload) == copied.build(recs)[0].payload


def test_receipts_puback_frees_window_only_receipt_delivers():
    b = batcher.Batcher(1, _n, lambda boot: None, batch_max=2, capacity=256, pool=3, receipts=True)
    recs = _records(6)
    for i in range(3):
        batch, _ = b.build(recs[2 * i:])
        batch.pid = 10 + i
    assert b.puback(0, 1000) is None and b.puback(1, 1000) is None  # PUBACK: nothing delivered
    assert b.unreceipted(3000) == (4, 2000)  # batch 2 not PUBACKed yet: not counted
    assert b.receipted([1, 1]) is None  # out of order: batch 0 still unreceipted
    assert b.receipted([0, 0]) == [6, None]  # 0 and 1 receipted: records up to 3 may go
    assert b.unreceipted(3000) == (0, 0)
    # Receipted before its PUBACK: the client may still re-send from its buffer, so it is held.
    assert b.receipted([2, 2]) is None
    assert len(b.pool) == 2
    assert b.puback(2, 3000) == [10, None]
    assert len(b.pool) == 3 and b.inflight == []


def test_receipts_due_after_timeout_doubling_and_after_reconnect():
    b = batcher.Batcher(1, _n, lambda boot: None, batch_max=2, receipts=True)
    recs = _records(4)
    first, _ = b.build(recs)
    second, _ = b.build(recs[2:])
    first.pid, second.pid = 1, 2
    assert b.due(0, 100) is None  # never PUBACKed: the client owns re-sending it
    b.puback(0, 0)
    b.puback(1, 50)
    assert b.due(99, 100) is None
    again = b.due(100, 100)
    assert again is first and bytes(again.payload) == bytes(first.payload) and again.seq == 0
    assert b.due(120, 100) is None  # first's clock restarted; second is due only at 150
    assert b.due(150, 100) is second
    assert b.due(299, 100) is None  # first's second re-send waits twice as long: 100 + 200
    assert b.due(300, 100) is first
    b.resend_all()  # a reconnect: both due at once, oldest first
    assert b.due(301, 100) is first and b.due(301, 100) is second and b.due(301, 100) is None
    assert b.resent == 5
    assert b.receipted([0, 1]) == [6, None]


def test_without_receipts_puback_delivers():
    b = batcher.Batcher(1, _n, lambda boot: None, batch_max=2)
    batch, _ = b.build(_records(2))
    batch.pid = 7
    assert b.puback(0, 0) == [2, None]
    assert b.due(10**6, 1) is None and b.unreceipted(0) == (0, 0)


def test_records_of_both_logs_are_acked_each_in_its_own_log():
    """A batch may carry events (odd ids) and periodic readings (even ids): delivering it moves
    each log's `upto` to its own last record, and a batch with none of one log leaves that one."""
    b = batcher.Batcher(1, _n, lambda boot: None, batch_max=4, receipts=True)
    events = _records(3, log=1)  # ids 1, 3, 5
    periodic = _records(3, start=10, log=0)  # ids 20, 22, 24
    first, used = b.build(events[:2] + periodic[:2])
    assert used == 4 and first.last == [22, 3]
    second, used = b.build(periodic[2:])
    assert used == 1 and second.last == [24, None]
    b.puback(0, 0)
    b.puback(1, 0)
    assert b.receipted([1, 1]) is None  # batch 0 first
    assert b.receipted([0, 0]) == [24, 3]  # the events log stays at 3: batch 1 had none of it
