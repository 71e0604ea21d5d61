"""Screening stations at station gates: a stream of people, mostly healthy, a few with fever.

Why each part is modelled: people arrive at each gate as a Poisson stream (exponential gaps), so
lines bunch like a real queue; forehead readings scatter around 36.5 °C (sigma 0.3, person plus
instrument) with a small share of fevers (37.4..39.5 °C), so the alarm threshold sees both sides;
the ambient temperature drifts slowly per station (a hall warms through the day); distance is
where people happen to stand; most wear a mask. Station ids may be Chinese.

Time is driven by the caller: `next_frame(now_ms)` returns one line due at or before `now_ms` (the
oldest first) or None when nobody is due. Same seed, same lines, on CPython and MicroPython.
"""

import math

from devices.common.faults import check_fault
from devices.common.rng import Rng
from devices.thermometer import sim_encode


class _Station:
    __slots__ = ("sid", "raw", "t_next", "seq", "ambient", "amb_base", "offset", "stuck", "frozen")

    def __init__(self, sid):
        self.sid = sid
        self.raw = sid.encode("utf-8")
        sim_encode.check_id(self.raw)
        self.t_next = 0
        self.seq = 0
        self.ambient = 0.0
        self.amb_base = 0.0
        self.offset = 0.0  # this instrument's calibration offset, within +-0.1 °C
        self.stuck = False
        self.frozen = None


class Simulator:
    """Options: mean_gap_s (mean time between people at one station, 6), fever_rate (share of
    people with fever, 0.02), rangefinder (stations report distance, True), mask_rate (0.85)."""

    def __init__(self, sensors, seed=1, mean_gap_s=6.0, fever_rate=0.02, rangefinder=True, mask_rate=0.85):
        self.rng = Rng(seed)
        self.mean_gap_ms = mean_gap_s * 1000.0
        self.fever_rate = fever_rate
        self.rangefinder = rangefinder
        self.mask_rate = mask_rate
        self.fault = None
        self.rate = 1.0
        self.last_reading = None
        self._started = False
        rng = self.rng
        self.stations = []
        for s in sensors:
            st = _Station(s)
            st.amb_base = rng.uniform(12.0, 28.0)
            st.ambient = st.amb_base
            st.offset = rng.uniform(-0.1, 0.1)
            st.seq = rng.below(0x10000)  # stations have been counting for a while
            self.stations.append(st)

    def _gap_ms(self):
        return 200 + int(-self.mean_gap_ms * math.log(1.0 - self.rng.uniform(0.0, 0.999999)))

    def set_fault(self, mode, rate=1.0):
        """Per line with probability `rate`: garbage / truncate / bad_crc / silence. "stuck" picks
        each station with probability `rate`; a stuck station repeats its last temperatures and
        distance for everyone (still valid lines: the fault is in the sensor, not on the wire)."""
        check_fault(mode, rate)
        self.fault = mode
        self.rate = rate
        for st in self.stations:
            st.stuck = mode == "stuck" and self.rng.chance(rate)
            st.frozen = None

    def _measure(self, st):
        rng = self.rng
        # Ambient: a slow random walk pulled back towards the station's base.
        st.ambient += rng.gauss(0.0, 0.05) - (st.ambient - st.amb_base) * 0.01
        if rng.chance(self.fever_rate):
            body = rng.uniform(37.4, 39.5)
        else:
            body = rng.gauss(36.5, 0.3)
        body = max(34.0, min(41.0, body + st.offset))
        dist = rng.below(60) + 30 if self.rangefinder else None
        return round(body * 100) / 100.0, round(st.ambient * 10) / 10.0, dist

    def next_frame(self, now_ms):
        rng = self.rng
        if not self._started:
            for st in self.stations:
                st.t_next = now_ms + self._gap_ms()
            self._started = True
        self.last_reading = None
        st = None
        for s in self.stations:
            if s.t_next <= now_ms and (st is None or s.t_next < st.t_next):
                st = s
        if st is None:
            return None
        st.t_next += self._gap_ms()
        if st.t_next <= now_ms:  # the caller jumped ahead: no burst of missed people
            st.t_next = now_ms + self._gap_ms()
        seq = st.seq
        st.seq = (seq + 1) & 0xFFFF
        if st.stuck and st.frozen is not None:
            body, amb, dist = st.frozen
        else:
            body, amb, dist = self._measure(st)
            if st.stuck:
                st.frozen = (body, amb, dist)
        fields = (body, amb, seq, dist, rng.chance(self.mask_rate))
        line = sim_encode.encode(st.sid, fields)
        fault = self.fault
        if fault is None or fault == "stuck" or not rng.chance(self.rate):
            self.last_reading = (st.sid, fields)
            return line
        return self._corrupt(fault, line)

    def _corrupt(self, fault, line):
        """A faulty line (never a valid one): last_reading stays None."""
        rng = self.rng
        if fault == "silence":
            return None
        if fault == "truncate":
            # Cut before the LF: the stub is only recognised when the next line's $ arrives.
            return line[: 1 + rng.below(len(line) - 2)]
        if fault == "bad_crc":
            f = bytearray(line)
            star = len(f) - 5
            f[star + 1] = ord("0") if f[star + 1] != ord("0") else ord("F")  # a wrong checksum digit
            return bytes(f)
        # garbage: printable noise without $, as a miswired or mis-bauded port shows
        g = bytearray(4 + rng.below(60))
        for i in range(len(g)):
            c = 0x20 + rng.below(95)
            g[i] = c if c != 0x24 else 0x23
        return bytes(g)
