"""A Modbus RTU bus with several slaves (water monitors): the bus scheduler.

One request at a time on the line, in order of due time. Each slave has its own poll interval;
a slave that stops answering is polled with growing backoff (up to 8 intervals) so that its
timeouts do not eat the bus time of the others, and returns to its interval on the first good
answer. Timeouts, CRC errors and exception answers are counted per slave (edge.modbus.Master).
A dead port (USB adapter pulled) raises out of the master and the bus is reopened with backoff
(`Source.run`); the master, and so its per-slave counters, lives across reopens.

Each slave is read by its register map's plan (compiled by edge.config: the fewest reads the map
allows): one request per read, decoded straight from the master's buffer into one value list per
source (devices.common.regmap), so a poll allocates little beyond the values and the reading's
tuple (bench/modbus_map.py). A reading is taken only when every read of the slave answered; a
field the map lacks is None.
"""

import asyncio

from devices.common.errors import DecodeError
from devices.common.regmap import decode
from edge.compat import const, ticks_add, ticks_diff, ticks_ms
from edge.modbus import COUNTER_NAMES, Master
from edge.sources import Source

_MAX_BACKOFF = 8
_BAD_VALUE = const(4)  # devices.common.errors.BAD_VALUE (tests/portable/test_modbus_source.py pins it)


class _Slave:
    __slots__ = ("address", "sensor", "poll_ms", "function", "reads", "codes", "scales", "due", "misses")

    def __init__(self, cfg, seen):
        self.address = cfg["address"]
        self.sensor = cfg["sensor"]
        self.poll_ms = cfg["poll_ms"]
        self.function = cfg["function"]
        plan = cfg["plan"]  # {"reads": [[start, count, end entry], ...], "codes", "scales"}
        # Slaves with the same layout share one plan object (edge.config) and so its compiled form.
        first = seen.get(id(plan))
        if first is None:
            seen[id(plan)] = self
            self.reads = tuple(tuple(r) for r in plan["reads"])
            self.codes = bytes(plan["codes"])
            sc = plan["scales"]
            # A tuple, not an array('d'): its items are objects already (ints stay small ints), so a
            # poll does not box 3 new floats per value to read them.
            self.scales = None if sc is None else tuple(sc)
        else:
            self.reads = first.reads
            self.codes = first.codes
            self.scales = first.scales
        self.due = ticks_ms()
        self.misses = 0


class ModbusSource(Source):
    def __init__(self, cfg, port, accept):
        Source.__init__(self, cfg, port, accept)
        self.baud = cfg["baud"]
        self.timeout_ms = cfg["timeout_ms"]
        seen = {}
        self.slaves = [_Slave(s, seen) for s in cfg["slaves"]]
        self.vals = [None] * len(self.codec.FIELDS)  # the slave being read; reused every poll
        self.master = None

    def check_poll(self, poll_ms):
        if poll_ms < 100:
            raise ValueError("poll_ms below 100 would saturate the bus")

    def set_poll(self, poll_ms):
        self.check_poll(poll_ms)
        for s in self.slaves:
            s.poll_ms = poll_ms

    def error_report(self):
        out = Source.error_report(self)
        if self.master is not None:
            for s in self.slaves:
                c = self.master.counters(s.address)
                row = out.get(s.sensor) or {}
                for i in range(len(COUNTER_NAMES)):
                    if c[i] and COUNTER_NAMES[i] not in ("requests", "ok"):
                        row["modbus_" + COUNTER_NAMES[i]] = c[i]
                if row:
                    out[s.sensor] = row
        return out

    async def pump(self, link):
        if self.master is None:
            self.master = Master(link, self.timeout_ms)
        else:
            self.master.port = link  # same path, same baud: the counters carry on
        codec = self.codec
        master = self.master
        vals = self.vals
        n = len(vals)
        while True:
            now = ticks_ms()
            nxt = self.slaves[0]
            for s in self.slaves:
                if ticks_diff(s.due, nxt.due) < 0:
                    nxt = s
            wait = ticks_diff(nxt.due, now)
            if wait > 0:
                await asyncio.sleep(wait / 1000)
            s = nxt
            for i in range(n):
                vals[i] = None
            k = 0
            for r in s.reads:
                data = await master.read(s.address, s.function, r[0], r[1])
                if isinstance(data, DecodeError):
                    break
                k = decode(data, 0, s.codes, s.scales, k, r[2], vals)  # before the next read reuses it
            if isinstance(data, DecodeError):
                s.misses = min(s.misses + 1, _MAX_BACKOFF)
                s.due = ticks_add(ticks_ms(), s.poll_ms * s.misses)
                continue
            s.misses = 0
            s.due = ticks_add(s.due, s.poll_ms)
            if ticks_diff(s.due, ticks_ms()) < 0:
                s.due = ticks_add(ticks_ms(), s.poll_ms)  # we fell behind: do not burst
            if codec.bad_field(vals) >= 0:
                self.error(s.sensor, _BAD_VALUE)
            else:
                self.take(s.sensor, tuple(vals), ticks_ms())
