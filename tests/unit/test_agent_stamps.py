"""The agent's per-sensor stamps (edge/agent.py `accept`): each sensor's times strictly increase,
without a table per sensor.

A point is (sensor, timestamp) downstream, so two readings of one sensor in one millisecond must
get different stamps. The agent keeps only the sensors of the current burst (a fixed list), and
these tests drive bursts larger than that list, with a clock the test sets, through the real
`accept` into a real log, reading the stamps back from the records.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from pathlib import Path

import cbor2

from edge import config
from edge.agent import Agent
from edge.clock import Clock
from edge.ports.posix import PosixPort

FIELDS = (36.5, 21.5, 0, 40, True)  # a thermometer line


def make_agent(tmp_path: Path) -> tuple[Agent, list[int], list[tuple[str, int]]]:
    cfg = config.validate({
        "gateway_id": "gw-stamps", "broker": {"host": "127.0.0.1", "port": 1},
        "store": {"dir": str(tmp_path / "spool")},
        "sources": [{"kind": "thermometer", "transport": "serial", "port": "/dev/null"}]})
    port = PosixPort(verbose=False)
    agent = Agent(cfg, port)
    now = [5000]
    agent.clock = Clock(port.utc_ms, False, ticks=lambda: now[0])  # unsynced: records carry uptime
    stamped: list[tuple[str, int]] = []

    def append(view: memoryview, urgent: bool) -> None:
        rec = cbor2.loads(bytes(view))
        stamped.append((rec[0], rec[-1]))  # sensor, uptime ms

    agent.log.append = append  # type: ignore[method-assign]
    return agent, now, stamped


def accept(agent: Agent, sensor: str) -> None:
    agent.accept(sensor, 5, FIELDS, False, None)


def test_a_burst_larger_than_the_list_still_gives_each_sensor_increasing_stamps(tmp_path: Path) -> None:
    agent, now, stamped = make_agent(tmp_path)
    sensors = [f"T-{i:02d}" for i in range(20)]  # more than the agent keeps for a burst
    for _ in range(3):
        for s in sensors:
            accept(agent, s)  # 60 readings in one millisecond
    now[0] += 1
    for s in reversed(sensors):
        accept(agent, s)  # the next millisecond, while earlier stamps are still ahead of it
    by_sensor: dict[str, list[int]] = defaultdict(list)
    for s, up in stamped:
        by_sensor[s].append(up)
    assert sorted(by_sensor) == sorted(sensors)
    for s, ups in by_sensor.items():
        assert len(ups) == 4 and all(a < b for a, b in itertools.pairwise(ups)), (s, ups)


def test_distinct_sensors_in_one_millisecond_keep_the_clocks_time(tmp_path: Path) -> None:
    agent, now, stamped = make_agent(tmp_path)
    up0 = agent.clock.uptime_ms()
    for i in range(8):
        accept(agent, f"T-{i}")
    assert [up for _, up in stamped] == [up0] * 8  # no skew for first readings in a burst
    accept(agent, "T-0")
    assert stamped[-1] == ("T-0", up0 + 1)
    now[0] += 50  # past every stamp given: nothing carried over
    accept(agent, "T-0")
    accept(agent, "T-9")
    assert stamped[-2:] == [("T-0", up0 + 50), ("T-9", up0 + 50)]
