"""The HIL verifier on crafted runs: it must catch a lost event, a duplicate and an invented reading,
and must not blame the agent for what the power-cut rules allow."""

from __future__ import annotations

from typing import Any

from devices.parking import codec as parking
from devices.parking import sim_encode as parking_sim
from devices.thermometer import codec as thermometer
from edge import protocol
from hil.verify import Emission, Outage, verify

T0 = 1_795_676_000.0  # wall seconds
HEARTBEAT = (True, parking_sim.HEARTBEAT, 7, 212, -268, -731, 3612, -97)
ARRIVAL = (True, parking_sim.ARRIVAL, 8, 250, -300, -900, 3611, -96)
TEMP = (36.5, 21.25, 88, 42, True)


def batch(boot: int, seq: int, readings: list[tuple[str, int, int, tuple[Any, ...]]]) -> bytes:
    """A real /up payload from the reference encoder (ts in ms)."""
    enc = protocol.BatchEncoder(2048)
    enc.begin(boot, seq, readings[0][2])
    for sensor, kind, ts, fields in readings:
        assert enc.add(sensor, kind, ts, fields)
    return bytes(enc.finish())


def em(t: float, sensor: str, kind: str, fields: tuple[Any, ...] | None) -> Emission:
    return Emission(T0 + t, sensor, kind, fields)


P, TH = parking.KIND_CODE, thermometer.KIND_CODE


def test_clean_run_with_redelivery_and_resend_is_ok() -> None:
    emissions = [em(1, "P-00001", "parking", HEARTBEAT), em(2, "P-00001", "parking", ARRIVAL),
                 em(3, "T-1", "thermometer", TEMP), em(4, "P-00001", "parking", None)]
    b0 = batch(1, 0, [("P-00001", P, 1001, HEARTBEAT), ("P-00001", P, 2001, ARRIVAL)])
    b1 = batch(1, 1, [("T-1", TH, 3001, TEMP)])
    resent = batch(2, 0, [("T-1", TH, 3001, TEMP)])  # after a reboot: same point, new batch key
    report = verify(emissions, [b0, b1, b0, resent])
    assert report.ok, report.summary()
    assert report.batch_duplicates == 1 and report.resent == 1
    assert report.kinds["parking"].received == 2 and report.kinds["parking"].emitted == 2
    assert report.kinds["thermometer"].received == 1


def test_lost_event_is_caught() -> None:
    emissions = [em(1, "P-00001", "parking", HEARTBEAT), em(2, "P-00001", "parking", ARRIVAL)]
    report = verify(emissions, [batch(1, 0, [("P-00001", P, 1001, HEARTBEAT)])])
    assert not report.ok
    assert report.kinds["parking"].lost == 1
    assert "P-00001" in report.kinds["parking"].lost_samples[0]


def test_duplicate_under_new_timestamp_is_caught() -> None:
    emissions = [em(1, "T-1", "thermometer", TEMP)]
    payloads = [batch(1, 0, [("T-1", TH, 1001, TEMP)]), batch(1, 1, [("T-1", TH, 1500, TEMP)])]
    report = verify(emissions, payloads)
    assert not report.ok
    assert report.kinds["thermometer"].duplicated == 1


def test_invented_reading_is_caught() -> None:
    emissions = [em(1, "T-1", "thermometer", TEMP)]
    other = (36.6, 21.25, 88, 42, True)
    payloads = [batch(1, 0, [("T-1", TH, 1001, TEMP), ("T-1", TH, 1002, other)])]
    report = verify(emissions, payloads)
    assert not report.ok
    assert report.kinds["thermometer"].invented == 1


def test_int_received_for_a_float_field_is_not_the_same_reading() -> None:
    emissions = [em(1, "T-1", "thermometer", (37.0, 21.25, 88, 42, True))]
    payloads = [batch(1, 0, [("T-1", TH, 1001, (37, 21.25, 88, 42, True))])]
    report = verify(emissions, payloads)
    assert report.kinds["thermometer"].invented == 1 and report.kinds["thermometer"].lost == 1


def test_power_cut_windows() -> None:
    kill = Outage(T0 + 10.0, T0 + 12.0)
    emissions = [
        em(9.9, "P-00001", "parking", ARRIVAL),  # event 100 ms before the kill: may be lost
        em(9.0, "P-00002", "parking", ARRIVAL),  # event 1 s before: must arrive
        em(9.7, "P-00003", "parking", HEARTBEAT),  # periodic inside sync interval + margin: may be lost
        em(11.0, "T-1", "thermometer", TEMP),  # written while the agent was down: not expected
    ]
    report = verify(emissions, [], outages=[kill], sync_every_ms=500)
    p = report.kinds["parking"]
    assert (p.expected, p.excusable, p.lost, p.excused) == (1, 2, 1, 2)
    assert report.kinds["thermometer"].optional == 1 and report.kinds["thermometer"].lost == 0
    assert "P-00002" in p.lost_samples[0]


def test_periodic_reading_older_than_the_sync_window_must_survive() -> None:
    emissions = [em(8.0, "P-00003", "parking", HEARTBEAT)]
    report = verify(emissions, [], outages=[Outage(T0 + 10.0, T0 + 11.0)], sync_every_ms=500)
    assert report.kinds["parking"].lost == 1


def test_polled_values_outside_the_served_set_are_invented() -> None:
    served = (7.25, 5.5, 16.0, 0.5, 8.25, 450.0, 1.25, 300.0, 18.5)
    odd = (7.0, 5.5, 16.0, 0.5, 8.25, 450.0, 1.25, 300.0, 18.5)
    water = 3
    payloads = [batch(1, 0, [("W-01", water, 1000, served), ("W-01", water, 1400, served),
                             ("W-01", water, 1800, odd)])]
    report = verify([], payloads, polled={"water": [("W-01", served)]})
    w = report.kinds["water"]
    assert w.polled and w.received == 3 and w.invented == 1 and w.duplicated == 0


def test_undecodable_payload_fails() -> None:
    report = verify([], [b"\xff\x00"])
    assert report.undecodable == 1 and not report.ok
