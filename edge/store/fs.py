"""The filesystem calls the log makes, behind one small object.

The log never calls `open` or `os` directly so that tests can swap in a filesystem that loses or
tears unsynced bytes at any point (a power cut), and so that the bench can count every byte
handed to the filesystem. `Files` works on CPython (durable = `os.fsync`) and on MicroPython
(no `os.fsync`: on a board `flush()` commits the littlefs/FAT file; the unix port writes through
to the OS, which is as durable as the host makes it).
"""

import os

_COPY_CHUNK = 256


class Files:
    """Counts what it writes: `written` (bytes handed to the filesystem) and `syncs` (commits)."""

    def __init__(self):
        self.written = 0
        self.syncs = 0
        self._fsync = getattr(os, "fsync", None)

    def listdir(self, path):
        return os.listdir(path)

    def mkdir(self, path):
        try:
            os.mkdir(path)
        except OSError:
            pass  # exists (errno differs between ports); a real failure shows at first open

    def size(self, path):
        return os.stat(path)[6]

    def exists(self, path):
        try:
            os.stat(path)
            return True
        except OSError:
            return False

    def remove(self, path):
        os.remove(path)

    def rename(self, old, new):
        """Atomic replace of `new` on POSIX and littlefs (MicroPython's FAT driver unlinks first)."""
        os.rename(old, new)
        self._sync_dir(new)

    def open_append(self, path):
        new = self._fsync is not None and not self.exists(path)
        try:
            f = open(path, "ab", buffering=0)  # every write reaches the OS: a reader sees it
        except TypeError:  # a port without the keyword: MicroPython files are unbuffered anyway
            f = open(path, "ab")
        if new:
            self._sync_dir(path)
        return f

    def _sync_dir(self, path):
        """POSIX: a new or renamed name survives a host crash only once its directory is synced.

        Only where os.fsync exists (CPython); littlefs and FAT commit directory changes themselves.
        """
        if self._fsync is None:
            return
        fd = os.open(path[: path.rfind("/")] or "/", os.O_RDONLY)
        try:
            self._fsync(fd)
        finally:
            os.close(fd)

    def open_read(self, path):
        return open(path, "rb")

    def write(self, f, buf):
        """Write all of `buf` (an unbuffered file may take less than asked in one call)."""
        total = len(buf)
        n = f.write(buf)
        if n is None:
            n = total
        while n < total:
            k = f.write(memoryview(buf)[n:])
            if not k:
                raise OSError(28)  # ENOSPC: the device took nothing
            n += k
        self.written += n
        return n

    def sync(self, f):
        """Make everything written to `f` survive a power cut."""
        f.flush()
        if self._fsync is not None:
            self._fsync(f.fileno())
        self.syncs += 1

    def close(self, f):
        f.close()

    def write_atomic(self, path, data):
        """Replace a small file so that a power cut leaves either the old or the new content."""
        tmp = path + ".tmp"
        f = open(tmp, "wb")
        try:
            self.write(f, data)
            self.sync(f)
        finally:
            f.close()
        self.rename(tmp, path)

    def read_small(self, path):
        """The whole content of a small file, or None if it does not exist or cannot be read."""
        try:
            f = open(path, "rb")
        except OSError:
            return None
        try:
            return f.read()
        finally:
            f.close()

    def truncate(self, path, size):
        """Cut a file to `size` bytes (rare: a torn tail found at boot).

        MicroPython files have no truncate, so the kept prefix is copied to a temp file that then
        replaces the original: a power cut during the copy leaves the original (still torn, found
        again next boot) plus a stale `.tmp` that the log deletes.
        """
        tmp = path + ".tmp"
        src = open(path, "rb")
        dst = open(tmp, "wb")
        buf = bytearray(_COPY_CHUNK)
        mv = memoryview(buf)
        left = size
        try:
            while left > 0:
                n = src.readinto(mv[0 : min(left, _COPY_CHUNK)])
                if not n:
                    break
                self.write(dst, mv[0:n])
                left -= n
            self.sync(dst)
        finally:
            dst.close()
            src.close()
        self.rename(tmp, path)
