"""A city block in the loop: several gateways, Mosquitto, the collector and InfluxDB, faults on a timeline.

    hil/scenarios/<name>.toml --hil.spec--> Scenario
      -> one Mosquitto (uplink and site broker), InfluxDB 1.x, the collector (the real service)
      -> per gateway a hil.rig.Rig on that broker: simulated sensors and the agent process
      -> the timeline: sensors talk, faults fire and end, InfluxDB is polled for new points
      -> drain: sensors stop; wait until every expected reading is stored (or drain_timeout)
      -> record (run.json) -> hil.judge -> Verdict

Everything started here is stopped by PID at the end (`Block.close`). Driving is one thread (the
sensors' ticks, gateway power cuts); faults on shared services (broker, InfluxDB, collector) run in
a thread of their own because starting a service blocks; a third thread polls InfluxDB.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import cbor2
import paho.mqtt.client as mqtt

from edge.agent import ALARM_DROPS
from hil.link import ImpairedLink
from hil.live import Snapshot
from hil.ntp import SntpServer
from hil.rig import PREFIX, Rig, RigError
from hil.services import Collector, InfluxDB, Mosquitto, ServiceError
from hil.spec import Fault, Gateway, Scenario
from hil.verify import codecs_by_code, readings_of

DB = "citybrain"
MEASUREMENTS = ("parking", "manhole", "water", "thermometer", "alarm")
# The poller reads points stamped within NARROW_WINDOW_S before now every poll period, and every
# WIDE_EVERY_S those within WIDE_WINDOW_S plus the scenario's longest fault (a backlog delivered
# after a fault carries old timestamps); the drain and the record read the whole run. The wide
# window is bounded so a 30-minute soak does not read its whole history every 2 s: a point first
# seen only by the final read counts as seen then (its latency is an upper bound).
NARROW_WINDOW_S = 10.0
WIDE_EVERY_S = 2.0
WIDE_WINDOW_S = 120.0
WATER_ORDERS = ("ABCD", "CDAB")
# garbage_device: random bytes the extra port writes every rig tick (20 ms) while the fault holds,
# as the one-gateway `faults` scenario's device does (hil/rig.py).
GARBAGE_BYTES_PER_TICK = 16
# The collector's tags that, with the measurement and the time, identify one point (collector/validate.py;
# site and district follow from the gateway).
IDENTITY_TAGS = ("gw", "sensor", "kind", "code")
SYS_STORE = "$SYS/broker/store/messages/count"  # Mosquitto: messages held (queued, in flight, retained)


class Poller:
    """Polls InfluxDB at a bounded rate; remembers when each point was first seen (wall time)."""

    def __init__(
        self, influx: InfluxDB, period: float, since_ms: int, wide_window_s: float = WIDE_WINDOW_S
    ) -> None:
        self.influx = influx
        self.period = period
        self.since_ms = since_ms
        self.wide_window_s = wide_window_s
        self.first_seen: dict[tuple[Any, ...], float] = {}
        self.rows: dict[tuple[Any, ...], tuple[str, dict[str, Any]]] = {}
        self._by_ident: dict[tuple[Any, ...], list[tuple[Any, ...]]] = {}
        self.lock = threading.Lock()
        self.errors = 0  # queries that failed (InfluxDB down during db_down: expected)
        self.queries = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="influx-poller", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _loop(self) -> None:
        last_wide = 0.0
        while not self._stop.is_set():
            t = time.time()
            wide = t - last_wide >= WIDE_EVERY_S
            window = self.wide_window_s if wide else NARROW_WINDOW_S
            since = max(self.since_ms, int((t - window) * 1000))
            try:
                self.scan(since)
                if wide:
                    last_wide = t
            except (OSError, ServiceError, ValueError):
                self.errors += 1
            self._stop.wait(max(0.0, self.period - (time.time() - t)))

    def scan(self, since_ms: int) -> int:
        """One pass over every measurement from `since_ms`; returns how many points were new."""
        q = ";".join(f'SELECT * FROM "{m}" WHERE time >= {since_ms}ms' for m in MEASUREMENTS)
        result = self.influx.query(DB, q)
        now = time.time()
        self.queries += 1
        new = 0
        for i, res in enumerate(result.get("results", [])):
            measurement = MEASUREMENTS[res.get("statement_id", i)]
            for series in res.get("series", []):
                cols = series["columns"]
                for values in series["values"]:
                    row = dict(zip(cols, values, strict=True))
                    with self.lock:
                        new += self._see(measurement, row, now)
        return new

    def _see(self, measurement: str, row: dict[str, Any], now: float) -> int:
        """Remember a row; 1 if it is a point not seen before. Caller holds the lock.

        A point is its series (the collector's identity tags) and time. Its non-null cells may grow
        between two reads: InfluxDB 1.x stores each field as a series of its own, so a read during
        the write can see some fields of a point and not yet the others (seen in the soak: 74 of
        90 000 points). A later read that shows more of it replaces the partial row, and the point
        counts as seen (queryable) only then. A later row that contradicts a cell is kept apart, so
        the judge sees both. Nulls are not cells: SELECT * returns a column for every field the
        measurement has in the time range, so a point's nulls vary with the window.
        """
        ident = (measurement, row["time"], *(row.get(k) for k in IDENTITY_TAGS))
        cells = {k: v for k, v in row.items() if k != "time" and v is not None}
        for key in self._by_ident.get(ident, ()):
            old = {k: v for k, v in self.rows[key][1].items() if k != "time" and v is not None}
            if cells == old:
                return 0
            if all(cells.get(k) == v for k, v in old.items()):  # the same point, more of it visible
                self.rows[key] = (measurement, row)
                self.first_seen[key] = now
                return 0
        key = (*ident, len(self._by_ident.get(ident, ())))
        self._by_ident.setdefault(ident, []).append(key)
        self.first_seen[key] = now
        self.rows[key] = (measurement, row)
        return 1

    def tags(self, measurement: str) -> set[str]:
        """Tag keys of a measurement (SHOW TAG KEYS), asked when the points are handed out."""
        rows = self.influx.points(DB, f'SHOW TAG KEYS FROM "{measurement}"')
        return {r["tagKey"] for r in rows}

    def count(self, exclude: str = "") -> int:
        with self.lock:
            return sum(1 for k in self.first_seen if k[0] != exclude)

    def stored(self) -> list[list[Any]]:
        """[first seen, measurement, gw, sensor, kind, ts_ms, {field: value}] per point."""
        out = []
        with self.lock:
            items = [(self.first_seen[k], *self.rows[k]) for k in self.first_seen]
        tag_keys = {m: self.tags(m) for m in MEASUREMENTS}
        for seen, measurement, row in items:
            tags = tag_keys[measurement]
            fields = {k: v for k, v in row.items() if k not in tags and k != "time" and v is not None}
            kind = row.get("kind") if measurement == "alarm" else measurement
            out.append([seen, measurement, row.get("gw"), row.get("sensor"), kind, row["time"], fields])
        return out


def field_types(influx: InfluxDB) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for m in MEASUREMENTS:
        rows = influx.points(DB, f'SHOW FIELD KEYS FROM "{m}"')
        out[m] = {r["fieldKey"]: r["fieldType"] for r in rows}
    return out


def rig_options(g: Gateway, faults: Sequence[Fault] = ()) -> dict[str, Any]:
    """`hil.rig.Rig` keyword arguments for one gateway of a scenario file: its sensors, the Modbus
    poll period (water's `rate`), the heap, and the wiring its faults need from boot (the extra
    serial port of `garbage_device`). The block and the Python scenarios (hil/scenarios.py) build
    their rigs through this and `tune`."""
    def count(kind: str) -> int:
        s = g.sensor(kind)
        return s.count if s is not None else 0

    water = g.sensor("water")
    return {
        "parking": count("parking"), "thermometers": count("thermometer"), "lids": count("manhole"),
        "water": tuple((a + 1, WATER_ORDERS[a % 2]) for a in range(count("water"))),
        "poll_ms": int(1000 / water.rate) if water is not None else 400,
        "heap": g.heap or "256K",
        "garbage_device": any(f.kind == "garbage_device" and f.gateway == g.id for f in faults),
    }


def tune(rig: Rig, g: Gateway) -> None:
    """What the Rig does not take as arguments: each serial device's clock speed and the lids'
    message rate (the sensors' `rate`); the garbage device silent until its fault fires."""
    for d in rig.devices:
        if d.sim is None:
            d.noise = 0
            continue
        s = g.sensor(d.kind)
        if s is not None:
            d.speed = s.rate
    lids = g.sensor("manhole")
    if rig.lids is not None and lids is not None:
        rig.lids.interval_s = 1.0 / lids.rate


class BacklogSampler:
    """Once a second, where the backlog sits besides the gateways' logs (their statuses say that):
    the broker's message store (`$SYS/broker/store/messages/count`: messages queued for offline
    persistent sessions and in flight, retained ones included; Mosquitto publishes it, retained,
    when it changes, at most every `sys_interval`, 1 s here: the last value holds while connected)
    and the collector's spool (its /metrics `writer{stat="spool_rows"}`, batches, and
    `spool_lines`, points). A sample is missing while its service is down."""

    def __init__(self, broker_port: int, collector: Collector) -> None:
        self.collector = collector
        self.broker: list[list[float]] = []  # [wall time, messages in the store]
        self.spool: list[list[float]] = []  # [wall time, spool rows, spool lines]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="backlog-sampler", daemon=True)
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"hil-sys-{os.getpid()}")
        self.client.reconnect_delay_set(1, 1)
        self.client.on_connect = lambda c, *_a: c.subscribe(SYS_STORE, 0)
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self._store: float | None = None  # the broker's last value, None while not connected
        self.client.connect("127.0.0.1", broker_port)

    def start(self) -> None:
        self.client.loop_start()
        self._thread.start()

    def stop(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        self.client.disconnect()
        self.client.loop_stop()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with contextlib.suppress(ValueError):
            self._store = float(msg.payload.decode())

    def _on_disconnect(self, *_a: Any) -> None:
        self._store = None  # the broker is down or restarting: no sample until it says again

    def _loop(self) -> None:
        while not self._stop.wait(1.0):
            store = self._store
            if store is not None and self.client.is_connected():
                self.broker.append([time.time(), store])
            try:
                rows = self.collector.metric("writer", stat="spool_rows")
                lines = self.collector.metric("writer", stat="spool_lines")
            except (OSError, ServiceError, ValueError):
                continue  # the collector is down (collector_kill): no sample
            self.spool.append([time.time(), rows, lines])


class Block:
    """One scenario run. `run()` returns the record (the content of run.json)."""

    def __init__(self, scenario: Scenario, *, seed: int | None = None, workdir: str | None = None,
                 progress: Callable[[str], None] = print,
                 status: Callable[[Snapshot], None] | None = None) -> None:
        """`progress` gets each event as a line; `status` a Snapshot once a second (None: as a
        line to `progress`). hil/live.py draws both."""
        self.sc = scenario
        self.seed = scenario.seed if seed is None else seed
        self.progress = progress
        self.status = status
        self._own_dir = workdir is None
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="citybrain-block-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.broker = Mosquitto(workdir=str(self.dir / "mosquitto"), extra_config="sys_interval 1\n")
        self.influx = InfluxDB(workdir=str(self.dir / "influxdb"))
        self.collector: Collector | None = None
        self.rigs: dict[str, Rig] = {}
        self.links: dict[str, ImpairedLink] = {}  # gateway -> its uplink proxy (uplink_impair only)
        self.ntp: dict[str, SntpServer] = {}  # gateway -> its NTP server (clock_unset_at_boot only)
        self.poller: Poller | None = None
        self.sampler: BacklogSampler | None = None
        self.fault_log: list[list[Any]] = []  # [start, end, label] wall times
        self.timeline: list[list[float]] = []  # [t, emitted so far, stored so far] once a second
        self.t0 = 0.0
        self._fault_error: BaseException | None = None
        self._down: dict[str, float] = {}  # gateway -> restart at (gateway_power_cut)
        self._rng = random.Random(self.seed)  # which byte a torn tail is cut at
        self._at_broker: dict[str, list[int]] = {}  # gateway -> [/up payloads counted, readings in them]

    # -- bring-up ------------------------------------------------------------------------------

    def start(self) -> None:
        self.progress(f"starting Mosquitto, InfluxDB 1.x, the collector and {len(self.sc.gateways)} gateways")
        self.broker.start()
        self.influx.start()
        self.influx.create_database(DB)
        gateways = {g.id: {"site": g.site, "district": g.district} for g in self.sc.gateways if g.site}
        self.collector = Collector(
            self.broker.port, {"version": 1, "url": self.influx.url, "db": DB},
            client_id="block-collector", workdir=str(self.dir / "collector"),
            settings={"mqtt": {"topic_prefix": PREFIX},
                      "writer": {"flush_interval": f"{round(self.sc.pipeline.collector_flush * 1000)}ms"},
                      "gateways": gateways},
        )
        # The collector's session exists before the first batch (in production it runs first).
        self.collector.start()
        for i, g in enumerate(self.sc.gateways):
            self.rigs[g.id] = self._rig(g, self.seed * 100 + i)
        for rig in self.rigs.values():
            rig.begin_start_agent()
        deadline = time.monotonic() + 60
        while not all(r.came_online() for r in self.rigs.values()):
            if time.monotonic() > deadline:
                late = [gw for gw, r in self.rigs.items() if not r.came_online()]
                raise RigError(f"gateways {late} did not come online")
            self._tick()
            time.sleep(0.02)
        self.progress(f"{len(self.rigs)} gateways online: "
                      + ", ".join(f"{g.id} ({g.runtime})" for g in self.sc.gateways))

    def _rig(self, g: Gateway, seed: int) -> Rig:
        (self.dir / g.id).mkdir(parents=True, exist_ok=True)
        uplink_port = None
        if any(f.kind == "uplink_impair" and f.gateway == g.id for f in self.sc.faults):
            self.links[g.id] = ImpairedLink(self.broker.port, seed=seed)
            uplink_port = self.links[g.id].port
        pipe = self.sc.pipeline
        rig = Rig(g.runtime, gw=g.id, seed=seed, sync_every_ms=round(pipe.sync_every * 1000),
                  batch_age_ms=round(pipe.batch_age * 1000), receipts=pipe.receipts,
                  workdir=str(self.dir / g.id), broker=self.broker, uplink_port=uplink_port,
                  **rig_options(g, self.sc.faults))
        tune(rig, g)
        if any(f.kind == "clock_unset_at_boot" and f.gateway == g.id for f in self.sc.faults):
            self.ntp[g.id] = SntpServer()
            self.ntp[g.id].answering = True
            self._configure(rig, ntp_host=self.ntp[g.id].host)
        return rig

    @staticmethod
    def _configure(rig: Rig, **changes: Any) -> None:
        """Change the gateway's config file; the agent reads it at its next boot."""
        rig.config.update(changes)
        rig.config_path.write_text(json.dumps(rig.config, indent=2))

    # -- the timeline --------------------------------------------------------------------------

    def _tick(self) -> None:
        for rig in self.rigs.values():
            rig.run(0)  # one tick of its sensors (into nothing while its gateway is powered off)
            rig.came_online()

    def run_timeline(self) -> None:
        assert self.poller is None
        self.t0 = time.time()
        longest = max((f.duration for f in self.sc.faults), default=0.0)
        self.poller = Poller(self.influx, self.sc.poll_interval, int((self.t0 - 60) * 1000),
                             WIDE_WINDOW_S + longest)
        self.poller.start()
        assert self.collector is not None
        self.sampler = BacklogSampler(self.broker.port, self.collector)
        self.sampler.start()
        pending = list(self.sc.faults)
        service_faults: list[threading.Thread] = []
        next_report = self.t0
        end = self.t0 + self.sc.duration
        while True:
            now = time.time()
            if self._fault_error is not None:
                raise RigError(f"fault injection failed: {self._fault_error}")
            while pending and now >= self.t0 + pending[0].at:
                f = pending.pop(0)
                th = self._fire(f)
                if th is not None:
                    service_faults.append(th)
            for gw, at in list(self._down.items()):
                if now >= at:
                    del self._down[gw]
                    self.rigs[gw].begin_start_agent()
            self._tick()
            if now >= next_report:
                self._report(now)
                next_report += 1.0
            if now >= end:
                break
            time.sleep(0.02)
        for th in service_faults:
            th.join()
        for gw in list(self._down):
            del self._down[gw]
            self.rigs[gw].begin_start_agent()
        deadline = time.monotonic() + 60
        while not all(r.came_online() for r in self.rigs.values()):
            if time.monotonic() > deadline:
                raise RigError("a gateway did not come back online after its power cut")
            self._tick()
            time.sleep(0.02)

    def emitted(self) -> int:
        return sum(1 for r in self.rigs.values() for e in r.emissions if e.fields is not None)

    def _report(self, now: float) -> None:
        assert self.poller is not None
        emitted, stored, at_broker = self.emitted(), self.poller.count(), self.at_broker()
        self.timeline.append([now - self.t0, emitted, stored])
        firing = tuple(label for s, e, label in self.fault_log if s <= now and (e is None or now < e))
        online = sum(1 for r in self.rigs.values() if r.agent is not None and r.agent.alive())
        snap = Snapshot(now - self.t0, self.sc.duration, online, len(self.rigs), emitted, at_broker, stored,
                        firing)
        if self.status is not None:
            self.status(snap)
        else:
            self.progress(snap.line())

    def at_broker(self) -> int:
        """Readings in the /up batches the rig's subscribers got (water included, redeliveries too)."""
        total = 0
        for gw, rig in self.rigs.items():
            seen = self._at_broker.setdefault(gw, [0, 0])
            payloads = rig.sub.payloads("up") if rig.sub is not None else []
            for raw in payloads[seen[0]:]:
                with contextlib.suppress(cbor2.CBORDecodeError, KeyError, TypeError, IndexError, ValueError):
                    seen[1] += len(cbor2.loads(raw)[4])
            seen[0] = len(payloads)
            total += seen[1]
        return total

    def _fire(self, f: Fault) -> threading.Thread | None:
        """Start a fault; gateway faults act in this thread, service faults in a thread of their own."""
        start = time.time()
        entry: list[Any] = [start, None, f.label()]
        self.fault_log.append(entry)
        self.progress(f"fault: {f.label()}")
        if f.kind == "gateway_power_cut":
            rig = self.rigs[f.gateway]
            rig.kill_agent()
            if f.torn_tail:
                rig.tear_log_tail(self._rng, f.torn_tail, max_age_s=0.1)
            self._down[f.gateway] = start + max(f.duration, 0.2)
            entry[1] = start + f.duration
            return None
        if f.kind == "clock_unset_at_boot":
            # A power cut, then a boot with no clock: the OS clock is not trusted and NTP is silent
            # until the fault ends (hil/ntp.py); readings wait in the log with their uptime.
            rig = self.rigs[f.gateway]
            rig.kill_agent()
            self.ntp[f.gateway].answering = False
            self._configure(rig, trust_os_clock=False)
            self._down[f.gateway] = start + 0.2
            th = threading.Thread(target=self._guard, args=(self._clock_back, f, entry), daemon=True)
            th.start()
            return th
        if f.kind in ("serial_noise", "bit_flips", "slave_silent", "storm", "uplink_impair", "garbage_device",
                      "dead_slave"):
            th = threading.Thread(target=self._guard, args=(self._device_fault, f, entry), daemon=True)
        else:
            th = threading.Thread(target=self._guard, args=(self._service_fault, f, entry), daemon=True)
        th.start()
        return th

    def _guard(self, fn: Callable[[Fault, list[Any]], None], f: Fault, entry: list[Any]) -> None:
        try:
            fn(f, entry)
        except BaseException as exc:  # reported by the driving thread, which then stops the run
            self._fault_error = exc

    def _service_fault(self, f: Fault, entry: list[Any]) -> None:
        assert self.collector is not None
        if f.kind == "broker_restart":
            self.broker.stop()
            self.broker.start()
        elif f.kind == "broker_down":
            self.broker.stop()
            time.sleep(f.duration)
            self.broker.start()
        elif f.kind == "db_down":
            self.influx.stop()
            time.sleep(f.duration)
            self.influx.start()
        elif f.kind == "collector_kill":
            self.collector.kill()  # kill -9; systemd restarts it after RestartSec (the fault's `for`)
            time.sleep(f.duration)
            self.collector.start()
        entry[1] = time.time()

    def _device_fault(self, f: Fault, entry: list[Any]) -> None:
        if f.kind in ("serial_noise", "bit_flips"):
            rig = self.rigs[f.gateway]
            dev = next(d for d in rig.devices if d.kind == f.bus and d.sim is not None)
            dev.sim.set_fault("garbage" if f.kind == "serial_noise" else "bad_crc", f.rate)
            time.sleep(f.duration)
            dev.sim.set_fault(None, 0.0)
        elif f.kind == "slave_silent":
            bus = self.rigs[f.gateway].bus
            assert bus is not None
            os.kill(bus.slave.pid, signal.SIGSTOP)  # the slave hangs: no answers, port open
            try:
                time.sleep(f.duration)
            finally:
                os.kill(bus.slave.pid, signal.SIGCONT)
        elif f.kind == "garbage_device":
            dev = next(d for d in self.rigs[f.gateway].devices if d.sim is None)
            dev.noise = GARBAGE_BYTES_PER_TICK
            try:
                time.sleep(f.duration)
            finally:
                dev.noise = 0
        elif f.kind == "dead_slave":
            bus = self.rigs[f.gateway].bus
            assert bus is not None
            bus.mute([f.address])
            try:
                time.sleep(f.duration)
            finally:
                bus.mute(())
        elif f.kind == "uplink_impair":
            link = self.links[f.gateway]
            link.impair(latency=f.latency, jitter=f.jitter, drop=f.drop, partition=f.partition)
            try:
                time.sleep(f.duration)
            finally:
                link.clear()
        elif f.kind == "storm":
            lids = [r.lids for r in self.rigs.values() if r.lids is not None]
            before = [lp.interval_s for lp in lids]
            for lp in lids:
                lp.interval_s /= f.factor
            time.sleep(f.duration)
            for lp, iv in zip(lids, before, strict=True):
                lp.interval_s = iv
        entry[1] = time.time()

    def _clock_back(self, f: Fault, entry: list[Any]) -> None:
        """At the fault's end NTP answers; once the new boot is up its config trusts the OS clock
        again (later boots are ordinary)."""
        rig = self.rigs[f.gateway]
        time.sleep(f.duration)
        self.ntp[f.gateway].answering = True
        entry[1] = time.time()
        assert rig.sub is not None
        before = {s.get("boot") for t, s in rig.sub.statuses() if t < entry[0]}
        deadline = time.monotonic() + 60
        while not any(s.get("state") == "online" and s.get("boot") not in before
                      for _, s in rig.sub.statuses()):
            if time.monotonic() > deadline:
                raise RigError(f"{f.gateway} did not boot after clock_unset_at_boot")
            time.sleep(0.1)
        self._configure(rig, trust_os_clock=True)

    def clock_unset(self) -> dict[str, list[list[float | None]]]:
        """Per gateway, for each clock_unset_at_boot: [online, clock set] wall times of the boot that
        had no clock (from its status messages; None if never). Readings emitted in between were
        logged with their uptime and stamped through the boot's anchor: the judge checks their times."""
        out: dict[str, list[list[float | None]]] = {}
        for start, _end, label in self.fault_log:
            if not label.startswith("clock_unset_at_boot"):
                continue
            gw = label.split()[1]
            rig = self.rigs[gw]
            statuses = rig.sub.statuses() if rig.sub is not None else []
            before = {s.get("boot") for t, s in statuses if t < start}
            boot = next(((t, s.get("boot")) for t, s in statuses
                         if t >= start and s.get("state") == "online" and s.get("boot") not in before), None)
            if boot is None:
                out.setdefault(gw, []).append([None, None])
                continue
            synced = next((t for t, s in statuses if s.get("boot") == boot[1] and s.get("clock_synced")),
                          None)
            out.setdefault(gw, []).append([boot[0], synced])
        return out

    # -- after the timeline ----------------------------------------------------------------------

    def drain(self) -> None:
        """Sensors stop; wait until stored stops growing and covers the emissions, or the timeout."""
        assert self.poller is not None
        self.progress("sensors stopped; waiting for the backlog to be stored")
        deadline = time.monotonic() + self.sc.drain_timeout
        last, still = -1, 0.0
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ServiceError, ValueError):
                self.poller.scan(self.poller.since_ms)
            # Water keeps arriving (the agents poll until they stop): only emitted kinds settle.
            n = self.poller.count(exclude="water")
            if n == last:
                still += 0.5
                if still >= 3.0:
                    break
            else:
                last, still = n, 0.0
            for rig in self.rigs.values():
                rig.came_online()
            time.sleep(0.5)
        self._report(time.time())

    def record(self) -> dict[str, Any]:
        assert self.poller is not None and self.sampler is not None
        self.poller.stop()
        self.sampler.stop()
        self.poller.scan(self.poller.since_ms)
        sc = asdict(self.sc)
        sc["seed"] = self.seed
        return {
            "version": 1,
            "scenario": sc,
            "t0": self.t0,
            "sync_every_ms": round(self.sc.pipeline.sync_every * 1000),
            "emissions": [[e.t, gw, e.sensor, e.kind, e.fields]
                          for gw, r in self.rigs.items() for e in r.emissions],
            "outages": {gw: [[o.killed, o.back] for o in r.outages] for gw, r in self.rigs.items()},
            "polled": {gw: {"water": r.bus.values(r.water_sensors)} for gw, r in self.rigs.items()
                       if r.bus is not None},
            "stored": self.poller.stored(),
            "field_types": field_types(self.influx),
            "faults": self.fault_log,
            "timeline": self.timeline,
            "poller": {"period": self.poller.period, "queries": self.poller.queries,
                       "errors": self.poller.errors, "narrow_window_s": NARROW_WINDOW_S,
                       "wide_every_s": WIDE_EVERY_S, "wide_window_s": self.poller.wide_window_s},
            "dead_letters": self.dead_letters(),
            "gateway_spools": {gw: self.spools(r) for gw, r in self.rigs.items()},
            "broker_store": self.sampler.broker,  # [[wall time, messages held]] (BacklogSampler)
            "collector_spool": self.sampler.spool,  # [[wall time, spool rows, spool lines]]
            # each gateway's last status `errors` map: e.g. manhole `queue_overflow` (lid messages
            # acknowledged to the site broker and dropped: docs/hil.md, "Findings")
            "gateway_errors": {gw: (r.last_status() or {}).get("errors") for gw, r in self.rigs.items()},
            # flash written by each gateway's logs this boot against its readings' encoded size
            # (docs/store.md, "Two logs"; the bench of it is bench/edge_flash.py)
            "gateway_flash": {gw: self.flash(r) for gw, r in self.rigs.items()},
            "clock_unset": self.clock_unset(),
            # where a lost alarm went missing (hil.judge): did the broker deliver it, and did its
            # gateway count drops from its bounded alarm queue (`alarms_dropped`)
            "alarms_at_broker": {gw: self.alarms_at_broker(r) for gw, r in self.rigs.items()},
            "alarms_dropped": {gw: self.alarm_drops(r) for gw, r in self.rigs.items()},
            "links": {gw: {"forwarded_bytes": lk.forwarded, "retransmitted_chunks": lk.retransmitted}
                      for gw, lk in self.links.items()},
        }

    @staticmethod
    def flash(rig: Rig, timeout: float = 10.0) -> dict[str, Any] | None:
        """What the gateway's two logs wrote to flash this boot (the `status` command's `log`:
        `bytes_written` counts both, state and anchor files included), the readings they took,
        and `encoded_bytes`: the records (edge/record.py) of the readings in the batches the broker
        delivered (each (boot, seq) once), encoded again here as the gateway did. None if the
        gateway does not answer (down, or rebooted: its counters restarted).
        Asked without running the devices: the sensors have stopped, and nothing more may be emitted."""
        if rig.sub is None or rig.agent is None or not rig.agent.alive():
            return None
        try:
            reply = rig.command(cbor2.dumps({"id": "flash", "op": "status"}), "flash", timeout, step=False)
            log: dict[str, Any] = reply["result"]["log"]
        except (RigError, cbor2.CBORDecodeError, KeyError, TypeError):
            return None
        from edge import cbor, record

        events = log.get("events") or {}
        boot = log.get("boot")
        # The alarm code a reading's record carries (docs/protocol.md "Alarm"; edge/record.py).
        codes = {(a[4], a[6]): a[3] for a in Block.alarms_at_broker(rig)}
        seen: set[tuple[Any, Any]] = set()
        encoded = 0
        w = cbor.Writer(1024)
        for p in rig.sub.payloads("up"):
            with contextlib.suppress(cbor2.CBORDecodeError, TypeError, KeyError, IndexError, ValueError):
                b = cbor2.loads(p)
                if b[1] != boot or (b[1], b[2]) in seen:
                    continue
                seen.add((b[1], b[2]))
                for sensor, kind, dt, fmap in b[4]:
                    # The record the gateway logged for it: the same reading with its absolute time.
                    fields = [fmap.get(i) for i in range(max(fmap) + 1)] if fmap else []
                    w.reset()
                    record.encode(w, sensor, kind, b[3] + dt, fields, alarm=codes.get((sensor, b[3] + dt)))
                    encoded += len(w.view())
        return {"readings": log["appended"] + events.get("appended", 0),
                "events": events.get("appended", 0), "bytes_written": log["bytes_written"],
                "never_written": log["skipped_bytes"], "encoded_bytes": encoded}

    @staticmethod
    def alarms_at_broker(rig: Rig) -> list[list[Any]]:
        """[[arrival, boot, seq, code, sensor, kind, ts ms, fields]] per `/alarm` message the broker
        delivered to the rig's subscriber (a persistent session: redeliveries appear twice)."""
        if rig.sub is None:
            return []
        codecs = codecs_by_code()
        topic = f"{rig.sub.base}/alarm"
        with rig.sub.lock:
            msgs = [(t, p) for t, tp, p, _ in rig.sub.messages if tp == topic]
        out: list[list[Any]] = []
        for t, raw in msgs:
            with contextlib.suppress(cbor2.CBORDecodeError, KeyError, TypeError, IndexError, ValueError):
                m = cbor2.loads(raw)
                for sensor, kind, ts, fields in readings_of(m, codecs):
                    out.append([t, m[1], m[2], m[5], sensor, kind, ts, list(fields)])
        return out

    @staticmethod
    def alarm_drops(rig: Rig) -> int:
        """Live alarms the gateway dropped from its full alarm queue, over all its boots: per boot the
        last count its statuses' `errors` map gave (edge.agent.ALARM_DROPS; a boot's count dies
        with it, so the statuses, published every second, are the evidence)."""
        if rig.sub is None:
            return 0
        per_boot: dict[Any, int] = {}
        for _t, st in rig.sub.statuses():
            n = ((st.get("errors") or {}).get(ALARM_DROPS[0]) or {}).get(ALARM_DROPS[1])
            if isinstance(n, int):
                per_boot[st.get("boot")] = max(n, per_boot.get(st.get("boot"), 0))
        return sum(per_boot.values())

    @staticmethod
    def spools(rig: Rig) -> list[list[Any]]:
        """[[wall time, records pending in its log, free heap]] from each status the gateway published
        (every second while connected: a gap is the gateway or the broker down)."""
        if rig.sub is None:
            return []
        return [[t, st.get("spool_records"), st.get("heap_free")] for t, st in rig.sub.statuses()
                if st.get("state") == "online"]

    def dead_letters(self) -> dict[str, int]:
        from hil.demo import dead_letters

        return dead_letters(self.collector.dead_letter_path) if self.collector is not None else {}

    def close(self) -> list[int]:
        """Stop everything (agents first, the collector drains, then the services); PIDs left over."""
        leftovers: list[int] = []
        for rig in self.rigs.values():
            with contextlib.suppress(Exception):
                rig.close()
        for link in self.links.values():
            link.close()
        for server in self.ntp.values():
            server.close()
        if self.poller is not None:
            self.poller.stop()
        if self.sampler is not None:
            self.sampler.stop()
        if self.collector is not None:
            self.collector.stop(30)
        self.broker.stop()
        self.influx.stop()
        for rig in self.rigs.values():
            leftovers += rig.leftovers()
        for svc in (self.collector, self.broker, self.influx):
            if svc is not None and svc.proc is not None and svc.proc.poll() is None:
                leftovers.append(svc.proc.pid)
        if self._own_dir:
            import shutil

            shutil.rmtree(self.dir, ignore_errors=True)
        return leftovers


def run_block(scenario: Scenario, *, seed: int | None = None, workdir: str | None = None,
              progress: Callable[[str], None] = print,
              inspect: Callable[[Block], None] | None = None,
              status: Callable[[Snapshot], None] | None = None) -> tuple[dict[str, Any], list[int]]:
    """Run a scenario end to end; (the record for run.json, PIDs left over: must be empty).
    `inspect(block)` runs after the record is taken, with every service still up (the demo
    queries InfluxDB there)."""
    block = Block(scenario, seed=seed, workdir=workdir, progress=progress, status=status)
    try:
        block.start()
        block.run_timeline()
        block.drain()
        record = block.record()
        if inspect is not None:
            inspect(block)
    finally:
        leftovers = block.close()
    return record, leftovers
