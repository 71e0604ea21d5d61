"""Report-by-exception: which decoded readings are worth a place in the log and on the uplink.

A sensor that samples every second but changes once an hour should not cost a flash write a
second. A reading is reported when it is the sensor's first, an event (a parking arrival is billed
from), an alarm, when a non-analog field changed, when an analog field moved past its deadband, or
when the sensor has been quiet for `max_silence_ms` (a heartbeat proves it alive). Everything
else is counted as suppressed, never silently dropped from the books.
"""

from array import array

from edge.compat import const, ticks_diff

_SENSORS_MAX = const(512)  # a source without a `sensors` list: past it, the memory starts afresh
_NAN = float("nan")  # a field that was missing (None) in the last reported reading

# Why `check` reports a reading. Only SUPPRESSED is public (the sources test for it); the reasons
# are private constants, folded at build time, so a board carries no global for each. Tests spell
# the numbers out: 1 first, 2 event, 3 alarm, 4 change, 5 deadband, 6 silence.
SUPPRESSED = 0
_FIRST = const(1)
_EVENT = const(2)
_ALARM = const(3)
_CHANGE = const(4)
_DEADBAND = const(5)
_SILENCE = const(6)


class ReportFilter:
    """Per-sensor memory of the last reported fields, for one device kind.

    `deadbands` maps field name -> absolute deadband (same unit as the field); analog fields with no
    entry use `default_deadband` (0 = report every change).

    The memory is one flat array of doubles per sensor: the fields, and the ticks of the last
    report (NaN: nothing reported yet) after them, or in the first counter's place in a kind with
    COUNTERS (a frame counter is never compared, so its value need not be kept: 8 bytes a sensor
    less, ~700 B at 128 sensors). Every field value is a number, a bool or None (a double holds
    them exactly; None is NaN). With `sensors` (the configured ids) the array is allocated once,
    now, while a board's heap is whole: growing it later asks for ever larger contiguous blocks,
    which a fragmented heap refuses. The configured ids are kept in one string, `sensors`
    ("\nP-1\nP-2\n...\n"): sensor i's values start at i * width (`index` finds i; both names
    the image interns anyway). A dict of the ids took ~40 bytes a sensor on a 32-bit board (its
    table, and each id a string object of its own), this string ~9. Other ids get slots as they
    come, in `slots` (id -> index of its first value), after the configured ones; past
    _SENSORS_MAX of them that dict starts afresh and its slots are reused.
    """

    def __init__(self, codec, deadbands=None, default_deadband=0, max_silence_ms=300000, sensors=None):
        self.codec = codec
        self.max_silence_ms = max_silence_ms
        fields = codec.FIELDS
        analog = codec.ANALOG
        band = [None] * len(fields)  # None = not analog: any change reports
        for i in analog:
            band[i] = default_deadband
        self.band = band
        if deadbands:
            for name in deadbands:
                self.set_deadband(name, deadbands[name])
        # Fields that change in every frame by design (frame sequence numbers) are not news.
        self.counters = codec.COUNTERS
        self.slots = {}  # ids not configured -> index of their first value
        self.sensors = None  # the configured ids, "\n"-separated, or None without a list
        self._last = array("d")
        if sensors:
            width = len(fields) if self.counters else len(fields) + 1
            self.sensors = "\n" + "\n".join(sensors) + "\n"  # edge.config refuses an id with "\n"
            self._last = array("d", [_NAN] * (width * len(sensors)))
        self.suppressed = 0

    def index(self, sensor):
        """The index of `sensor` among the configured ids, or -1 (also without a list)."""
        ids = self.sensors
        if ids is None or "\n" in sensor:
            return -1
        at = ids.find("\n" + sensor + "\n")
        return at if at < 0 else ids.count("\n", 0, at)


    def check_deadband(self, name, value):
        """Raise ValueError naming the field unless `value` can be its deadband.

        Checked before anything is applied: a text or negative deadband would otherwise surface
        as a TypeError in `check`, on the source's task, at the next reading of that sensor.
        """
        fields = self.codec.FIELDS
        if name not in fields:
            raise ValueError("no field %r in %s" % (name, self.codec.KIND))
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ValueError("deadband %r: %r is not a number >= 0" % (name, value))
        if self.band[fields.index(name)] is None:
            raise ValueError("%r is not analog: any change reports" % name)

    def set_deadband(self, name, value):
        """Set one analog field's deadband; ValueError (from `check_deadband`) changes nothing."""
        self.check_deadband(name, value)
        self.band[self.codec.FIELDS.index(name)] = value

    def check(self, sensor, fields, now_ticks, alarm=None):
        """Return the reason (1..6, see above) for reporting this reading, or SUPPRESSED (and count it)."""
        last = self._last
        n = len(fields)
        counters = self.counters
        t = counters[0] if counters else n  # where the ticks are (see the class)
        width = n if counters else n + 1
        at = self.index(sensor)
        at = self.slots.get(sensor) if at < 0 else at * width
        reason = SUPPRESSED
        if at is None or last[at + t] != last[at + t]:  # no slot, or NaN ticks: never reported
            reason = _FIRST
        elif self.codec.is_event(fields):
            reason = _EVENT
        elif alarm is not None:
            reason = _ALARM
        elif ticks_diff(now_ticks, int(last[at + t])) >= self.max_silence_ms:
            reason = _SILENCE
        else:
            band = self.band
            for i in range(n):
                if i in counters:
                    continue  # not news (and its place holds the ticks)
                new = fields[i]
                old = last[at + i]
                if new is None:
                    if old != old:  # NaN: it was missing last time too
                        continue
                    reason = _CHANGE
                    break
                if new == old:
                    continue
                b = band[i]
                if b is None or old != old or isinstance(new, bool):
                    reason = _CHANGE
                    break
                if abs(new - old) > b:
                    reason = _DEADBAND
                    break
        if reason == SUPPRESSED:
            self.suppressed += 1
            return reason
        if at is None:
            if len(self.slots) >= _SENSORS_MAX:
                self.slots = {}  # the ids not configured start afresh, in the same memory
            # Unlisted ids' slots follow the configured ones, in the order they came.
            listed = 0 if self.sensors is None else self.sensors.count("\n") - 1
            at = self.slots[sensor] = (listed + len(self.slots)) * width
            if at == len(last):
                for _ in range(width):
                    last.append(0.0)
        for i in range(n):
            v = fields[i]
            last[at + i] = _NAN if v is None else v
        last[at + t] = now_ticks  # over a counter's value, if the kind has one
        return reason
