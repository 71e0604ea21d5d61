"""UTC time for readings, and what to do before the gateway knows it.

A board boots at 2000-01-01 (or 1970) until NTP answers; a Pi may boot without RTC. A reading must
never reach the database with such a time, and must not be held only in RAM either (a power cut
would lose it). So before the clock is set a reading is logged with its *uptime* (ms since boot,
non-wrapping) and the boot counter; once the clock is set the agent records an anchor
(boot -> UTC minus uptime) and stamps those readings when they leave the log. Readings of a boot
that ended before any anchor was known can never be stamped honestly: the uplink counts and drops
them (`unstampable` in status), it never guesses.
"""

from edge.compat import const, ticks_diff, ticks_ms

# Anything before this is an unset clock (boards boot at 2000-01-01, Linux without RTC at 1970).
_MIN_VALID_UTC_MS = const(1577836800000)  # 2020-01-01T00:00:00Z


class Clock:
    """Monotonic uptime plus, once known, the offset from uptime to UTC.

    `utc_source()` returns the platform's idea of UTC in ms (time.time() on CPython, the RTC on a
    board); it is trusted only when `mark_synced()` was called (after NTP) or, with
    `trust_os=True` (CPython gateways whose OS runs NTP), when it is past 2020-01-01.
    """

    def __init__(self, utc_source, trust_os=False, ticks=ticks_ms):
        # Stored under their argument names: an attribute name is one more qstr on a board.
        self.utc_source = utc_source
        self.ticks = ticks
        self._last_ticks = ticks()
        self._uptime = 0
        self._offset = None  # utc_ms - uptime_ms, once known
        self.trust_os = trust_os

    def uptime_ms(self):
        """Milliseconds since boot; never wraps (ticks wrap every ~12 days on a board)."""
        now = self.ticks()
        self._uptime += ticks_diff(now, self._last_ticks)
        self._last_ticks = now
        return self._uptime

    def mark_synced(self):
        """Call after NTP (or any trusted source) set the platform clock. Returns True if accepted."""
        utc = self.utc_source()
        if utc < _MIN_VALID_UTC_MS:
            return False
        self._offset = utc - self.uptime_ms()
        return True

    def synced(self):
        if self._offset is None and self.trust_os:
            self.mark_synced()
        return self._offset is not None

    def offset_ms(self):
        """UTC minus uptime, or None while the clock is unknown (the anchor for this boot)."""
        return self._offset if self.synced() else None

    def now_ms(self):
        """UTC ms, or None while unknown. Readings stamped None go to the log with their uptime."""
        if not self.synced():
            return None
        return self._offset + self.uptime_ms()
