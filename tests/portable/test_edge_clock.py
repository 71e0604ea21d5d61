"""The clock never hands out a pre-2020 time and stamps with uptime + anchor."""

from edge.clock import Clock
from edge.compat import ticks_add

MIN_VALID_UTC_MS = 1577836800000  # 2020-01-01: edge/clock.py's threshold for a set clock


class FakeTicks:
    def __init__(self):
        self.t = 0

    def __call__(self):
        return self.t


def test_unsynced_board_clock_gives_none():
    ticks = FakeTicks()
    utc = [946684800000]  # a board's RTC after boot: 2000-01-01
    c = Clock(lambda: utc[0], trust_os=True, ticks=ticks)
    assert c.now_ms() is None
    assert not c.synced()
    assert not c.mark_synced()


def test_anchor_after_sync():
    ticks = FakeTicks()
    utc = [946684800000]
    c = Clock(lambda: utc[0], ticks=ticks)
    ticks.t = 5000
    assert c.uptime_ms() == 5000
    utc[0] = MIN_VALID_UTC_MS + 123456
    assert c.now_ms() is None  # not trusted until NTP says so
    assert c.mark_synced()
    assert c.offset_ms() == MIN_VALID_UTC_MS + 123456 - 5000
    ticks.t = 6000
    assert c.now_ms() == MIN_VALID_UTC_MS + 123456 + 1000


def test_uptime_survives_tick_wrap():
    ticks = FakeTicks()
    ticks.t = ticks_add(0, -10)  # 10 ms before the platform's tick counter wraps
    c = Clock(lambda: 0, ticks=ticks)
    ticks.t = 20  # wrapped
    assert c.uptime_ms() == 30
