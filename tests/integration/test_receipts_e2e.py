"""End-to-end receipts (issue 12): real Mosquitto (persistence on, autosave every 10 s), InfluxDB,
the collector as a process and the gateway agent on both interpreters (hil/rig.py).

The broker is the one place where a crash used to lose data: a batch it PUBACKed to a gateway (which
then forgot it) lived only in its memory until the next autosave. With receipts, a gateway keeps
each record until the collector says it is durable, and re-sends what was not receipted.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest

from collector.validate import load_kinds
from hil.link import ImpairedLink
from hil.rig import INTERPRETERS, PREFIX, Rig
from hil.scenarios import TEAR_MAX_AGE_S
from hil.services import Collector, InfluxDB, Mosquitto
from tests.integration.waiting import wait_until

pytestmark = pytest.mark.integration

DB = "citybrain"
AUTOSAVE_S = 10
KINDS = {code: k.name for code, k in load_kinds().items()}


def make_rig(interpreter: str, receipts: bool, tmp: Path) -> Rig:
    return Rig(interpreter, parking=2, thermometers=1, lids=0, water=(), speed=10.0,
               receipts=receipts, receipt_timeout_ms=2000, workdir=str(tmp / "rig"),
               broker_options={"extra_config": f"autosave_interval {AUTOSAVE_S}\n"})


def make_collector(rig: Rig, influx: InfluxDB, tmp: Path, receipts: bool, name: str = "col-1",
                   settings: dict[str, dict[str, Any]] | None = None) -> Collector:
    tables: dict[str, dict[str, Any]] = {
        "mqtt": {"topic_prefix": PREFIX, "reconnect_min": "1s", "reconnect_max": "1s"},
        "writer": {"flush_interval": "50ms", "timeout": "2s"},
        "receipts": {"enabled": receipts},
        "service": {"drain_timeout": "5s"},
    }
    for k, v in (settings or {}).items():
        tables[k] = {**tables.get(k, {}), **v}
    return Collector(rig.broker.port, {"url": influx.url, "db": DB}, client_id=name,
                     workdir=str(tmp / name), settings=tables)


def sent_readings(rig: Rig) -> set[tuple[str, str, int]]:
    """(measurement, sensor, ts) of every reading the gateway published (re-sends count once)."""
    assert rig.sub is not None
    out = set()
    for p in rig.sub.payloads("up"):
        b = cbor2.loads(p)
        for sensor, kind, dt, _fields in b[4]:
            out.add((KINDS[kind], sensor, b[3] + dt))
    return out


def stored_readings(influx: InfluxDB) -> list[tuple[str, str, int]]:
    out = []
    for name in sorted(set(KINDS.values())):
        for r in influx.points(DB, f'SELECT * FROM "{name}"'):
            out.append((name, r["sensor"], int(r["time"])))
    return out


def drained(rig: Rig) -> bool:
    st = rig.last_status()
    return st is not None and st.get("spool_records") == 0 and st.get("unreceipted", 0) == 0


@pytest.fixture
def db(influxdb: InfluxDB) -> Iterator[InfluxDB]:
    influxdb.create_database(DB)
    yield influxdb


Key = tuple[str, str, int]  # (measurement, sensor, ts)


def broker_crash_with_collector_away(interpreter: str, receipts: bool, influx: InfluxDB,
                                     tmp: Path) -> tuple[set[Key], list[Key]]:
    """Collector away, the gateway publishes, the broker is SIGKILLed inside its autosave window and
    restarted, the collector comes back. Returns (what the gateway sent, what InfluxDB holds)."""
    with make_rig(interpreter, receipts, tmp) as rig:
        col = make_collector(rig, influx, tmp, receipts)
        col.start()  # its persistent session (and subscriptions) now exist on the broker...
        assert col.stop() == 0  # ...and it goes away: the broker queues for it
        rig.start_agent()
        # A clean restart saves the broker's state: the autosave window starts now.
        rig.restart_broker()
        saved_at = time.monotonic()
        rig.run(4.0)  # the gateway reconnects and publishes; the broker PUBACKs and queues
        assert sent_readings(rig), "nothing published while the collector was away"
        if time.monotonic() - saved_at >= AUTOSAVE_S - 0.5:
            pytest.skip("the machine was too slow to crash the broker inside its autosave window")
        rig.broker.kill()  # SIGKILL: whatever arrived since the save is gone from the broker
        rig._start_broker()
        col.start()
        rig.run(2.0)
        # Sensors quiet: every reading must reach the database; the gateway's log must drain.
        # Until every reading is stored and the log drained, or (what receipts off comes to) the
        # log is drained and InfluxDB has held still for 3 s: nothing more can come. The caller
        # judges what arrived.
        deadline = time.monotonic() + 45
        last, still_since = -1, time.monotonic()
        while time.monotonic() < deadline:
            n = len(stored_readings(influx))
            if n != last:
                last, still_since = n, time.monotonic()
            if drained(rig) and (n >= len(sent_readings(rig)) or time.monotonic() - still_since >= 3.0):
                break
            time.sleep(0.2)
        time.sleep(1.0)  # late duplicates would show now
        sent, stored = sent_readings(rig), stored_readings(influx)
        col.kill()
        return sent, stored


@pytest.mark.parametrize("interpreter", INTERPRETERS)
def test_broker_crash_with_collector_away_loses_nothing(interpreter: str, db: InfluxDB,
                                                        tmp_path: Path) -> None:
    sent, stored = broker_crash_with_collector_away(interpreter, True, db, tmp_path)
    assert len(stored) == len(set(stored)), "a reading stored twice"
    assert set(stored) == sent, (f"{len(sent - set(stored))} of {len(sent)} readings lost, "
                                 f"{len(set(stored) - sent)} unexpected")


def test_without_receipts_the_broker_crash_loses_what_it_held(db: InfluxDB, tmp_path: Path) -> None:
    """Today's behaviour with receipts off (what the issue measured): the PUBACKed readings were
    forgotten by the gateway and died with the broker."""
    sent, stored = broker_crash_with_collector_away("cpython", False, db, tmp_path)
    print(f"receipts off: {len(set(stored))} of {len(sent)} readings stored")
    assert sent and len(set(stored)) < len(sent)


def settle(rig: Rig, influx: InfluxDB, what: str, timeout: float = 45) -> tuple[set[Key], list[Key]]:
    """Sensors quiet: wait until the gateway's log is drained (everything receipted) and InfluxDB
    holds every reading sent; then a moment for late duplicates. (sent, stored)."""
    wait_until(lambda: drained(rig) and len(set(stored_readings(influx))) >= len(sent_readings(rig)),
               timeout, what)
    time.sleep(1.0)
    return sent_readings(rig), stored_readings(influx)


def assert_exactly_once(sent: set[Key], stored: list[Key]) -> None:
    assert sent, "nothing was sent"
    assert len(stored) == len(set(stored)), "a reading stored twice"
    assert set(stored) == sent, (f"{len(sent - set(stored))} of {len(sent)} readings lost, "
                                 f"{len(set(stored) - sent)} unexpected")


@pytest.mark.parametrize("interpreter", INTERPRETERS)
def test_broker_killed_repeatedly_under_load_with_the_collector_online(
        interpreter: str, db: InfluxDB, tmp_path: Path) -> None:
    with make_rig(interpreter, True, tmp_path) as rig:
        col = make_collector(rig, db, tmp_path, True)
        col.start()
        try:
            rig.start_agent()
            for _ in range(3):
                rig.run(2.0)
                rig.broker.kill()  # SIGKILL: what arrived since the last autosave is gone
                rig.run(0.3)
                rig._start_broker()
            rig.run(2.0)
            sent, stored = settle(rig, db, "every reading stored after three broker crashes")
            assert_exactly_once(sent, stored)
            assert col.metric("receipts_total", outcome="sent") > 0
        finally:
            col.kill()


@pytest.mark.parametrize("interpreter", INTERPRETERS)
def test_collector_killed_between_its_write_and_its_receipt(interpreter: str, db: InfluxDB,
                                                            tmp_path: Path) -> None:
    """The collector writes, then dies (SIGKILL) before its coalesced receipt goes out: it had
    already PUBACKed the broker, so only the gateway's re-send (same boot and seq) brings the batches
    back; the restarted collector writes them again (the same points) and receipts them."""
    with make_rig(interpreter, True, tmp_path) as rig:
        # Receipts every 30 s: the write happens, the receipt waits, the kill lands in between.
        col = make_collector(rig, db, tmp_path, True, settings={"receipts": {"interval": "30s"}})
        col.start()
        try:
            rig.start_agent()
            rig.run(2.0)
            wait_until(lambda: stored_readings(db), 20, "points written")
            assert col.metric("receipts_total", outcome="sent") == 0
            col.kill()
            written = set(stored_readings(db))
            st = rig.last_status()
            assert st is not None and st["unreceipted"] > 0  # the gateway still holds them
            col.tables["receipts"]["interval"] = "250ms"
            col.start()  # the same session: nothing to redeliver, the broker had its PUBACKs
            rig.run(1.0)
            sent, stored = settle(rig, db, "re-sent batches stored and receipted")
            assert_exactly_once(sent, stored)
            assert written <= set(stored)
            assert col.metric("receipts_total", outcome="sent") > 0
        finally:
            col.kill()


@pytest.mark.parametrize("interpreter", INTERPRETERS)
def test_share_group_collector_killed_before_its_receipt_is_healed_by_the_other(
        interpreter: str, db: InfluxDB, tmp_path: Path) -> None:
    """Two collectors in one shared-subscription group: whichever made a batch durable receipts it.
    A holds its receipts (every 30 s) and is SIGKILLed once it has written; the gateway re-sends
    what A never receipted, B (which never saw those batches) writes the same points and receipts
    them: every reading once, the log drained, without A coming back."""
    with make_rig(interpreter, True, tmp_path) as rig:
        share = {"mqtt": {"share_group": "city"}}
        col_a = make_collector(rig, db, tmp_path, True, "col-a",
                               settings={**share, "receipts": {"interval": "30s"}})
        col_b = make_collector(rig, db, tmp_path, True, "col-b", settings=share)
        col_a.start()
        col_b.start()
        try:
            rig.start_agent()
            rig.run(2.0)
            wait_until(lambda: col_a.metric("readings_total", channel="up", outcome="written") > 0
                       and col_b.metric("receipts_total", outcome="sent") > 0, 20,
                       "both collectors writing, B receipting")
            rig.run(1.0)
            assert col_a.metric("receipts_total", outcome="sent") == 0
            col_a.kill()
            rig.run(2.0)
            sent, stored = settle(rig, db, "A's batches re-sent, written and receipted by B")
            assert_exactly_once(sent, stored)
        finally:
            col_a.kill()
            col_b.kill()


@pytest.mark.parametrize("interpreter", INTERPRETERS)
def test_receipts_swallowed_on_the_wire_nothing_lost_nothing_doubled_log_drains(
        interpreter: str, db: InfluxDB, tmp_path: Path) -> None:
    """The gateway's uplink goes through a proxy that swallows two receipts in three (whole QoS 0
    PUBLISH packets on its /ack topic: hil/link.py `lose_receipts`) while sensors talk, then all
    of them once the sensors are quiet, then none. Cumulative receipts and the gateway's re-sends
    (the collector receipts the duplicates again) store every reading once and drain its log."""
    broker = Mosquitto(workdir=str(tmp_path / "mosquitto"), extra_config=f"autosave_interval {AUTOSAVE_S}\n")
    broker.start()
    link = ImpairedLink(broker.port, seed=12, lose_receipts=2 / 3)
    (tmp_path / "rig").mkdir()
    try:
        with Rig(interpreter, parking=2, thermometers=1, lids=0, water=(), speed=10.0, receipts=True,
                 receipt_timeout_ms=1000, workdir=str(tmp_path / "rig"), broker=broker,
                 uplink_port=link.port) as rig:
            col = make_collector(rig, db, tmp_path, True)
            col.start()
            try:
                rig.start_agent()
                # Until some receipts were swallowed and some got through (a MicroPython boot is
                # slower to publish its first batches).
                deadline = time.monotonic() + 30
                rig.run(4.0)
                while (link.receipts_lost < 4 or link.receipts_passed < 2) and time.monotonic() < deadline:
                    rig.run(1.0)
                assert link.receipts_lost >= 4 and link.receipts_passed >= 2, (
                    link.receipts_lost, link.receipts_passed)
                # Sensors quiet, every receipt swallowed: the last batches' receipts are gone and
                # no later batch brings a cumulative one, so only the gateway's re-sends (and the
                # collector's receipts for the duplicates) can drain its log once losses stop.
                link.impair(lose_receipts=1.0)
                wait_until(lambda: (rig.last_status() or {}).get("unreceipted", 0) > 0, 10,
                           "batches waiting for a receipt")
                time.sleep(1.0)
                link.impair()
                sent, stored = settle(rig, db, "every reading stored and receipted despite lost receipts")
                assert_exactly_once(sent, stored)
                print(f"receipts swallowed {link.receipts_lost}, passed {link.receipts_passed}; "
                      f"duplicates recognised {col.metric('dedup_hits_total')}")
            finally:
                col.kill()
    finally:
        link.close()
        broker.stop()


AlarmKey = tuple[str, str, int]  # (sensor, code, ts)


def sent_alarms(rig: Rig) -> list[tuple[int, AlarmKey]]:
    """(boot, alarm) of every alarm message the gateway published, re-sends and replays included."""
    assert rig.sub is not None
    out = []
    for p in rig.sub.payloads("alarm"):
        a = cbor2.loads(p)
        sensor, _kind, dt, _fields = a[4][0]
        out.append((a[1], (sensor, a[5], a[3] + dt)))
    return out


def stored_alarms(influx: InfluxDB) -> list[AlarmKey]:
    return [(r["sensor"], r["code"], int(r["time"])) for r in influx.points(DB, 'SELECT * FROM "alarm"')]


@pytest.mark.parametrize("interpreter", INTERPRETERS)
def test_alarms_survive_a_broker_crash_and_a_power_cut_with_the_collector_away(
        interpreter: str, db: InfluxDB, tmp_path: Path) -> None:
    """Alarms published and PUBACKed while the collector is away, then the broker (SIGKILL, inside
    its autosave window) and the gateway (SIGKILL: a power cut) both die before any receipt. The
    broker forgot the alarms; the gateway's log kept each unreceipted alarm's record, so its next
    boot publishes them again: every alarm is stored, once (before receipts held alarms: all lost)."""
    rig = Rig(interpreter, parking=0, thermometers=2, lids=2, water=(), speed=10.0, receipts=True,
              receipt_timeout_ms=2000, workdir=str(tmp_path / "rig"),
              broker_options={"extra_config": f"autosave_interval {AUTOSAVE_S}\n"})
    with rig:
        col = make_collector(rig, db, tmp_path, True)
        col.start()  # its persistent session exists on the broker...
        assert col.stop() == 0  # ...and it goes away: the broker queues for it
        rig.start_agent()
        rig.restart_broker()  # a clean restart saves the broker's state: the window starts now
        saved_at = time.monotonic()
        deadline = saved_at + AUTOSAVE_S - 3
        while not sent_alarms(rig) and time.monotonic() < deadline:
            rig.run(0.5)
        rig.run(1.0)
        before = {k for _, k in sent_alarms(rig)}
        assert before, "no alarm published while the collector was away"
        if time.monotonic() - saved_at >= AUTOSAVE_S - 0.5:
            pytest.skip("the machine was too slow to crash the broker inside its autosave window")
        rig.kill_agent()  # a power cut: no receipt ever came for those alarms
        rig.broker.kill()  # SIGKILL: the alarms queued for the collector are gone
        rig._start_broker()
        col.start()
        rig.start_agent()
        rig.run(2.0)
        try:
            col_ok = True
            wait_until(lambda: before <= set(stored_alarms(db)) and drained(rig), 45,
                       "the alarms of the first boot stored, the log drained")
        except AssertionError:
            col_ok = False
        time.sleep(1.0)  # late duplicates would show now
        sent = sent_alarms(rig)
        stored = stored_alarms(db)
        col.kill()
    lost = before - set(stored)
    assert col_ok and not lost, f"{len(lost)} of {len(before)} alarms of the first boot lost"
    assert len(stored) == len(set(stored)), "an alarm stored twice"
    assert set(stored) == {k for _, k in sent}, "stored alarms that were never sent, or missing ones"
    # Not vacuous: the second boot published again alarms the first had published.
    boots = sorted({b for b, _ in sent})
    assert len(boots) == 2 and before & {k for b, k in sent if b == boots[1]}


@pytest.mark.parametrize("interpreter", INTERPRETERS)
def test_power_cuts_with_receipts_lose_nothing_receipted(interpreter: str, db: InfluxDB,
                                                         tmp_path: Path) -> None:
    """The write-behind log at agent level: readings flow with receipts on (the collector online,
    receipting every 100 ms), and the agent is SIGKILLed at random moments and restarted, twice
    plainly and twice with the record being written torn (cut short, garbled). A
    periodic reading receipted before its group sync was never written to flash; the verifier
    (hil.verify: nothing lost but what a power cut excuses, nothing doubled) judges the broker's
    record, and InfluxDB must hold every reading and alarm the gateway published, once."""
    rnd = random.Random(31 if interpreter == "cpython" else 32)
    rig = Rig(interpreter, parking=3, thermometers=1, lids=1, water=(), speed=10.0, receipts=True,
              receipt_timeout_ms=2000, sync_every_ms=2000, workdir=str(tmp_path / "rig"))
    skipped = 0
    tears: list[str] = []
    with rig:
        col = make_collector(rig, db, tmp_path, True, settings={"receipts": {"interval": "100ms"}})
        col.start()
        try:
            rig.start_agent()
            for i in range(2):
                rig.run(rnd.uniform(1.0, 2.0))
                # Cut power only once this boot has skipped a write (receipts beat a group sync):
                # on a loaded machine a MicroPython boot can take the whole first second or two.
                deadline = time.monotonic() + 15
                for j in range(100):
                    ask = f"st-{i}-{j}"
                    reply = rig.command(cbor2.dumps({"id": ask, "op": "status"}), ask)
                    boot_skipped = reply["result"]["log"]["skipped_bytes"]
                    if boot_skipped > 0 or time.monotonic() > deadline:
                        break
                    rig.run(0.5)
                skipped += boot_skipped
                rig.run(rnd.uniform(0.0, 0.5))
                rig.kill_agent()  # a power cut, maybe with receipted records never written
                rig.run(rnd.uniform(0.2, 0.5))
                rig.start_agent()
            # Power cuts that tear the record being written (docs/hil.md "Torn writes"): one cut
            # short, one garbled, each retried until the newest record on flash is fresh enough
            # to be the one a cut interrupts (with write-behind it is mostly an event or alarm).
            for mode in ("truncate", "garbage"):
                for _ in range(8):
                    rig.run(rnd.uniform(1.0, 2.0))
                    rig.kill_agent()
                    torn = rig.tear_log_tail(rnd, mode, max_age_s=TEAR_MAX_AGE_S)
                    rig.run(rnd.uniform(0.2, 0.5))
                    rig.start_agent()
                    if torn is not None:
                        tears.append(mode)
                        break
            rig.run(1.0)
            rig.drain()
            report = rig.verify()
            sent, stored = settle(rig, db, "every reading stored and receipted after the power cuts")
            alarms_sent = {k for _, k in sent_alarms(rig)}
            alarms_stored = stored_alarms(db)
        finally:
            col.kill()
    assert report.ok, report.summary()
    assert_exactly_once(sent, stored)
    assert len(alarms_stored) == len(set(alarms_stored)) and set(alarms_stored) == alarms_sent
    # Not vacuous: receipts came back before group syncs, so records were never written; and the
    # boots after the tears had a torn record to cut.
    assert skipped > 0
    assert tears == ["truncate", "garbage"]
