"""Boot recovery of the on-flash log (edge/store/log.py, format in docs/store.md): read the state
file, drop wholly acked and empty segments, cut each segment after its last good record, and
count the boot.

A module of its own because it runs once per boot: `Log` imports it, calls `recover`, and a board
drops it again (edge.compat.unload), so its code does not sit in the heap for the whole run.
"""

import struct
from binascii import crc32

from edge.compat import const
from edge.store.log import HEADER, MAGIC, STATE_LEN, STATE_MAGIC

_SCRATCH = const(128)


def _seg_id(name):
    """The segment id of a file name, or -1 for anything that is not a segment."""
    if len(name) < 9 or not name.startswith("seg-") or not name.endswith(".log"):
        return -1
    digits = name[4:-4]
    if not digits.isdigit():
        return -1
    return int(digits)


def recover(log):
    """Open `log` after a reboot or power cut: its segments, cursor, pending count and boot."""
    fs = log.files
    fs.mkdir(log.dir)
    boot, cseg, coff = _load_state(log)
    ids = []
    for name in fs.listdir(log.dir):
        if name.endswith(".tmp"):
            fs.remove(log.dir + "/" + name)  # a copy or state write cut short
            continue
        seg = _seg_id(name)
        if seg >= 0:
            ids.append(seg)
    ids.sort()
    for seg in ids:
        if seg < cseg:
            fs.remove(log._path(seg))  # wholly acked: a power cut came before its delete
            continue
        cur = coff if seg == cseg else -1
        end, count, before = _scan(log, seg, cur)
        if end == 0 and seg != ids[-1]:
            fs.remove(log._path(seg))
            continue
        if not log._segs:
            log._base = seg
            log._first_acked = before if seg == cseg else 0
            log._cursor = log._rid(seg, min(coff, end) if seg == cseg else 0)
        log._segs.append(seg)
        log._sizes.append(end)
        log._counts.append(count)
        log.flash_bytes += end
    if not log._segs:
        seg = cseg + 1
        log._segs.append(seg)
        log._sizes.append(0)
        log._counts.append(0)
        log._base = seg
        log._cursor = log._rid(seg, 0)
    log.pending = sum(log._counts) - log._first_acked
    log._read = log._cursor
    log._normalize_cursor()
    log._active = fs.open_append(log._path(log._segs[-1]))
    log._synced = log._sizes[-1]
    log.boot = boot + 1
    log._save_state()
    log._cursor_saved_at = log._clock()


def _scan(log, seg, cursor_off):
    """Check one segment, cutting it after its last good record.

    Returns (end offset, records, records ending at or before cursor_off).
    """
    fs = log.files
    path = log._path(seg)
    size = fs.size(path)
    hdr = log._hmv
    buf = memoryview(bytearray(_SCRATCH))
    pos = 0
    count = 0
    before = 0
    f = fs.open_read(path)
    try:
        while pos + HEADER <= size:
            if f.readinto(hdr) != HEADER or hdr[0] != MAGIC:
                break
            n = hdr[1] | (hdr[2] << 8)
            if pos + HEADER + n > size:
                break
            crc = crc32(log._lenmv)
            left = n
            while left > 0:
                k = f.readinto(buf[0 : min(left, _SCRATCH)])
                if not k:
                    break
                crc = crc32(buf[0:k], crc)
                left -= k
            if left or (crc & 0xFFFFFFFF) != struct.unpack_from("<I", hdr, 3)[0]:
                break
            pos += HEADER + n
            count += 1
            if pos <= cursor_off:
                before += 1
    finally:
        fs.close(f)
    if pos < size:
        log.torn_records += 1
        log.torn_bytes += size - pos
        fs.truncate(path, pos)
    return pos, count, before


def _load_state(log):
    """(boot, cursor segment, cursor offset) from `state` (or its .tmp twin), zeros if none is valid."""
    for name in ("/state", "/state.tmp"):
        data = log.files.read_small(log.dir + name)
        if data is None or len(data) != STATE_LEN or data[0:4] != STATE_MAGIC:
            continue
        if crc32(data[0:16]) & 0xFFFFFFFF != struct.unpack_from("<I", data, 16)[0]:
            continue
        boot, cseg, coff = struct.unpack_from("<III", data, 4)
        return boot, cseg, coff
    return 0, 0, 0
