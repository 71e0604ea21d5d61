"""The gateway agent's construction from its validated config (edge/agent.py, `Agent.__init__`).

A module of its own because it runs once per boot: `Agent` imports it, calls `build`, and a board
drops it again (edge.compat.unload), so its code does not sit in the heap for the whole run (~0.9 KB
on a 32-bit board, docs/benchmarks.md "Memory"), as edge/store/boot.py does for the log; so does
the MQTT clients' CONNECT encoder (edge/mqtt/connect.py) once they are made. The agent's state it
sets up is listed, with its types, in `Agent`.
"""

import asyncio

from edge import VERSION, cbor, protocol
from edge.batcher import Batcher
from edge.clock import Clock
from edge.compat import const, unload
from edge.mqtt.client import MQTTClient
from edge.mqtt.connect import Will
from edge.store import Log

_RECENT = const(8)  # sensors remembered with their stamps while a burst shares one millisecond
_NTP_RETRY_MS = const(10000)
_RECORD_BYTES = const(512)  # one log record: a sensor id and a kind's fields
_BATCH_CAP = const(8192)
_BATCH_ROOM = const(64)
_READING_BYTES = const(48)
_CMD_BYTES = const(1024)  # the largest command (and its topic) the uplink receives
_TX_ROOM = const(16)  # a PUBLISH or SUBSCRIBE header beside its topic


def build(agent, cfg, port, alarm_slots):
    """Set up `agent` for `cfg` on runtime `port`: its log (boot recovery), sources, batcher and
    MQTT client, and its run-time state. `alarm_slots`: the client's in-flight slots beyond the
    batches' (the alarm queue's, and a few for status and replies)."""
    agent.port = port
    gw = cfg["gateway_id"]
    up = cfg["uplink"]
    agent.up_cfg = up
    st = cfg["store"]
    port.makedirs(st["dir"])
    from edge.store import boot as held  # loaded once for both logs (Log drops it when it loaded it)

    log = agent.log = Log(st["dir"], st["budget_bytes"], st["segment_bytes"],
                          st["sync_every_ms"], st["sync_every_bytes"])
    # Events and alarms in a log of their own, synced at every append (no write-behind buffer),
    # so that syncing one never writes the periodic records waiting for their receipt (docs/store.md,
    # "Two logs"). One budget for both; its record ids are odd, the periodic log's even.
    ev = agent.events = Log(st["dir"] + "/events", st["budget_bytes"], st["segment_bytes"],
                            st["sync_every_ms"], 0, files=log.files, tag=1)
    ev.peer = log
    log.peer = ev
    ev._hdr = log._hdr  # one record header buffer for both: every use of it is synchronous
    ev._lenmv = log._lenmv
    del held
    unload("edge.store.boot")
    agent.boot = log.boot
    # Per-boot clock anchors (boot -> UTC minus uptime), persisted so a reboot can still stamp
    # a backlog: a plain dict, whose `get` the batcher calls; housekeeping adds this boot's.
    anchors = agent.anchors = {}
    text = log.files.read_small(log.dir + "/anchors")  # None if there is none (or unreadable)
    if text:
        for line in bytes(text).decode().split("\n"):
            parts = line.split()
            if len(parts) == 2:
                anchors[int(parts[0])] = int(parts[1])
    agent.clock = Clock(port.utc_ms, cfg["trust_os_clock"])
    agent._rec = cbor.Writer(_RECORD_BYTES)
    agent._alarm_enc = None  # one BatchEncoder for every alarm, made at the first
    sources = agent.sources = []
    n_fields = {}
    for scfg in cfg["sources"]:
        t = scfg["transport"]
        if t == "serial":
            from edge.sources.serial import SerialSource

            src = SerialSource(scfg, port, agent.accept)
        elif t == "modbus":
            from edge.sources.modbus import ModbusSource

            src = ModbusSource(scfg, port, agent.accept)
        else:
            from edge.sources.mqtt import MqttSource

            site = cfg["site_broker"]
            src = MqttSource(scfg, port, agent.accept, site, (site["client_id"] or gw) + "-site")
        sources.append(src)
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
    agent.batcher = Batcher(agent.boot, n_fields.get, anchors.get, up["batch_max"], cap,
                            up["max_inflight"], up["receipts"])
    agent.receipts_got = 0
    agent.receipts_bad = 0  # a receipt that is not one (docs/protocol.md): counted, ignored
    agent._last_resend = 0
    # With receipts, the alarms of the records earlier boots left in the logs are queued again
    # as the uplink reads them: per log (index: a record id's low bit), up to this record id (None
    # once past it, or with nothing left); _replayed: done up to. Both None: no replay.
    replay = up["receipts"]
    agent._replay_end = [log.boot_end if replay and log.pending else None,
                         ev.boot_end if replay and ev.pending else None]
    agent._replayed = [-1, -1]
    agent._carry = []
    agent._unsent = None  # a built batch the client refused (connection lost): sent first
    agent._sent = []  # (pid, seq) of batches published and not yet acked
    agent.alarms = []  # the alarm queue: entries as edge.agent's _A_*, in the order raised
    agent.alarm_seq = 0
    agent.alarms_sent = 0
    agent.alarms_resent = 0  # published again for want of a receipt (counted once each time)
    agent.alarms_receipted = 0
    agent.alarms_dropped = 0
    agent.alarms_unstamped = 0
    agent.commands = []
    agent.commands_dropped = 0
    agent.wake = asyncio.Event()
    agent.stopping = False
    agent.crashed = None
    # Stamps of the latest burst (see Agent.accept): no table per sensor, whatever the sensor count.
    agent._recent = [None] * _RECENT
    agent._stamps = [0] * _RECENT
    agent._n_recent = 0
    agent._hi = -1  # the latest stamp given
    agent.flush_requested = False
    agent.connects = 0
    agent.gw = gw
    agent.tried = False  # the uplink's first connect attempt has ended (summary line)
    agent.held = False  # the once-only "readings held for want of a clock" warning was given
    agent.ntp_retry_ms = _NTP_RETRY_MS  # while the clock is unknown (tests shorten it)
    agent._last_batch = 0
    prefix = cfg["prefix"]
    topics = agent.topics = {leaf: protocol.topic(gw, leaf, prefix) for leaf in protocol.LEAVES}
    agent._ack_topic = topics[protocol.ACK].encode()  # as the client hands topics over
    b = cfg["broker"]
    agent.endpoints = b["endpoints"]  # [(host, port), ...]: the cluster's nodes, tried in turn
    agent._endpoint = 0
    # Transmit buffer: the headers of publishes on our topics (payloads are sent from their own
    # buffers; the client sizes its CONNECT itself).
    tx = _TX_ROOM + max(len(t.encode()) for t in topics.values())
    agent.client = MQTTClient(
        b["client_id"] or gw, b["host"], b["port"], username=b["username"], password=b["password"],
        keepalive=b["keepalive_s"], clean_session=False,
        will=Will(topics[protocol.STATUS], protocol.will_payload(VERSION, agent.boot), 1, True),
        ssl=port.ssl_context(b), max_inflight=up["max_inflight"] + alarm_slots,
        on_message=agent._on_message, buffer_size=_CMD_BYTES, tx_size=tx)
    # The sources have taken what they need: the rest of the config (~1 KB of dicts on a
    # board) is not kept for the run. edge.main drops its own reference too.
    agent.ntp_host = cfg["ntp_host"]
    agent.image = None  # the board image's hash, set by edge.main (None: not run from an image)
    unload("edge.mqtt.connect")  # every client has encoded its CONNECT
