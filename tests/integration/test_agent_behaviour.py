"""The agent's rules, pinned down in-process: clock holds, anchors across reboots, paced replay,
the bounded log, and commands, each checked for exact outcomes against a real private Mosquitto.

The agent runs on this test's event loop with a port object whose clock the test controls (a board
that boots at 2000-01-01 until NTP answers). Readings enter through the real sources' `take()`,
which is what the serial/Modbus/MQTT pumps call after decoding, so rules, log, batcher and uplink
are the production code. paho-mqtt, with a persistent session made before the agent starts, is
the independent observer: it sees every message the broker accepted, in the broker's order, even
across a broker that starts late.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import cbor2
import paho.mqtt.client as mqtt
import pytest

from edge import config
from edge.agent import Agent
from edge.compat import ticks_ms
from edge.ports.posix import PosixPort
from hil.services import Mosquitto

pytestmark = pytest.mark.integration

GW = "gw-behave"
Y2000_MS = 946684800000  # what an unset board RTC says at boot
MIN_VALID_UTC_MS = 1577836800000  # 2020-01-01: edge/clock.py's threshold for a set clock
HANG_GUARD = 30.0  # a bound so a bug fails the test instead of hanging it, not a speed goal
# No collector runs here: the broker's PUBACK is delivery (receipts: tests/integration/test_receipts.py).
FAST = {"batch_age_ms": 200, "status_every_s": 1, "backoff_base_ms": 100, "backoff_cap_ms": 400,
        "receipts": False}


class TestPort(PosixPort):
    """The posix runtime with a test-controlled clock and a reboot that is recorded, not performed."""

    __test__ = False

    def __init__(self, clock_valid: bool = False, ntp_ok: bool = False) -> None:
        super().__init__(verbose=False)
        self.clock_valid = clock_valid
        self.ntp_ok = ntp_ok
        self.booted = time.monotonic()
        self.sync_calls = 0
        self.reboots: list[Any] = []
        self.on_reboot: Callable[[], Any] = lambda: None

    def utc_ms(self) -> int:
        if self.clock_valid:
            return int(time.time() * 1000)
        return Y2000_MS + int((time.monotonic() - self.booted) * 1000)  # an RTC ticking from 2000

    def sync_clock(self, host: str) -> bool:
        self.sync_calls += 1
        return self.ntp_ok

    def reboot(self) -> None:
        self.reboots.append(self.on_reboot())


class Observer:
    """A paho subscriber with a persistent session on `<prefix>/<gw>/#`, made while the broker is up.

    Messages are kept in arrival order as (leaf, decoded CBOR). Because the session persists, what
    the agent publishes while this client is still reconnecting (a broker that just restarted) is
    queued by the broker and delivered in order.
    """

    def __init__(self, broker: Mosquitto, name: str) -> None:
        self.msgs: list[tuple[str, Any]] = []
        self.times: list[float] = []  # time.monotonic() of each arrival, parallel to msgs
        self.subscribed = threading.Event()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="obs-" + name, clean_session=False)
        c.reconnect_delay_set(1, 1)
        c.on_message = self._on_message
        c.on_connect = self._on_connect
        c.on_subscribe = lambda *args: self.subscribed.set()
        self.client = c
        c.connect("127.0.0.1", broker.port, keepalive=30)
        c.loop_start()
        # SUBACK before returning: a test may stop the broker next, and the session must already
        # hold the subscription when it does (it is re-made on every reconnect too).
        assert self.subscribed.wait(10), "observer could not subscribe"

    def _on_connect(self, c: mqtt.Client, u: Any, flags: Any, rc: Any, props: Any = None) -> None:
        c.subscribe(f"city/{GW}/#", 1)

    def _on_message(self, c: mqtt.Client, u: Any, m: mqtt.MQTTMessage) -> None:
        self.times.append(time.monotonic())
        self.msgs.append((m.topic.rsplit("/", 1)[1], cbor2.loads(m.payload)))

    def leaf(self, name: str) -> list[Any]:
        return [p for leaf, p in list(self.msgs) if leaf == name]

    def readings(self) -> list[tuple[int, int, str, int, dict[int, Any]]]:
        """(boot, seq, sensor, ts, fields) of every reading in every /up batch, in arrival order."""
        out = []
        for b in self.leaf("up"):
            for sensor, _kind, dt, fields in b[4]:
                out.append((b[1], b[2], sensor, b[3] + dt, fields))
        return out

    def command(self, cmd_id: str, op: str, args: dict[str, Any] | None = None) -> None:
        body: dict[str, Any] = {"id": cmd_id, "op": op}
        if args is not None:
            body["args"] = args
        self.client.publish(f"city/{GW}/cmd", cbor2.dumps(body), 1).wait_for_publish(10)

    def reply(self, cmd_id: str) -> dict[str, Any] | None:
        for p in self.leaf("reply"):
            if p["id"] == cmd_id:
                return p
        return None

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def observe(mosquitto: Mosquitto) -> Iterator[Callable[[], Observer]]:
    made: list[Observer] = []

    def make() -> Observer:
        obs = Observer(mosquitto, str(len(made)))
        made.append(obs)
        return obs

    yield make
    for obs in made:
        obs.close()


@pytest.fixture
def ttys() -> Iterator[Callable[[], str]]:
    """Real ptys for the serial sources (nothing is written to them: readings enter via take())."""
    fds: list[int] = []

    def make() -> str:
        master, slave = os.openpty()
        fds.extend((master, slave))
        return os.ttyname(slave)

    yield make
    for fd in fds:
        os.close(fd)


def make_cfg(broker: Mosquitto, store_dir: Path, sources: list[dict[str, Any]], *,
             trust_os_clock: bool = False, store: dict[str, Any] | None = None,
             uplink: dict[str, Any] | None = None) -> dict[str, Any]:
    up = dict(FAST)
    up.update(uplink or {})
    st = {"dir": str(store_dir), "sync_every_ms": 200}
    st.update(store or {})
    return config.validate({
        "gateway_id": GW, "broker": {"host": "127.0.0.1", "port": broker.port, "keepalive_s": 10},
        "trust_os_clock": trust_os_clock, "store": st, "uplink": up, "sources": sources})


def thermometer(tty: str) -> dict[str, Any]:
    return {"kind": "thermometer", "transport": "serial", "port": tty}


def parking(tty: str) -> dict[str, Any]:
    return {"kind": "parking", "transport": "serial", "port": tty}


def temp(seq: int, body_c: float = 36.5) -> tuple[Any, ...]:
    """Thermometer fields (every line is a person screened: an event, always reported)."""
    return (body_c, 21.5, seq, 40, True)


def heartbeat(seq: int, battery_mv: int) -> tuple[Any, ...]:
    """Parking heartbeat fields: not an event, so report-by-exception applies (battery is analog)."""
    return (False, 0, seq, 10, -20, 30, battery_mv, -90)


@asynccontextmanager
async def running(cfg: dict[str, Any], port: TestPort) -> AsyncIterator[Agent]:
    agent = Agent(cfg, port)
    agent.ntp_retry_ms = 100  # a board retries NTP every 10 s; the test's clock answers at once
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        yield agent
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


async def until(cond: Callable[[], Any], what: str, timeout: float = HANG_GUARD) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + what)
        await asyncio.sleep(0.02)


def run(coro: Any) -> Any:
    async def guarded() -> Any:
        return await asyncio.wait_for(coro, 90)

    return asyncio.run(guarded())


def take(agent: Agent, src: int, sensor: str, fields: tuple[Any, ...]) -> tuple[int, int]:
    """Feed one decoded reading to source `src`; returns the uptime bounds around its accept."""
    lo = agent.clock.uptime_ms()
    assert agent.sources[src].take(sensor, fields, ticks_ms())
    return lo, agent.clock.uptime_ms()


def anchors_file(store_dir: Path) -> dict[int, int]:
    out = {}
    for line in (store_dir / "anchors").read_text().split("\n"):
        if line.strip():
            boot, offset = line.split()
            out[int(boot)] = int(offset)
    return out


def assert_all_times_valid(obs: Observer) -> None:
    """No batch or alarm ever carries a pre-2020 time (an unset clock must never leak out)."""
    for leaf in ("up", "alarm"):
        for p in obs.leaf(leaf):
            assert p[3] >= MIN_VALID_UTC_MS, (leaf, p)
            for r in p[4]:
                assert p[3] + r[2] >= MIN_VALID_UTC_MS, (leaf, p)


# -- 1. the clock ----------------------------------------------------------------------------------

# A sensor's readings get strictly increasing times (edge/agent.py `accept`: two readings in one
# millisecond would be one point in the database), so the n-th of a quick burst may be up to n ms
# later than the clock said. The tests take at most this many readings per sensor.
BURST_MS = 8


def assert_increasing(times: list[int]) -> None:
    assert all(a < b for a, b in itertools.pairwise(times)), times


@pytest.mark.parametrize("trust_os_clock", [False, True], ids=["ntp", "os-clock"])
def test_readings_before_clock_sync_are_held_then_stamped_with_the_boot_anchor(
        mosquitto: Mosquitto, observe: Callable[[], Observer], ttys: Callable[[], str],
        tmp_path: Path, trust_os_clock: bool) -> None:
    """A board (NTP answers late) and a Pi without RTC (the OS clock jumps from 2000 to now)."""
    obs = observe()
    store = tmp_path / "spool"
    cfg = make_cfg(mosquitto, store, [thermometer(ttys())], trust_os_clock=trust_os_clock)
    port = TestPort(clock_valid=False, ntp_ok=False)

    async def main() -> None:
        async with running(cfg, port) as agent:
            await until(lambda: [s for s in obs.leaf("status") if s["state"] == "online"], "status")
            before = [take(agent, 0, "kiosk-1", temp(i, 38.4 if i == 2 else 36.5)) for i in range(4)]
            await until(lambda: port.sync_calls >= 3, "NTP attempts")
            await asyncio.sleep(0.6)  # > batch_age_ms and sync_every_ms: a batch would be due now
            assert obs.leaf("up") == [] and obs.leaf("alarm") == []
            assert agent.alarms_unstamped == 1 and agent.alarms_sent == 0
            st = obs.leaf("status")[-1]
            assert st["clock_synced"] is False and st["ts"] is None and st["spool_records"] == 4
            obs.command("c-held", "status")
            rep = await until(lambda: obs.reply("c-held"), "status reply")
            assert rep["ok"] and rep["result"]["alarms_unstamped"] == 1

            port.clock_valid = True
            port.ntp_ok = not trust_os_clock  # a trusted OS clock needs no NTP call from us
            await until(lambda: len(obs.readings()) == 4, "held readings")
            offset = agent.clock.offset_ms()
            assert anchors_file(store) == {agent.boot: offset}
            for (lo, hi), (boot, _seq, sensor, ts, _fields) in zip(before, obs.readings(), strict=True):
                assert boot == agent.boot and sensor == "kiosk-1"
                assert offset + lo <= ts <= offset + hi + BURST_MS
            assert_increasing([r[3] for r in obs.readings()])
            assert [r[4][2] for r in obs.readings()] == [0, 1, 2, 3]
            assert [r[4][0] for r in obs.readings()] == [36.5, 36.5, 38.4, 36.5]
            # The pre-sync fever is published as an alarm once the clock is set, stamped through
            # the boot's anchor like its reading (the city brain's alarm measurement gets it late).
            held = (await until(lambda: obs.leaf("alarm"), "held alarm"))[0]
            assert held[5] == "fever" and held[2] == 0 and held[3] == obs.readings()[2][3]

            t_lo = port.utc_ms()
            take(agent, 0, "kiosk-1", temp(4, 38.9))
            t_hi = port.utc_ms()
            alarm = (await until(lambda: obs.leaf("alarm")[1:], "live alarm"))[0]
            # The stamp is the sync-time offset plus uptime, each whole ms: it may read 1 ms early.
            assert alarm[5] == "fever" and alarm[2] == 1 and t_lo - 1 <= alarm[3] <= t_hi + BURST_MS
            await until(lambda: len(obs.readings()) == 5, "post-sync reading")
            assert obs.readings()[4][3] == alarm[3]
            assert agent.alarms_unstamped == 1 and agent.alarms_sent == 2
        assert_all_times_valid(obs)

    run(main())


def test_alarms_held_before_clock_sync_fit_the_queue_and_overflow_is_counted_in_status(
        mosquitto: Mosquitto, observe: Callable[[], Observer], ttys: Callable[[], str],
        tmp_path: Path) -> None:
    """24 alarms held while the boot has no clock all reach /alarm (the HIL storm held 14-15 in the
    ~10 s until NTP answered, plus the site broker's backlog: the 16-alarm queue dropped 2, seen);
    past the queue's bound the live copies are dropped and the status `errors` map counts them."""
    from edge.agent import _ALARM_QUEUE, ALARM_DROPS

    obs = observe()
    cfg = make_cfg(mosquitto, tmp_path / "spool", [thermometer(ttys())])
    port = TestPort(clock_valid=False, ntp_ok=False)

    async def main() -> None:
        async with running(cfg, port) as agent:
            await until(lambda: [s for s in obs.leaf("status") if s["state"] == "online"], "status")
            for i in range(24):
                take(agent, 0, "kiosk-1", temp(i, 38.4))
            assert agent.alarms_dropped == 0 and len(agent.alarms) == 24
            for i in range(24, _ALARM_QUEUE + 2):
                take(agent, 0, "kiosk-1", temp(i, 38.4))
            assert agent.alarms_dropped == 2
            counted = await until(lambda: [s for s in obs.leaf("status") if s["errors"]], "status errors")
            assert counted[-1]["errors"] == {ALARM_DROPS[0]: {ALARM_DROPS[1]: 2}}
            port.clock_valid = port.ntp_ok = True
            await until(lambda: len(obs.leaf("alarm")) == _ALARM_QUEUE, "held alarms")
            await until(lambda: len(obs.readings()) == _ALARM_QUEUE + 2, "held readings")
            # the first _ALARM_QUEUE fevers, in order; the 2 dropped live copies are in the batches
            assert [a[4][0][3][2] for a in obs.leaf("alarm")] == list(range(_ALARM_QUEUE))

    run(main())


def test_old_boot_backlog_is_stamped_with_its_own_anchor_after_reboot(
        mosquitto: Mosquitto, observe: Callable[[], Observer], ttys: Callable[[], str],
        tmp_path: Path) -> None:
    obs = observe()
    mosquitto.stop()  # the whole first boot happens offline
    store = tmp_path / "spool"
    cfg = make_cfg(mosquitto, store, [thermometer(ttys())])

    async def main() -> None:
        port1 = TestPort(clock_valid=False, ntp_ok=False)
        async with running(cfg, port1) as agent:
            boot1 = agent.boot
            unstamped = [take(agent, 0, "kiosk-1", temp(i)) for i in range(3)]
            port1.clock_valid = port1.ntp_ok = True
            await until(lambda: (store / "anchors").exists(), "anchor persisted")
            anchor1 = agent.clock.offset_ms()
            stamped = []
            for i in range(3, 5):
                lo = port1.utc_ms()
                take(agent, 0, "kiosk-1", temp(i))
                stamped.append((lo, port1.utc_ms()))
        assert anchors_file(store) == {boot1: anchor1}

        port2 = TestPort(clock_valid=False, ntp_ok=False)  # the new boot does not know the time
        mosquitto.start()
        async with running(cfg, port2) as agent:
            assert agent.boot == boot1 + 1
            await until(lambda: len(obs.readings()) == 5, "old boot's backlog")
            got = obs.readings()
            for (lo, hi), r in zip(unstamped, got[:3], strict=True):
                assert anchor1 + lo <= r[3] <= anchor1 + hi + BURST_MS
            for (lo, hi), r in zip(stamped, got[3:], strict=True):
                assert lo - 1 <= r[3] <= hi + BURST_MS  # offset + uptime, whole ms each: may read 1 ms early
            assert_increasing([r[3] for r in got])
            assert [r[4][2] for r in got] == [0, 1, 2, 3, 4]
            assert {r[0] for r in got} == {agent.boot}  # batches are numbered in the sending boot
            take(agent, 0, "kiosk-1", temp(5))  # this boot has no anchor yet: held
            await until(lambda: [s for s in obs.leaf("status")
                                 if s.get("boot") == agent.boot and s.get("spool_records") == 1],
                        "status with the held reading")
            await asyncio.sleep(0.5)
            assert len(obs.readings()) == 5
            assert obs.leaf("status")[-1]["clock_synced"] is False
        assert_all_times_valid(obs)

    run(main())


def test_records_of_a_boot_that_never_had_a_clock_are_counted_unstampable(
        mosquitto: Mosquitto, observe: Callable[[], Observer], ttys: Callable[[], str],
        tmp_path: Path) -> None:
    obs = observe()
    mosquitto.stop()
    store = tmp_path / "spool"
    cfg = make_cfg(mosquitto, store, [thermometer(ttys())])

    async def main() -> None:
        async with running(cfg, TestPort()) as agent:
            for i in range(3):
                take(agent, 0, "kiosk-1", temp(i, 39.0 if i == 1 else 36.6))
            assert agent.alarms_unstamped == 1
        assert not (store / "anchors").exists()

        mosquitto.start()
        port = TestPort(clock_valid=True, ntp_ok=True)
        async with running(cfg, port) as agent:
            await until(lambda: agent.clock.synced(), "clock")
            for i in range(10, 12):
                take(agent, 0, "kiosk-1", temp(i))
            await until(lambda: len(obs.readings()) == 2, "this boot's readings")
            await until(lambda: agent.batcher.unstampable == 3, "unstampable count")
            obs.command("c-st", "status")
            rep = await until(lambda: obs.reply("c-st"), "status reply")
            assert rep["ok"] and rep["result"]["log"]["unstampable"] == 3
            assert rep["result"]["log"]["dropped_records"] == 0
            st = await until(lambda: [s for s in obs.leaf("status")
                                      if s.get("boot") == agent.boot and s["spool_records"] == 0],
                             "status after the skip")
            assert st[-1]["spool_dropped"] == 3
            await asyncio.sleep(0.4)
            assert [r[4][2] for r in obs.readings()] == [10, 11]
            assert obs.leaf("alarm") == []
        assert_all_times_valid(obs)

    run(main())


# -- 2. paced replay ---------------------------------------------------------------------------------


def test_live_alarm_overtakes_a_paced_backlog_replay(
        mosquitto: Mosquitto, observe: Callable[[], Observer], ttys: Callable[[], str],
        tmp_path: Path) -> None:
    obs = observe()
    mosquitto.stop()
    n = 2000
    cfg = make_cfg(mosquitto, tmp_path / "spool", [parking(ttys()), thermometer(ttys())],
                   trust_os_clock=True, store={"segment_bytes": 8192},
                   uplink={"replay_batches_per_s": 5, "batch_max": 50, "max_inflight": 2})
    port = TestPort(clock_valid=True)

    async def main() -> None:
        async with running(cfg, port) as agent:
            for i in range(n):
                # a new battery value each time: reported (deadband 0), not urgent (group-synced)
                take(agent, 0, f"P-{i % 40:05d}", heartbeat(i, 3000 + i))
            assert agent.pending() == n
            mosquitto.start()
            await until(lambda: obs.leaf("up"), "first backlog batch")
            seen = len(obs.msgs)
            take(agent, 1, "kiosk-1", temp(0, 38.6))
            await until(lambda: obs.leaf("alarm"), "alarm")
            await until(lambda: len(obs.readings()) >= n + 1, "whole backlog", timeout=60)
        leaves = [leaf for leaf, _ in obs.msgs]
        i_alarm = leaves.index("alarm")
        i_last_up = len(leaves) - 1 - leaves[::-1].index("up")
        assert i_alarm < i_last_up
        assert i_alarm - seen <= 3, leaves[seen:i_alarm + 1]
        ups = [p for leaf, p in obs.msgs if leaf == "up"]
        assert len(ups) >= n // 50
        # Paced: while more than 2 * batch_max * max_inflight records wait, batches leave at most
        # replay_batches_per_s (a lower bound on their spacing, so a slow machine cannot fail it).
        t_up = [t for t, (leaf, _) in zip(obs.times, obs.msgs, strict=True) if leaf == "up"]
        paced = (n - 2 * 50 * 2) // 50
        assert t_up[paced - 1] - t_up[0] >= 0.8 * (paced - 1) / 5
        assert [b[2] for b in ups] == list(range(len(ups)))  # seq 0, 1, 2, ... within the boot
        got = obs.readings()
        backlog = [r for r in got if r[2] != "kiosk-1"]
        seqs = [r[4][2] for r in backlog]
        assert sorted(seqs) == list(range(n))  # complete, once each
        # Each log in its order: readings 0-299 (battery below 3.3 V: a low-battery alarm each,
        # so the events log) and the heartbeats after them (the periodic log).
        assert [q for q in seqs if q < 300] == list(range(300))
        assert [q for q in seqs if q >= 300] == list(range(300, n))
        # The fever's reading is an event: its own log's records go first in the next batch
        # (docs/store.md, "Two logs"), ahead of the rest of the backlog.
        fever = [r for r in got if r[2] == "kiosk-1"]
        assert len(fever) == 1 and fever[0][4][0] == 38.6 and got.index(fever[0]) < n
        assert_all_times_valid(obs)

    run(main())


# -- 3. the bounded log ------------------------------------------------------------------------------


def test_full_log_evicts_the_oldest_counts_them_and_delivers_the_newest(
        mosquitto: Mosquitto, observe: Callable[[], Observer], ttys: Callable[[], str],
        tmp_path: Path) -> None:
    obs = observe()
    mosquitto.stop()
    n = 400
    cfg = make_cfg(mosquitto, tmp_path / "spool", [parking(ttys())], trust_os_clock=True,
                   store={"segment_bytes": 1024, "budget_bytes": 4096})
    port = TestPort(clock_valid=True)

    async def main() -> None:
        async with running(cfg, port) as agent:
            for i in range(n):
                take(agent, 0, f"P-{i % 7:05d}", heartbeat(i, 3000 + i))
            dropped = (agent.log.dropped_records + agent.events.dropped_records)
            assert dropped > 0 and dropped + agent.pending() == n
            mosquitto.start()
            await until(lambda: len(obs.readings()) == n - dropped, "the newest records")
            obs.command("c-st", "status")
            rep = await until(lambda: obs.reply("c-st"), "status reply")
            log = rep["result"]["log"]  # the periodic log's counters, the events log's inside
            assert rep["ok"] and log["dropped_records"] + log["events"]["dropped_records"] == dropped
            assert rep["result"]["log"]["unstampable"] == 0
            st = await until(lambda: [s for s in obs.leaf("status") if s["spool_records"] == 0],
                             "status after delivery")
            assert st[-1]["spool_dropped"] == dropped
            await asyncio.sleep(0.4)
        got = [r[4][2] for r in obs.readings()]
        assert len(got) == n - dropped
        # The oldest went from each log (one budget for both; docs/store.md, "Two logs"): readings
        # 0-299 raised a low-battery alarm (the events log), the rest are periodic.
        alarms = [q for q in got if q < 300]
        assert alarms == list(range(300 - len(alarms), 300))
        assert [q for q in got if q >= 300] == list(range(n - (len(got) - len(alarms)), n))

    run(main())


def test_eviction_while_batches_are_in_flight_counts_each_record_once(
        mosquitto: Mosquitto, observe: Callable[[], Observer], ttys: Callable[[], str],
        tmp_path: Path) -> None:
    obs = observe()
    n = 400
    cfg = make_cfg(mosquitto, tmp_path / "spool", [parking(ttys())], trust_os_clock=True,
                   store={"segment_bytes": 1024, "budget_bytes": 4096},
                   uplink={"batch_max": 10, "max_inflight": 2})
    port = TestPort(clock_valid=True)

    async def main() -> None:
        async with running(cfg, port) as agent:
            await until(lambda: agent.client.connected, "connected")
            mosquitto.pause()  # the broker hangs: batches are written and stay unacknowledged
            try:
                for i in range(n):
                    take(agent, 0, f"P-{i % 7:05d}", heartbeat(i, 3000 + i))
                    if i % 20 == 0:
                        await asyncio.sleep(0.05)  # let the uplink build and write batches
                await until(lambda: agent.batcher.records_in_flight > 0, "batches in flight")
            finally:
                mosquitto.resume()
            await until(lambda: agent.pending() == 0, "delivery")
            await asyncio.sleep(0.4)
            delivered = {r[4][2] for r in obs.readings()}
            assert len(delivered) + (agent.log.dropped_records + agent.events.dropped_records) == n

    run(main())


# -- 4. commands -------------------------------------------------------------------------------------


def test_set_deadband_by_kind_changes_what_is_reported(
        mosquitto: Mosquitto, observe: Callable[[], Observer], ttys: Callable[[], str],
        tmp_path: Path) -> None:
    obs = observe()
    cfg = make_cfg(mosquitto, tmp_path / "spool", [parking(ttys()), thermometer(ttys())],
                   trust_os_clock=True)
    port = TestPort(clock_valid=True)

    async def main() -> None:
        async with running(cfg, port) as agent:
            await until(lambda: agent.client.connected, "connected")
            park = agent.sources[0]
            assert park.take("P-00001", heartbeat(0, 3600), ticks_ms())  # first
            assert park.take("P-00001", heartbeat(1, 3630), ticks_ms())  # deadband 0: reported
            obs.command("c-set", "set", {"kind": "parking", "deadband": {"battery_mv": 50}})
            rep = await until(lambda: obs.reply("c-set"), "set reply")
            assert rep == {"id": "c-set", "ok": True, "error": None, "result": {"sources": 1}}
            assert not park.take("P-00001", heartbeat(2, 3680), ticks_ms())  # +50: not past it
            assert not park.take("P-00001", heartbeat(3, 3590), ticks_ms())  # -40
            assert park.take("P-00001", heartbeat(4, 3681), ticks_ms())  # +51
            assert park.filter.suppressed == 2
            # the thermometer source was not targeted: its default deadband (0) is unchanged
            assert agent.sources[1].filter.band[0] == 0
            await until(lambda: len(obs.readings()) == 3, "readings")
            await asyncio.sleep(0.4)
            assert [r[4][6] for r in obs.readings()] == [3600, 3630, 3681]

    run(main())


def test_set_refusals_name_the_offending_key(
        mosquitto: Mosquitto, observe: Callable[[], Observer], ttys: Callable[[], str],
        tmp_path: Path) -> None:
    obs = observe()
    cfg = make_cfg(mosquitto, tmp_path / "spool", [parking(ttys())], trust_os_clock=True)
    port = TestPort(clock_valid=True)
    cases: dict[str, tuple[dict[str, Any], str]] = {
        "unknown-field": ({"kind": "parking", "deadband": {"battery_volts": 1}}, "battery_volts"),
        "unknown-setting": ({"kind": "parking", "sample_rate": 5}, "sample_rate"),
        "unknown-kind": ({"kind": "lamp", "deadband": {"x": 1}}, "lamp"),
        "not-a-number": ({"kind": "parking", "deadband": {"battery_mv": "50"}}, "battery_mv"),
        "negative": ({"kind": "parking", "deadband": {"battery_mv": -1}}, "battery_mv"),
        "not-analog": ({"kind": "parking", "deadband": {"occupied": 1}}, "occupied"),
        "half-bad": ({"kind": "parking", "deadband": {"battery_mv": 9}, "max_silence_s": "1"},
                     "max_silence_s"),
        "no-poll": ({"kind": "parking", "poll_ms": 1000}, "does not poll"),
    }

    async def main() -> None:
        async with running(cfg, port) as agent:
            await until(lambda: agent.client.connected, "connected")
            park = agent.sources[0]
            for cid, (args, _named) in cases.items():
                obs.command(cid, "set", args)
            for cid, (_args, named) in cases.items():
                rep = await until(functools.partial(obs.reply, cid), "reply " + cid)
                assert rep["ok"] is False and rep["result"] is None, rep
                assert rep["error"].startswith("bad_args: ") and named in rep["error"], rep
            assert park.filter.band[6] == 0  # nothing was half-applied
            # the source still runs the rules after the refusals (a bad deadband would crash it)
            assert park.take("P-00002", heartbeat(0, 3600), ticks_ms())
            assert park.take("P-00002", heartbeat(1, 3601), ticks_ms())

    run(main())


def test_a_config_deadband_that_is_not_a_number_is_refused_at_start(
        mosquitto: Mosquitto, ttys: Callable[[], str], tmp_path: Path) -> None:
    src = parking(ttys())
    src["deadband"] = {"battery_mv": "50"}  # JSON typo: it would crash the source at its 2nd reading
    with pytest.raises(ValueError, match="battery_mv"):  # refused by edge.config, at load
        make_cfg(mosquitto, tmp_path / "spool", [src], trust_os_clock=True)
    assert not (tmp_path / "spool").exists()


def test_flush_publishes_pending_periodic_readings_at_once(
        mosquitto: Mosquitto, observe: Callable[[], Observer], ttys: Callable[[], str],
        tmp_path: Path) -> None:
    obs = observe()
    # A batch would wait a minute and a group sync as long: only `flush` can make these go now.
    cfg = make_cfg(mosquitto, tmp_path / "spool", [parking(ttys())], trust_os_clock=True,
                   store={"sync_every_ms": 60000}, uplink={"batch_age_ms": 60000})
    port = TestPort(clock_valid=True)

    async def main() -> None:
        async with running(cfg, port) as agent:
            await until(lambda: agent.client.connected, "connected")
            for i in range(5):
                take(agent, 0, f"P-{i:05d}", heartbeat(i, 3600))
            await asyncio.sleep(1.2)  # housekeeping rounds, status, pump wake-ups: still nothing
            assert obs.readings() == []
            obs.command("c-flush", "flush")
            rep = await until(lambda: obs.reply("c-flush"), "flush reply")
            assert rep["ok"] and rep["result"] == {"pending": 5}
            await until(lambda: len(obs.readings()) == 5, "flushed readings")
            assert [r[2] for r in obs.readings()] == [f"P-{i:05d}" for i in range(5)]
            assert agent.flush_requested is False
            await until(lambda: agent.pending() == 0, "acks")

    run(main())


def test_reboot_command_replies_first_then_reboots(
        mosquitto: Mosquitto, observe: Callable[[], Observer], ttys: Callable[[], str],
        tmp_path: Path) -> None:
    obs = observe()
    cfg = make_cfg(mosquitto, tmp_path / "spool", [parking(ttys())], trust_os_clock=True)
    port = TestPort(clock_valid=True)

    async def main() -> None:
        async with running(cfg, port) as agent:
            await until(lambda: agent.client.connected, "connected")
            take(agent, 0, "P-00001", heartbeat(0, 3600))
            # At reboot time: has the broker acknowledged the reply, and is the log closed?
            port.on_reboot = lambda: (agent.client.inflight, agent.log._active is None)
            obs.command("c-boot", "reboot")
            await until(lambda: port.reboots, "reboot")
            rep = obs.reply("c-boot") or await until(lambda: obs.reply("c-boot"), "reply")
            assert rep == {"id": "c-boot", "ok": True, "error": None, "result": {"boot": agent.boot}}
            assert port.reboots == [(0, True)]
        assert len(port.reboots) == 1

    run(main())
