"""The Modbus source reading a slave by its register map's plan, over a scripted port: every read
of a poll answered gives one reading (fields the map lacks are None), a failed read gives none, a
value out of range is counted. The real bus (pymodbus on a pty) is tests/integration/test_modbus_pty.py."""

import asyncio

from devices.common.modbus import build_response
from edge import config
from edge import modbus as master_mod
from edge.sources.modbus import ModbusSource

MAP = {"ph": {"register": 0}, "temp_c": {"register": 10, "type": "int16", "scale": 0.1}}


class _Port:
    """Answers each request with the next scripted answer (bytes, or None: silence)."""

    baud = 115200

    def __init__(self, answers):
        self.answers = list(answers)
        self.pending = None
        self.written = []

    async def write(self, buf):
        self.written.append(bytes(buf).hex())
        self.pending = self.answers.pop(0)

    async def readinto(self, buf, timeout_ms):
        if not self.pending:
            await asyncio.sleep(timeout_ms / 1000)
            return 0
        n = len(self.pending)
        buf[0:n] = self.pending
        self.pending = None
        return n

    def discard(self):
        return 0


class _Runtime:
    def log(self, msg):
        pass


def _poll_once(answers, done):
    """Run the source's pump on a scripted port until done(src, got) or 3 s; returns (src, got, port)."""
    raw = {"gateway_id": "gw", "broker": {"host": "h"}, "sources": [
        {"kind": "water", "transport": "modbus", "port": "/dev/x", "timeout_ms": 30, "poll_ms": 60000,
         "slaves": [{"address": 5, "sensor": "W-5", "function": 4, "map": MAP}]}]}
    cfg = config.validate(raw)["sources"][0]
    got = []
    src = ModbusSource(cfg, _Runtime(), lambda sensor, kind, fields, *_rest: got.append((sensor, fields)))
    port = _Port(answers)

    async def go():
        task = asyncio.create_task(src.pump(port))
        for _ in range(300):
            if done(src, got):
                break
            await asyncio.sleep(0.01)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass

    asyncio.run(go())
    return src, got, port


def test_two_reads_make_one_reading():
    answers = [build_response(5, 4, bytes.fromhex("40e80000")), build_response(5, 4, bytes.fromhex("00b9"))]
    src, got, port = _poll_once(answers, lambda s, g: g)
    assert [w[:12] for w in port.written] == ["050400000002", "0504000a0001"]  # regs 0..1, then reg 10
    assert got == [("W-5", (7.25, None, None, None, None, None, None, None, 18.5))]
    c = src.master.counters(5)
    assert c[master_mod.C_REQUESTS] == 2 and c[master_mod.C_OK] == 2


def test_a_failed_read_drops_the_poll():
    answers = [build_response(5, 4, bytes.fromhex("40e80000")), None]
    src, got, port = _poll_once(answers, lambda s, g: s.master and s.master.counters(5)[master_mod.C_TIMEOUT])
    assert got == []
    assert src.slaves[0].misses == 1  # polled again after a backoff
    assert src.errors == {}  # the timeout is the master's count (status: modbus_timeout)
    assert src.error_report() == {"W-5": {"modbus_timeout": 1}}


def test_out_of_range_value_is_counted_not_taken():
    answers = [build_response(5, 4, bytes.fromhex("41680000")), build_response(5, 4, bytes.fromhex("00b9"))]
    src, got, port = _poll_once(answers, lambda s, g: s.errors)
    assert got == []
    assert src.error_report()["W-5"] == {"bad_value": 1}  # pH 14.5
