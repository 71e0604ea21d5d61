"""Writing provisioning's outputs: secrets private from their first byte, every file whole or not at all."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomic(path: Path, data: str | bytes, *, private: bool = False) -> bool:
    """Write `path` through a temp file in the same folder and rename it over the old one.

    `private` files (passwords, password hashes, keys) are created 0600 by `os.open` itself, so
    there is no moment at which another user could open them (writing first and chmod-ing after
    leaves that window); other files get 0644. A reader sees the old file or the new one, never a
    torn one. Returns True if the content changed (False: same bytes, file left untouched).
    """
    raw = data.encode() if isinstance(data, str) else data
    try:
        if path.read_bytes() == raw and (not private or (path.stat().st_mode & 0o077) == 0):
            return False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    mode = 0o600 if private else 0o644
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # the umask may have taken bits away from a public file; never adds any
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return True


def private_dir(path: Path) -> Path:
    """A folder only its owner can enter (0700), created if needed; an existing one is tightened."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)
    return path
