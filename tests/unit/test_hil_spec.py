"""Scenario files (hil/spec.py): the shipped ones load; a wrong one is refused naming the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hil import scenarios
from hil.block import rig_options
from hil.spec import FAULT_KEYS, IMPLEMENTED, SCENARIO_DIR, SpecError, from_dict, load

BASE: dict[str, Any] = {
    "duration": "30s",
    "gateways": [{"count": 2, "runtime": "cpython",
                  "sensors": [{"kind": "parking", "count": 2}, {"kind": "water", "count": 1}]}],
}


def spec(**over: Any) -> dict[str, Any]:
    return {**BASE, **over}


def refused(data: dict[str, Any]) -> str:
    with pytest.raises(SpecError) as exc:
        from_dict(data)
    return str(exc.value)


@pytest.mark.parametrize("path", sorted(SCENARIO_DIR.glob("*.toml")), ids=lambda p: p.stem)
def test_every_shipped_scenario_loads(path: Path) -> None:
    sc = load(str(path))
    assert sc.name == path.stem
    assert sc.gateways and sc.duration > 0


def test_city_block_is_six_gateways_of_both_runtimes_with_every_kind_and_no_faults() -> None:
    sc = load("city-block")
    assert len(sc.gateways) >= 6
    assert {g.runtime for g in sc.gateways} == {"cpython", "micropython"}
    assert {s.kind for g in sc.gateways for s in g.sensors} == {"parking", "thermometer", "water", "manhole"}
    assert sc.faults == ()
    assert 50 <= sc.duration <= 70


def test_storm_fires_every_implemented_fault_within_four_minutes() -> None:
    sc = load("storm")
    assert {f.kind for f in sc.faults} == IMPLEMENTED
    assert sc.duration + sc.drain_timeout <= 240
    assert any(f.torn_tail for f in sc.faults if f.kind == "gateway_power_cut")


def test_gateways_are_numbered_across_groups() -> None:
    sc = from_dict(spec(gateways=[*BASE["gateways"], {"runtime": "micropython", "heap": "128K",
                                                      "sensors": [{"kind": "manhole", "count": 1}]}]))
    assert [(g.id, g.runtime, g.heap) for g in sc.gateways] == [
        ("gw-01", "cpython", ""), ("gw-02", "cpython", ""), ("gw-03", "micropython", "128K")]


def test_unknown_top_level_key_names_it_and_suggests() -> None:
    msg = refused(spec(durration="30s"))
    assert "unknown key 'durration'" in msg and "did you mean 'duration'" in msg


def test_unknown_sensor_key_names_its_place() -> None:
    sensors = [{"kind": "parking", "count": 1, "rte": 3}]
    msg = refused(spec(gateways=[{"runtime": "cpython", "sensors": sensors}]))
    assert "gateways[0].sensors[0].rte" in msg and "did you mean 'rate'" in msg


def test_unknown_fault_key_names_it() -> None:
    msg = refused(spec(faults=[{"kind": "broker_restart", "at": "5s", "gateway": "gw-01"}]))
    assert "unknown key 'faults[0].gateway'" in msg


def test_misspelt_fault_kind_is_suggested() -> None:
    msg = refused(spec(faults=[{"kind": "broker_restrat", "at": "5s"}]))
    assert "faults[0].kind" in msg and "did you mean 'broker_restart'" in msg


def test_every_fault_kind_is_implemented() -> None:
    # A kind added to FAULT_KEYS before the block can inject it is refused at load time, naming it.
    assert set(FAULT_KEYS) == IMPLEMENTED


def test_dead_slave_names_one_of_the_gateways_slaves() -> None:
    def dead(sensors: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
        return spec(gateways=[{"runtime": "cpython", "sensors": sensors}],
                    faults=[{"kind": "dead_slave", "at": "1s", "for": "2s", "gateway": "gw-01", **kw}])

    water = [{"kind": "water", "count": 2}]
    assert from_dict(dead(water)).faults[0].address == 2  # the last slave by default
    assert from_dict(dead(water, address=1)).faults[0].address == 1
    msg = refused(dead(water, address=3))
    assert "faults[0].address: 3 is not one of gateway gw-01's slaves (1..2)" in msg
    assert "gateway gw-01 has no water (Modbus) slaves" in refused(dead([{"kind": "parking", "count": 1}]))


def test_runtime_and_heap_are_checked() -> None:
    one = [{"kind": "parking", "count": 1}]
    assert "did you mean 'micropython'" in refused(spec(gateways=[{"runtime": "micropyton", "sensors": one}]))
    assert "applies to runtime 'micropython' only" in refused(
        spec(gateways=[{"runtime": "cpython", "heap": "128K", "sensors": one}]))
    assert "not a MicroPython heap size" in refused(
        spec(gateways=[{"runtime": "micropython", "heap": "lots", "sensors": one}]))


def test_a_kind_on_a_bus_the_rig_does_not_carry_it_on_is_refused() -> None:
    sensors = [{"kind": "water", "count": 1, "bus": "mqtt"}]
    msg = refused(spec(gateways=[{"runtime": "cpython", "sensors": sensors}]))
    assert "gateways[0].sensors[0].bus" in msg and "'modbus'" in msg


def test_fault_on_a_missing_gateway_or_bus_is_refused() -> None:
    assert "no gateway 'gw-09'" in refused(
        spec(faults=[{"kind": "gateway_power_cut", "at": "1s", "gateway": "gw-09"}]))
    noise = {"kind": "serial_noise", "at": "1s", "for": "2s", "gateway": "gw-01", "bus": "thermometer"}
    assert "has no thermometer sensors" in refused(spec(faults=[noise]))


def test_fault_past_the_end_or_without_its_span_is_refused() -> None:
    late = {"kind": "db_down", "at": "25s", "for": "10s"}
    assert "after the scenario's duration" in refused(spec(faults=[late]))
    assert "needs a duration > 0" in refused(spec(faults=[{"kind": "db_down", "at": "5s"}]))


def test_wrong_types_are_refused_with_the_key() -> None:
    assert "seed: expected int" in refused(spec(seed="7"))
    assert "duration: expected a duration" in refused(spec(duration="soon"))
    assert "goals.reading_p99" in refused(spec(goals={"reading_p99": True}))


def test_faults_are_sorted_by_time_and_keep_their_parameters() -> None:
    sc = from_dict(spec(faults=[
        {"kind": "storm", "at": "10s", "for": "5s", "factor": 3},
        {"kind": "gateway_power_cut", "at": "2s", "for": "1s", "gateway": "gw-02", "torn_tail": True},
    ]))
    assert [(f.kind, f.at, f.end) for f in sc.faults] == [
        ("gateway_power_cut", 2.0, 3.0), ("storm", 10.0, 15.0)]
    assert sc.faults[0].torn_tail and sc.faults[0].gateway == "gw-02" and sc.faults[1].factor == 3.0


def test_unknown_scenario_name_lists_the_shipped_ones() -> None:
    with pytest.raises(SpecError, match="did you mean 'storm'"):
        load("strom")


def test_uplink_impair_takes_its_parameters_and_needs_one() -> None:
    sc = from_dict(spec(faults=[{"kind": "uplink_impair", "at": "1s", "for": "5s", "gateway": "gw-01",
                                 "latency": "300ms", "jitter": "100ms", "drop": 0.1}]))
    f = sc.faults[0]
    assert (f.latency, f.jitter, f.drop, f.partition, f.gateway) == (0.3, 0.1, 0.1, False, "gw-01")
    assert "needs latency, jitter, drop or partition" in refused(
        spec(faults=[{"kind": "uplink_impair", "at": "1s", "for": "5s", "gateway": "gw-01"}]))
    assert "drop: 2.0 must be within 0..1" in refused(
        spec(faults=[{"kind": "uplink_impair", "at": "1s", "for": "5s", "gateway": "gw-01", "drop": 2}]))
    assert "unknown key 'faults[0].loss'" in refused(
        spec(faults=[{"kind": "uplink_impair", "at": "1s", "for": "5s", "gateway": "gw-01", "loss": 0.1}]))


def test_torn_tail_takes_a_tear_mode() -> None:
    def cut(tail: Any) -> Any:
        return from_dict(spec(faults=[{"kind": "gateway_power_cut", "at": "5s", "gateway": "gw-01",
                                       "torn_tail": tail}])).faults[0].torn_tail

    assert (cut(True), cut(False), cut("garbage"), cut("truncate")) == ("truncate", "", "garbage", "truncate")
    msg = refused(spec(faults=[{"kind": "gateway_power_cut", "at": "5s", "gateway": "gw-01",
                                "torn_tail": "shred"}]))
    assert "faults[0].torn_tail: 'shred' is not true, false, 'truncate' or 'garbage'" in msg


def test_the_python_scenarios_have_toml_twins_with_the_same_faults() -> None:
    # hil/scenarios.py -> hil/scenarios/rig-<name>.toml (docs/hil.md "The Python scenarios as data")
    faults = {name: [(f.kind, f.at, f.torn_tail) for f in load(f"rig-{name}").faults]
              for name in ("steady", "broker-restart", "power-cut", "torn-power-cut", "faults", "board-heap")}
    assert faults["steady"] == [] and faults["board-heap"] == []
    assert faults["broker-restart"] == [("broker_restart", 3.0, "")]
    assert [k for k, _, _ in faults["power-cut"]] == ["gateway_power_cut"] * 2
    assert [t for _, _, t in faults["torn-power-cut"]] == ["truncate", "garbage", "truncate"]
    assert sorted(k for k, _, _ in faults["faults"]) == ["dead_slave", "garbage_device", "serial_noise"]
    heap = load("rig-board-heap").gateways[0]
    assert (heap.runtime, heap.heap, heap.sensor("water")) == ("micropython", "136K", None)


class _Built(Exception):
    """Raised by the recording Rig below: the scenario stops before any process starts."""


@pytest.mark.parametrize("name", sorted(set(scenarios.SCENARIOS) - {"commands"}))
def test_each_python_scenario_builds_its_rig_from_its_toml_twin(
        name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # One source of truth: the Python scenario's sensors, rates, poll period, heap, wiring and seed
    # are its twin's (hil/block.py rig_options, the block's own mapping); only the runtime is not.
    built: dict[str, Any] = {}

    def record(interpreter: str, **kw: Any) -> None:
        built.update(kw, interpreter=interpreter)
        raise _Built

    monkeypatch.setattr(scenarios, "Rig", record)
    sc = load(f"rig-{name}")
    with pytest.raises(_Built):
        scenarios.SCENARIOS[name]("cpython")
    assert built.pop("interpreter") == "cpython"
    assert built.pop("seed") == sc.seed
    assert built == rig_options(sc.gateways[0], sc.faults)


def test_pipeline_defaults_to_the_rigs_settings_and_is_checked() -> None:
    sc = from_dict(spec())
    assert (sc.pipeline.batch_age, sc.pipeline.sync_every, sc.pipeline.receipts,
            sc.pipeline.collector_flush) == (0.3, 0.5, False, 0.2)
    assert "unknown key 'pipeline.batch_ag'; did you mean 'batch_age'" in refused(
        spec(pipeline={"batch_ag": "1s"}))
    assert "pipeline.receipts: expected bool" in refused(spec(pipeline={"receipts": "yes"}))
    assert "pipeline.sync_every: 0s must be > 0" in refused(spec(pipeline={"sync_every": "0s"}))


def test_city_block_defaults_runs_what_a_deployment_ships() -> None:
    """The scenario that measures issue 12's latency goals "with defaults" takes the shipped
    defaults of the gateway's config schema and the collector's config, so it cannot drift."""
    from collector.config import WriterConfig
    from edge.config import STORE, UPLINK

    sc, block = load("city-block-defaults"), load("city-block")
    assert sc.pipeline.batch_age * 1000 == UPLINK["batch_age_ms"][1]
    assert sc.pipeline.sync_every * 1000 == STORE["sync_every_ms"][1]
    assert sc.pipeline.receipts is UPLINK["receipts"][1]
    assert sc.pipeline.collector_flush == WriterConfig().flush_interval
    assert (sc.gateways, sc.duration, sc.seed, sc.goals) == (block.gateways, block.duration, block.seed,
                                                              block.goals)
