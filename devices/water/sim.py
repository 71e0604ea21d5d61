"""Simulated water-quality stations: a register bank per Modbus slave with diurnal drift and noise.

Temperature and dissolved oxygen follow the day (warm afternoons hold less oxygen), level and
flow follow a daily demand curve with slow random walks, turbidity and COD jump after simulated
rain and decay back. `next_frame` returns the register data of a whole-map read (what
codec.decode takes); `registers` gives the same values as 16-bit registers for a real Modbus
server (hil/water_slave.py), which is where wire faults (silence, bad CRC, exception) belong.

Faults in `next_frame`: "garbage" random bytes, "truncate" a cut data block, "bad_crc" (register
data carries no CRC) a NaN in one register pair, as a probe with a broken ADC reports,
"stuck" the previous frame again, "silence" None.
"""

import math

from devices.common.faults import check_fault
from devices.common.rng import Rng
from devices.water import codec

_DAY_MS = 86400000.0


class _Station:
    __slots__ = ("addr", "level", "flow", "turb", "cond", "rain", "last")

    def __init__(self, addr, rng):
        self.addr = addr
        self.level = rng.uniform(0.8, 1.6)
        self.flow = rng.uniform(200.0, 800.0)
        self.turb = rng.uniform(3.0, 12.0)
        self.cond = rng.uniform(300.0, 700.0)
        self.rain = 0.0
        self.last = None


class Simulator:
    def __init__(self, sensors, seed=1, word_order=codec.WORD_ABCD, rain_chance=0.01):
        self.rng = Rng(seed)
        self.word_order = word_order
        self.rain_chance = rain_chance
        self.stations = [_Station(s, self.rng) for s in sensors]
        self.fault = None
        self.fault_rate = 1.0
        self.last_reading = None
        self._i = 0
        self._last_frame = None

    def set_fault(self, mode, rate=1.0):
        check_fault(mode, rate)
        self.fault = mode
        self.fault_rate = rate

    def _step(self, st, now_ms):
        """Advance one station's state and return its fields (float32-exact)."""
        r = self.rng
        phase = 2.0 * math.pi * ((now_ms % _DAY_MS) / _DAY_MS)  # 0 at midnight
        day = math.sin(phase - math.pi / 2.0)  # -1 at midnight, +1 at noon
        if st.rain <= 0.0 and r.chance(self.rain_chance):
            st.rain = r.uniform(0.5, 1.0)
        st.rain *= 0.97
        st.level = min(max(st.level + r.gauss(0.0, 0.005) + 0.02 * st.rain, 0.2), 4.5)
        st.flow = min(max(st.flow + r.gauss(0.0, 5.0), 50.0), 3000.0)
        st.turb = min(max(st.turb + r.gauss(0.0, 0.2) + 8.0 * st.rain - 0.05 * (st.turb - 6.0), 0.5), 900.0)
        st.cond = min(max(st.cond + r.gauss(0.0, 3.0) - 20.0 * st.rain, 50.0), 3000.0)
        temp = 18.0 + 4.0 * day + r.gauss(0.0, 0.1)
        do = 8.5 - 0.15 * (temp - 18.0) - 1.5 * st.rain + r.gauss(0.0, 0.05)
        fields = (
            7.2 + 0.3 * day + r.gauss(0.0, 0.02),
            st.turb,
            12.0 + 0.8 * st.turb + r.gauss(0.0, 0.5),
            0.4 + 0.3 * st.rain + abs(r.gauss(0.0, 0.02)),
            max(do, 0.0),
            st.cond,
            st.level,
            st.flow * (1.0 + 0.25 * day),
            temp,
        )
        return tuple(codec.f32(v) for v in fields)

    def reading(self, addr, now_ms):
        """Advance the station at Modbus address `addr` and return its fields."""
        for st in self.stations:
            if st.addr == addr:
                st.last = self._step(st, now_ms)
                return st.last
        raise KeyError(addr)

    def registers(self, addr, now_ms):
        """The station's 18 registers after advancing it (for a Modbus server)."""
        return codec.registers(codec.encode(addr, self.reading(addr, now_ms), self.word_order))

    def next_frame(self, now_ms):
        st = self.stations[self._i]
        self._i = (self._i + 1) % len(self.stations)
        fields = self._step(st, now_ms)
        frame = codec.encode(st.addr, fields, self.word_order)
        mode = self.fault
        if mode is not None and not self.rng.chance(self.fault_rate):
            mode = None
        if mode is None:
            self.last_reading = (st.addr, fields)
            self._last_frame = (frame, self.last_reading)
            return frame
        if mode == "silence":
            self.last_reading = None
            return None
        if mode == "stuck" and self._last_frame is not None:
            frame, self.last_reading = self._last_frame
            return frame
        if mode == "stuck":
            self.last_reading = (st.addr, fields)
            self._last_frame = (frame, self.last_reading)
            return frame
        self.last_reading = None
        if mode == "garbage":
            return bytes(self.rng.below(256) for _ in range(codec.DATA_LEN))
        if mode == "truncate":
            return frame[: self.rng.below(codec.DATA_LEN)]
        # bad_crc: a NaN in one value (0x7FC00000 is NaN in either word order)
        p = 4 * self.rng.below(codec.N_VALUES)
        out = bytearray(frame)
        out[p] = 0x7F
        out[p + 1] = 0xC0
        out[p + 2] = 0x7F
        out[p + 3] = 0xC0
        return bytes(out)
