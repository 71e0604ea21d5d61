"""A street of parking bays: cars come and go, sensors send events and heartbeats as on the bus.

Why each part is modelled: the magnetometer sees the earth's field plus a per-car distortion
(mostly vertical, from the engine block and chassis) with noise and a slow temperature drift, so
deadband settings can be tried against realistic jitter; dwell and vacancy times are exponential
(arrivals are close to a Poisson process), so events bunch as they do on a real street; batteries
sag a little with every radio transmission; RSSI wanders around a per-bay link budget.

Time is driven by the caller: `next_frame(now_ms)` returns one frame that is due at or before
`now_ms` (the oldest due first) or None when nothing is due, so a rig can call it on a timer and
a test can step time as fast as it likes. Same seed, same frames, on CPython and MicroPython.
"""

import math

from devices.common.faults import check_fault
from devices.common.rng import Rng
from devices.parking import sim_encode


class _Bay:
    __slots__ = ("addr", "sid", "base", "drift", "car", "occupied", "t_change", "t_beat", "seq", "batt",
                 "rssi_mean", "stuck", "frozen")

    def __init__(self, addr):
        self.addr = addr
        self.sid = sim_encode.sensor_name(addr)
        self.base = None  # earth field seen by this sensor, mG (x, y, z)
        self.drift = [0.0, 0.0, 0.0]
        self.car = (0.0, 0.0, 0.0)
        self.occupied = False
        self.t_change = 0
        self.t_beat = 0
        self.seq = 0
        self.batt = 3600.0
        self.rssi_mean = -90.0
        self.stuck = False
        self.frozen = None  # the fields a stuck sensor keeps repeating


class Simulator:
    """Options: heartbeat_s (120), mean_stay_s (1800), mean_vacant_s (900), link ("lora" or
    "rs485": RS-485 frames carry no RSSI), battery_mv (start value; default 3560..3670 per bay),
    drain_mv (mean sag per frame, 0.02), noise_mg (magnetometer noise sigma, 2.0)."""

    def __init__(self, sensors, seed=1, heartbeat_s=120, mean_stay_s=1800, mean_vacant_s=900, link="lora",
                 battery_mv=None, drain_mv=0.02, noise_mg=2.0):
        if link not in ("lora", "rs485"):
            raise ValueError("link must be lora or rs485")
        self.rng = Rng(seed)
        self.heartbeat_ms = int(heartbeat_s * 1000)
        self.mean_stay_ms = mean_stay_s * 1000.0
        self.mean_vacant_ms = mean_vacant_s * 1000.0
        self.radio = link == "lora"
        self.drain_mv = drain_mv
        self.noise_mg = noise_mg
        self.fault = None
        self.rate = 1.0
        self.last_reading = None
        self._started = False
        rng = self.rng
        self.bays = []
        p_occupied = mean_stay_s / float(mean_stay_s + mean_vacant_s)
        for s in sensors:
            b = _Bay(sim_encode.sensor_addr(s))
            # Earth field at Hangzhou ~ 480 mG, inclination ~ 45 deg; the sensor's heading is random.
            h = rng.uniform(0.0, 6.2832)
            b.base = (340.0 * math.cos(h), 340.0 * math.sin(h), -340.0 + rng.gauss(0.0, 15.0))
            b.occupied = rng.chance(p_occupied)
            if b.occupied:
                b.car = self._car()
            b.batt = float(battery_mv) if battery_mv is not None else rng.uniform(3560.0, 3670.0)
            b.rssi_mean = rng.uniform(-118.0, -72.0)
            self.bays.append(b)

    def _car(self):
        """The field distortion of one parked car: a vertical drop, some horizontal skew."""
        rng = self.rng
        return (rng.gauss(0.0, 60.0), rng.gauss(0.0, 60.0), -rng.uniform(120.0, 700.0))

    def _exp_ms(self, mean_ms):
        return int(-mean_ms * math.log(1.0 - self.rng.uniform(0.0, 0.999999)))

    def _start(self, now_ms):
        """Schedules start at the first call, so any clock origin works."""
        rng = self.rng
        for b in self.bays:
            b.t_beat = now_ms + rng.below(self.heartbeat_ms)  # stagger heartbeats across the bus
            b.t_change = now_ms + self._exp_ms(self.mean_stay_ms if b.occupied else self.mean_vacant_ms)
        self._started = True

    def set_fault(self, mode, rate=1.0):
        """Per frame with probability `rate`: garbage / truncate / bad_crc / silence. "stuck" is a
        condition of a sensor, so it picks each bay with probability `rate`; a stuck bay misses
        cars and repeats its last values in heartbeats (which still decode: it is not a wire fault)."""
        check_fault(mode, rate)
        self.fault = mode
        self.rate = rate
        for b in self.bays:
            b.stuck = False
            b.frozen = None
            if mode == "stuck" and self.rng.chance(rate):
                b.stuck = True

    def _measure(self, b):
        rng = self.rng
        d = b.drift
        for k in range(3):  # slow random walk, pulled back so it stays a few tens of mG
            d[k] += rng.gauss(0.0, 0.4) - d[k] * 0.002
        car = b.car if b.occupied else (0.0, 0.0, 0.0)
        out = []
        for k in range(3):
            v = round(b.base[k] + car[k] + d[k] + rng.gauss(0.0, self.noise_mg))
            out.append(max(-sim_encode.MAG_LIMIT, min(sim_encode.MAG_LIMIT, v)))
        b.batt = max(float(sim_encode.BATT_MIN), b.batt - rng.uniform(0.0, 2.0 * self.drain_mv))
        batt = round(b.batt + rng.gauss(0.0, 2.0))
        batt = max(sim_encode.BATT_MIN, min(sim_encode.BATT_MAX, batt))
        rssi = None
        if self.radio:
            rssi = max(sim_encode.RSSI_MIN, min(-20, round(b.rssi_mean + rng.gauss(0.0, 2.5))))
        return out[0], out[1], out[2], batt, rssi

    def _due(self, now_ms):
        best = None
        best_t = 0
        for b in self.bays:
            t = b.t_beat
            if not b.stuck and b.t_change < t:
                t = b.t_change
            if t <= now_ms and (best is None or t < best_t):
                best = b
                best_t = t
        return best

    def next_frame(self, now_ms):
        if not self._started:
            self._start(now_ms)
        self.last_reading = None
        b = self._due(now_ms)
        if b is None:
            return None
        event = sim_encode.HEARTBEAT
        if not b.stuck and b.t_change <= b.t_beat and b.t_change <= now_ms:
            b.occupied = not b.occupied
            if b.occupied:
                b.car = self._car()
                event = sim_encode.ARRIVAL
                b.t_change = now_ms + self._exp_ms(self.mean_stay_ms)
            else:
                event = sim_encode.DEPARTURE
                b.t_change = now_ms + self._exp_ms(self.mean_vacant_ms)
            b.t_beat = now_ms + self.heartbeat_ms  # a report restarts the heartbeat period
        else:
            b.t_beat += self.heartbeat_ms
            if b.t_beat <= now_ms:  # the caller jumped ahead: no burst of missed heartbeats
                b.t_beat = now_ms + self.heartbeat_ms
        seq = b.seq
        b.seq = (seq + 1) & 0xFFFF
        if b.stuck and b.frozen is not None:
            occupied, mx, my, mz, batt, rssi = b.frozen
        else:
            occupied = b.occupied
            mx, my, mz, batt, rssi = self._measure(b)
            if b.stuck:
                b.frozen = (occupied, mx, my, mz, batt, rssi)
        fields = (occupied, event, seq, mx, my, mz, batt, rssi)
        frame = sim_encode.encode(b.addr, fields)
        fault = self.fault
        if fault is None or fault == "stuck" or not self.rng.chance(self.rate):
            self.last_reading = (b.sid, fields)
            return frame
        return self._corrupt(fault, frame)

    def _corrupt(self, fault, frame):
        """A faulty frame (never a valid one): last_reading stays None."""
        rng = self.rng
        if fault == "silence":
            return None
        if fault == "truncate":
            return frame[:1 + rng.below(len(frame) - 1)]
        if fault == "bad_crc":
            # One flipped bit after LEN: CRC-16 catches every single-bit error, and the sync and
            # LEN stay intact so the decoder sees a CRC failure rather than a resync.
            f = bytearray(frame)
            i = 3 + rng.below(len(f) - 3)
            f[i] ^= 1 << rng.below(8)
            return bytes(f)
        # garbage: line noise with no sync byte in it, so it can never frame a reading
        g = bytearray(4 + rng.below(29))
        for i in range(len(g)):
            v = rng.below(256)
            g[i] = v if v != sim_encode.SYNC0 else 0x00
        return bytes(g)
