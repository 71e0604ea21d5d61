"""Simulated manhole lids: rain raises the water in the chamber, crews open lids, gas drifts.

Each call to `next_frame` is one lid's report (lids take turns). Rain events start at random,
push the water level up and drain away over the following reports; now and then a crew opens a
lid for a while (large tilt, open=true); rarely a truck knocks one out of its seat (displaced);
methane and H2S wander with noise and occasional sewer-gas spikes; the battery slowly drains.
Values are quantised to the resolution the lid sends, so a decoded frame equals `last_reading`.

Faults: "garbage" non-JSON bytes, "truncate" the JSON cut short, "bad_crc" (JSON carries no
CRC) the tilt sent as a string, "stuck" the previous frame again, "silence" None.
"""

from devices.common.faults import check_fault
from devices.common.rng import Rng
from devices.manhole import sim_encode


def _q(v, d):
    """Quantise to d decimals exactly as sim_encode.encode will write it."""
    scale = 10**d
    return int(v * scale + 0.5) / scale


class _Lid:
    __slots__ = ("dev", "base_cm", "water", "rain", "open_left", "displaced_left", "ch4", "h2s", "bat")

    def __init__(self, dev, rng):
        self.dev = dev
        self.base_cm = rng.uniform(5.0, 40.0)
        self.water = self.base_cm
        self.rain = 0
        self.open_left = 0
        self.displaced_left = 0
        self.ch4 = rng.uniform(2.0, 30.0)
        self.h2s = rng.uniform(0.0, 0.8)
        self.bat = 3550 + rng.below(100)


class Simulator:
    def __init__(self, sensors, seed=1, rain_chance=0.01, open_chance=0.004, displace_chance=0.0005):
        self.rng = Rng(seed)
        self.lids = [_Lid(s, self.rng) for s in sensors]
        self.rain_chance = rain_chance
        self.open_chance = open_chance
        self.displace_chance = displace_chance
        self.fault = None
        self.fault_rate = 1.0
        self.last_reading = None
        self._i = 0
        self._last_frame = None

    def set_fault(self, mode, rate=1.0):
        check_fault(mode, rate)
        self.fault = mode
        self.fault_rate = rate

    def _step(self, lid):
        r = self.rng
        if lid.rain == 0 and r.chance(self.rain_chance):
            lid.rain = 20 + r.below(40)  # reports until the storm is over
        if lid.rain > 0:
            lid.rain -= 1
            lid.water += r.uniform(0.5, 5.0)
        else:
            lid.water -= 0.15 * (lid.water - lid.base_cm)
        lid.water = min(max(lid.water + r.gauss(0.0, 0.3), 0.0), 400.0)
        if lid.open_left == 0 and r.chance(self.open_chance):
            lid.open_left = 3 + r.below(10)
        if lid.displaced_left == 0 and r.chance(self.displace_chance):
            lid.displaced_left = 2 + r.below(5)
        opened = lid.open_left > 0
        displaced = lid.displaced_left > 0
        if opened:
            lid.open_left -= 1
        if displaced:
            lid.displaced_left -= 1
        if r.chance(0.003):
            lid.ch4 = r.uniform(2000.0, 9000.0)  # sewer-gas pocket
        else:
            lid.ch4 = max(lid.ch4 + r.gauss(0.0, 2.0) - 0.2 * (lid.ch4 - 15.0), 0.0)
        lid.h2s = max(lid.h2s + r.gauss(0.0, 0.05) - 0.2 * (lid.h2s - 0.3), 0.0)
        if r.chance(0.02):
            lid.bat -= 1
        if opened:
            tilt = r.uniform(60.0, 95.0)
        elif displaced:
            tilt = r.uniform(8.0, 30.0)
        else:
            tilt = abs(r.gauss(0.0, 0.6))
        return (
            _q(tilt, 1),
            opened,
            displaced,
            _q(lid.water, 1),
            _q(lid.ch4, 1),
            _q(lid.h2s, 2),
            lid.bat,
            -70 - r.below(40),
        )

    def next_frame(self, now_ms):
        lid = self.lids[self._i]
        self._i = (self._i + 1) % len(self.lids)
        fields = self._step(lid)
        ts = now_ms // 1000
        mode = self.fault
        if mode is not None and not self.rng.chance(self.fault_rate):
            mode = None
        if mode == "stuck" and self._last_frame is not None:
            frame, self.last_reading = self._last_frame
            return frame
        if mode is None or mode == "stuck":
            frame = sim_encode.encode(lid.dev, fields, ts=ts)
            self.last_reading = (lid.dev, fields)
            self._last_frame = (frame, self.last_reading)
            return frame
        self.last_reading = None
        if mode == "silence":
            return None
        if mode == "garbage":
            n = 8 + self.rng.below(60)
            out = bytearray(n)
            for i in range(n):
                out[i] = self.rng.below(256)
            out[0] = 0x80 | out[0]  # never '{' or whitespace: cannot start a JSON document
            return bytes(out)
        frame = sim_encode.encode(lid.dev, fields, ts=ts, corrupt="tilt_deg" if mode == "bad_crc" else None)
        if mode == "truncate":
            return frame[: 1 + self.rng.below(len(frame) - 1)]
        return frame
