"""The flash log (edge.store) on a real directory, the same on CPython and MicroPython.

Each test works in its own directory under /tmp and removes it afterwards. The fault-injection
properties (power cuts at every byte) are in tests/unit/test_store_properties.py.
"""

import os
from binascii import hexlify

from edge.store import Files, Log, StoreError
from edge.store.log import HEADER

# One record on flash: magic, length 3 (LE), crc32 of b"\x03\x00abc" (LE), payload.
RECORD_ABC = b"\xa5\x03\x00\x1d\x15\xe7Kabc"


class Clock:
    def __init__(self):
        self.now = 0

    def __call__(self):
        return self.now


def seg_name(seg):
    """A segment's file name (docs/store.md)."""
    return "seg-%06d.log" % seg


def _tmpdir():
    path = "/tmp/cb-store-" + hexlify(os.urandom(6)).decode()
    os.mkdir(path)
    return path


def _rmtree(path):
    for name in os.listdir(path):
        os.remove(path + "/" + name)
    os.rmdir(path)


def _read(path):
    f = open(path, "rb")
    try:
        return f.read()
    finally:
        f.close()


def _segments(path):
    return sorted(n for n in os.listdir(path) if n.startswith("seg-"))


def test_record_bytes_on_flash():
    d = _tmpdir()
    try:
        log = Log(d, budget_bytes=2048, segment_bytes=1024)
        log.append(b"abc", urgent=True)
        log.close()
        assert _segments(d) == [seg_name(1)]
        assert _read(d + "/" + seg_name(1)) == RECORD_ABC
    finally:
        _rmtree(d)


def test_append_peek_ack_roundtrip():
    d = _tmpdir()
    try:
        log = Log(d, budget_bytes=4096, segment_bytes=256)
        ids = [log.append(b"reading %d" % i, urgent=True) for i in range(40)]
        assert ids == sorted(ids) and len(set(ids)) == 40
        got = log.peek(10, 10000)
        assert [p for _, p in got] == [b"reading %d" % i for i in range(10)]
        assert [r for r, _ in got] == ids[:10]
        more = log.peek(5)  # continues, does not re-read from the start
        assert [p for _, p in more] == [b"reading %d" % i for i in range(10, 15)]
        assert log.ack(ids[9]) == 10
        assert log.pending == 30
        assert log.ack(ids[9]) == 0  # stale ack: nothing happens
        log.rewind()
        assert log.peek(1)[0][1] == b"reading 10"
        assert log.ack(ids[10]) == 1
        before = len(_segments(d))
        rest = log.peek(100, 100000)
        assert log.ack(rest[-1][0]) == 29
        assert log.pending == 0 and log.pending_bytes == 0
        assert len(_segments(d)) == 1 < before  # wholly acked segments are deleted
        log.close()
    finally:
        _rmtree(d)


def test_ack_of_unpeeked_record_is_an_error():
    d = _tmpdir()
    try:
        log = Log(d, budget_bytes=2048, segment_bytes=1024)
        rid = log.append(b"x", urgent=True)
        try:
            log.ack(rid)
            raise AssertionError("ack before peek accepted")
        except StoreError:
            pass
        try:
            log.append(b"y" * 1024)
            raise AssertionError("oversized record accepted")
        except StoreError:
            pass
        log.append(b"z", urgent=True)
        got = log.peek(10)
        try:
            log.ack(got[1][0] - 1)  # inside the second record: no id peek handed out
            raise AssertionError("ack of an id peek did not hand out accepted")
        except StoreError:
            pass
        assert log.pending == 2  # the refused ack changed nothing
        assert log.ack(got[1][0]) == 2 and log.pending == 0
        log.close()
    finally:
        _rmtree(d)


def test_ack_before_keeps_a_held_record_and_what_follows():
    d = _tmpdir()
    try:
        log = Log(d, budget_bytes=4096, segment_bytes=256)
        ids = [log.append(b"rec %d" % i, urgent=True) for i in range(20)]  # across segments
        got = log.peek(20, 100000)
        assert log.unpeeked == 0 and [r for r, _ in got] == ids
        assert log.ack(ids[15], ids[6]) == 6  # record 6 is held: 0-5 go
        assert log.pending == 14
        assert log.ack(ids[15], ids[0]) == 0  # nothing before a held first record
        assert log.ack(ids[15], ids[6]) == 0  # still held: nothing more
        assert log.ack(ids[15], ids[19]) == 10  # the hold moved on: up to rid, 6-15 go
        assert log.ack(ids[19], None) == 4 and log.pending == 0
        log.close()
    finally:
        _rmtree(d)


def test_boot_end_tells_earlier_boots_records_from_this_ones():
    d = _tmpdir()
    try:
        log = Log(d, budget_bytes=4096, segment_bytes=256)
        ids = [log.append(b"old %d" % i, urgent=True) for i in range(12)]
        log.close()
        log = Log(d, budget_bytes=4096, segment_bytes=256)
        new = [log.append(b"new %d" % i, urgent=True) for i in range(12)]
        got = log.peek(30, 100000)
        assert [p for r, p in got if r <= log.boot_end] == [b"old %d" % i for i in range(12)]
        assert [p for r, p in got if r > log.boot_end] == [b"new %d" % i for i in range(12)]
        assert ids and new and log.unpeeked == 0 and log.pending == 24
        log.close()
    finally:
        _rmtree(d)


def test_reboot_keeps_unacked_and_bumps_boot():
    d = _tmpdir()
    try:
        log = Log(d, budget_bytes=4096, segment_bytes=512)
        assert log.boot == 1
        for i in range(20):
            log.append(b"r%d" % i, urgent=(i % 2 == 0))
        got = log.peek(5)
        log.ack(got[-1][0])
        log.close()
        log = Log(d, budget_bytes=4096, segment_bytes=512)
        assert log.boot == 2
        assert log.pending == 15 and log.torn_records == 0
        assert [p for _, p in log.peek(100)] == [b"r%d" % i for i in range(5, 20)]
        log.close()
        log = Log(d, budget_bytes=4096, segment_bytes=512)
        assert log.boot == 3
        log.close()
    finally:
        _rmtree(d)


def test_torn_tail_is_cut_and_counted():
    d = _tmpdir()
    try:
        log = Log(d, budget_bytes=2048, segment_bytes=1024)
        for i in range(3):
            log.append(b"event %d" % i, urgent=True)
        log.close()
        seg = d + "/" + seg_name(1)
        good = _read(seg)
        f = open(seg, "ab")
        f.write(RECORD_ABC[:9])  # power cut in the middle of the next record's payload
        f.close()
        log = Log(d, budget_bytes=2048, segment_bytes=1024)
        assert (log.torn_records, log.torn_bytes) == (1, 9)
        assert _read(seg) == good
        assert [p for _, p in log.peek(10)] == [b"event 0", b"event 1", b"event 2"]
        log.append(b"abc", urgent=True)
        assert [p for _, p in log.peek(10)] == [b"abc"]
        log.close()
        assert _read(seg) == good + RECORD_ABC
    finally:
        _rmtree(d)


def test_corrupt_byte_stops_segment_at_last_good_record():
    d = _tmpdir()
    try:
        log = Log(d, budget_bytes=2048, segment_bytes=1024)
        log.append(b"keep", urgent=True)
        log.append(b"flipped", urgent=True)
        log.close()
        seg = d + "/" + seg_name(1)
        data = bytearray(_read(seg))
        data[-1] ^= 0x01
        f = open(seg, "wb")
        f.write(data)
        f.close()
        log = Log(d, budget_bytes=2048, segment_bytes=1024)
        assert (log.torn_records, log.torn_bytes) == (1, HEADER + 7)
        assert [p for _, p in log.peek(10)] == [b"keep"]
        log.close()
    finally:
        _rmtree(d)


def test_group_sync_by_time_and_bytes():
    d = _tmpdir()
    try:
        clock = Clock()
        log = Log(
            d, budget_bytes=8192, segment_bytes=4096, sync_every_ms=10000, sync_every_bytes=100, clock=clock
        )
        log.append(b"p" * 10)
        assert log.syncs == 0 and len(log.peek(10)) == 1  # sent at once, written later
        log.rewind()
        assert _read(d + "/" + seg_name(1)) == b""  # write-behind: waits in RAM
        clock.now = 9999
        log.poll()
        assert log.syncs == 0
        clock.now = 10000
        log.poll()
        assert log.syncs == 1 and len(_read(d + "/" + seg_name(1))) == HEADER + 10
        for _ in range(5):
            log.append(b"p" * 20)  # 27 bytes each: the 4th crosses 100 bytes
        assert log.syncs == 2
        log.append(b"alarm", urgent=True)
        assert log.syncs == 3
        log.close()
    finally:
        _rmtree(d)


def test_eviction_drops_oldest_segments_and_counts_them():
    d = _tmpdir()
    try:
        log = Log(d, budget_bytes=300, segment_bytes=100)
        for i in range(30):
            log.append(b"%02d-------" % i, urgent=True)  # 16 bytes on flash, 6 per segment
        assert log.flash_bytes <= 300
        assert log.dropped_records == 30 - log.pending
        assert log.dropped_bytes == 16 * log.dropped_records
        got = log.peek(100)
        assert [p for _, p in got] == [b"%02d-------" % i for i in range(log.dropped_records, 30)]
        stats = log.stats()
        assert stats["dropped_records"] == log.dropped_records and stats["flash_bytes"] == log.flash_bytes
        log.close()
    finally:
        _rmtree(d)


def test_two_logs_tell_their_ids_apart_and_share_one_budget():
    """The gateway's events log (tag 1) and periodic log (tag 0), docs/store.md "Two logs": ids
    of one log are odd, of the other even, each growing in its log's order and acked only there;
    over their one budget the oldest segment of the log with more segments goes."""
    d = _tmpdir()
    e = d + "/events"
    try:
        per = Log(d, budget_bytes=400, segment_bytes=100)
        ev = Log(e, budget_bytes=400, segment_bytes=100, sync_every_bytes=0, files=per.files, tag=1)
        per.peer = ev
        ev.peer = per
        at_boot = per.files.written  # the two state files
        p_ids = [per.append(b"%02d-periodic" % i) for i in range(3)]
        e_ids = [ev.append(b"%02d-event---" % i, urgent=True) for i in range(3)]
        assert all(r & 1 == 0 for r in p_ids) and all(r & 1 == 1 for r in e_ids)
        assert p_ids == sorted(p_ids) and e_ids == sorted(e_ids)
        assert per.files.written - at_boot == 3 * 18  # only the events reached flash: the rest wait in RAM
        got = ev.peek(10)
        assert [r for r, _ in got] == e_ids
        assert ev.ack(e_ids[1]) == 2 and ev.pending == 1 and per.pending == 3
        assert per.ack(per.peek(10)[-1][0]) == 3 and per.pending == 0
        # One budget: events fill it, and the events log (more segments) loses its oldest.
        for i in range(3, 40):
            ev.append(b"%02d-event---" % i, urgent=True)
        assert per.flash_bytes + ev.flash_bytes <= 400
        assert ev.dropped_records > 0 and per.dropped_records == 0
        left = [p for _, p in ev.peek(100)]
        assert left == [b"%02d-event---" % i for i in range(40 - len(left), 40)]
        per.close()
        ev.close()
    finally:
        _rmtree(e)
        _rmtree(d)


class FullFlash(Files):
    """Files whose next write stores only half of its buffer, then fails like a full partition."""

    def __init__(self):
        Files.__init__(self)
        self.fail = False

    def write(self, f, buf):
        if self.fail:
            self.fail = False
            Files.write(self, f, bytes(buf)[0 : len(buf) // 2])
            raise OSError(28)  # ENOSPC
        return Files.write(self, f, buf)


def test_failed_write_is_reported_and_the_log_stays_readable():
    d = _tmpdir()
    try:
        files = FullFlash()
        log = Log(d, budget_bytes=4096, segment_bytes=1024, files=files)
        log.append(b"before", urgent=True)
        files.fail = True
        try:
            log.append(b"lost half-way", urgent=True)
            raise AssertionError("failed write not reported")
        except StoreError:
            pass
        assert log.pending == 1
        log.append(b"after", urgent=True)  # continues in a fresh segment, past the partial record
        assert _segments(d) == [seg_name(1), seg_name(2)]
        assert [p for _, p in log.peek(10)] == [b"before", b"after"]
        log.close()
        log = Log(d, budget_bytes=4096, segment_bytes=1024)
        assert log.torn_records == 1  # the partial record, cut at boot
        assert [p for _, p in log.peek(10)] == [b"before", b"after"]
        log.close()
    finally:
        _rmtree(d)


def test_boot_cleans_leftovers_and_resumes_at_the_cursor():
    d = _tmpdir()
    try:
        log = Log(d, budget_bytes=1024, segment_bytes=256)
        for i in range(30):
            log.append(b"rec %02d" % i, urgent=True)
        got = log.peek(12)
        log.ack(got[-1][0])
        log.close()
        f = open(d + "/state.tmp", "wb")  # a cursor save cut short by a power cut
        f.write(b"garbage")
        f.close()
        log = Log(d, budget_bytes=1024, segment_bytes=256)
        assert "state.tmp" not in os.listdir(d)
        assert [p for _, p in log.peek(100)] == [b"rec %02d" % i for i in range(12, 30)]
        assert log.pending == 18 and log.boot == 2
        log.close()
        os.remove(d + "/state")  # state lost: replay everything still on flash, boot restarts
        log = Log(d, budget_bytes=1024, segment_bytes=256)
        first = log.peek(1)[0][1]
        assert first <= b"rec 12"
        log.close()
    finally:
        _rmtree(d)


def test_write_behind_skips_what_was_acked_before_the_sync():
    d = _tmpdir()
    try:
        clock = Clock()
        log = Log(
            d, budget_bytes=8192, segment_bytes=4096, sync_every_ms=1000, sync_every_bytes=200, clock=clock
        )
        rids = [log.append(b"periodic %d" % i) for i in range(4)]
        got = log.peek(10)
        assert [r for r, _ in got] == rids  # delivered before any write
        log.ack(rids[1])  # receipted within the sync interval
        log.append(b"event", urgent=True)  # urgent: what waits goes first (log order), all durable
        data = _read(d + "/" + seg_name(1))
        assert b"periodic 0" not in data and b"periodic 1" not in data
        assert data.index(b"periodic 2") < data.index(b"periodic 3") < data.index(b"event")
        assert log.skipped_bytes == 2 * (HEADER + 10) and log.stats()["unwritten_bytes"] == 0
        rids.append(log.peek(10)[0][0])
        log.ack(rids[3])
        log.close()
        log = Log(d, budget_bytes=8192, segment_bytes=4096)
        assert [p for _, p in log.peek(10)] == [b"event"]  # the saved cursor maps onto the file
        log.close()
    finally:
        _rmtree(d)


def test_power_cut_loses_only_unsynced_unacked_periodic_records():
    d = _tmpdir()
    try:
        clock = Clock()
        log = Log(
            d, budget_bytes=8192, segment_bytes=4096, sync_every_ms=1000, sync_every_bytes=4096, clock=clock
        )
        log.append(b"synced", urgent=True)
        log.append(b"in RAM")
        log = None  # a power cut (kill -9): nothing closed, nothing flushed
        log = Log(d, budget_bytes=8192, segment_bytes=4096)
        assert [p for _, p in log.peek(10)] == [b"synced"]
        log.close()
    finally:
        _rmtree(d)


def test_full_buffer_drops_acked_records_instead_of_writing():
    d = _tmpdir()
    try:
        clock = Clock()
        # Room for 4 records of 7 + 12 bytes in RAM.
        log = Log(
            d, budget_bytes=8192, segment_bytes=4096, sync_every_ms=1000, sync_every_bytes=80, clock=clock
        )
        for i in range(4):
            log.append(b"periodic %03d" % i)
        got = log.peek(10)
        log.ack(got[2][0])  # three receipted: the buffer is full, but mostly of acked records
        for i in range(4, 7):
            log.append(b"periodic %03d" % i)  # room made by dropping the acked ones, no write
        assert log.syncs == 0 and _read(d + "/" + seg_name(1)) == b""
        assert log.stats()["unwritten_bytes"] == 4 * 19 and log.skipped_bytes == 3 * 19
        assert [p for _, p in log.peek(10)] == [b"periodic %03d" % i for i in range(4, 7)]
        log.rewind()
        assert [p for _, p in log.peek(10)] == [b"periodic %03d" % i for i in range(3, 7)]
        log.append(b"periodic 007")  # full of unacked records: written; sync_every_bytes reached: one sync
        assert log.syncs == 1
        data = _read(d + "/" + seg_name(1))
        assert data.startswith(b"\xa5") and data.count(b"periodic") == 5 and b"periodic 003" in data
        clock.now = 1000
        log.poll()  # the last one's group sync
        log.close()
        log = Log(d, budget_bytes=8192, segment_bytes=4096)
        assert [p for _, p in log.peek(10)] == [b"periodic %03d" % i for i in range(3, 8)]
        log.close()
    finally:
        _rmtree(d)


def test_a_full_buffer_writes_only_its_oldest_and_the_sync_deadline_holds():
    d = _tmpdir()
    try:
        clock = Clock()
        # Room for 3 records of 7 + 19 bytes in RAM; syncs by time only.
        log = Log(
            d, budget_bytes=8192, segment_bytes=4096, sync_every_ms=1000, sync_every_bytes=4096, clock=clock
        )
        log._wbuf = bytearray(80)  # as the board's 2 KB beside sync_every_bytes 4 KB: smaller
        log._wmv = memoryview(log._wbuf)
        log.append(b"periodic record 000")  # t=0
        clock.now = 600
        log.append(b"periodic record 001")
        log.append(b"periodic record 002")
        clock.now = 700
        log.append(b"periodic record 003")  # full: only the oldest is written, the rest wait
        data = _read(d + "/" + seg_name(1))
        assert data.count(b"periodic") == 1 and b"record 000" in data and log.syncs == 0
        clock.now = 999
        log.poll()
        assert log.syncs == 0
        clock.now = 1000  # record 000 is 1 s old, written but not synced: the sync is due
        log.poll()
        assert log.syncs == 1 and _read(d + "/" + seg_name(1)).count(b"periodic") == 4
        rids = [r for r, _ in log.peek(10)]
        # The deadline follows the oldest record at risk, not the first of a buffer that never
        # empties: 004 is receipted, so 005 (taken at 1500) is due at 2500, not at 2100.
        clock.now = 1100
        rids.append(log.append(b"periodic record 004"))
        clock.now = 1500
        log.append(b"periodic record 005")
        assert [r for r, _ in log.peek(10)][0] == rids[-1]
        log.ack(rids[-1])
        clock.now = 2100
        log.poll()
        assert log.syncs == 1
        clock.now = 2500
        log.poll()
        assert log.syncs == 2
        data = _read(d + "/" + seg_name(1))
        assert b"record 004" not in data and b"record 005" in data and log.skipped_bytes == 26
        log.close()
        log = Log(d, budget_bytes=8192, segment_bytes=4096)
        assert [p for _, p in log.peek(10)] == [b"periodic record 005"]
        log.close()
    finally:
        _rmtree(d)
