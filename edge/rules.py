"""Report-by-exception: which decoded readings are worth a place in the log and on the uplink.

A sensor that samples every second but changes once an hour should not cost a flash write a
second. A reading is reported when it is the sensor's first, an event (a parking arrival is billed
from), an alarm, when a non-analog field changed, when an analog field moved past its deadband, or
when the sensor has been quiet for `max_silence_ms` (a heartbeat proves it alive). Everything
else is counted as suppressed, never silently dropped from the books.
"""

from edge.compat import ticks_diff

REPORT_FIRST = 1
REPORT_EVENT = 2
REPORT_ALARM = 3
REPORT_CHANGE = 4
REPORT_DEADBAND = 5
REPORT_SILENCE = 6
SUPPRESSED = 0


class ReportFilter:
    """Per-sensor memory of the last reported fields, for one device kind.

    `deadbands` maps field name -> absolute deadband (same unit as the field); analog fields with no
    entry use `default_deadband` (0 = report every change).
    """

    def __init__(self, codec, deadbands=None, default_deadband=0, max_silence_ms=300000):
        self.codec = codec
        self.max_silence_ms = max_silence_ms
        fields = codec.FIELDS
        analog = getattr(codec, "ANALOG", ())
        band = [None] * len(fields)  # None = not analog: any change reports
        for i in analog:
            band[i] = default_deadband
        self.band = band
        if deadbands:
            for name in deadbands:
                self.check_deadband(name, deadbands[name])
                band[fields.index(name)] = deadbands[name]
        # Fields that change in every frame by design (frame sequence numbers) are not news.
        self.counters = getattr(codec, "COUNTERS", ())
        self._last = {}  # sensor -> (fields, ticks of last report)
        self.suppressed = 0

    def check_deadband(self, name, value):
        """Raise ValueError naming the field unless `value` can be its deadband.

        Checked before anything is applied: a text or negative deadband would otherwise surface
        as a TypeError in `check`, on the source's task, at the next reading of that sensor.
        """
        fields = self.codec.FIELDS
        if name not in fields:
            raise ValueError("unknown field %r of kind %s" % (name, self.codec.KIND))
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ValueError("deadband of %r must be a number >= 0, not %r" % (name, value))
        if self.band[fields.index(name)] is None:
            raise ValueError("field %r of kind %s is not analog: any change is reported" % (
                name, self.codec.KIND))

    def check(self, sensor, fields, now_ticks, alarm=None):
        """Return the REPORT_* reason for reporting this reading, or SUPPRESSED (and count it)."""
        last = self._last.get(sensor)
        reason = SUPPRESSED
        if last is None:
            reason = REPORT_FIRST
        elif self.codec.is_event(fields):
            reason = REPORT_EVENT
        elif alarm is not None:
            reason = REPORT_ALARM
        elif ticks_diff(now_ticks, last[1]) >= self.max_silence_ms:
            reason = REPORT_SILENCE
        else:
            prev = last[0]
            band = self.band
            for i in range(len(fields)):
                new = fields[i]
                old = prev[i]
                if new == old or i in self.counters:
                    continue
                b = band[i]
                if b is None or new is None or old is None or isinstance(new, bool):
                    reason = REPORT_CHANGE
                    break
                if abs(new - old) > b:
                    reason = REPORT_DEADBAND
                    break
        if reason == SUPPRESSED:
            self.suppressed += 1
        else:
            self._last[sensor] = (fields, now_ticks)
        return reason
