"""The dead-letter store: every message or line the collector refuses, with why, never silence.

SQLite in WAL mode beside the spool. Each entry keeps the reason code, the gateway (when known), the
topic, the sha256 of the payload and the payload itself, or only its first `payload_max` bytes when
it is larger (`truncated`: such an entry can be shown but never replayed). The store is bounded:
entries older than `max_age_s` and, past `max_bytes`, the oldest entries are deleted, and every
deletion is counted (`dropped`, by cause). Counts per reason feed the metrics.

Every refusal is also logged, rate-limited by `EpisodeLog`: one line when a (reason, gateway)
episode starts, a reminder with the count while it lasts, a summary when it ends.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("collector.refused")

_DIGEST_LOG = 16  # hex characters of the sha256 shown in a log line
_MAX_EPISODES = 1000  # (reason, gateway) pairs tracked; beyond, a gateway is logged as "*"
_PRUNE_EVERY_S = 60.0  # the age bound is enforced at most this often (and at open)


@dataclass(frozen=True)
class Entry:
    id: int
    at_ms: int
    reason: str
    detail: str
    gateway: str
    topic: str
    payload: bytes  # whole, or the first `payload_max` bytes when `truncated`
    size: int  # the original payload's size
    digest: str  # sha256 of the original payload, hex
    truncated: bool
    replayed_at_ms: int | None


@dataclass
class _Episode:
    started: float
    last: float
    logged: float
    suppressed: int = 0  # repeats since the last line


class EpisodeLog:
    """One log line per (reason, gateway) episode, not one per refusal: a flood of 10,000 bad
    payloads from one gateway is one warning, a reminder every `quiet_s` while it lasts (with the
    number suppressed) and a summary once it has been quiet for `quiet_s`."""

    def __init__(self, quiet_s: float = 60.0, logger: logging.Logger = log) -> None:
        self.quiet_s = quiet_s
        self.log = logger
        self._episodes: dict[tuple[str, str], _Episode] = {}
        self.suppressed_total = 0
        self._flushed = float("-inf")

    def note(self, reason: str, gateway: str, detail: str, digest: str, now: float) -> None:
        if now - self._flushed >= 1.0:  # a flood costs one scan of the episodes a second, not one each
            self.flush(now)
        key = (reason, gateway)
        if key not in self._episodes and len(self._episodes) >= _MAX_EPISODES:
            key = (reason, "*")  # many gateways at once: one episode for the rest
        ep = self._episodes.get(key)
        if ep is None:
            self._episodes[key] = _Episode(now, now, now)
            self.log.warning(
                "refused %s from gateway %s: %s [payload sha256:%s] (repeats summarised every %.0f s)",
                reason,
                key[1] or "-",
                detail[:300],
                digest[:_DIGEST_LOG],
                self.quiet_s,
            )
            return
        ep.last = now
        ep.suppressed += 1
        self.suppressed_total += 1
        if now - ep.logged >= self.quiet_s:
            self.log.warning(
                "still refusing %s from gateway %s: %d more in %.0f s, latest: %s [payload sha256:%s]",
                reason,
                key[1] or "-",
                ep.suppressed,
                now - ep.logged,
                detail[:300],
                digest[:_DIGEST_LOG],
            )
            ep.logged = now
            ep.suppressed = 0

    def flush(self, now: float) -> None:
        """Close episodes quiet for `quiet_s`, with a summary line if repeats were suppressed."""
        self._flushed = now
        for key, ep in list(self._episodes.items()):
            if now - ep.last >= self.quiet_s:
                del self._episodes[key]
                if ep.suppressed:
                    self.log.warning(
                        "refusals %s from gateway %s stopped: %d more since the last line (episode %.0f s)",
                        key[0],
                        key[1] or "-",
                        ep.suppressed,
                        ep.last - ep.started,
                    )


_COLUMNS = {
    # column -> definition added to a store created by an older collector
    "gateway": "TEXT NOT NULL DEFAULT ''",
    "digest": "TEXT NOT NULL DEFAULT ''",
    "size": "INTEGER NOT NULL DEFAULT 0",
    "truncated": "INTEGER NOT NULL DEFAULT 0",
    "replayed_at_ms": "INTEGER",
}
_ROW_BYTES = "length(payload) + length(detail) + length(topic) + 64"  # the bound's measure of a row


class DeadLetters:
    """Thread-safe (a lock around each call; the collector adds from its event loop only); small and
    synchronous."""

    def __init__(
        self,
        path: str | Path,
        *,
        max_bytes: int = 64 * 2**20,
        max_age_s: float = 30 * 86400.0,
        payload_max: int = 64 * 2**10,
        log_quiet_s: float = 60.0,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.payload_max = payload_max
        self.episodes = EpisodeLog(log_quiet_s)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS dead_letters ("
            " id INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL, reason TEXT NOT NULL,"
            " detail TEXT NOT NULL, topic TEXT NOT NULL, payload BLOB NOT NULL)"
        )
        have = {row[1] for row in self._db.execute("PRAGMA table_info(dead_letters)")}
        for column, definition in _COLUMNS.items():
            if column not in have:
                self._db.execute(f"ALTER TABLE dead_letters ADD COLUMN {column} {definition}")
        self.counts: Counter[str] = Counter()  # stored, by reason (what the store holds)
        self.dropped: Counter[str] = Counter()  # deleted to keep the bounds, by cause (age, size)
        self.truncated = 0  # payloads kept as a prefix only (since start)
        for reason, n in self._db.execute("SELECT reason, COUNT(*) FROM dead_letters GROUP BY reason"):
            self.counts[reason] = n
        self.bytes = int(
            self._db.execute(f"SELECT COALESCE(SUM({_ROW_BYTES}), 0) FROM dead_letters").fetchone()[0]
        )
        self.added = 0  # entries added since start (health watches its rate)
        self.added_by_reason: Counter[str] = Counter()  # by this process (another may share the file)
        self._pruned_at = 0.0
        with self._lock:
            self._prune_age(time.time())
            self._prune_size()

    # -- writing --------------------------------------------------------------------------------

    def add(
        self,
        reason: str,
        detail: str,
        topic: str = "",
        payload: bytes | str = b"",
        *,
        gateway: str = "",
    ) -> None:
        """Record one refused item. `reason` is a short stable code (a metric label)."""
        if isinstance(payload, str):
            payload = payload.encode()
        digest = hashlib.sha256(payload).hexdigest()
        size = len(payload)
        truncated = size > self.payload_max
        kept = payload[: self.payload_max] if truncated else payload
        detail = detail[:2000]
        now = time.time()
        with self._lock:
            self._db.execute(
                "INSERT INTO dead_letters (at_ms, reason, detail, topic, payload, gateway, digest, size,"
                " truncated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (int(now * 1000), reason, detail, topic, kept, gateway, digest, size, int(truncated)),
            )
            self.counts[reason] += 1
            self.added += 1
            self.added_by_reason[reason] += 1
            self.truncated += truncated
            self.bytes += len(kept) + len(detail.encode()) + len(topic.encode()) + 64
            if now - self._pruned_at >= _PRUNE_EVERY_S:
                self._prune_age(now)
            if self.bytes > self.max_bytes:
                self._prune_size()
            self.episodes.note(reason, gateway, detail, digest, time.monotonic())

    def _prune_age(self, now: float) -> None:
        """Delete entries older than `max_age_s` (lock held)."""
        self._pruned_at = now
        self._delete("age", "at_ms < ?", (int((now - self.max_age_s) * 1000),))

    def _prune_size(self) -> None:
        """Past `max_bytes`, delete the oldest entries down to 90 % of it (lock held): one flood
        then costs one delete, not one per new entry."""
        if self.bytes <= self.max_bytes:
            return
        target = self.bytes - int(self.max_bytes * 0.9)
        freed = 0
        last_id = None
        for rid, size in self._db.execute(f"SELECT id, {_ROW_BYTES} FROM dead_letters ORDER BY id"):
            freed += int(size)
            last_id = int(rid)
            if freed >= target:
                break
        if last_id is not None:
            self._delete("size", "id <= ?", (last_id,))

    def _delete(self, cause: str, where: str, args: tuple[int, ...]) -> None:
        rows = self._db.execute(
            f"SELECT reason, COUNT(*), COALESCE(SUM({_ROW_BYTES}), 0) FROM dead_letters WHERE {where}"
            " GROUP BY reason",
            args,
        ).fetchall()
        if not rows:
            return
        self._db.execute(f"DELETE FROM dead_letters WHERE {where}", args)
        n = 0
        for reason, count, size in rows:
            self.counts[reason] -= int(count)
            if self.counts[reason] <= 0:
                del self.counts[reason]
            self.bytes -= int(size)
            n += int(count)
        self.dropped[cause] += n
        log.warning("dead-letter store: dropped %d oldest entries (%s bound)", n, cause)

    def flush_log(self) -> None:
        """End quiet refusal episodes (called periodically by the service)."""
        with self._lock:
            self.episodes.flush(time.monotonic())

    # -- reading --------------------------------------------------------------------------------

    def total(self) -> int:
        return sum(self.counts.values())

    def entries(self, limit: int = 100) -> list[tuple[str, str, str, bytes]]:
        """(reason, detail, topic, payload) of the oldest `limit` entries."""
        return [(e.reason, e.detail, e.topic, e.payload) for e in self.list(limit=limit)]

    def list(
        self,
        *,
        reason: str | None = None,
        gateway: str | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        limit: int = 100,
        newest: bool = False,
    ) -> list[Entry]:
        where, args = [], []
        for clause, value in (
            ("reason = ?", reason),
            ("gateway = ?", gateway),
            ("at_ms >= ?", since_ms),
            ("at_ms < ?", until_ms),
        ):
            if value is not None:
                where.append(clause)
                args.append(value)
        sql = (
            "SELECT id, at_ms, reason, detail, gateway, topic, payload, size, digest, truncated,"
            " replayed_at_ms FROM dead_letters"
            + (" WHERE " + " AND ".join(where) if where else "")
            + (" ORDER BY id DESC" if newest else " ORDER BY id")
            + " LIMIT ?"
        )
        with self._lock:
            rows = self._db.execute(sql, (*args, limit)).fetchall()
        return [_entry(r) for r in rows]

    def get(self, entry_id: int) -> Entry | None:
        with self._lock:
            row = self._db.execute(
                "SELECT id, at_ms, reason, detail, gateway, topic, payload, size, digest, truncated,"
                " replayed_at_ms FROM dead_letters WHERE id = ?",
                (entry_id,),
            ).fetchone()
        return None if row is None else _entry(row)

    def mark_replayed(self, entry_id: int) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE dead_letters SET replayed_at_ms = ? WHERE id = ?", (int(time.time() * 1000), entry_id)
            )

    def stats(self) -> dict[str, int]:
        """Numbers for the metrics exporter."""
        s = {
            "dead_letter_entries": self.total(),
            "dead_letter_bytes": self.bytes,
            "dead_letter_max_bytes": self.max_bytes,
            "dead_letter_truncated": self.truncated,
            "dead_letter_log_suppressed": self.episodes.suppressed_total,
        }
        for cause in ("age", "size"):
            s[f"dead_letter_dropped_{cause}"] = self.dropped[cause]
        return s

    def close(self) -> None:
        with self._lock:
            self.episodes.flush(float("inf"))
            self._db.close()


def _entry(r: tuple[object, ...]) -> Entry:
    rid, at_ms, reason, detail, gateway, topic, payload, size, digest, truncated, replayed = r
    return Entry(
        id=int(rid),  # type: ignore[call-overload]
        at_ms=int(at_ms),  # type: ignore[call-overload]
        reason=str(reason),
        detail=str(detail),
        gateway=str(gateway),
        topic=str(topic),
        payload=bytes(payload),  # type: ignore[call-overload]
        size=int(size),  # type: ignore[call-overload]
        digest=str(digest),
        truncated=bool(truncated),
        replayed_at_ms=None if replayed is None else int(replayed),  # type: ignore[call-overload]
    )
