"""The collector service: input -> decode -> validate -> dedup -> writer, acknowledged when durable.

`Pipeline` is the wiring between the stages and owns the acknowledgement rule: a message is
acknowledged only once every reading in it is durable (Writer.submit_lines returned) or dead-lettered, and
acknowledgements leave in the order the messages arrived (MQTT 5, 4.6). A message whose readings
could not be made durable (`NotDurable`) is retried with backoff while it holds its place; at
shutdown it is left unacknowledged, so the broker redelivers it to the next session.

`Collector` owns the resources (dead letters, writer, MQTT input, metrics port) and their order at
start and at shutdown; `run(config, *, shutdown=None)` is the entry point (SIGTERM/SIGINT by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

import cbor2

from collector import decode
from collector.config import Config
from collector.deadletter import DeadLetters
from collector.dedup import Dedup
from collector.health import Health
from collector.ingest import Message, MqttInput
from collector.jetstream import NatsInput
from collector.metrics import Metrics, MetricsServer
from collector.receipts import Receipts
from collector.validate import HOTPATH_COMPILED, Kind, Validator, load_kinds
from collector.writer import NotDurable, Submitted

log = logging.getLogger(__name__)


class WriterLike(Protocol):
    """What the pipeline needs from collector/writer.py's `Writer`: one entry point for every
    channel, `submit_lines(body, n)` (n newline-separated lines, returns once they are durable)."""

    @property
    def stats(self) -> Mapping[str, object]: ...

    async def start(self) -> None: ...
    async def submit_lines(self, body: bytes, n: int) -> Submitted: ...
    async def close(self, drain: bool = True, timeout_s: float = 30.0) -> None: ...


WriterFactory = Callable[[Config, DeadLetters], WriterLike]


class Liveness:
    """Which gateways have been silent longer than their heartbeat: reported once per silence
    (a log line) and continuously (the `gateway_silent` gauge)."""

    def __init__(self, config: Config, metrics: Metrics, now: float) -> None:
        self.config = config
        self.metrics = metrics
        self.last_seen: dict[str, float] = {}
        self.silent: set[str] = set()
        # Registered gateways are expected: one never heard from is silent a heartbeat after start.
        self._expected_since = {gw: now for gw in config.gateways}

    def seen(self, gw: str, now: float) -> None:
        self.last_seen[gw] = now
        self.metrics.last_seen.set(now, gw=gw)
        if gw in self.silent:
            self.silent.discard(gw)
            self.metrics.silent.set(0, gw=gw)
            log.info("gateway %s heard from again", gw)

    def heartbeat(self, gw: str) -> float:
        info = self.config.gateways.get(gw)
        return (
            info.heartbeat
            if info is not None and info.heartbeat > 0
            else self.config.metrics.default_heartbeat
        )

    def check(self, now: float) -> list[str]:
        """Gateways that just became silent. Registered gateways never heard from count from start."""
        newly: list[str] = []
        for gw, seen in {**self._expected_since, **self.last_seen}.items():
            limit = self.heartbeat(gw)
            if now - seen > limit and gw not in self.silent:
                self.silent.add(gw)
                self.metrics.silent.set(1, gw=gw)
                log.warning("gateway %s silent for %.0f s (heartbeat %.0f s)", gw, now - seen, limit)
                newly.append(gw)
        return newly


class Pipeline:
    """Stages wired together; the messages of one read become one task and (per channel) one
    write, and are acknowledged in arrival order."""

    def __init__(
        self,
        config: Config,
        *,
        writer: WriterLike,
        dead_letters: DeadLetters,
        metrics: Metrics,
        ack: Callable[[Message], object],
        kinds: dict[int, Kind] | None = None,
        not_durable: type[BaseException] | None = None,
        clock: Callable[[], float] = time.time,
        receipts: Receipts | None = None,
    ) -> None:
        self.config = config
        self.receipts = receipts
        self.writer = writer
        self.dead_letters = dead_letters
        self.metrics = metrics
        self._ack = ack
        self.validator = Validator(config.decode, load_kinds() if kinds is None else kinds, config.gateways)
        n_gw = len(config.gateways)
        if not n_gw:
            log.info("no gateway registry: any gateway id in the protocol's alphabet is accepted")
        elif config.decode.accept_unregistered:
            log.info("gateway registry of %d; others accepted (decode.accept_unregistered)", n_gw)
        else:
            log.info("gateway registry of %d; others refused as unknown_gateway", n_gw)
        if decode.FASTUP is not None:
            log.info("/up batches: compiled step (collector/_fastup.c)")
        else:
            log.warning("/up batches: pure-Python path, ~2 us more CPU per reading (%s)", decode.FASTUP_STATE)
        metrics.compiled.set(1 if decode.FASTUP is not None else 0, module="fastup")
        metrics.compiled.set(1 if HOTPATH_COMPILED else 0, module="hotpath")
        self.dedup = Dedup(config.dedup.window, config.dedup.max_gateways)
        self.liveness = Liveness(config, metrics, clock())
        self.not_durable = not_durable or NotDurable
        self.clock = clock
        self._order: deque[Message] = deque()
        self._done: set[int] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._waiting: deque[Message] = deque()  # arrived beyond the in-flight cap, not started
        self._busy = 0  # messages in the tasks of `_tasks`
        self.accepting = True
        self.stopping = False
        self._refusing = False  # inside a NotDurable episode (logged once)

    # --- intake and acknowledgement ----------------------------------------------------------------

    def offer(self, msg: Message) -> None:
        """Called on the loop for one message (the NATS input)."""
        self.offer_many([msg])

    def offer_many(self, msgs: list[Message]) -> None:
        """Called on the loop with the messages of one read from the broker (the MQTT input): those
        that fit under the in-flight cap become one task and one write, the rest wait in order."""
        if not self.accepting:
            # Draining: leave them unacknowledged; the broker redelivers them to the next session.
            self.metrics.messages.inc(len(msgs), channel="-", outcome="deferred")
            return
        cap = self.config.mqtt.receive_maximum
        order = self._order
        take: list[Message] = []
        for msg in msgs:
            if msg.qos == 0 and len(order) >= cap:
                # The input's bound counts QoS 1 only; QoS 0 (not the protocol's) is shed under load, counted.
                self.metrics.messages.inc(channel="-", outcome="shed_qos0")
                continue
            order.append(msg)
            take.append(msg)
        self.metrics.inflight.set(len(order))
        room = 0 if self._waiting else max(0, cap - self._busy)
        if len(take) > room:
            # The MQTT input stops reading at the cap, but a read can carry more than the room left,
            # and the NATS input has its own bound: work in flight stays capped here; the excess
            # waits, in order, and is counted.
            self._waiting.extend(take[room:])
            self.metrics.over_receive_maximum.inc(len(take) - room)
            self.metrics.waiting.set(len(self._waiting))
            del take[room:]
        if take:
            self._spawn(take)

    def _spawn(self, msgs: list[Message]) -> None:
        self._busy += len(msgs)
        task = asyncio.get_running_loop().create_task(self._run(msgs))
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._task_done(t, len(msgs)))

    def _task_done(self, task: asyncio.Task[None], n: int) -> None:
        self._tasks.discard(task)
        self._busy -= n
        room = self.config.mqtt.receive_maximum - self._busy
        if self._waiting and self.accepting and room > 0:
            waiting = self._waiting
            self._spawn([waiting.popleft() for _ in range(min(room, len(waiting)))])
            self.metrics.waiting.set(len(waiting))

    async def _run(self, msgs: list[Message]) -> None:
        try:
            await self._process_group(msgs)
        except asyncio.CancelledError:
            raise
        except _GiveUp:
            return
        done = self._done
        for msg in msgs:
            done.add(id(msg))
        self._release()

    def _release(self) -> None:
        while self._order and id(self._order[0]) in self._done:
            msg = self._order.popleft()
            self._done.discard(id(msg))
            self._ack(msg)
        self.metrics.inflight.set(len(self._order))

    async def drain(self, timeout: float) -> bool:
        """Stop taking messages and wait for the ones in flight; True when all finished in time."""
        self.accepting = False
        self.stopping = True
        if self._waiting:
            # Never started: nothing written, nothing acknowledged; the broker redelivers them.
            self.metrics.messages.inc(len(self._waiting), channel="-", outcome="deferred")
            self._waiting.clear()
            self.metrics.waiting.set(0)
        pending = set(self._tasks)
        if pending:
            _, pending = await asyncio.wait(pending, timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
            log.warning("%d tasks in flight at shutdown: their messages stay unacknowledged", len(pending))
        return not pending

    # --- the stages ---------------------------------------------------------------------------------

    def _dead(
        self, reason: str, detail: str, msg: Message, payload: bytes | None = None, gw: str = ""
    ) -> None:
        self.dead_letters.add(
            reason, detail, msg.topic, msg.payload if payload is None else payload, gateway=gw
        )
        self.metrics.dead_letters.inc(reason=reason)

    def _internal_error(self, msg: Message, exc: Exception) -> None:
        """A bug in a stage. Leaving the message unacknowledged would block every ack behind it
        (they leave in order) and then the whole subscription; the payload is kept instead."""
        log.error("processing %s failed; payload dead-lettered as internal_error", msg.topic, exc_info=exc)
        self.metrics.messages.inc(channel="-", outcome="error")
        self._dead("internal_error", f"{type(exc).__name__}: {exc}", msg)
        self._receipt_refused(msg)

    async def process(self, msg: Message) -> None:
        """One message through decode and validate into line protocol, then `submit_lines`: the one
        route of every channel (the dead-letter replay; errors propagate to the caller)."""
        prepared = self._prepare(msg)
        if prepared is not None:
            await self._write(prepared.channel, [prepared])

    async def _process_group(self, msgs: list[Message]) -> None:
        """The messages of one read: each decoded and validated alone (a bug in a stage costs only
        its message), then one write per channel present, usually one write in all."""
        by_channel: dict[str, list[_Prepared]] = {}
        for msg in msgs:
            try:
                prepared = self._prepare(msg)
            except Exception as exc:
                self._internal_error(msg, exc)
                continue
            if prepared is not None:
                by_channel.setdefault(prepared.channel, []).append(prepared)
        for channel, group in by_channel.items():
            try:
                await self._write(channel, group)
            except _GiveUp:
                raise
            except Exception as exc:
                for prepared in group:
                    self._internal_error(prepared.msg, exc)

    def _prepare(self, msg: Message) -> _Prepared | None:
        """Decode and validate: the message's lines, or None when it is finished already (refused
        and dead-lettered, a duplicate receipted again)."""
        cfg = self.config
        try:
            gw, channel = decode.parse_topic(cfg.mqtt.topic_prefix, msg.topic)
        except decode.Refused as r:
            self._dead(r.reason, r.detail, msg)
            self.metrics.messages.inc(channel="-", outcome="refused")
            return None
        bad = self.validator.check_gateway(gw)
        if bad is not None:
            self._dead(bad.reason, bad.detail, msg, gw=gw)
            self.metrics.messages.inc(channel=channel, outcome="refused")
            return None
        self.liveness.seen(gw, self.clock())
        now_ms = int(self.clock() * 1000)
        key = (0, 0, 0)
        try:
            if channel == decode.STATUS:
                status = decode.decode_status(msg.payload, max_bytes=cfg.decode.max_payload)
                lines, rejects, ignored = self.validator.status_lines(gw, status, now_ms)
                if ignored:
                    self.metrics.ignored.inc(ignored, reason="unknown_status_key")
                for rej in rejects:
                    self._dead(rej.reason, rej.detail, msg, gw=gw)
                body, n = "\n".join(lines).encode(), len(lines)
                del lines
            else:
                # `/up`: the compiled step's RawBatch when collector/_fastup.c is built, else a Batch
                batch = (
                    decode.decode_up(msg.payload, max_bytes=cfg.decode.max_payload)
                    if channel == decode.UP
                    else decode.decode_batch(msg.payload, max_bytes=cfg.decode.max_payload, alarm=True)
                )
                if self.dedup.seen(gw, channel, batch.boot, batch.seq, batch.t0):
                    # Receipted again: the gateway re-sends only what it has no receipt for.
                    self._receipt(gw, channel, batch.boot, batch.seq)
                    self.metrics.dedup_hits.inc()
                    self.metrics.messages.inc(channel=channel, outcome="duplicate")
                    return None
                body, n, bad_readings = self.validator.batch_body(gw, batch, now_ms)
                for index, rej, item in bad_readings:
                    self._dead(
                        rej.reason, f"reading {index}: {rej.detail}", msg, _reading_bytes(batch, item), gw
                    )
                self.metrics.readings.inc(len(bad_readings), channel=channel, outcome="rejected")
                # Only the dedup key outlives the write: the decoded readings are freed before the
                # await, not held by up to receive_maximum messages in flight. Held, they made the
                # allocator touch cold memory for every message: decode cost 2.0-2.25 us/reading in
                # the running collector against 0.85 with this (collector CPU 9.3 -> 7.5
                # us/reading, docs/benchmarks.md).
                key = (batch.boot, batch.seq, batch.t0)
                del batch, bad_readings
        except decode.Refused as r:
            self._dead(r.reason, r.detail, msg, gw=gw)
            self.metrics.messages.inc(channel=channel, outcome="refused")
            if channel != decode.STATUS:
                self._receipt_refused(msg)  # dead-lettered on purpose: re-sending cannot mend it
            return None
        return _Prepared(msg, gw, channel, key, body, n)

    async def _write(self, channel: str, group: list[_Prepared]) -> None:
        """The lines of `group` (messages of one channel) in one `submit_lines`, then each message
        finished: dedup key, receipt, counts. An empty group write (every reading refused, an
        empty status) finishes at once."""
        if len(group) == 1:
            body, n = group[0].body, group[0].n
        else:
            body = b"\n".join([p.body for p in group if p.n])
            n = sum(p.n for p in group)
        for prepared in group:
            prepared.body = b""  # one copy in memory during the write: the group's body
        done = Submitted()
        if n:
            done = await self._durable(lambda: self.writer.submit_lines(body, n))
            now = time.monotonic()
            observe = self.metrics.write_seconds.observe
            for prepared in group:
                observe(now - prepared.msg.received)
        if channel != decode.STATUS:
            add = self.dedup.add
            for prepared in group:
                gw, key = prepared.gw, prepared.key
                add(gw, channel, *key)
                self._receipt(gw, channel, key[0], key[1])
            # Only what the database took is "written"; spooled lines are counted by the writer
            # when drained; lines it refused (a field-type conflict) are dead letters, not writes.
            self.metrics.readings.inc(done.stored, channel=channel, outcome="written")
            if done.spooled:
                self.metrics.readings.inc(done.spooled, channel=channel, outcome="spooled")
            if done.refused:
                self.metrics.readings.inc(done.refused, channel=channel, outcome="db_refused")
        self.metrics.messages.inc(len(group), channel=channel, outcome="ok")

    def _receipt(self, gw: str, channel: str, boot: int, seq: int) -> None:
        if self.receipts is not None:
            self.receipts.durable(gw, channel, boot, seq)

    def _receipt_refused(self, msg: Message) -> None:
        """A batch or alarm dead-lettered whole: receipt it if its header names (boot, seq), so
        its gateway does not re-send, forever, what will be refused again."""
        if self.receipts is None:
            return
        try:
            gw, channel = decode.parse_topic(self.config.mqtt.topic_prefix, msg.topic)
        except decode.Refused:
            return
        if channel == decode.STATUS or self.validator.check_gateway(gw) is not None:
            return
        key = decode.batch_key(msg.payload, self.config.decode.max_payload)
        if key is not None:
            self._receipt(gw, channel, key[0], key[1])

    async def _durable(self, submit: Callable[[], Awaitable[Submitted]]) -> Submitted:
        """`submit()` until it returns (the readings are durable), backing off after NotDurable."""
        delay = 0.2
        while True:
            try:
                done = await submit()
                if self._refusing:
                    self._refusing = False
                    log.warning("readings durable again; acknowledging resumes")
                return done
            except self.not_durable as exc:
                self.metrics.not_durable.inc()
                if self.stopping:
                    raise _GiveUp from exc
                # Every in-flight message is refused at once (up to receive_maximum of them, each
                # retried): say it once per episode; `not_durable_total` counts every refusal.
                if not self._refusing:
                    self._refusing = True
                    log.warning("readings not durable (%s); holding acknowledgements and retrying", exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)


class _GiveUp(Exception):
    """Shutting down with the message's readings not durable: leave it unacknowledged."""


class _Prepared:
    """A message decoded and validated, waiting for its group's write."""

    __slots__ = ("msg", "gw", "channel", "key", "body", "n")

    def __init__(
        self, msg: Message, gw: str, channel: str, key: tuple[int, int, int], body: bytes, n: int
    ) -> None:
        self.msg = msg
        self.gw = gw
        self.channel = channel
        self.key = key
        self.body = body  # n lines of line protocol, newline-separated
        self.n = n


def _reading_bytes(batch: decode.Batch | decode.RawBatch, reading: object) -> bytes:
    """The refused reading as a one-reading batch (the same header), so a dead letter neither repeats
    the whole batch nor loses the context it needs to be replayed (`citybrain collector dead-letters`)."""
    m: dict[int, object] = {
        decode.K_VERSION: batch.version,
        decode.K_BOOT: batch.boot,
        decode.K_SEQ: batch.seq,
        decode.K_T0: batch.t0,
        decode.K_READINGS: [reading],
    }
    if batch.alarm is not None:
        m[decode.K_ALARM] = batch.alarm
    try:
        return cbor2.dumps(m)
    except Exception:  # a value cbor2 cannot write back; the detail still names the reading
        return b""


def build_writer(config: Config, dead_letters: DeadLetters) -> WriterLike:
    """The real writer: InfluxDB sink + SQLite spool (collector/writer.py, collector/sinks/influx.py)."""
    from collector.sinks.influx import InfluxV1Sink, InfluxV2Sink
    from collector.spool import Spool
    from collector.writer import Writer

    ic = config.influx
    sink: InfluxV1Sink | InfluxV2Sink
    if ic.version == 1:
        sink = InfluxV1Sink(
            ic.url,
            ic.db,
            ic.rp,
            ic.user,
            ic.password,
            timeout_s=config.writer.timeout,
            create_database=ic.create_database,
        )
    else:
        sink = InfluxV2Sink(ic.url, ic.org, ic.bucket, ic.token, timeout_s=config.writer.timeout)
    spool = Spool(config.storage.spool_path, config.storage.spool_max_bytes)
    return Writer(
        sink,
        spool,
        dead_letters,
        batch_points=config.writer.batch_size,
        batch_age_s=config.writer.flush_interval,
        config_error_retry_s=config.writer.hold_retry,
        backlog_timeout_s=config.writer.backlog_timeout,
    )


def open_dead_letters(config: Config) -> DeadLetters:
    """The dead-letter store with the configured bounds (the service and the CLI open it one way)."""
    st = config.storage
    return DeadLetters(
        st.dead_letter_path,
        max_bytes=st.dead_letter_max_bytes,
        max_age_s=st.dead_letter_max_age,
        payload_max=st.dead_letter_payload_max,
        log_quiet_s=config.service.refusal_log_quiet,
    )


def _number(v: object) -> float:
    return float(v) if isinstance(v, int | float) else 0.0


async def close_writer(writer: WriterLike, timeout: float) -> None:
    """Drain the writer, then release what it was built from (HTTP session, spool file)."""
    await writer.close(drain=True, timeout_s=timeout)
    sink = getattr(writer, "sink", None)
    if sink is not None and hasattr(sink, "close"):
        await sink.close()
    spool = getattr(writer, "spool", None)
    if spool is not None and hasattr(spool, "close"):
        spool.close()


class Collector:
    """Resources in start order; `stop` undoes them in reverse after draining the pipeline."""

    def __init__(
        self,
        config: Config,
        *,
        writer_factory: WriterFactory = build_writer,
        kinds: dict[int, Kind] | None = None,
        not_durable: type[BaseException] | None = None,
    ) -> None:
        self.config = config
        self.metrics = Metrics()
        self.dead_letters = open_dead_letters(config)
        self.writer = writer_factory(config, self.dead_letters)
        self.input: MqttInput | NatsInput = (  # one config key: service.input
            MqttInput(config.mqtt, self._offer_many)
            if config.service.input == "mqtt"
            else NatsInput(config, self._offer)
        )
        rc = config.receipts
        self.receipts: Receipts | None = None
        if rc.enabled:  # either input publishes on the gateway's ack topic (subject, on NATS)
            self.receipts = Receipts(config.mqtt.topic_prefix, self.input.publish, max_ranges=rc.max_ranges)
        self.pipeline = Pipeline(
            config,
            writer=self.writer,
            dead_letters=self.dead_letters,
            metrics=self.metrics,
            ack=self.input.ack,
            kinds=kinds,
            not_durable=not_durable,
            receipts=self.receipts,
        )
        self.server: MetricsServer | None = None
        self._liveness_task: asyncio.Task[None] | None = None
        self._health_task: asyncio.Task[None] | None = None
        self._receipts_task: asyncio.Task[None] | None = None
        self.health_watch = Health(
            config.health, time.monotonic(), self.writer.stats, self.dead_letters.added
        )
        self.metrics.collect.append(self._collect)

    def _offer(self, msg: Message) -> None:
        self.pipeline.offer(msg)

    def _offer_many(self, msgs: list[Message]) -> None:
        self.pipeline.offer_many(msgs)

    def _collect(self) -> None:
        self.metrics.connected.set(1 if self.input.connected else 0)
        stats = dict(self.writer.stats)
        self.metrics.mirror_stats(stats)
        self.metrics.type_conflicts.mirror(float(_number(stats.get("type_conflicts"))))
        writer_dead = stats.get("dead_letters")
        if isinstance(writer_dead, Mapping):
            # The writer's own dead letters (database refusals, unserializable points): reasons the
            # pipeline never uses, so mirroring them cannot double a count.
            for reason, n in writer_dead.items():
                self.metrics.dead_letters.mirror(float(n), reason=str(reason))
        dl = self.dead_letters.stats()
        for cause in ("age", "size"):
            self.metrics.dead_letters_dropped.mirror(dl.pop(f"dead_letter_dropped_{cause}"), cause=cause)
        for key, value in dl.items():
            self.metrics.dead_letter_store.set(value, stat=key)
        if self.receipts is not None:
            r = self.receipts
            self.metrics.receipts.mirror(float(r.sent), outcome="sent")
            self.metrics.receipts.mirror(float(r.marked), outcome="marked")
            self.metrics.receipts.mirror(float(r.held), outcome="held")

    def health(self) -> tuple[bool, dict[str, object]]:
        """(taking data, detail): detail["status"] is ok, degraded (with "reasons") or down."""
        subscribed = self.input.subscribed.is_set()
        ok = self.input.connected and subscribed and self.pipeline.accepting
        reasons = self.health_watch.reasons(time.monotonic(), self.writer.stats, self.dead_letters.added)
        if not ok:
            down = [
                why
                for why, bad in (
                    ("not connected to the MQTT broker", not self.input.connected),
                    ("not subscribed", not subscribed),
                    ("draining (shutting down)", not self.pipeline.accepting),
                )
                if bad
            ]
            reasons = down + reasons
        return ok, {
            "status": "down" if not ok else "degraded" if reasons else "ok",
            "reasons": reasons,
            "mqtt_connected": self.input.connected,
            "subscribed": subscribed,
            "accepting": self.pipeline.accepting,
            "inflight": len(self.pipeline._order),
            "silent_gateways": sorted(self.pipeline.liveness.silent),
            # collector/_fastup.c in use, or why not (the pure path: same results, more CPU)
            "up_path": decode.up_path(),
        }

    async def _watch_health(self) -> None:
        """Sample the health counters every second; end quiet refusal-log episodes."""
        while True:
            await asyncio.sleep(1.0)
            self.health_watch.sample(time.monotonic(), self.writer.stats, self.dead_letters.added)
            self.dead_letters.flush_log()

    async def _send_receipts(self, receipts: Receipts) -> None:
        """Coalesce: at most one receipt per gateway and boot every receipts.interval."""
        while True:
            await asyncio.sleep(self.config.receipts.interval)
            receipts.flush()

    async def _watch_liveness(self) -> None:
        while True:
            await asyncio.sleep(self.config.metrics.liveness_interval)
            self.pipeline.liveness.check(time.time())

    async def start(self) -> None:
        await self.writer.start()
        if self.config.metrics.port:
            self.server = MetricsServer(self.metrics, self.health)
            await self.server.start(self.config.metrics.host, self.config.metrics.port)
            log.info("metrics on http://%s:%d/metrics", self.config.metrics.host, self.server.port)
        self._liveness_task = asyncio.get_running_loop().create_task(self._watch_liveness())
        self._health_task = asyncio.get_running_loop().create_task(self._watch_health())
        if self.receipts is not None:
            self._receipts_task = asyncio.get_running_loop().create_task(self._send_receipts(self.receipts))
        await self.input.start()

    async def stop(self) -> None:
        """Drain: finish in-flight writes and send their acks, disconnect, then close the writer."""
        drained = await self.pipeline.drain(self.config.service.drain_timeout)
        if self.receipts is not None:
            self.receipts.flush()  # what the drain made durable, before the DISCONNECT
        await self.input.close()
        for task in (self._liveness_task, self._health_task, self._receipts_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await close_writer(self.writer, self.config.service.drain_timeout)
        if self.server is not None:
            await self.server.close()
        self.dead_letters.close()
        log.info("collector stopped (%s)", "drained" if drained else "drain timed out")


async def _signals() -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def tune_gc() -> None:
    """Once the service is up: what it built to run (config, registry, modules, the pipeline) is
    frozen out of the cyclic collector, and the youngest generation is collected every 50,000 net
    allocations instead of CPython's 700. Reference counting frees nearly everything a message
    makes; at the default threshold a collection ran every few reads and walked the young objects
    each time (0.75 us of the collector's CPU per reading under perf). Cyclic garbage (asyncio
    futures holding a traceback) now waits longer: at most some 50,000 objects, a few MB."""
    gc.freeze()
    _, mid, old = gc.get_threshold()
    gc.set_threshold(50_000, mid, old)


async def run(
    config: Config,
    *,
    shutdown: Callable[[], Awaitable[object]] | None = None,
    writer_factory: WriterFactory = build_writer,
    started: Callable[[Collector], None] | None = None,
) -> int:
    """Run until `shutdown()` completes (default: SIGTERM or SIGINT), then drain and stop. Returns 0."""
    collector = Collector(config, writer_factory=writer_factory)
    await collector.start()
    tune_gc()
    if started is not None:
        started(collector)
    try:
        await (shutdown or _signals)()
    finally:
        await collector.stop()
    return 0
