"""The dead-letter store: every message or point the collector refuses, with why, never silence.

SQLite in WAL mode beside the spool. Each entry keeps the topic, the raw payload (or the line that
the database refused) and a reason code; counts per reason feed the metrics.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path


class DeadLetters:
    """Thread-safe (paho's thread and the asyncio loop may both add); small and synchronous."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS dead_letters ("
            " id INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL, reason TEXT NOT NULL,"
            " detail TEXT NOT NULL, topic TEXT NOT NULL, payload BLOB NOT NULL)"
        )
        self.counts: Counter[str] = Counter()
        for reason, n in self._db.execute("SELECT reason, COUNT(*) FROM dead_letters GROUP BY reason"):
            self.counts[reason] = n

    def add(self, reason: str, detail: str, topic: str = "", payload: bytes | str = b"") -> None:
        """Record one refused item. `reason` is a short stable code (a metric label)."""
        if isinstance(payload, str):
            payload = payload.encode()
        with self._lock:
            self._db.execute(
                "INSERT INTO dead_letters (at_ms, reason, detail, topic, payload) VALUES (?, ?, ?, ?, ?)",
                (int(time.time() * 1000), reason, detail[:2000], topic, payload),
            )
            self.counts[reason] += 1

    def total(self) -> int:
        return sum(self.counts.values())

    def entries(self, limit: int = 100) -> list[tuple[str, str, str, bytes]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT reason, detail, topic, payload FROM dead_letters ORDER BY id LIMIT ?", (limit,)
            ).fetchall()
        return [(r, d, t, bytes(p)) for r, d, t, p in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()
