"""The block verifier (hil/judge.py) on crafted runs: ground truth vs what InfluxDB holds.

It must catch a lost, a duplicated, an altered (value or type) and an invented reading per gateway and
kind, judge polled water by value, check alarms in their own measurement, excuse only what the
power-cut rules excuse, and fail a missed latency goal."""

from __future__ import annotations

import json
from typing import Any

from devices.parking import codec as parking
from devices.parking import sim_encode as parking_sim
from devices.thermometer import codec as thermometer
from hil.judge import judge

T0 = 1_795_676_000.0
HEARTBEAT = [True, parking_sim.HEARTBEAT, 7, 212, -268, -731, 3612, -97]
ARRIVAL = [True, parking_sim.ARRIVAL, 8, 250, -300, -900, 3611, -96]
TEMP = [36.5, 21.25, 88, 42, True]
FEVER = [38.9, 21.0, 89, 40, True]
PARKING_TYPES = {"occupied": "boolean", "event": "integer", "seq": "integer", "mag_x": "integer",
                 "mag_y": "integer", "mag_z": "integer", "battery_mv": "integer", "rssi_dbm": "integer"}
THERMO_TYPES = {"body_c": "float", "ambient_c": "float", "seq": "integer", "distance_cm": "integer",
                "mask": "boolean"}


def fmap(codec: Any, fields: list[Any]) -> dict[str, Any]:
    return {name: v for name, v in zip(codec.FIELDS, fields, strict=True) if v is not None}


def record(emissions: list[list[Any]], stored: list[list[Any]], **over: Any) -> dict[str, Any]:
    run = {
        "scenario": {"name": "t", "seed": 1, "duration": 10, "gateways": [], "faults": [], "goals": {}},
        "t0": T0, "sync_every_ms": 500, "emissions": emissions, "outages": {}, "polled": {},
        "stored": stored, "field_types": {"parking": PARKING_TYPES, "thermometer": THERMO_TYPES,
                                          "alarm": {**PARKING_TYPES, **THERMO_TYPES}},
        "faults": [], "timeline": [], "poller": {"period": 0.25},
    }
    run.update(over)
    return json.loads(json.dumps(run))  # as run.json would give it back


def em(t: float, gw: str, sensor: str, kind: str, fields: list[Any] | None) -> list[Any]:
    return [T0 + t, gw, sensor, kind, fields]


def st(seen: float, gw: str, sensor: str, kind: str, ts: float, fields: dict[str, Any],
       measurement: str | None = None) -> list[Any]:
    return [T0 + seen, measurement or kind, gw, sensor, kind, int((T0 + ts) * 1000), fields]


def test_clean_run_matches_every_reading_and_measures_latency() -> None:
    run = record(
        [em(1, "gw-01", "P-1", "parking", HEARTBEAT), em(2, "gw-02", "P-1", "parking", ARRIVAL),
         em(3, "gw-01", "T-1", "thermometer", TEMP), em(4, "gw-01", "P-1", "parking", None)],
        [st(1.5, "gw-01", "P-1", "parking", 1.01, fmap(parking, HEARTBEAT)),
         st(2.25, "gw-02", "P-1", "parking", 2.01, fmap(parking, ARRIVAL)),
         st(3.75, "gw-01", "T-1", "thermometer", 3.01, fmap(thermometer, TEMP))])
    v = judge(run)
    assert v.ok, v.samples
    assert v.by_kind()["parking"].matched == 2
    assert sorted(round(x, 3) for _, x in v.latency["parking"].samples) == [0.25, 0.5]
    assert v.latency["thermometer"].stats()["max"] == 0.75


def test_same_sensor_id_on_two_gateways_is_two_sensors() -> None:
    run = record([em(1, "gw-01", "P-1", "parking", HEARTBEAT), em(1, "gw-02", "P-1", "parking", HEARTBEAT)],
                 [st(1.5, "gw-01", "P-1", "parking", 1.01, fmap(parking, HEARTBEAT)),
                  st(1.5, "gw-01", "P-1", "parking", 1.02, fmap(parking, HEARTBEAT))])
    v = judge(run)
    assert not v.ok
    assert (v.tallies[("gw-01", "parking")].duplicated, v.tallies[("gw-02", "parking")].lost) == (1, 1)


def test_lost_duplicated_altered_and_invented_are_each_counted() -> None:
    changed = [*TEMP]
    changed[2] = 99
    run = record(
        [em(1, "gw-01", "P-1", "parking", HEARTBEAT), em(2, "gw-01", "P-1", "parking", ARRIVAL),
         em(3, "gw-01", "T-1", "thermometer", TEMP)],
        [st(1.5, "gw-01", "P-1", "parking", 1.01, fmap(parking, HEARTBEAT)),
         st(1.9, "gw-01", "P-1", "parking", 1.40, fmap(parking, HEARTBEAT)),  # re-stamped copy
         st(3.5, "gw-01", "T-1", "thermometer", 3.01, fmap(thermometer, changed)),  # value changed
         st(9.5, "gw-01", "P-7", "parking", 9.01, fmap(parking, ARRIVAL))])  # never emitted
    v = judge(run)
    p, t = v.tallies[("gw-01", "parking")], v.tallies[("gw-01", "thermometer")]
    assert (p.lost, p.duplicated, p.invented, p.altered) == (1, 1, 1, 0)
    assert (t.lost, t.altered, t.invented) == (0, 1, 0)
    assert not v.ok
    assert any(s.startswith("altered: thermometer gw-01 T-1") for s in v.samples)


def test_a_float_stored_as_an_integer_field_is_altered() -> None:
    whole = [37.0, 21.0, 5, 40, False]
    run = record([em(1, "gw-01", "T-1", "thermometer", whole)],
                 [st(1.5, "gw-01", "T-1", "thermometer", 1.01, fmap(thermometer, whole))],
                 field_types={"thermometer": {**THERMO_TYPES, "body_c": "integer"}})
    v = judge(run)
    assert v.tallies[("gw-01", "thermometer")].altered == 1
    # JSON gives 37.0 back as 37: with the float field type it is the same reading.
    as_json = {**fmap(thermometer, whole), "body_c": 37}
    assert judge(record([em(1, "gw-01", "T-1", "thermometer", whole)],
                        [st(1.5, "gw-01", "T-1", "thermometer", 1.01, as_json)])).ok


def test_power_cut_rules_excuse_only_their_window() -> None:
    kill, back = T0 + 5.0, T0 + 7.0
    run = record(
        [em(4.9, "gw-01", "P-1", "parking", HEARTBEAT),  # periodic, 0.1 s before the kill: excusable
         em(6.0, "gw-01", "P-1", "parking", HEARTBEAT),  # while down: optional
         em(3.0, "gw-01", "P-1", "parking", ARRIVAL)],  # event 2 s before the kill: must arrive
        [], outages={"gw-01": [[kill, back]]})
    t = judge(run).tallies[("gw-01", "parking")]
    assert (t.excused, t.lost, t.optional) == (1, 1, 1)


def test_polled_water_is_judged_by_value() -> None:
    from devices.water import codec as water

    served = [7.1, 3.2, 15.0, 0.4, 8.0, 420.5, 1.25, 30.5, 20.5]  # what the slave serves, per FIELDS
    ok_fields = dict(zip(water.FIELDS, served, strict=True))
    bad_fields = {**ok_fields, "ph": 9.9}
    types = dict.fromkeys(water.FIELDS, "float")
    run = record([], [st(1.2, "gw-01", "W-01", "water", 1.0, ok_fields),
                      st(2.2, "gw-01", "W-01", "water", 2.0, bad_fields)],
                 polled={"gw-01": {"water": [["W-01", served]]}}, field_types={"water": types})
    t = judge(run).tallies[("gw-01", "water")]
    assert (t.matched, t.invented) == (1, 1)


def test_alarms_are_judged_in_their_own_measurement() -> None:
    assert thermometer.alarm(tuple(FEVER)) is not None
    e = [em(1, "gw-01", "T-1", "thermometer", FEVER)]
    reading = st(1.4, "gw-01", "T-1", "thermometer", 1.01, fmap(thermometer, FEVER))
    alarm = st(1.2, "gw-01", "T-1", "thermometer", 1.01, fmap(thermometer, FEVER), measurement="alarm")
    v = judge(record(e, [reading, alarm]))
    assert v.ok and v.latency["alarm"].stats()["p50"] is not None
    missing = judge(record(e, [reading]))
    assert missing.tallies[("gw-01", "alarm")].lost == 1 and not missing.ok
    twice = judge(record(e, [reading, alarm, [*alarm[:5], alarm[5] + 7, alarm[6]]]))
    assert twice.tallies[("gw-01", "alarm")].duplicated == 1


def test_a_missed_latency_goal_fails_the_run() -> None:
    e = [em(1, "gw-01", "P-1", "parking", HEARTBEAT)]
    s = [st(4.5, "gw-01", "P-1", "parking", 1.01, fmap(parking, HEARTBEAT))]
    goals = {"name": "t", "seed": 1, "duration": 10, "gateways": [], "faults": [],
             "goals": {"reading_p99": 2.0}}
    v = judge(record(e, s, scenario=goals))
    assert not v.ok and v.goals_missed == ["reading_p99: 3.500 s, goal 2 s"]
    assert judge(record(e, s, scenario={**goals, "goals": {"reading_p99": 4.0}})).ok


def test_recovery_gives_the_backlog_peak_and_when_it_drained() -> None:
    from hil.judge import recovery

    emissions, stored = [], []
    for i in range(200):  # 10 readings/s for 20 s; those emitted during the fault are stored at 8.5 s
        t = i * 0.1
        fields = [*HEARTBEAT]
        fields[2] = i
        seen = 8.5 if 5.0 <= t < 8.0 else t + 0.2
        emissions.append(em(t, "gw-01", "P-1", "parking", fields))
        stored.append(st(seen, "gw-01", "P-1", "parking", t + 0.01, fmap(parking, fields)))
    run = record(emissions, stored, faults=[[T0 + 5.0, T0 + 8.0, "db_down at 5s for 3s"]])
    v = judge(run)
    assert v.ok
    (r,) = recovery(run, v)
    assert 30 <= r["peak_backlog"] <= 36  # 30 held back plus the ~2 in flight at nominal
    assert r["drained_s"] is not None and 0.4 <= r["drained_s"] <= 0.8
    # Calm latency is 0.2 s; readings emitted after the end are at 0.2 s again at once, while a
    # window reaching back into the fault (stored at 8.5 s) is not.
    assert abs(r["nominal_latency_s"] - 0.2) < 1e-3
    assert r["latency_back_s"] == 0.0


def test_latency_is_back_to_nominal_only_when_the_readings_after_the_fault_are_fast_again() -> None:
    from hil.judge import recovery

    emissions, stored = [], []
    for i in range(400):  # 10 readings/s for 40 s; a fault 5-8 s; readings until 13 s stay slow (3 s)
        t = i * 0.1
        fields = [*HEARTBEAT]
        fields[2] = i
        seen = t + (3.0 if 5.0 <= t < 13.0 else 0.2)
        emissions.append(em(t, "gw-01", "P-1", "parking", fields))
        stored.append(st(seen, "gw-01", "P-1", "parking", t + 0.01, fmap(parking, fields)))
    run = record(emissions, stored, faults=[[T0 + 5.0, T0 + 8.0, "uplink_impair at 5s for 3s"]])
    (r,) = recovery(run, judge(run))
    assert abs(r["nominal_latency_s"] - 0.2) < 1e-3
    assert r["latency_back_s"] == 5.0  # the first 2-s window of emissions all after 13 s


def test_a_point_caught_mid_write_is_one_point() -> None:
    """InfluxDB 1.x can show a point's fields partially while it is written (the soak's 74
    "invented" readings): the fuller row of the same point wins; a contradicting row does not."""
    full = fmap(parking, HEARTBEAT)
    partial = {"seq": full["seq"]}
    e = [em(1, "gw-01", "P-1", "parking", HEARTBEAT)]
    v = judge(record(e, [st(1.2, "gw-01", "P-1", "parking", 1.01, partial),
                         st(1.4, "gw-01", "P-1", "parking", 1.01, full)]))
    assert v.ok, v.samples
    assert [round(x, 3) for _, x in v.latency["parking"].samples] == [0.4]  # seen complete at 1.4 s
    contradicting = {**full, "mag_x": full["mag_x"] + 1}
    v = judge(record(e, [st(1.2, "gw-01", "P-1", "parking", 1.01, contradicting),
                         st(1.4, "gw-01", "P-1", "parking", 1.01, full)]))
    assert v.tallies[("gw-01", "parking")].invented == 1 and not v.ok  # the full row matched the emission


def test_a_reading_taken_before_the_clock_was_set_must_be_stored_with_its_true_time() -> None:
    # gw-01's boot without a clock was online at 5 s and set its clock at 9 s (clock_unset_at_boot):
    # readings emitted meanwhile were stamped through its anchor; one 3 s late is mistimed.
    unset = {"gw-01": [[T0 + 5.0, T0 + 9.0]]}
    good, late = [True, parking_sim.HEARTBEAT, 9, 1, 2, 3, 3600, -90], ARRIVAL
    run = record(
        [em(6.0, "gw-01", "P-1", "parking", good), em(7.0, "gw-01", "P-1", "parking", late),
         em(7.0, "gw-02", "P-1", "parking", late),  # another gateway: its clock was never unset
         em(2.0, "gw-01", "T-1", "thermometer", TEMP)],  # before the boot: not in the window
        [st(9.5, "gw-01", "P-1", "parking", 6.2, fmap(parking, good)),
         st(9.5, "gw-01", "P-1", "parking", 10.0, fmap(parking, late)),
         st(9.5, "gw-02", "P-1", "parking", 10.0, fmap(parking, late)),
         st(3.0, "gw-01", "T-1", "thermometer", 5.0, fmap(thermometer, TEMP))],
        clock_unset=unset)
    v = judge(run)
    t = v.tallies[("gw-01", "parking")]
    assert (t.matched, t.anchored, t.mistimed) == (2, 2, 1)
    assert v.tallies[("gw-02", "parking")].anchored == 0 and v.tallies[("gw-01", "thermometer")].anchored == 0
    assert not v.ok and any(s.startswith("mistimed: parking gw-01 P-1") for s in v.samples)
    # a clock never set: every later reading of that gateway is judged (None = still unset)
    v = judge(record([em(6.0, "gw-01", "P-1", "parking", good)],
                     [st(9.5, "gw-01", "P-1", "parking", 6.1, fmap(parking, good))],
                     clock_unset={"gw-01": [[T0 + 5.0, None]]}))
    assert v.ok and v.tallies[("gw-01", "parking")].anchored == 1


def test_a_lid_over_mqtt_may_wait_at_the_site_broker_while_its_gateway_boots() -> None:
    """Lids arrive through the site broker and are stamped on arrival: 1.5 s late is their wait for
    the booting gateway's subscription (not a stamping error), 4 s is mistimed; a serial reading of
    the same boot is still held to 1 s."""
    from devices.manhole import codec as manhole

    lid = [1.5, False, False, 7.3, 12.5, 0.2, 3647, -77]
    lid_types = {"tilt_deg": "float", "open": "boolean", "displaced": "boolean", "water_level_cm": "float",
                 "ch4_ppm": "float", "h2s_ppm": "float", "battery_mv": "integer", "rssi_dbm": "integer"}
    late = [True, parking_sim.HEARTBEAT, 9, 1, 2, 3, 3600, -90]
    base = record([], [])
    types = {**base["field_types"], "manhole": lid_types}
    unset = {"gw-01": [[T0 + 5.0, T0 + 12.0]]}
    run = record(
        [em(6.0, "gw-01", "MH-1", "manhole", lid), em(8.0, "gw-01", "MH-2", "manhole", lid),
         em(7.0, "gw-01", "P-1", "parking", late)],
        [st(12.5, "gw-01", "MH-1", "manhole", 7.5, fmap(manhole, lid)),
         st(12.5, "gw-01", "MH-2", "manhole", 12.0, fmap(manhole, lid)),
         st(12.5, "gw-01", "P-1", "parking", 8.5, fmap(parking, late))],
        clock_unset=unset, field_types=types)
    v = judge(run)
    lids, bays = v.tallies[("gw-01", "manhole")], v.tallies[("gw-01", "parking")]
    assert (lids.anchored, lids.mistimed) == (2, 1)  # MH-2, 4 s late
    assert (bays.anchored, bays.mistimed) == (1, 1)  # 1.5 s late on a serial bus
    assert not v.ok


def test_a_lost_alarm_is_placed_dropped_by_the_gateway_in_transit_or_after_the_broker() -> None:
    """Three fevers, none in the alarm measurement: one the broker delivered (lost after it), and of
    the two it never had, one the gateway counted as dropped from its full queue, one not (lost in
    transit). Old run.json without that evidence: lost, unplaced."""
    fevers = [[38.9 + i / 10, 21.0, 89 + i, 40, True] for i in range(3)]
    e = [em(1 + i, "gw-01", "T-1", "thermometer", f) for i, f in enumerate(fevers)]
    stored = [st(1.4 + i, "gw-01", "T-1", "thermometer", 1.01 + i, fmap(thermometer, f))
              for i, f in enumerate(fevers)]
    at_broker = {"gw-01": [[T0 + 1.1, 1, 0, "fever", "T-1", "thermometer", 0, fevers[0]]]}
    v = judge(record(e, stored, alarms_at_broker=at_broker, alarms_dropped={"gw-01": 1}))
    t = v.tallies[("gw-01", "alarm")]
    assert (t.lost, t.lost_after_broker, t.dropped_by_gateway, t.lost_in_transit) == (3, 1, 1, 1)
    assert v.samples[0].startswith("gw-01: 3 alarms lost: 1 dropped by the gateway")
    old = judge(record(e, stored)).tallies[("gw-01", "alarm")]
    assert (old.lost, old.lost_after_broker, old.dropped_by_gateway, old.lost_in_transit) == (3, 0, 0, 0)
