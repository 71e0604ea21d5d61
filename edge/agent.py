"""The gateway agent: sources -> rules -> log -> batches -> broker, and commands back.

One object owns the pieces and three kinds of task run on one asyncio loop: a task per source,
the uplink (connect, alarms first, batches in a bounded window, acks back to the log, status and
commands) and housekeeping (log group-sync, clock, status timer). The runtime differences
(serial ports, clock source, heap, reboot) come from a `port` object: edge/ports/.

A reading counts as taken when `accept` has appended it to the log; from there only the
collector's receipt for its batch removes it (uplink.receipts, the default; docs/protocol.md
"Receipt"), or without receipts the broker's PUBACK. Alarms are also published at once on
`<prefix>/<gw>/alarm` (best effort, bounded queue, drops counted); the batch stream is the record.
"""

import asyncio

from edge import VERSION, cbor, protocol, record
from edge.batcher import Batcher
from edge.clock import Clock
from edge.compat import const, ticks_diff, ticks_ms
from edge.mqtt.client import MQTTClient, backoff_delays
from edge.mqtt.errors import MQTTError
from edge.mqtt.packets import Will
from edge.store import Log

# Alarms waiting to be published (live, or held until the clock is set). 16 overflowed in the
# HIL storm: a boot without a clock for ~10 s (NTP retried every 10 s) held 16-18 lid alarms
# (those the site broker queued while the gateway was down included); 18 lost 2. 32 holds more.
# A full queue still drops the live copy, counted in the status `errors` (ALARM_DROPS).
_ALARM_QUEUE = const(32)
_RECENT = const(8)  # sensors remembered with their stamps while a burst shares one millisecond
_ANCHORS_KEPT = const(16)
_NTP_RETRY_MS = const(10000)
_ALARM_BYTES = const(256)
_RECORD_BYTES = const(512)  # one log record: a sensor id and a kind's fields
_BATCH_CAP = const(8192)
_BATCH_ROOM = const(64)
_READING_BYTES = const(48)
_CMD_BYTES = const(1024)  # the largest command (and its topic) the uplink receives
_TX_ROOM = const(16)  # a PUBLISH or SUBSCRIBE header beside its topic
_SUMMARY_MS = const(10000)  # the start-up line waits at most this long for first attempts


# Where a status' `errors` map counts live alarms dropped from the full queue (this boot).
ALARM_DROPS = ("alarms", "queue_full")


class AgentCrashed(Exception):
    """A task of the agent died of an unexpected error; the runtime should restart the agent."""


class Agent:
    def __init__(self, cfg, port):
        self.port = port
        gw = cfg["gateway_id"]
        up = cfg["uplink"]
        self.up_cfg = up
        st = cfg["store"]
        port.makedirs(st["dir"])
        log = self.log = Log(st["dir"], st["budget_bytes"], st["segment_bytes"],
                             st["sync_every_ms"], st["sync_every_bytes"])
        self.boot = log.boot
        # Per-boot clock anchors (boot -> UTC minus uptime), persisted so a reboot can still stamp
        # a backlog: a plain dict, whose `get` the batcher calls; housekeeping adds this boot's.
        self.anchors = {}
        text = log.files.read_small(log.dir + "/anchors")  # None if there is none (or unreadable)
        if text:
            for line in bytes(text).decode().split("\n"):
                parts = line.split()
                if len(parts) == 2:
                    self.anchors[int(parts[0])] = int(parts[1])
        self.clock = Clock(port.utc_ms, cfg["trust_os_clock"])
        self._rec = cbor.Writer(_RECORD_BYTES)
        self._alarm_enc = None  # one BatchEncoder for every alarm, made at the first
        self.sources = []
        n_fields = {}
        for scfg in cfg["sources"]:
            t = scfg["transport"]
            if t == "serial":
                from edge.sources.serial import SerialSource

                src = SerialSource(scfg, port, self.accept)
            elif t == "modbus":
                from edge.sources.modbus import ModbusSource

                src = ModbusSource(scfg, port, self.accept)
            else:
                from edge.sources.mqtt import MqttSource

                site = cfg["site_broker"]
                src = MqttSource(scfg, port, self.accept, site, (site["client_id"] or gw) + "-site")
            self.sources.append(src)
            n_fields[src.kind_code] = len(src.codec.FIELDS)
        # A batch closes when full or at batch_max readings; a typical reading takes ~45 bytes.
        # Batches are encoded into a pool of buffers, one per batch that can be unacknowledged,
        # so publishing never needs a large block at run time. No more are ever in use: _pump
        # builds a batch only while fewer than max_inflight are unacknowledged (a refused one,
        # _unsent, is published again before anything is built), and acks free buffers in
        # publish order. (The pool had one more, ~2.5 KB on a board, which no bench run made.)
        cap = min(_BATCH_CAP, _BATCH_ROOM + _READING_BYTES * up["batch_max"])
        # With receipts a batch keeps its buffer until receipted, so the pool also bounds the
        # batches awaiting a receipt (docs/gateway.md, "Receipts").
        self.batcher = Batcher(self.boot, n_fields.get, self.anchors.get, up["batch_max"], cap,
                               up["max_inflight"], up["receipts"])
        self.receipts_got = 0
        self.receipts_bad = 0  # a receipt that is not one (docs/protocol.md): counted, ignored
        self._last_resend = 0
        self._carry = []
        self._unsent = None  # a built batch the client refused (connection lost): sent first
        self._sent = []  # (pid, seq) of batches published and not yet acked
        self.alarms = []  # (code, sensor, kind, ts or None, fields, uptime ms) waiting to be published
        self.alarm_seq = 0
        self.alarms_sent = 0
        self.alarms_dropped = 0
        self.alarms_unstamped = 0
        self.commands = []
        self.commands_dropped = 0
        self.wake = asyncio.Event()
        self.stopping = False
        self.crashed = None
        # Stamps of the latest burst (see accept): no table per sensor, whatever the sensor count.
        self._recent = [None] * _RECENT
        self._stamps = [0] * _RECENT
        self._n_recent = 0
        self._hi = -1  # the latest stamp given
        self.flush_requested = False
        self.connects = 0
        self.gw = gw
        self.tried = False  # the uplink's first connect attempt has ended (summary line)
        self.held = False  # the once-only "readings held for want of a clock" warning was given
        self.ntp_retry_ms = _NTP_RETRY_MS  # while the clock is unknown (tests shorten it)
        self._last_batch = 0
        prefix = cfg["prefix"]
        self.topics = {leaf: protocol.topic(gw, leaf, prefix) for leaf in protocol.LEAVES}
        self._ack_topic = self.topics[protocol.ACK].encode()  # as the client hands topics over
        b = cfg["broker"]
        self.endpoints = b["endpoints"]  # [(host, port), ...]: the cluster's nodes, tried in turn
        self._endpoint = 0
        cid = b["client_id"] or gw
        will = protocol.will_payload(VERSION, self.boot)
        # Transmit buffer: the headers of publishes on our topics (payloads are sent from their own
        # buffers; the client sizes its CONNECT itself).
        tx = _TX_ROOM + max(len(t.encode()) for t in self.topics.values())
        self.client = MQTTClient(
            cid, b["host"], b["port"], username=b["username"], password=b["password"],
            keepalive=b["keepalive_s"], clean_session=False,
            will=Will(self.topics[protocol.STATUS], will, 1, True),
            ssl=port.ssl_context(b), max_inflight=up["max_inflight"] + _ALARM_QUEUE + 4,
            on_message=self._on_message, buffer_size=_CMD_BYTES, tx_size=tx)
        # The sources have taken what they need: the rest of the config (~1 KB of dicts on a
        # board) is not kept for the run. edge.main drops its own reference too.
        self.ntp_host = cfg["ntp_host"]
        self.image = None  # the board image's hash, set by edge.main (None: not run from an image)

    # -- sources ---------------------------------------------------------------------------

    def accept(self, sensor, kind, fields, urgent, alarm):
        """Log one reported reading (durable at once if urgent); queue its alarm if any.

        A point is identified downstream by (sensor, timestamp): two readings of one sensor in
        the same millisecond (an arrival and a heartbeat read in one go) would overwrite each
        other in the database. So each sensor's times strictly increase, by 1 ms if need be.

        Uptime never goes back, so only a stamp given at or after this millisecond can collide,
        i.e. one of the current burst. The burst's sensors are kept in a fixed list of _RECENT
        (emptied when uptime passes the latest stamp); past that many in one burst, a sensor
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
        elif n < _RECENT:
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
            record.encode(w, sensor, kind, None, fields, self.boot, up)
        else:
            record.encode(w, sensor, kind, ts, fields)
        if self.log.pending == self.batcher.records_in_flight and not self._carry:
            # Nothing was waiting to be batched: a partial batch goes batch_age_ms after this one
            # (the log hands records out at once now, so the age counts from the first of them).
            self._last_batch = ticks_ms()
        self.log.append(w.view(), urgent)
        if alarm is not None:
            if ts is None:
                # Published once the clock is set, stamped with this boot's anchor (_pump).
                self.alarms_unstamped += 1
            if len(self.alarms) >= _ALARM_QUEUE:
                self.alarms_dropped += 1  # the live copy is lost; the record reaches the collector
            else:
                self.alarms.append((alarm, sensor, kind, ts, fields, up))
        self.wake.set()

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
            self._next_endpoint()
            await asyncio.sleep(next(delays))

    def _next_endpoint(self):
        """The next node of the broker cluster for the next attempt (the session moves with us)."""
        if len(self.endpoints) > 1:
            self._endpoint = (self._endpoint + 1) % len(self.endpoints)
            c = self.client
            c.host, c.port = self.endpoints[self._endpoint]
            if c.ssl:
                c.server_hostname = c.host

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
                upto = self.batcher.puback(sent.pop(0)[1], ticks_ms())
                if upto is not None:
                    self.log.ack(upto)
            while self.alarms:
                code, sensor, kind, ts, fields, up_ms = self.alarms[0]
                if ts is None:
                    offset = self.clock.offset_ms()
                    if offset is None:
                        break  # raised before the clock is known: waits for the anchor
                    ts = offset + up_ms
                enc = self._alarm_enc
                if enc is None:
                    enc = self._alarm_enc = protocol.BatchEncoder(_ALARM_BYTES)
                payload = bytes(protocol.encode_alarm(enc, self.boot, self.alarm_seq, code, sensor,
                                                      kind, ts, fields))
                self.alarm_seq += 1
                await client.publish(self.topics[protocol.ALARM], payload, 1, False, False)
                self.alarms_sent += 1
                self.alarms.pop(0)
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
                pending = self.log.pending - self.batcher.records_in_flight
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

    async def _send_batch(self):
        """Publish the next batch; True if something was sent (or skipped)."""
        up = self.up_cfg
        backlog = self.log.pending > 2 * up["batch_max"] * up["max_inflight"]
        if backlog and not self.flush_requested:
            # Replay after an outage is paced so live alarms and commands are never stuck behind it.
            gap = 1000 // max(1, up["replay_batches_per_s"])
            if ticks_diff(ticks_ms(), self._last_batch) < gap:
                return False
        if len(self._carry) < up["batch_max"]:
            more = self.log.peek(up["batch_max"] - len(self._carry), 2048)
            recs = self._carry + more
        else:
            recs = self._carry
        if not recs:
            self.flush_requested = False
            return False
        batch, used = self.batcher.build(recs)
        self._carry = recs[used:]
        recs = more = None  # copied into the batch: not kept alive (~5 KB) while it is published
        self._last_batch = ticks_ms()
        if batch is None:
            upto = self.batcher.release()
            if upto is not None:
                self.log.ack(upto)
            return used > 0
        return await self._publish_batch(batch)

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
        w = bytearray()
        waiting = None
        if self.up_cfg["receipts"]:
            waiting = self.batcher.unreceipted(ticks_ms())
        protocol.encode_status(
            w, "online", VERSION, self.boot, self.clock.uptime_ms() // 1000, self.port.mem_free(),
            log.pending_bytes, log.pending, log.dropped_records + self.batcher.unstampable,
            self.clock.synced(), self.clock.now_ms(), self.status(), self.image, waiting)
        return bytes(w)

    async def publish_status(self):
        await self.client.publish(self.topics[protocol.STATUS], self.status_payload(), 1, True, False)

    def request_flush(self):
        """Sync the log and batch what it holds now, not at batch_age_ms; the records pending."""
        self.log.sync()
        self.flush_requested = True
        self.wake.set()
        return self.log.pending

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
        """A receipt (decoded at once: `payload` views the client's receive buffer): the records
        of the batches it names leave the log."""
        try:
            boot, up, _alarms = protocol.decode_receipt(payload)
        except cbor.CBORError:
            self.receipts_bad += 1
            return
        self.receipts_got += 1
        if boot == self.boot:  # an earlier boot's batches were re-batched under this one
            upto = self.batcher.receipted(up)
            if upto is not None:
                self.log.ack(upto)
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
