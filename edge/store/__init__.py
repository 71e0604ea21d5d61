"""Store-and-forward log on flash: every accepted reading is durable before it counts as taken.

`Log` (edge.store.log) is the whole API; `Files`, defined here, is the filesystem seam it writes
through. Format, guarantees and flash-wear figures: docs/store.md.

The log never calls `open` or `os` directly so that tests can swap in a filesystem that loses or
tears unsynced bytes at any point (a power cut), and so that the bench can count every byte
handed to the filesystem.

Memory on a board: `Files` lives in the package module, which is loaded anyway, rather than in a
module of its own (each loaded module costs its own object, dict and names). It holds only what the
log needs at run time: a file is closed with its own `close()`, and truncation (boot only) is a
copy through these calls in edge/store/boot.py. What only CPython needs (fsync, directory syncs)
is defined under an `if` a board does not take: the code of an untaken branch is freed after import.
"""

import os

from edge.store.log import Log, StoreError  # noqa: F401


class Files:
    """Counts what it writes: `written` (bytes handed to the filesystem) and `syncs` (commits).

    As MicroPython uses it: no `os.fsync`; on a board `flush()` commits the littlefs/FAT file, the
    unix port writes through to the OS (as durable as the host makes it). Files are unbuffered,
    so every write reaches the filesystem and a reader sees it.
    """

    def __init__(self):
        self.written = 0
        self.syncs = 0

    def listdir(self, path):
        """The names in directory `path`, which is created (empty) if missing: a first boot."""
        try:
            return os.listdir(path)
        except OSError:
            os.mkdir(path)
            return []

    def remove(self, path):
        os.remove(path)

    def rename(self, src, dest):
        """Atomic replace of `dest` on POSIX and littlefs (MicroPython's FAT driver unlinks first)."""
        os.rename(src, dest)

    def open(self, path, mode):
        """`mode` is "rb" (read) or "ab" (append)."""
        return open(path, mode)

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
        self.syncs += 1

    def write_atomic(self, path, data):
        """Replace a small file so that a power cut leaves either the old or the new content."""
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            self.write(f, data)
            self.sync(f)
        self.rename(tmp, path)

    def read_small(self, path):
        """The whole content of a small file, or None if it does not exist or cannot be read."""
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError:
            return None


# MicroPython has no os.fsync, so a board skips this branch and frees its code after import.
if hasattr(os, "fsync"):

    class Files(Files):
        """CPython on a POSIX host: durable means fsync, and a new or renamed name survives a host
        crash only once its directory is synced (littlefs and FAT commit those themselves)."""

        def open(self, path, mode):
            if mode == "rb":
                return open(path, mode)
            f = open(path, mode, buffering=0)  # unbuffered, as on MicroPython
            self._sync_dir(path)
            return f

        def rename(self, src, dest):
            os.rename(src, dest)
            self._sync_dir(dest)

        def sync(self, f):
            f.flush()
            os.fsync(f.fileno())
            self.syncs += 1

        def _sync_dir(self, path):
            fd = os.open(path[: path.rfind("/")] or "/", 0)  # 0: O_RDONLY on every POSIX system
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
