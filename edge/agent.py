"""The gateway agent: sources -> rules -> log -> batches -> broker, and commands back.

One object owns the pieces and three kinds of task run on one asyncio loop: a task per source,
the uplink (connect, alarms first, batches in a bounded window, acks back to the log, status and
commands) and housekeeping (log group-sync, clock, status timer). The runtime differences
(serial ports, clock source, heap, reboot) come from a `port` object: edge/ports/.

A reading counts as taken when `accept` has appended it to the log; from there only the
collector's receipt for its batch removes it (uplink.receipts, the default; docs/protocol.md
"Receipt"), or without receipts the broker's PUBACK. Alarms are also published at once on
`<prefix>/<gw>/alarm` (bounded queue, drops counted); with receipts an alarm stays queued, and its
record in the log, until the collector receipts the alarm, and a reboot publishes again the
alarms the log still holds (docs/gateway.md, "Alarms").
"""

import asyncio

from edge import VERSION, cbor, protocol, record
from edge.compat import const, ticks_diff, ticks_ms, unload
from edge.mqtt.client import backoff_delays
from edge.mqtt.errors import MQTTError

# Alarms waiting to be published (live, or held until the clock is set). 16 overflowed in the
# HIL storm: a boot without a clock for ~10 s (NTP retried every 10 s) held 16-18 lid alarms
# (those the site broker queued while the gateway was down included); 18 lost 2. 32 holds more.
# A full queue still drops the live copy, counted in the status `errors` (ALARM_DROPS).
_ALARM_QUEUE = const(32)
# An alarm in the queue: [log record id (None without receipts), record bytes, alarm seq (-1:
# not published yet), packet id until PUBACKed, ticks of the PUBACK (None: due again), re-sends].
_A_RID = const(0)
_A_REC = const(1)
_A_SEQ = const(2)
_A_PID = const(3)
_A_AT = const(4)
_A_TRIES = const(5)
_ANCHORS_KEPT = const(16)
_ALARM_BYTES = const(256)
_PEEK_BYTES = const(2048)  # record bytes read from the logs for one batch
_SUMMARY_MS = const(10000)  # the start-up line waits at most this long for first attempts
_TYPE_CHECKING = const(0)  # true for mypy only (scripts/board_types.py --always-true): see Agent
if _TYPE_CHECKING:
    from typing import Any


# Where a status' `errors` map counts live alarms dropped from the full queue (this boot).
ALARM_DROPS = ("alarms", "queue_full")


class AgentCrashed(Exception):
    """A task of the agent died of an unexpected error; the runtime should restart the agent."""


class Agent:
    """The agent of one gateway: built from the validated config (edge.config, or the
    config.checked of an image) and a runtime `port`, then `run`.

    Its construction is edge/start.py's (`build`, which documents each attribute): it runs once,
    and a board drops that module again, as the log does edge/store/boot.py.
    """

    if _TYPE_CHECKING:
        # The attributes edge.start.build sets, declared for the board type check (which checks
        # every use of them). `if 0:` after const folding: mpy-cross drops the block and CPython
        # never runs it, so a board pays nothing for it.
        port: Any
        up_cfg: dict
        log: Any
        events: Any
        boot: int
        anchors: dict
        clock: Any
        _rec: Any
        _alarm_enc: Any
        sources: list
        batcher: Any
        receipts_got: int
        receipts_bad: int
        _last_resend: int
        _replay_end: list
        _replayed: list
        _carry: list
        _unsent: Any
        _sent: list
        alarms: list
        alarm_seq: int
        alarms_sent: int
        alarms_resent: int
        alarms_receipted: int
        alarms_dropped: int
        alarms_unstamped: int
        commands: list
        commands_dropped: int
        wake: Any
        stopping: bool
        crashed: Any
        _recent: list
        _stamps: list
        _n_recent: int
        _hi: int
        flush_requested: bool
        connects: int
        gw: str
        tried: bool
        held: bool
        ntp_retry_ms: int
        _last_batch: int
        topics: dict
        _ack_topic: bytes
        endpoints: list
        _endpoint: int
        client: Any
        ntp_host: Any
        image: Any

    def __init__(self, cfg, port):
        from edge import start

        # The client's in-flight slots beyond the batches': the alarm queue, status and replies.
        start.build(self, cfg, port, _ALARM_QUEUE + 4)
        unload(start.__name__)

    # -- sources ---------------------------------------------------------------------------

    def accept(self, sensor, kind, fields, urgent, alarm):
        """Log one reported reading (durable at once if urgent); queue its alarm if any.

        A point is identified downstream by (sensor, timestamp): two readings of one sensor in
        the same millisecond (an arrival and a heartbeat read in one go) would overwrite each
        other in the database. So each sensor's times strictly increase, by 1 ms if need be.

        Uptime never goes back, so only a stamp given at or after this millisecond can collide,
        i.e. one of the current burst. The burst's sensors are kept in a fixed list (8 long,
        edge.start; emptied when uptime passes the latest stamp); past that many in one burst, a sensor
        not in the list gets one more than the latest stamp, which is above any it had.
        """
        up = self.clock.uptime_ms()
        hi = self._hi
        if up > hi:
            self._n_recent = 0  # every earlier stamp is below `up`
        n = self._n_recent
        recent = self._recent
        stamps = self._stamps
        i = 0
        while i < n and recent[i] != sensor:
            i += 1
        if i < n:
            if up <= stamps[i]:
                up = stamps[i] + 1
            stamps[i] = up
        elif n < len(recent):
            recent[n] = sensor
            stamps[n] = up
            self._n_recent = n + 1
        elif up <= hi:
            up = hi + 1
        if up > hi:
            self._hi = up
        offset = self.clock.offset_ms()
        ts = None if offset is None else offset + up
        w = self._rec
        w.reset()
        if ts is None:
            if not self.held:
                self.held = True
                self.port.say("citybrain-gw: warning gw=%s: readings held until the clock is set "
                              "(NTP, or trust_os_clock)" % self.gw)
            record.encode(w, sensor, kind, None, fields, self.boot, up, alarm)
        else:
            record.encode(w, sensor, kind, ts, fields, 0, 0, alarm)
        if self.log.unpeeked + self.events.unpeeked + len(self._carry) == 0:
            # Nothing was waiting to be batched: a partial batch goes batch_age_ms after this one
            # (the log hands records out at once now, so the age counts from the first of them).
            self._last_batch = ticks_ms()
        # Events and alarms to their own log, synced now; periodic readings write-behind (start.py).
        rid = (self.events if urgent else self.log).append(w.view(), urgent)
        if alarm is not None:
            if ts is None:
                # Published once the clock is set, stamped with this boot's anchor (_pump).
                self.alarms_unstamped += 1
            if not self._queue_alarm(rid, bytes(w.view())):
                self.alarms_dropped += 1  # the live copy is lost; the record reaches the collector
        self.wake.set()

    def _queue_alarm(self, rid, payload):
        """Queue the alarm of log record `rid` (its bytes, `payload`); False if the queue is full.
        With receipts its record stays in the log until the alarm is receipted (`_ack`)."""
        if len(self.alarms) >= _ALARM_QUEUE:
            return False
        self.alarms.append([rid if self.up_cfg["receipts"] else None, payload, -1, 0, None, 0])
        return True

    def _ack(self):
        """Ack each log up to the batcher's `upto` for it, but not the record of an alarm still
        awaiting its receipt, nor anything after it in its log: a power cut then leaves that
        record in the log, and the next boot publishes its alarm again."""
        upto = self.batcher.upto
        self._ack_log(self.log, upto[0])
        self._ack_log(self.events, upto[1])

    def _ack_log(self, log, rid):
        if rid is None:
            return
        tag = rid & 1
        hold = None
        for a in self.alarms:
            alarm_rid = a[_A_RID]
            if alarm_rid is not None and alarm_rid & 1 == tag and (hold is None or alarm_rid < hold):
                hold = alarm_rid
        log.ack(rid, hold)

    def _alarm_payload(self, a):
        """The alarm message of queue entry `a` (its seq taken at the first call, so a re-send is
        the same bytes); None while its time is unknown; False if it never can be (an earlier
        boot without an anchor: counted as dropped, its reading is `unstampable`)."""
        try:
            _kind, ts, boot, uptime, ts_pos, f0, f1, code = record.parse(a[_A_REC], self.batcher.n_fields_of)
        except (cbor.CBORError, UnicodeError):
            code = None
        if code is None:
            self.batcher.corrupt += 1  # the log's CRC passed: a bug, counted like the batcher's
            return False
        if ts is None:
            offset = self.anchors.get(boot)
            if offset is None and boot == self.boot:
                offset = self.clock.offset_ms()
            if offset is None:
                return None if boot == self.boot else False  # this boot's waits for its clock
            ts = offset + uptime
        if a[_A_SEQ] < 0:
            a[_A_SEQ] = self.alarm_seq
            self.alarm_seq += 1
        enc = self._alarm_enc
        if enc is None:
            enc = self._alarm_enc = protocol.BatchEncoder(_ALARM_BYTES)
        enc.begin(self.boot, a[_A_SEQ], ts, code)
        mv = memoryview(a[_A_REC])
        if not enc.add_record(mv[1:ts_pos], ts, mv[f0:f1]):
            raise cbor.BufferFull  # larger than _ALARM_BYTES: as encode_alarm did
        return bytes(enc.finish())

    # -- uplink ----------------------------------------------------------------------------

    async def _uplink(self):
        delays = None
        up = self.up_cfg
        while not self.stopping:
            try:
                try:
                    await self.client.connect()
                finally:
                    self.tried = True
                self.connects += 1
                delays = None
                await self.client.subscribe(self.topics[protocol.CMD], 1)
                if up["receipts"]:
                    try:
                        await self.client.subscribe(self.topics[protocol.ACK], 1)
                    except MQTTError as exc:
                        if not self.client.connected:
                            raise
                        # Refused (an old ACL): batches are re-sent until receipts can come.
                        self.port.log("uplink: %s" % exc)
                    self.batcher.resend_all()  # the broker may have lost what it PUBACKed
                    for a in self.alarms:
                        a[_A_AT] = None  # the same for alarms (those not PUBACKed the client re-sends)
                await self.publish_status()
                await self._pump()
            except (MQTTError, OSError) as exc:
                self.port.log("uplink: %s" % exc)
            if self.stopping:
                break
            # No log rewind here: the client keeps every published batch in its in-flight table
            # and resends it (same packet id, same seq) at the next connect, and its PUBACK then
            # acks the log as usual. Rewinding would re-batch those records under new seqs and
            # make that later ack a StoreError ("not peeked") that killed the uplink task.
            if delays is None:
                delays = backoff_delays(up["backoff_base_ms"] / 1000, up["backoff_cap_ms"] / 1000)
            # The next node of the broker cluster for the next attempt (the session moves with us).
            if len(self.endpoints) > 1:
                self._endpoint = (self._endpoint + 1) % len(self.endpoints)
                c = self.client
                c.host, c.port = self.endpoints[self._endpoint]
                if c.ssl:
                    c.server_hostname = c.host
            await asyncio.sleep(next(delays))

    async def _pump(self):
        client = self.client
        up = self.up_cfg
        sent = self._sent
        while not self.stopping:
            if not client.connected:
                raise client.error
            # Acks, in publish order: each acked batch may move the log's ack cursor (with
            # receipts, a PUBACK only frees the window: _on_receipt moves the cursor).
            while sent and client.acked(sent[0][0]):
                if self.batcher.puback(sent.pop(0)[1], ticks_ms()) is not None:
                    self._ack()
            await self._pump_alarms()
            while self.commands:
                from edge import command  # on the first command: a board does not carry it from boot

                await command.handle(self, self.commands.pop(0))
            if self._unsent is not None:
                await self._publish_batch(self._unsent)
            if (up["receipts"] and len(sent) < up["max_inflight"] and ticks_diff(
                    ticks_ms(), self._last_resend) >= 1000 // max(1, up["replay_batches_per_s"])):
                # Not receipted in time, or not since a reconnect: the same bytes again, paced
                # like the backlog replay (alarms and commands went first, above).
                batch = self.batcher.due(ticks_ms(), up["receipt_timeout_ms"])
                if batch is not None:
                    self._last_resend = ticks_ms()
                    await self._publish_batch(batch)
                    continue
            if len(sent) < up["max_inflight"]:
                # A batch is due when asked for, when records are carried over, when a full batch
                # is pending, or when the oldest pending record is batch_age_ms old.
                pending = self.log.unpeeked + self.events.unpeeked + len(self._carry)
                if (self.flush_requested or self._carry or pending >= up["batch_max"]
                        or (pending > 0
                            and ticks_diff(ticks_ms(), self._last_batch) >= up["batch_age_ms"])):
                    if await self._send_batch():
                        continue
            self.wake.clear()
            if len(sent) >= up["max_inflight"]:
                await client.wait_ack(sent[0][0])
            else:
                await self.wake.wait()  # set by new work, or by _housekeeping's tick

    async def _pump_alarms(self):
        """Publish the queued alarms not published yet, in order (one raised before the clock is
        known waits for it, and those after it with it). Without receipts an alarm leaves the
        queue once published (the client re-sends it until PUBACKed); with receipts it stays until
        the collector receipts it, and is published again, same seq and bytes, when no receipt
        came `receipt_timeout_ms` after its PUBACK (doubled per re-send, up to 16x) or after a
        reconnect (`_uplink`)."""
        client = self.client
        up = self.up_cfg
        alarms = self.alarms
        now = ticks_ms()
        i = 0
        while i < len(alarms):
            a = alarms[i]
            if a[_A_PID]:
                if not client.acked(a[_A_PID]):
                    i += 1
                    continue
                a[_A_PID] = 0  # PUBACKed: now it waits for its receipt
                a[_A_AT] = now
            if a[_A_SEQ] >= 0 and a[_A_AT] is not None and ticks_diff(
                    now, a[_A_AT]) < up["receipt_timeout_ms"] << min(a[_A_TRIES], 4):
                i += 1
                continue
            first = a[_A_SEQ] < 0
            payload = self._alarm_payload(a)
            if payload is None:
                break  # raised before the clock is known: waits for the anchor
            if payload is False:
                alarms.pop(i)
                self.alarms_dropped += 1
                self._ack()
                continue
            if first:
                self.alarms_sent += 1
            else:
                a[_A_TRIES] += 1
                self.alarms_resent += 1
            a[_A_AT] = None
            a[_A_PID] = await client.publish(self.topics[protocol.ALARM], payload, 1, False, False)
            if a[_A_RID] is None:
                alarms.pop(i)  # receipts off: the client owns it now
                continue
            i += 1

    async def _send_batch(self):
        """Publish the next batch; True if something was sent (or skipped)."""
        up = self.up_cfg
        backlog = self.pending() > 2 * up["batch_max"] * up["max_inflight"]
        if backlog and not self.flush_requested:
            # Replay after an outage is paced so live alarms and commands are never stuck behind it.
            gap = 1000 // max(1, up["replay_batches_per_s"])
            if ticks_diff(ticks_ms(), self._last_batch) < gap:
                return False
        want = up["batch_max"] - len(self._carry)
        if want > 0:
            # Events first (an outage's replay too), then periodic readings to fill the batch.
            more = self.events.peek(want, _PEEK_BYTES)
            if len(more) < want:
                more += self.log.peek(want - len(more), _PEEK_BYTES)
            recs = self._carry + more
        else:
            recs = self._carry
        held = None
        if self._replay_end[0] is not None or self._replay_end[1] is not None:
            n = self._replay(recs)
            if n < len(recs):
                held = recs[n:]  # from an alarm the full queue cannot take yet
                recs = recs[:n]
        if not recs:
            self._carry = held or []
            self.flush_requested = False
            return False
        batch, used = self.batcher.build(recs)
        self._carry = recs[used:] + held if held else recs[used:]
        held = None
        recs = more = None  # copied into the batch: not kept alive (~5 KB) while it is published
        self._last_batch = ticks_ms()
        if batch is None:
            if self.batcher.release() is not None:
                self._ack()
            return used > 0
        return await self._publish_batch(batch)

    def _replay(self, records):
        """Queue the alarms of the records in `records` that an earlier boot left in the log (their
        receipt may never have come: a power cut). Returns how many of `records` may be batched now:
        those before an alarm the full queue cannot take (none may be acked before its alarm is
        queued; the rest wait in `_carry`)."""
        end = self._replay_end
        done = self._replayed
        for i in range(len(records)):
            rid, rec = records[i]
            t = rid & 1  # which log (records come events first, each log in its order)
            if end[t] is None:
                continue
            if rid > end[t]:
                end[t] = None  # past what earlier boots left in this log
                continue
            if rid > done[t]:
                if rec[0] & 1 and not self._queue_alarm(rid, rec):
                    return i
                done[t] = rid
        return len(records)

    async def _publish_batch(self, batch):
        try:
            pid = await self.client.publish(self.topics[protocol.UP], batch.payload, 1, False, False)
        except MQTTError:
            self._unsent = batch  # refused before it got a slot: publish it first after reconnect
            raise
        self._unsent = None
        batch.pid = pid
        self._sent.append((pid, batch.seq))
        return True

    # -- status and commands ---------------------------------------------------------------

    def status(self):
        errors = {}
        for src in self.sources:
            rep = src.error_report()
            for who in rep:
                errors[who] = rep[who]
        if self.alarms_dropped:
            errors[ALARM_DROPS[0]] = {ALARM_DROPS[1]: self.alarms_dropped}
        return errors

    def status_payload(self):
        log = self.log
        ev = self.events
        w = bytearray()
        waiting = None
        if self.up_cfg["receipts"]:
            waiting = self.batcher.unreceipted(ticks_ms())
        protocol.encode_status(
            w, "online", VERSION, self.boot, self.clock.uptime_ms() // 1000, self.port.mem_free(),
            log.pending_bytes + ev.pending_bytes, self.pending(),
            log.dropped_records + ev.dropped_records + self.batcher.unstampable,
            self.clock.synced(), self.clock.now_ms(), self.status(), self.image, waiting)
        return bytes(w)

    async def publish_status(self):
        await self.client.publish(self.topics[protocol.STATUS], self.status_payload(), 1, True, False)

    def request_flush(self):
        """Sync the logs and batch what they hold now, not at batch_age_ms; the records pending."""
        self.log.sync()
        self.flush_requested = True
        self.wake.set()
        return self.pending()

    def pending(self):
        """Records in the logs (periodic and events) not yet acked."""
        return self.log.pending + self.events.pending

    def _on_message(self, topic, payload, retain=False, dup=False):
        if topic == self._ack_topic:
            self._on_receipt(payload)
            return
        if len(self.commands) < 8:
            self.commands.append(bytes(payload))
        else:
            self.commands_dropped += 1  # an operator sends a handful; a flood is refused, counted
        self.wake.set()

    def _on_receipt(self, payload):
        """A receipt (decoded at once: `payload` views the client's receive buffer): the batches
        and alarms it names are delivered; their records leave the log."""
        try:
            boot, up, alarms = protocol.decode_receipt(payload)
        except cbor.CBORError:
            self.receipts_bad += 1
            return
        self.receipts_got += 1
        if boot != self.boot:
            return  # an earlier boot's batches and alarms were re-batched and queued in this one
        if alarms:
            q = self.alarms
            i = 0
            n = len(q)
            while i < len(q):
                seq = q[i][_A_SEQ]
                j = 0
                while j < len(alarms) - 1 and not (seq >= 0 and alarms[j] <= seq <= alarms[j + 1]):
                    j += 2
                if j < len(alarms) - 1:
                    q.pop(i)  # durable: its record may leave the log with its batch
                else:
                    i += 1
            if len(q) < n:
                self.alarms_receipted += n - len(q)
                self._ack()
                self.wake.set()
        if self.batcher.receipted(up) is not None:
            self._ack()
            self.wake.set()

    # -- housekeeping ----------------------------------------------------------------------

    async def _housekeeping(self):
        """Every second: log group-sync, sources' time checks, clock, status, watchdog. And every
        tick (a quarter of batch_age_ms, at most 1 s) wake the uplink, so batch age and replay
        pacing are rechecked: one long-lived task instead of a `wait_for` around each of the
        uplink's idle waits, which on MicroPython creates two tasks and a closure every time.
        """
        status_ms = self.up_cfg["status_every_s"] * 1000
        tick_s = min(1000, max(10, self.up_cfg["batch_age_ms"] // 4)) / 1000
        last_status = started = ticks_ms()
        last_second = last_ntp = None
        while not self.stopping:
            self.wake.set()
            now = ticks_ms()
            if last_second is not None and ticks_diff(now, last_second) < 1000:
                await asyncio.sleep(tick_s)
                continue
            last_second = now
            self.log.poll()
            self.events.poll()  # its state file (the cursor): records are synced at append
            for src in self.sources:
                src.housekeep(now)
            if not self.clock.synced():
                if last_ntp is None or ticks_diff(now, last_ntp) >= self.ntp_retry_ms:
                    last_ntp = now
                    if self.port.sync_clock(self.ntp_host):
                        self.clock.mark_synced()
            anchors = self.anchors
            if self.clock.synced() and self.boot not in anchors:
                # This boot's anchor, persisted with the newest others (the oldest are dropped).
                # In place: the batcher holds this dict's `get`.
                anchors[self.boot] = self.clock.offset_ms()
                boots = sorted(anchors)
                for b in boots[:-_ANCHORS_KEPT]:
                    del anchors[b]
                lines = ["%d %d" % (b, anchors[b]) for b in boots[-_ANCHORS_KEPT:]]
                self.log.files.write_atomic(self.log.dir + "/anchors", ("\n".join(lines) + "\n").encode())
            if ticks_diff(now, last_status) >= status_ms and self.client.connected:
                last_status = now
                try:
                    await self.publish_status()
                except MQTTError:
                    pass
            if started is not None and (ticks_diff(now, started) >= _SUMMARY_MS or (
                    self.tried and all(s.opened is not None for s in self.sources))):
                # The start-up line (docs/gateway.md, "Console"), once the uplink and every source
                # made a first attempt, or _SUMMARY_MS after start. Fields are only added at the end.
                started = None
                n = 0
                for s in self.sources:
                    if s.opened:
                        n += 1
                self.port.say("citybrain-gw: up gw=%s fw=%s boot=%d sources=%d/%d broker=%s clock=%s" % (
                    self.gw, VERSION, self.boot, n, len(self.sources),
                    "connected" if self.client.connected else "down",
                    "synced" if self.clock.synced() else "unsynced"))
            self.port.feed_watchdog()
            await asyncio.sleep(tick_s)

    async def _guard(self, coro, name, stop):
        """Run one task; if it dies of a bug, stop the whole agent instead of limping on without it.

        A gateway whose uplink task is gone would keep logging readings and never send them; an
        exit lets the supervisor (systemd, the board's main.py) restart a whole agent.
        """
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.crashed = "%s: %r" % (name, exc)
            self.port.log("task died: " + self.crashed)  # stopping for a restart
            stop.set()

    async def run(self, shutdown=None):
        """Run until `shutdown` (an asyncio.Event) is set; then sync the log and disconnect.

        If a task dies of an unexpected error, the agent stops and raises AgentCrashed, without
        a clean MQTT disconnect, so the broker publishes the offline will.
        """
        stop = shutdown if shutdown is not None else asyncio.Event()
        tasks = [asyncio.create_task(self._guard(s.run(), "source " + s.kind, stop))
                 for s in self.sources]
        tasks.append(asyncio.create_task(self._guard(self._uplink(), "uplink", stop)))
        tasks.append(asyncio.create_task(self._guard(self._housekeeping(), "housekeeping", stop)))
        try:
            await stop.wait()
        finally:
            self.stopping = True
            for t in tasks:
                t.cancel()
            for t in tasks:
                try:
                    await t
                except BaseException:  # cancelled, or the error that stopped it
                    pass
            self.log.close()
            self.events.close()
            if self.crashed is not None:
                self.client.close()  # no DISCONNECT: the broker publishes the will
                raise AgentCrashed(self.crashed)
            try:
                if self.client.connected:
                    # A planned stop: say so in the retained status (the will covers crashes).
                    offline = protocol.will_payload(VERSION, self.boot)
                    await asyncio.wait_for(
                        self.client.publish(self.topics[protocol.STATUS], offline, 1, True), 2)
                await self.client.disconnect()
            except (MQTTError, asyncio.TimeoutError):
                pass
