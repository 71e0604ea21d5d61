"""Power-cut properties of the store-and-forward log (edge.store), against a fault-injecting filesystem.

Fault model (what littlefs and POSIX-with-fsync give): bytes covered by a sync survive a power cut;
bytes written after the last sync of a file may vanish or be torn at ANY byte, and the torn part may
hold garbage. Directory operations (create, remove, rename) are atomic and durable when they return.

Invariants checked after every step and every reboot:
- a record that was synced and not acked is never lost (unless evicted, and then it is counted);
  peek hands out every appended record at once, synced or still waiting in RAM (write-behind);
  a power cut loses only records that were neither synced nor acked, and a record acked before
  its group sync is never written to flash;
- the RAM the log holds for records not yet written is bounded by its write-behind buffer;
- payloads come back byte-exact, in append order, without duplicates within one boot;
- after a power cut the log resumes at some point between the last durable ack cursor and the live
  one: acked-but-not-yet-persisted records may come back (at-least-once), nothing older does;
- eviction happens only when an append would exceed the budget, and is counted exactly;
- the log's own byte accounting matches the files on "flash", which never exceed the budget.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.store import Log, StoreError
from edge.store.log import HEADER

DIR = "/flash/log"


class _Node:
    __slots__ = ("data", "durable")

    def __init__(self, data: bytes = b"", durable: int = 0) -> None:
        self.data = bytearray(data)
        self.durable = durable  # length of the prefix that survives a power cut


class _Append:
    def __init__(self, node: _Node) -> None:
        self.node = node

    def write(self, buf: bytes) -> int:
        self.node.data.extend(buf)
        return len(buf)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class _Read:
    def __init__(self, node: _Node) -> None:
        self.node = node
        self.pos = 0

    def seek(self, pos: int, whence: int = 0) -> int:
        self.pos = pos + (len(self.node.data) if whence == 2 else 0)
        return self.pos

    def readinto(self, buf: memoryview) -> int:
        chunk = self.node.data[self.pos : self.pos + len(buf)]
        buf[0 : len(chunk)] = chunk
        self.pos += len(chunk)
        return len(chunk)

    def read(self, n: int) -> bytes:
        chunk = bytes(self.node.data[self.pos : self.pos + n])
        self.pos += len(chunk)
        return chunk

    def close(self) -> None:
        pass


class FlakyFiles:
    """An in-memory flash with the `edge.store.Files` interface and a `power_cut`."""

    def __init__(self) -> None:
        self.nodes: dict[str, _Node] = {}
        self.written = 0
        self.syncs = 0
        self.state_writes = 0

    def listdir(self, path: str) -> list[str]:
        prefix = path + "/"
        return [p[len(prefix) :] for p in self.nodes if p.startswith(prefix)]

    def remove(self, path: str) -> None:
        del self.nodes[path]

    def rename(self, old: str, new: str) -> None:
        self.nodes[new] = self.nodes.pop(old)

    def open(self, path: str, mode: str) -> _Append | _Read:
        if mode == "rb":
            return _Read(self.nodes[path])
        return _Append(self.nodes.setdefault(path, _Node()))

    def write(self, f: _Append, buf: bytes) -> int:
        n = f.write(bytes(buf))
        self.written += n
        return n

    def sync(self, f: _Append) -> None:
        f.node.durable = len(f.node.data)
        self.syncs += 1

    def write_atomic(self, path: str, data: bytes) -> None:
        self.nodes[path] = _Node(bytes(data), len(data))
        self.written += len(data)
        self.state_writes += 1

    def read_small(self, path: str) -> bytes | None:
        node = self.nodes.get(path)
        return None if node is None else bytes(node.data)

    def power_cut(self, rng: random.Random) -> None:
        """Each file keeps its durable prefix plus a random prefix of the rest, maybe then garbage."""
        for node in self.nodes.values():
            extra = len(node.data) - node.durable
            if extra <= 0:
                continue
            keep = node.durable + rng.randint(0, extra)
            tail = b""
            if rng.random() < 0.3:
                tail = bytes(rng.randrange(256) for _ in range(rng.randint(1, len(node.data) - keep + 1)))
            node.data = bytearray(bytes(node.data[:keep]) + tail)
            node.durable = len(node.data)


class Clock:
    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now


@dataclass
class Model:
    """What the log must hold, as indices into the records appended since the last reboot."""

    recs: list[bytes] = field(default_factory=list)
    rids: dict[int, int] = field(default_factory=dict)
    gone: int = 0  # records before this are certainly gone (durable ack cursor, eviction)
    acked: int = 0  # live ack cursor
    peeked: int = 0  # next record peek hands out
    synced: int = 0  # records before this are durable
    times: list[int] = field(default_factory=list)  # the clock at each record's append

    def reset(self, recs: list[bytes]) -> None:
        self.recs = list(recs)
        self.times = [-(1 << 30)] * len(recs)  # durable already: never at risk
        self.rids = {}
        self.gone = self.acked = self.peeked = 0
        self.synced = len(recs)


def _flash_bytes(fs: FlakyFiles) -> int:
    return sum(len(n.data) for p, n in fs.nodes.items() if p.startswith(DIR + "/seg-"))


def _subsequence(xs: list[bytes], ys: list[bytes]) -> bool:
    it = iter(ys)
    return all(any(x == y for y in it) for x in xs)


def _drain(log: Log) -> list[bytes]:
    out: list[bytes] = []
    while True:
        got = log.peek(1000, 1 << 30)
        if not got:
            break
        out.extend(p for _, p in got)
    log.rewind()
    return out


_APPEND = st.tuples(st.just("append"), st.binary(max_size=48), st.booleans())
_PERIODIC = st.tuples(st.just("append"), st.binary(max_size=48), st.just(False))
OPS = st.one_of(
    _APPEND,
    _APPEND,
    _PERIODIC,
    _PERIODIC,
    _PERIODIC,
    _PERIODIC,
    st.tuples(st.just("sync")),
    st.tuples(st.just("tick"), st.integers(0, 60)),
    st.tuples(st.just("peek"), st.integers(1, 8), st.integers(0, 120)),
    st.tuples(st.just("ack"), st.integers(0, 10**6)),
    st.tuples(st.just("rewind")),
    st.tuples(st.just("crash"), st.integers(0, 2**32)),
    st.tuples(st.just("reboot")),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    segment_bytes=st.integers(40, 160),
    n_segments=st.integers(2, 3),
    sync_every_ms=st.integers(0, 50),
    sync_every_bytes=st.integers(0, 300),
    ops=st.lists(OPS, min_size=10, max_size=150),
)
def test_log_survives_power_cuts(
    segment_bytes: int, n_segments: int, sync_every_ms: int, sync_every_bytes: int, ops: list[tuple]
) -> None:
    run(segment_bytes, n_segments, sync_every_ms, sync_every_bytes, ops)


# Mostly appends, so that the budget fills and eviction (with partly acked segments) is common.
FILL_OPS = st.one_of(
    _PERIODIC,
    _PERIODIC,
    _PERIODIC,
    _APPEND,
    st.tuples(st.just("peek"), st.integers(1, 8), st.integers(0, 120)),
    st.tuples(st.just("ack"), st.integers(0, 10**6)),
    st.tuples(st.just("crash"), st.integers(0, 2**32)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    segment_bytes=st.integers(40, 100),
    n_segments=st.integers(2, 3),
    sync_every_bytes=st.integers(0, 100),
    ops=st.lists(FILL_OPS, min_size=60, max_size=200),
)
def test_eviction_is_counted_exactly(
    segment_bytes: int, n_segments: int, sync_every_bytes: int, ops: list[tuple]
) -> None:
    run(segment_bytes, n_segments, 10, sync_every_bytes, ops)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    segment_bytes=st.integers(300, 600),
    n_segments=st.integers(2, 3),
    sync_every_ms=st.integers(20, 80),
    sync_every_bytes=st.integers(200, 600),
    wbuf=st.integers(56, 120),
    ops=st.lists(OPS, min_size=10, max_size=150),
)
def test_a_small_write_behind_buffer_spills_and_still_survives_power_cuts(
    segment_bytes: int, n_segments: int, sync_every_ms: int, sync_every_bytes: int, wbuf: int,
    ops: list[tuple],
) -> None:
    run(segment_bytes, n_segments, sync_every_ms, sync_every_bytes, ops, wbuf)


def run(
    segment_bytes: int, n_segments: int, sync_every_ms: int, sync_every_bytes: int, ops: list[tuple],
    wbuf: int | None = None,
) -> None:
    """`wbuf`: a write-behind buffer this small (as the board's 2 KB is beside 4 KB / 64 KB), so
    that a full buffer spills its oldest records between group syncs."""
    fs = FlakyFiles()
    clock = Clock()
    budget = segment_bytes * n_segments

    def open_log() -> Log:
        log = Log(
            DIR,
            budget_bytes=budget,
            segment_bytes=segment_bytes,
            sync_every_ms=sync_every_ms,
            sync_every_bytes=sync_every_bytes,
            clock=clock,
            files=fs,
        )
        if wbuf is not None and wbuf < len(log._wbuf):
            log._wbuf = bytearray(wbuf)  # empty at open: nothing waits in it yet
            log._wmv = memoryview(log._wbuf)
        return log

    log = open_log()
    m = Model()
    boot = log.boot
    assert boot == 1
    for op in ops:
        kind = op[0]
        state_writes = fs.state_writes
        if kind == "append":
            payload, urgent = op[1], op[2]
            if HEADER + len(payload) > segment_bytes:
                try:
                    log.append(payload, urgent)
                except StoreError:
                    continue
                raise AssertionError("oversized record accepted")
            before, dropped, dbytes = log.flash_bytes, log.dropped_records, log.dropped_bytes
            in_flight = log.evicted_in_flight
            syncs = log.syncs
            log.append(payload, urgent)
            k = log.dropped_records - dropped + log.evicted_in_flight - in_flight
            if k or log.dropped_bytes != dbytes:
                assert before + HEADER + len(payload) > budget, "evicted while within budget"
                # Records peek handed out are still delivered from RAM: evicted, not dropped.
                handed_out = max(0, min(k, m.peeked - m.acked))
                assert log.evicted_in_flight - in_flight == handed_out
                lost = m.recs[m.acked + handed_out : m.acked + k]
                assert log.dropped_bytes - dbytes == sum(HEADER + len(p) for p in lost)
                m.acked += k
                m.gone = m.acked
                m.peeked = max(m.peeked, m.acked)
            m.recs.append(bytes(payload))
            m.times.append(clock.now)
            if log._unsynced == 0 and log._spilled == 0:
                m.synced = len(m.recs)
            elif log.syncs != syncs:
                m.synced = len(m.recs) - 1  # a segment roll synced what came before
            if urgent:
                assert m.synced == len(m.recs), "urgent record not durable on return"
        elif kind == "sync":
            log.sync()
            m.synced = len(m.recs)
        elif kind == "tick":
            clock.now += op[1]
            log.poll()
            if log._unsynced == 0 and log._spilled == 0:
                m.synced = len(m.recs)
            # The group sync's deadline: after a poll, no record neither acked nor synced is
            # sync_every_ms old (a power cut costs at most that much: docs/store.md).
            for i in range(max(m.acked, m.synced), len(m.recs)):
                assert clock.now - m.times[i] < sync_every_ms, (
                    f"record {i} unsynced and unacked {clock.now - m.times[i]} ms after its append")
        elif kind == "peek":
            n, max_bytes = op[1], op[2]
            got = log.peek(n, max_bytes)
            want = m.recs[m.peeked :]  # deliver first: synced or not
            assert [p for _, p in got] == want[: len(got)]
            if len(got) < n and len(got) < len(want):
                assert got, "a ready record was not returned"
                assert sum(len(p) for _, p in got) + len(want[len(got)]) > max_bytes
            assert len(got) <= 1 or sum(len(p) for _, p in got) <= max_bytes
            for rid, _ in got:
                m.rids[m.peeked] = rid
                m.peeked += 1
        elif kind == "ack":
            if m.peeked == m.acked:
                continue
            i = m.acked + op[1] % (m.peeked - m.acked)
            assert log.ack(m.rids[i]) == i + 1 - m.acked
            m.acked = i + 1
        elif kind == "rewind":
            log.rewind()
            m.peeked = m.acked
        elif kind == "crash":
            del log
            fs.power_cut(random.Random(op[1]))
            log = open_log()
            boot += 1
            assert log.boot == boot
            got = _drain(log)
            # Every unacked record up to the last sync survives, in order, after a run of acked ones
            # that may come back (the cursor on flash lags): some of those may be missing, the
            # ones acked before their sync and so never written.
            ok = False
            for e in range(max(m.acked, m.synced), len(m.recs) + 1):
                tail = m.recs[m.acked : e]
                if len(tail) <= len(got) and got[len(got) - len(tail) :] == tail:
                    ok = ok or _subsequence(got[: len(got) - len(tail)], m.recs[m.gone : m.acked])
            assert ok, (
                f"after power cut got {len(got)} records, none of the allowed windows match: "
                f"gone={m.gone} acked={m.acked} synced={m.synced} of {len(m.recs)}"
            )
            assert log.pending == len(got)
            m.reset(got)
        elif kind == "reboot":
            log.close()
            log = open_log()
            boot += 1
            assert log.boot == boot
            got = _drain(log)
            assert got == m.recs[m.acked :]
            assert log.torn_records == 0
            m.reset(got)
        if fs.state_writes != state_writes and kind not in ("crash", "reboot"):
            m.gone = m.acked  # the cursor reached flash: nothing before it may come back
        # flash_bytes counts the records waiting in RAM too: they are written unless acked first.
        assert log.flash_bytes == _flash_bytes(fs) + log._unsynced
        assert log._unsynced <= len(log._wbuf) <= max(0, min(sync_every_bytes, segment_bytes))
        assert log.flash_bytes <= budget
        assert log.pending == len(m.recs) - m.acked
        assert log.pending_bytes == sum(HEADER + len(p) for p in m.recs[m.acked :])


def test_power_cut_mid_record_keeps_every_record_before_it() -> None:
    """The torn tail is cut at the last good record, counted, and appending continues after it."""
    fs = FlakyFiles()
    log = Log(DIR, budget_bytes=4096, segment_bytes=1024, files=fs)
    for i in range(5):
        log.append(b"event %d" % i, urgent=True)
    log.append(b"periodic, not yet synced")
    seg = next(n for p, n in fs.nodes.items() if p.endswith(".log"))
    assert len(seg.data) == seg.durable  # write-behind: the periodic record waits in RAM
    log.sync()  # its group sync writes it; the power cut comes before the write is durable
    seg.durable -= HEADER + len(b"periodic, not yet synced")
    seg.data = seg.data[: seg.durable + 10]  # power cut 10 bytes into the unsynced record
    log = Log(DIR, budget_bytes=4096, segment_bytes=1024, files=fs)
    assert (log.torn_records, log.torn_bytes) == (1, 10)
    assert [p for _, p in log.peek(10)] == [b"event %d" % i for i in range(5)]
    log.append(b"after", urgent=True)
    assert [p for _, p in log.peek(10)] == [b"after"]


def test_records_acked_before_their_sync_never_reach_flash() -> None:
    """Online with receipts: what is acked within the sync interval costs no flash write; the
    unacked rest is written at the sync, and a power cut then loses none of it."""
    fs = FlakyFiles()
    clock = Clock()
    log = Log(
        DIR,
        budget_bytes=4096,
        segment_bytes=1024,
        sync_every_ms=100,
        sync_every_bytes=512,
        clock=clock,
        files=fs,
    )
    seg_path = f"{DIR}/seg-{log._segs[-1]:06d}.log"
    for i in range(6):
        log.append(b"periodic %d" % i)
    got = log.peek(10)
    assert [p for _, p in got] == [b"periodic %d" % i for i in range(6)]  # sent before any sync
    assert len(fs.nodes[seg_path].data) == 0
    log.ack(got[3][0])  # the first four receipted within the interval
    clock.now = 100
    log.poll()  # the group sync writes only the two unreceipted ones
    data = bytes(fs.nodes[seg_path].data)
    assert data.count(b"periodic") == 2 and b"periodic 4" in data and b"periodic 5" in data
    assert log.skipped_bytes == sum(HEADER + len(p) for _, p in got[:4])
    assert log.flash_bytes == _flash_bytes(fs) and log.pending_bytes == len(data)
    log.ack(got[5][0])  # ids handed out before the sync stay valid after it
    assert log.pending == 0
    log.append(b"periodic 6")
    del log
    fs.power_cut(random.Random(1))  # the cursor past 5 was not saved: 4 and 5 come back, 6 is lost
    log = Log(DIR, budget_bytes=4096, segment_bytes=1024, files=fs)
    assert _drain(log) == [b"periodic 4", b"periodic 5"]
