"""The gateway agent as a process (CPython and the MicroPython unix port) between simulated
parking, thermometer, water (pymodbus) and manhole sensors and a private Mosquitto: every reading
that was sent arrives exactly once. The rig and the verifier are hil/rig.py and hil/verify.py."""

from __future__ import annotations

import pytest

from hil import scenarios
from hil.rig import INTERPRETERS

pytestmark = pytest.mark.integration

KINDS = ("parking", "thermometer", "manhole")  # emitted by the rig; water is polled by the agent


@pytest.mark.parametrize("interpreter", INTERPRETERS)
def test_steady_state_every_reading_once(interpreter: str) -> None:
    out = scenarios.steady(interpreter, seconds=5.0)
    report = out.report
    assert report.ok, report.summary()
    for kind in KINDS:
        k = report.kinds[kind]
        assert k.expected > 5, report.summary()
        assert k.received >= k.expected, report.summary()
    assert report.kinds["water"].received > 0
    assert report.batch_duplicates == 0 and report.resent == 0
    status = out.status
    assert status is not None and status["state"] == "online"
    assert status["errors"] == {}  # a clean bus: the error counters exist and are zero
    assert status["spool_dropped"] == 0 and status["clock_synced"] is True
    retained = out.retained  # a newcomer gets the gateway's state without waiting for a period
    assert retained is not None and retained["state"] == "online" and "errors" in retained
    if interpreter == "cpython":
        assert out.exit_code == 0  # SIGTERM is a clean stop
    assert out.leftovers == []


@pytest.mark.parametrize(("interpreter", "heap"), [("micropython32", "100K"), ("micropython", "136K")])
def test_micropython_agent_with_two_serial_and_one_mqtt_source_runs_in_board_heap(
    interpreter: str, heap: str, micropython32: str
) -> None:
    """A regression guard for the agent's heap, loaded as .mpy, on both unix ports.

    The issue's source mix (parking and thermometers on serial, manhole lids over MQTT), every
    reading verified. The 32-bit build (a board's word size) ran it in 96K, the goal's 128 KB board
    less the 32 KB it keeps free (passed at 84K when written, 92K after receipts). On the tree that
    also holds the write-behind buffer and the SNTP clock it failed at 92K and passed at 96K only
    some of the time (1 of 4 runs), so the guard was at 100K. Since the board boots from the
    config build checked (edge/checked.py: edge.config's names are not interned) and tty.py's
    CPython part is out of the image, the run stays in five qstr pools: passes at 96K (3 of 3),
    at 92K 1 of 4. Alarms held until receipted (+1.9 KB of code) took that back: 96K fails 3 of
    3, 100K passes 3 of 3, so the guard was at 100K (issue 10, docs/gateway.md "Sensors per
    gateway"). With the agent's construction and the CONNECT encoder dropped after boot
    (edge/start.py, edge/mqtt/connect.py; heap6): 96K passes 3 of 3, 92K fails 2 of 2, so the
    guard was back at 96K. The events log of its own (a second edge.store.Log, docs/store.md
    "Two logs", 2026-12-07) costs ~1.2 KB resident: 96K then failed 6 of 33 runs (MemoryError in
    housekeeping or the uplink, 167-256 B), 97K at start, 98K passed 12 of 12 (main before it: 95K
    fails, 96K passes 10 of 10), so the guard is at 100K again. The
    64-bit port, which needs ~1.45 times the heap for the same objects, stays a second guard at
    136K (passes at 132K, fails at 128K, before and after that change).
    Measured: docs/benchmarks.md, "Memory". The free-heap goal itself is bench/edge_memory.py's.
    """
    out = scenarios.board_heap(interpreter, heap=heap)
    report = out.report
    assert report.ok, report.summary()
    for kind in KINDS:
        assert report.kinds[kind].received >= report.kinds[kind].expected > 0, report.summary()
    assert out.status is not None and out.status["errors"] == {}
    assert out.leftovers == []


def test_a_gateway_with_128_parking_bays_runs_on_the_32bit_build_in_112k(micropython32: str) -> None:
    """128 bays on one serial bus (plus 2 thermometers and 2 lids) on a board's word size.

    The agent once kept its own table of every sensor's last stamp beside the rules' table; it grew
    as sensors first reported and, at the 128th, asked a fragmented 128K heap for one 1,336-byte
    block and died (MemoryError in the parking source). Now the rules' table, allocated at start,
    is the only per-sensor memory. Measured on the branch that did it: passes at 104K, dies at 100K.
    After the complete config validation, the Modbus maps and receipts (more resident code and a
    sixth qstr pool, docs/gateway.md "Sensors per gateway"): passes at 116K, dies at 112K, so the
    guard was at 120K. With the config checked at build (edge/checked.py) and five qstr pools:
    passes at 112K (4 of 4 runs; main 1115148 died there 3 of 3), dies at 108K (1 of 1). With
    alarms held until receipted: 116K passes 1 of 3, 120K 3 of 3; the guard was at 120K. With the
    configured ids in one string, no frame counter kept, the MQTT redelivery check on 30-bit crcs
    and a 256 B serial buffer (heap4): passes at 112K 3 of 3 (main 031015f dies there 2 of 2),
    dies at 108K (1 of 1); the guard was at 112K. With 16 fewer interned names (names5: the run
    holds 618, in five qstr pools instead of six): passes at 108K 2 of 2 (main 93db3df dies there
    1 of 1), dies at 104K (1 of 1); the guard is at 108K. heap6 (-2.5 to -3 KB at the bench's 128
    sensors) passes at 108K 2 of 2 and still dies at 104K (3 of 3: MemoryError allocating 256 B in
    the uplink), so it stayed there. On main 04a43e8 (heap6 and cmdnames merged, batch age 1 s) it
    died at 108K in the full test run (MemoryError allocating 256 B in the uplink; two pytest
    workers on two cores) and in 1 of 3 runs alone with both cores busy (3 of 3 passed on an idle
    machine): the margin at 108K depends on timing, so the guard is at 112K (3 of 3 with both cores
    busy). The board's own figure is bench/edge_memory.py's (docs/gateway.md).
    """
    out = scenarios.board_heap("micropython32", heap="112K", parking=128)
    report = out.report
    assert report.ok, report.summary()
    assert report.kinds["parking"].received >= report.kinds["parking"].expected > 128, report.summary()
    for kind in KINDS:
        assert report.kinds[kind].received >= report.kinds[kind].expected > 0, report.summary()
    assert out.status is not None and out.status["errors"] == {}
    assert out.leftovers == []
