"""Opening the on-flash log (edge/store/log.py, format in docs/store.md): check the sizes, set up
the log's state, read the state file, drop wholly acked and empty segments, cut each segment
after its last good record, and count the boot.

A module of its own because it runs once per boot: `Log` imports it, calls `recover`, and a board
drops it again (edge.compat.unload), so its code does not sit in the heap for the whole run.
"""

import struct
from binascii import crc32

from edge.compat import const
from edge.store.log import HEADER, MAGIC

_MAX_SEGMENT = const(1048576)
_SCRATCH = const(128)


_WBUF_MAX = const(2048)  # the write-behind buffer's cap: board heap (docs/store.md, "Memory")


def recover(log, path, budget_bytes, segment_bytes, sync_every_ms, sync_every_bytes, clock, files, tag):
    """Open `log` (arguments as Log's) after a reboot or power cut: its settings and counters,
    segments, cursor, pending count and boot."""
    if segment_bytes <= HEADER or segment_bytes >= _MAX_SEGMENT:
        raise ValueError("segment_bytes must be in (7, 1 MiB)")
    if budget_bytes < 2 * segment_bytes:
        raise ValueError("budget_bytes must hold at least two segments")
    if files is None:
        from edge.store import Files  # the package, loaded by now

        files = Files()
    # Settings, counters and run-time state (documented in Log).
    log.dir = path
    log.budget_bytes = budget_bytes
    log.tag = tag
    log.peer = None
    log.segment_bytes = segment_bytes
    log.sync_every_ms = sync_every_ms
    log.sync_every_bytes = sync_every_bytes
    log.clock = clock
    log.files = files
    log._seg_path = path + "/seg-%06d.log"
    log._hdr = bytearray(HEADER)
    log._lenmv = memoryview(log._hdr)[1:3]
    log.appended = 0
    log.dropped_records = 0
    log.evicted_in_flight = 0
    log.dropped_bytes = 0
    log.torn_records = 0
    log.torn_bytes = 0
    log.syncs = 0
    log._read = 0
    log._inflight = []
    log._unsynced = 0
    log._unsynced_since = 0
    log._mark = -1
    log._mark_at = 0
    # Write-behind: periodic records wait here until their group sync (docs/store.md), so one
    # receipted before it is never written. Bounded by sync_every_bytes (and a segment).
    log._wbuf = bytearray(min(sync_every_bytes, segment_bytes, _WBUF_MAX))
    log._wmv = memoryview(log._wbuf)
    log._skip = 0
    log._spilled = 0
    log.skipped_bytes = 0
    log._tainted = False
    log._moved_at = None
    # Record ids: (segment - first segment of this boot) * span + offset, span the smallest power
    # of two above segment_bytes, so ids stay small ints (no heap) for as long as possible.
    span = 2
    while span <= segment_bytes:
        span <<= 1
    log._span = span
    # The state file as Log._save_state writes it (b"cbL1", boot, cursor segment and offset,
    # crc32), or its .tmp twin if a power cut came in the middle of replacing it.
    boot = cseg = coff = 0
    for name in ("/state", "/state.tmp"):
        data = files.read_small(path + name)
        if data and len(data) == 20 and data[0:4] == b"cbL1":
            b, s, o, crc = struct.unpack_from("<IIII", data, 4)  # the format _save_state packs
            if crc32(data[0:16]) == crc:
                boot, cseg, coff = b, s, o
                break
    ids = []
    for name in files.listdir(path):
        if name.endswith(".tmp"):
            files.remove(path + "/" + name)  # a copy or state write cut short
        elif name.startswith("seg-") and name.endswith(".log") and name[4:-4].isdigit():
            ids.append(int(name[4:-4]))
    ids.sort()
    segs = log._segs = []
    sizes = log._sizes = []
    counts = log._counts = []
    for seg in ids:
        if seg < cseg:
            files.remove(log._seg_path % seg)  # wholly acked: a power cut came before its delete
            continue
        end, count, before = _scan(log, log._seg_path % seg, coff if seg == cseg else -1)
        if end == 0 and seg != ids[-1]:
            files.remove(log._seg_path % seg)
            continue
        segs.append(seg)
        sizes.append(end)
        counts.append(count - before)
    if not segs:
        segs.append(cseg + 1)
        sizes.append(0)
        counts.append(0)
    log._base = segs[0]
    log._cursor = min(coff, sizes[0]) if segs[0] == cseg else 0  # rid of (_base, offset)
    log.boot_end = ((segs[-1] - log._base) * span + sizes[-1]) << 1 | tag  # up to here: earlier boots
    log.flash_bytes = sum(sizes)
    log.pending = sum(counts)
    log._drop_passed()
    log._active = files.open(log._seg_path % segs[-1], "ab")
    log.boot = boot + 1
    log._save_state()


def _scan(log, path, off):
    """Check the segment at `path`, cutting it after its last good record. `off` is the cursor's
    offset if the cursor is in this segment, else -1.

    Returns (end offset, records, records ending at or before `off`).
    """
    fs = log.files
    hdr = log._hdr
    buf = memoryview(bytearray(_SCRATCH))
    pos = count = before = 0
    f = fs.open(path, "rb")
    try:
        while f.readinto(hdr) == HEADER and hdr[0] == MAGIC:
            n = hdr[1] | (hdr[2] << 8)
            crc = crc32(log._lenmv)
            left = n
            while left > 0:
                k = f.readinto(buf[0 : min(left, _SCRATCH)])
                if not k:
                    break  # the file ends inside the payload
                crc = crc32(buf[0:k], crc)
                left -= k
            if left or crc != struct.unpack_from("<I", hdr, 3)[0]:
                break
            pos += HEADER + n
            count += 1
            if pos <= off:
                before += 1
        size = f.seek(0, 2)
    finally:
        f.close()
    if pos < size:
        log.torn_records += 1
        log.torn_bytes += size - pos
        _truncate(fs, path, pos, buf)
    return pos, count, before


def _truncate(files, path, pos, buf):
    """Cut a file at byte `pos` (rare: a torn tail found at boot), through `files` like every write.

    MicroPython files have no truncate, so the kept prefix is copied (through `buf`) to a temp
    file that then replaces the original: a power cut during the copy leaves the original (still
    torn, found again next boot) plus a stale `.tmp` that recovery deletes.
    """
    tmp = path + ".tmp"
    src = files.open(path, "rb")
    dst = files.open(tmp, "ab")
    left = pos
    try:
        while left > 0:
            n = src.readinto(buf[0 : min(left, _SCRATCH)])
            if not n:
                break
            files.write(dst, buf[0:n])
            left -= n
        files.sync(dst)
    finally:
        dst.close()
        src.close()
    files.rename(tmp, path)
