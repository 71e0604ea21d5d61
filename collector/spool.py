"""The collector's on-disk buffer: line protocol waiting for the database, FIFO, bounded, crash-safe.

SQLite in WAL mode. One `append` is one transaction holding many submits' bodies as one row (a
group commit: the writer gathers everything that arrived while the previous commit ran), so the
cost per reading is a memcpy, not an fsync. A row is durable once `append` returns: WAL with
`synchronous=NORMAL` survives kill -9 of the collector (use `synchronous="FULL"` to also survive a
power cut, at one fsync per group). Rows leave only through `delete_through`, which the writer
calls after the database answered 2xx, so a crash between the write and the delete replays the
row (a duplicate write, which is harmless: same series and timestamp overwrite).

Bounded by `max_bytes` of line protocol: when full it refuses (the writer then reports "not
durable", ingest stops acknowledging, and the broker keeps the data) rather than drop anything.
A disk that fills up first ("database or disk is full") is the same refusal, never a crash.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

log = logging.getLogger("collector.spool")


class SpoolError(Exception):
    """The spool cannot take this data (full, disk full, I/O error): it is not durable."""


class Spool:
    """Thread-safe (the writer runs commits in a worker thread); every method is short."""

    def __init__(
        self,
        path: str | Path,
        max_bytes: int,
        *,
        high_water: float = 0.8,
        synchronous: str = "NORMAL",
    ) -> None:
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be NORMAL or FULL, not {synchronous!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.high_water_bytes = int(max_bytes * high_water)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        # AUTOINCREMENT: ids never go back, even after the spool empties, so id order is FIFO order.
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS spool ("
            " id INTEGER PRIMARY KEY AUTOINCREMENT, at_ms INTEGER NOT NULL,"
            " lines INTEGER NOT NULL, body BLOB NOT NULL)"
        )
        row = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(lines), 0), COALESCE(SUM(length(body)), 0) FROM spool"
        ).fetchone()
        self.rows, self.lines, self.bytes = int(row[0]), int(row[1]), int(row[2])
        self.refused = 0  # appends refused (full or failing disk): each one is a NOT-durable answer
        self.last_error = ""
        self._above_high_water = False
        self._check_water()

    # -- appending ------------------------------------------------------------------------------

    def append(self, bodies: list[tuple[bytes, int]]) -> int:
        """Commit `bodies` ((line protocol, line count) each) in one transaction, as one row.

        Returns how many (a prefix, in order) are durable; the rest did not fit or the disk failed
        and must not be acknowledged.
        """
        with self._lock:
            room = self.max_bytes - self.bytes
            take = 0
            size = 0
            for body, _ in bodies:
                extra = len(body) + (1 if size else 0)
                if size + extra > room:
                    break
                size += extra
                take += 1
            if take < len(bodies):
                self._refuse(
                    f"spool full: {self.bytes} of {self.max_bytes} bytes used; refusing "
                    f"{len(bodies) - take} submit(s): ingest must stop acknowledging"
                )
            if take == 0:
                return 0
            accepted = bodies[:take]
            blob = b"\n".join(b for b, _ in accepted)
            n = sum(k for _, k in accepted)
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute(
                    "INSERT INTO spool (at_ms, lines, body) VALUES (?, ?, ?)",
                    (int(time.time() * 1000), n, blob),
                )
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                # "database or disk is full" (SQLITE_FULL) or an I/O error: not durable, not a crash.
                if self._db.in_transaction:
                    try:
                        self._db.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                self._refuse(f"spool cannot write ({exc}); refusing {len(bodies)} submit(s)")
                return 0
            self.rows += 1
            self.lines += n
            self.bytes += len(blob)
            self._check_water()
            return take

    def _refuse(self, message: str) -> None:
        self.refused += 1
        if message != self.last_error:  # loud once per new condition, counted always
            log.error("%s", message)
        self.last_error = message

    def _check_water(self) -> None:
        above = self.bytes >= self.high_water_bytes
        if above and not self._above_high_water:
            log.warning(
                "spool above high-water mark: %d of %d bytes (%d lines) waiting for the database",
                self.bytes,
                self.max_bytes,
                self.lines,
            )
        elif not above and self._above_high_water:
            log.warning("spool back below high-water mark: %d of %d bytes", self.bytes, self.max_bytes)
        self._above_high_water = above

    # -- draining -------------------------------------------------------------------------------

    def head(self, max_lines: int) -> list[tuple[int, bytes, int]]:
        """Oldest rows (id, body, lines), at least one if any, stopping once `max_lines` is reached."""
        out: list[tuple[int, bytes, int]] = []
        total = 0
        with self._lock:
            cur = self._db.execute("SELECT id, body, lines FROM spool ORDER BY id")
            try:
                for rid, body, n in cur:
                    out.append((int(rid), bytes(body), int(n)))
                    total += int(n)
                    if total >= max_lines:
                        break
            finally:
                cur.close()
            if not out and self.rows:  # counters out of step with the table (cannot happen; never spin)
                log.error("spool counters said %d rows but the table is empty; resetting", self.rows)
                self.rows = self.lines = self.bytes = 0
        return out

    def delete_through(self, last_id: int) -> None:
        """Forget every row up to `last_id`: call only after the database acknowledged them."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                n, lines, size = self._db.execute(
                    "SELECT COUNT(*), COALESCE(SUM(lines), 0), COALESCE(SUM(length(body)), 0)"
                    " FROM spool WHERE id <= ?",
                    (last_id,),
                ).fetchone()
                self._db.execute("DELETE FROM spool WHERE id <= ?", (last_id,))
                self._db.execute("COMMIT")
            except sqlite3.Error:
                self._db.execute("ROLLBACK")
                raise
            self.rows -= int(n)
            self.lines -= int(lines)
            self.bytes -= int(size)
            if self.rows == 0:
                self.last_error = ""
            self._check_water()

    def oldest_age_s(self) -> float:
        with self._lock:
            row = self._db.execute("SELECT at_ms FROM spool ORDER BY id LIMIT 1").fetchone()
        return 0.0 if row is None else max(0.0, time.time() - row[0] / 1000)

    def stats(self) -> dict[str, float | int]:
        return {
            "spool_rows": self.rows,
            "spool_lines": self.lines,
            "spool_bytes": self.bytes,
            "spool_max_bytes": self.max_bytes,
            "spool_refused": self.refused,
            "spool_oldest_age_s": self.oldest_age_s(),
        }

    def close(self) -> None:
        with self._lock:
            self._db.close()
