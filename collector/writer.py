"""The buffer -> sink stage: turns points into durable writes, and says when it cannot.

`await writer.submit_lines(body, n)` (line protocol made upstream; `submit(points)` only encodes and
calls it) returns only when every line is durable: stored by the database, committed to the spool,
or (if no database could ever take it) in the dead-letter store. It says which in a `Submitted`:
lines `stored`, `spooled` (written later; their fate shows in `stats`) and `refused` by the
database (dead-lettered, e.g. a field-type conflict: never to be counted as written). If none of
that is possible it raises `NotDurable`, and the caller must not acknowledge the MQTT message: the
broker then keeps it. That is the whole contract with ingest.

Backpressure first, the spool only for failures:

- direct (the database answers): submits are written with at most `max_concurrent` requests in
  flight; while all are busy, new submits gather into one batch (up to `batch_points`, or
  `batch_age_s` at most) that goes as soon as a request slot frees up. At most
  `max_concurrent + max_queued_batches` batches exist at once; beyond that (and a full gathering
  batch) a submit WAITS for room: backpressure, which holds the caller's MQTT acknowledgement, so
  the broker keeps the rest. A submit returns after its batch got a 2xx.
- spool: once a write fails (the database refused or is unreachable), submits are committed to the
  spool (group commits) and acknowledged from there. A submit that waited `backlog_timeout_s` for
  room (the database healthy but slower than the traffic for that long: a sustained backlog) is
  spooled too, and so are the submits behind it until room appears again.
- One drainer replays the spool oldest first, one request at a time through the same request slots,
  and deletes rows only after a 2xx. It runs alongside live traffic: its first successful write
  sends new submits direct again, while the rest of the spool drains (spooled data may therefore
  land after newer data; see docs/collector-writes.md, "Ordering").

Memory the writer holds is bounded: at most `max_concurrent + max_queued_batches` batches of about
`batch_points` lines plus the gathering one; submits waiting for room are the caller's (the pipeline
caps them at `mqtt.receive_maximum` messages).

Nothing acknowledged is ever only in memory, so a kill -9 loses nothing; what was being written at
that moment may be written again after the restart (a harmless overwrite: same series, same
timestamp). Batches that were in flight together may land in either order.

Must be used from one asyncio loop (the loop `start` ran on).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter, deque
from collections.abc import Sequence
from typing import Any, NamedTuple

from collector.deadletter import DeadLetters
from collector.lineproto import encode
from collector.model import Point
from collector.sinks.base import Delivered, Sink, SinkConfigError, SinkRetry
from collector.spool import Spool

log = logging.getLogger("collector.writer")


class NotDurable(Exception):
    """Neither the database nor the spool took these points: do not acknowledge them."""


class Submitted(NamedTuple):
    """What became of one submit's lines (they add up to its `n`)."""

    stored: int = 0  # in the database
    spooled: int = 0  # durable in the spool; written (or refused) later, counted in `stats`
    refused: int = 0  # refused by the database (dead-lettered): not written, never will be


_Entry = tuple[bytes, int, "asyncio.Future[Submitted]"]  # (body, lines, the submit waiting for it)


def refusal_code(reason: str) -> str:
    """The dead-letter reason for a line the database refused (the server's message decides)."""
    if reason.startswith("HTTP 413"):
        return "db_too_large"
    if "field type conflict" in reason:
        # The series' field already has another type: every later line of that type is refused too.
        return "db_type_conflict"
    return "db_rejected"


class Writer:
    def __init__(
        self,
        sink: Sink,
        spool: Spool,
        dead_letters: DeadLetters,
        *,
        batch_points: int = 5000,
        batch_age_s: float = 1.0,
        max_concurrent: int = 4,
        max_queued_batches: int | None = None,
        backlog_timeout_s: float = 10.0,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 5.0,  # a database back from an outage is found within seconds
        config_error_retry_s: float = 30.0,
        rng: random.Random | None = None,
    ) -> None:
        self.sink = sink
        self.spool = spool
        self.dead_letters = dead_letters
        self.batch_points = batch_points
        self.batch_age_s = batch_age_s
        self.max_concurrent = max_concurrent
        # Batches waiting for a request slot beyond this: new submits wait (memory stays bounded).
        self.max_queued_batches = max_queued_batches if max_queued_batches is not None else 2 * max_concurrent
        # A submit that waited this long for room is spooled (a sustained backlog, not a burst).
        self.backlog_timeout_s = backlog_timeout_s
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.config_error_retry_s = config_error_retry_s
        self._rng = rng or random.Random()

        self._batch: list[_Entry] = []
        self._batch_lines = 0
        self._batch_timer: asyncio.TimerHandle | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._sem: asyncio.Semaphore | None = None
        # False while the database fails: submits go to the spool. Leftovers from a previous run
        # are replayed alongside new data (a failing database turns this off at the first write).
        self._direct = True
        self._room_waiters: deque[asyncio.Future[None]] = deque()  # submits held by backpressure
        self._backlogged = False  # a submit waited backlog_timeout_s: spool until room appears
        self._draining = False  # the drainer holds a request slot
        self._spool_queue: list[_Entry] = []
        self._spool_pending = 0  # entries queued or being committed
        self._spool_wake: asyncio.Event | None = None
        self._drain_wake: asyncio.Event | None = None
        self._stop: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._retry_after: float | None = None  # the last failure's hint (Retry-After, config wait)
        self._not_before = 0.0  # loop time before which the drainer must not write

        self.counts: Counter[str] = Counter()
        self.dead_letter_counts: Counter[str] = Counter()
        self.last_refusal = ""  # the database's last refusal of a line (health shows it)
        self.sink_state = "ok"
        self.last_error = ""
        self.latency_last_s = 0.0
        self.latency_max_s = 0.0
        self.latency_sum_s = 0.0  # with `writes`: mean latency = sum / writes (a Prometheus summary)

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        self._sem = asyncio.Semaphore(self.max_concurrent)
        self._spool_wake = asyncio.Event()
        self._drain_wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._tasks = [
            asyncio.create_task(self._committer(), name="writer-committer"),
            asyncio.create_task(self._drainer(), name="writer-drainer"),
        ]
        if self.spool.rows:
            log.warning("spool holds %d lines from a previous run: replaying them", self.spool.lines)

    async def close(self, drain: bool = True, timeout_s: float = 30.0) -> None:
        """Stop taking data, finish what was accepted; with `drain`, try to empty the spool first.

        Whatever cannot be written in `timeout_s` stays in the spool for the next start.
        """
        self._closing = True
        self._wake_room(everyone=True)  # held submits are refused (not durable, not acknowledged)
        self._flush()
        deadline = time.monotonic() + timeout_s
        if self._inflight:
            await asyncio.wait(set(self._inflight), timeout=max(0.0, deadline - time.monotonic()))
        while self._spool_pending and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if drain:
            while self.spool.rows and time.monotonic() < deadline:
                assert self._drain_wake is not None
                self._drain_wake.set()
                await asyncio.sleep(0.02)
        if self._stop is not None:
            self._stop.set()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks = []
        late = list(self._inflight)
        for t in late:
            t.cancel()
        await asyncio.gather(*late, return_exceptions=True)
        # Anyone still waiting was never made durable: tell them (they will not acknowledge).
        for _, _, fut in self._spool_queue:
            _fail(fut, NotDurable("writer closed before the spool commit"))
        self._spool_queue = []

    # -- the contract ---------------------------------------------------------------------------

    async def submit(self, points: Sequence[Point]) -> Submitted:
        """`submit_lines` for `Point`s: encodes them (what cannot be encoded is dead-lettered and
        counted as refused) and submits the rest."""
        body, n, bad = encode(points)
        for p, exc in bad:
            # The serializer refuses only what no server could store unchanged: a permanent reject.
            self._dead_letter("unserializable", str(exc), repr(p).encode())
        if n == 0:
            return Submitted(refused=len(bad))
        done = await self.submit_lines(body, n)
        return done._replace(refused=done.refused + len(bad))

    async def submit_lines(self, body: bytes, n: int) -> Submitted:
        """The writer's one entry point: `n` lines of line protocol, newline-separated, no trailing
        newline. Returns once all are durable, saying how many were stored, spooled or refused."""
        if self._closing or self._sem is None:
            self.counts["not_durable"] += n
            raise NotDurable("writer is not running")
        fut: asyncio.Future[Submitted] = asyncio.get_running_loop().create_future()
        self.counts["points_submitted"] += n
        entry = (body, n, fut)
        if self._direct and not self._backlogged and (self._room_waiters or not self._has_room()):
            # The database is healthy but busy: wait for room rather than spool (backpressure).
            self.counts["submits_held"] += 1
            deadline = asyncio.get_running_loop().time() + self.backlog_timeout_s
            front = False
            while True:
                await self._wait_for_room(deadline, front)
                if self._closing:
                    self.counts["not_durable"] += n
                    raise NotDurable("writer closed while the submit waited for room")
                if not self._direct or self._backlogged or self._has_room():
                    break
                front = True  # a newcomer took the room first: wait again, keeping our place
        if self._direct and self._has_room():
            self._batch.append(entry)
            self._batch_lines += n
            # Send at once while a request slot is free: batches then grow only while the database
            # is busy, so a small MQTT in-flight window is never stuck waiting for `batch_age_s`.
            if self._slot_free() or (self._batch_lines >= self.batch_points and self._can_queue()):
                self._flush()
            elif self._batch_timer is None:
                self._batch_timer = asyncio.get_running_loop().call_later(self.batch_age_s, self._age_flush)
            self._wake_room()  # the next held submit, if there is room for it too
        else:
            if self._direct:
                self.counts["points_spooled_backlog"] += n
            self._to_spool([entry])
        try:
            return await fut
        except NotDurable:
            self.counts["not_durable"] += n
            raise

    @property
    def stats(self) -> dict[str, Any]:
        s: dict[str, Any] = {
            "points_submitted": self.counts["points_submitted"],
            "points_written": self.counts["points_written"],
            "points_spooled": self.counts["points_spooled"],
            "points_spooled_backlog": self.counts["points_spooled_backlog"],
            "submits_held": self.counts["submits_held"],
            "submits_held_now": len(self._room_waiters),
            "points_not_durable": self.counts["not_durable"],
            "requests": self.counts["requests"],
            "retries": self.counts["retries"],
            "dead_letters": dict(self.dead_letter_counts),
            "db_refused": self.counts["db_refused"],
            "type_conflicts": self.dead_letter_counts["db_type_conflict"],
            "last_refusal": self.last_refusal,
            "sink_state": self.sink_state,
            "last_error": self.last_error,
            "mode": "direct" if self._direct else "spool",
            "inflight_batches": len(self._inflight),
            "write_latency_last_s": self.latency_last_s,
            "write_latency_max_s": self.latency_max_s,
            "write_latency_sum_s": self.latency_sum_s,
            "writes": self.counts["writes"],
        }
        # Flat numeric copies for the metrics exporter (it exports numbers only).
        for reason, n in self.dead_letter_counts.items():
            s[f"dead_letters_{reason}"] = n
        s["sink_ok"] = int(self.sink_state == "ok")
        s["direct"] = int(self._direct)
        s.update(self.spool.stats())
        return s

    # -- direct path ----------------------------------------------------------------------------

    def _slot_free(self) -> bool:
        return len(self._inflight) + self._draining < self.max_concurrent

    def _can_queue(self) -> bool:
        return len(self._inflight) < self.max_concurrent + self.max_queued_batches

    def _has_room(self) -> bool:
        """Room for one more submit: the gathering batch is not full, or it can be queued."""
        return self._batch_lines < self.batch_points or self._can_queue()

    async def _wait_for_room(self, deadline: float, front: bool) -> None:
        """Wait, in arrival order, to be let in by `_wake_room`; at `deadline` (loop time) the
        backlog is sustained: return with `_backlogged` set (the caller spools)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        if front:
            self._room_waiters.appendleft(fut)
        else:
            self._room_waiters.append(fut)
        try:
            await asyncio.wait_for(asyncio.shield(fut), max(0.0, deadline - loop.time()))
        except TimeoutError:
            if not self._backlogged:
                log.warning(
                    "database slower than the traffic for %.0f s (%d batches in flight or queued): "
                    "spooling new data until it catches up",
                    self.backlog_timeout_s,
                    len(self._inflight),
                )
            self._backlogged = True
            self._wake_room(everyone=True)  # those behind us spool too, at once
        finally:
            with contextlib.suppress(ValueError):
                self._room_waiters.remove(fut)

    def _wake_room(self, everyone: bool = False) -> None:
        """Let the oldest held submit in (it wakes the next once it has taken its place);
        `everyone`: all of them (closing, the database failed, or the backlog is sustained)."""
        if self._backlogged and not everyone and len(self._inflight) < self.max_concurrent:
            # Nothing queued beyond the request slots: the database keeps up again.
            self._backlogged = False
            log.info("database caught up: new data waits for room again instead of spooling")
        while self._room_waiters:
            fut = self._room_waiters.popleft()
            if fut.done():
                continue
            if everyone or not self._direct or self._has_room():
                fut.set_result(None)
                if not everyone:
                    return
            else:
                self._room_waiters.appendleft(fut)
                return

    def _age_flush(self) -> None:
        self._batch_timer = None
        if self._can_queue():
            self._flush()
        # else: the batch goes when a request finishes (`_write_done`)

    def _flush(self) -> None:
        if self._batch_timer is not None:
            self._batch_timer.cancel()
            self._batch_timer = None
        if not self._batch:
            return
        entries, self._batch, self._batch_lines = self._batch, [], 0
        task = asyncio.get_running_loop().create_task(self._write_direct(entries))
        self._inflight.add(task)
        task.add_done_callback(self._write_done)

    def _write_done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        if self._batch and not self._closing:
            if self._slot_free():
                self._flush()  # a slot freed up: what gathered meanwhile goes now
            elif self._batch_lines >= self.batch_points and self._can_queue():
                self._flush()  # full, and there is room in the queue again
            # else: batches are queued for every slot; this one keeps growing (fewer, larger writes)
        self._wake_room()

    async def _write_direct(self, entries: list[_Entry]) -> None:
        assert self._sem is not None
        try:
            async with self._sem:
                if not self._direct:
                    # The database failed while we waited for a slot: queue behind what is spooled.
                    self._to_spool(entries)
                    return
                body = b"\n".join(b for b, _, _ in entries)
                done = await self._write(body)
                if done is None:
                    self._direct = False
                    self._wake_room(everyone=True)  # held submits go to the spool now
                    loop = asyncio.get_running_loop()
                    self._not_before = max(self._not_before, loop.time() + self._backoff(1))
                    self._to_spool(entries)
                    return
                if not done.rejected_at:  # the usual case: every line stored
                    for _, n, fut in entries:
                        _ok(fut, Submitted(stored=n))
                    return
                refused = Counter(_owner(entries, i) for i in done.rejected_at)
                for i, (_, n, fut) in enumerate(entries):
                    _ok(fut, Submitted(stored=n - refused[i], refused=refused[i]))
        except asyncio.CancelledError:
            for _, _, fut in entries:
                _fail(fut, NotDurable("writer closed during the write"))
            raise
        except Exception as exc:  # a bug must not lose data: spool it and say so
            log.exception("direct write failed unexpectedly; spooling the batch")
            self.last_error = repr(exc)
            self._direct = False
            self._wake_room(everyone=True)
            self._to_spool(entries)

    async def _write(self, body: bytes) -> Delivered | None:
        """One delivery attempt; None means "not written, keep the data" (the error is recorded)."""
        started = time.monotonic()
        try:
            done = await self.sink.write(body)
        except SinkRetry as exc:
            self.counts["retries"] += 1
            if self.sink_state != "retrying":  # loud once per outage; `retries` counts every attempt
                log.warning("database write failed; spooling and retrying: %s", exc)
            self.sink_state = "retrying"
            self.last_error = str(exc)
            self._retry_after = exc.retry_after
            return None
        except SinkConfigError as exc:
            self.counts["retries"] += 1
            if self.sink_state != "config_error" or self.last_error != str(exc):
                log.critical("database refuses the collector (fix config/credentials; data is held): %s", exc)
            self.sink_state = "config_error"
            self.last_error = str(exc)
            self._retry_after = self.config_error_retry_s
            return None
        elapsed = time.monotonic() - started
        self._retry_after = None
        if self.sink_state != "ok":
            log.warning("database writable again after: %s", self.last_error)
        self.latency_last_s = elapsed
        self.latency_max_s = max(self.latency_max_s, elapsed)
        self.counts["writes"] += 1
        self.latency_sum_s += elapsed
        self.sink_state = "ok"
        self.counts["requests"] += done.requests
        self.counts["points_written"] += done.accepted
        for line, reason in done.rejected:
            # A partial write: the database stored the other lines and refused these for good.
            self.counts["db_refused"] += 1
            self.last_refusal = reason
            self._dead_letter(refusal_code(reason), reason, line, gateway=_gateway_tag(line))
        return done

    def _dead_letter(self, reason: str, detail: str, payload: bytes, gateway: str = "") -> None:
        self.dead_letters.add(reason, detail, "", payload, gateway=gateway)
        self.dead_letter_counts[reason] += 1

    # -- spool path -----------------------------------------------------------------------------

    def _to_spool(self, entries: list[_Entry]) -> None:
        self._spool_queue.extend(entries)
        self._spool_pending += len(entries)
        assert self._spool_wake is not None
        self._spool_wake.set()

    async def _committer(self) -> None:
        """Group commit: everything queued while the previous commit ran goes in one transaction."""
        assert self._spool_wake is not None and self._drain_wake is not None
        while True:
            await self._spool_wake.wait()
            self._spool_wake.clear()
            while self._spool_queue:
                group, self._spool_queue = self._spool_queue, []
                try:
                    took = await asyncio.to_thread(self._append_rows, [(b, n) for b, n, _ in group])
                except asyncio.CancelledError:
                    # Closing mid-commit: the rows may or may not be in; "not durable" is the safe
                    # answer (at worst the broker redelivers and the point is written twice).
                    for _, _, fut in group:
                        _fail(fut, NotDurable("writer closed during the spool commit"))
                    self._spool_pending -= len(group)
                    raise
                except Exception:
                    log.exception("spool append failed")
                    took = 0
                for i, (_, n, fut) in enumerate(group):
                    if i < took:
                        self.counts["points_spooled"] += n
                        _ok(fut, Submitted(spooled=n))
                    else:
                        _fail(fut, NotDurable(self.spool.last_error or "spool refused the data"))
                self._spool_pending -= len(group)
                if took:
                    self._drain_wake.set()

    def _append_rows(self, bodies: list[tuple[bytes, int]]) -> int:
        """`spool.append` in rows of about `batch_points` lines, so that a replayed row is one
        request of the usual size (a group commit can hold everything a burst brought)."""
        took = 0
        start = 0
        while start < len(bodies):
            end, lines = start, 0
            while end < len(bodies) and (end == start or lines + bodies[end][1] <= self.batch_points):
                lines += bodies[end][1]
                end += 1
            chunk = bodies[start:end]
            done = self.spool.append(chunk)
            took += done
            if done < len(chunk):
                break
            start = end
        return took

    async def _drainer(self) -> None:
        """Keep `_drain` alive: a bug in one round must not stop replay for good (data would sit)."""
        assert self._stop is not None
        while not self._stop.is_set():
            try:
                await self._drain()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("spool drainer failed; restarting it")
                self.last_error = repr(exc)
                await self._sleep(self.backoff_max_s)

    async def _drain(self) -> None:
        """Replay the spool oldest first; delete only after the database acknowledged."""
        assert self._drain_wake is not None and self._stop is not None
        attempt = 0
        # Checked on every turn: in 3.11 `wait_for` can swallow a cancel that races its own wake-up.
        while not self._stop.is_set():
            if self.spool.rows == 0:
                self._drain_wake.clear()
                await self._drain_wake.wait()
                continue
            loop = asyncio.get_running_loop()
            wait = self._not_before - loop.time()
            if wait > 0:  # Retry-After or backoff from the last failure, direct or drained
                await self._sleep(wait)
                continue
            rows = await asyncio.to_thread(self.spool.head, self.batch_points)
            if not rows:
                continue
            assert self._sem is not None
            async with self._sem:  # one slot of max_concurrent: live traffic keeps the others
                self._draining = True
                try:
                    done = await self._write(b"\n".join(body for _, body, _ in rows))
                finally:
                    self._draining = False
            if done is None:
                attempt += 1
                self._not_before = loop.time() + self._backoff(attempt)
                continue
            attempt = 0
            if not self._direct:
                # The database takes writes again: new data goes direct, the spool drains alongside.
                self._direct = True
                log.info("database writable: direct writes resume; %d spooled lines drain", self.spool.lines)
            try:
                await asyncio.to_thread(self.spool.delete_through, rows[-1][0])
            except Exception:
                # The rows were written; they will be written again (harmless) once delete works.
                log.exception("spool delete failed after a successful write")
                self._not_before = loop.time() + self._backoff(1)

    def _backoff(self, attempt: int) -> float:
        """Server's Retry-After if given, else exponential backoff with full jitter."""
        if self._retry_after is not None:
            return self._retry_after
        cap = min(self.backoff_max_s, self.backoff_base_s * (2 ** min(attempt, 30)))
        return self._rng.uniform(0, cap)

    async def _sleep(self, seconds: float) -> None:
        assert self._stop is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)


def _owner(entries: list[_Entry], index: int) -> int:
    """Which entry line `index` of their joined body came from."""
    for i, (_, n, _) in enumerate(entries):
        if index < n:
            return i
        index -= n
    return len(entries) - 1  # past the end (cannot happen): charge the last one, never lose a count


def _gateway_tag(line: bytes) -> str:
    """The `gw` tag of a line (escapes kept as written), "" if none: for the refusal log only."""
    at = line.find(b",gw=")
    if at < 0:
        return ""
    i = at + 4
    start = i
    while i < len(line) and line[i] not in b", ":  # a tag value ends at an unescaped comma or space
        i += 2 if line[i] == 0x5C else 1  # backslash: the next byte is escaped
    return line[start:i].decode("utf-8", "replace")


def _ok(fut: asyncio.Future[Submitted], result: Submitted) -> None:
    if not fut.done():
        fut.set_result(result)


def _fail(fut: asyncio.Future[Submitted], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
