"""Report-by-exception: deadband, changes, events, alarms and the silence heartbeat."""

from edge import rules

# `ReportFilter.check`'s reasons: private constants in edge/rules.py (no globals on a board).
FIRST, EVENT, ALARM, CHANGE, DEADBAND, SILENCE = 1, 2, 3, 4, 5, 6


class FakeCodec:
    """The part of the codec contract (docs/devices.md) the rule filter reads."""

    KIND = "fake"
    FIELDS = ("open", "level", "temp")
    ANALOG = (1, 2)
    COUNTERS = ()

    @staticmethod
    def is_event(fields):
        return fields[0] is True


def test_first_then_suppressed_then_deadband():
    f = rules.ReportFilter(FakeCodec, deadbands={"level": 5}, default_deadband=0.5, max_silence_ms=60000)
    assert f.check("s1", (False, 10, 20.0), 0) == FIRST
    assert f.check("s1", (False, 14, 20.4), 1000) == rules.SUPPRESSED
    assert f.check("s1", (False, 16, 20.4), 2000) == DEADBAND  # 16-10 > 5
    assert f.check("s1", (False, 16, 20.8), 3000) == rules.SUPPRESSED  # vs last reported 20.4
    assert f.check("s1", (False, 16, 21.0), 3000) == DEADBAND
    assert f.suppressed == 2


def test_non_analog_change_event_alarm_silence():
    f = rules.ReportFilter(FakeCodec, default_deadband=100, max_silence_ms=60000)
    assert f.check("s1", (False, 10, 20.0), 0) == FIRST
    assert f.check("s1", (True, 10, 20.0), 10) == EVENT
    assert f.check("s1", (True, 10, 20.0), 20) == EVENT  # every event counts
    assert f.check("s2", (False, 1, 1.0), 20) == FIRST  # sensors are independent
    assert f.check("s2", (False, 1, 1.0), 30, alarm="overflow") == ALARM
    assert f.check("s2", (False, 1, 1.0), 59000) == rules.SUPPRESSED
    assert f.check("s2", (False, 1, 1.0), 60030) == SILENCE
    assert f.check("s2", (False, 1, None), 60040) == CHANGE  # a field went missing


def test_unknown_deadband_field_is_an_error():
    try:
        rules.ReportFilter(FakeCodec, deadbands={"lvl": 1})
    except ValueError as exc:
        assert "lvl" in str(exc)
    else:
        raise AssertionError("unknown field accepted")


def test_set_deadband_checks_then_applies():
    # What the `set` command calls: a refused value leaves the old band in place.
    f = rules.ReportFilter(FakeCodec, deadbands={"level": 5})
    f.check("s1", (False, 10, 20.0), 0)
    for name, value in (("level", -1), ("level", "2"), ("open", 1), ("lvl", 1)):
        try:
            f.set_deadband(name, value)
        except ValueError:
            pass
        else:
            raise AssertionError("accepted deadband %r=%r" % (name, value))
    assert f.check("s1", (False, 14, 20.0), 1000) == rules.SUPPRESSED  # still 5
    f.set_deadband("level", 1)
    assert f.check("s1", (False, 12, 20.0), 2000) == DEADBAND


class CountingCodec(FakeCodec):
    COUNTERS = (0,)
    FIELDS = ("seq", "level", "temp")

    @staticmethod
    def is_event(fields):
        return False


def test_frame_counters_are_not_news():
    f = rules.ReportFilter(CountingCodec, default_deadband=1, max_silence_ms=60000)
    assert f.check("s", (1, 10, 20.0), 0) == FIRST
    assert f.check("s", (2, 10, 20.0), 10) == rules.SUPPRESSED
    assert f.check("s", (3, 12, 20.0), 20) == DEADBAND
    assert f.check("s", (None, 12, 20.0), 30) == rules.SUPPRESSED  # a counter missing is not news either
    assert f.check("s", (5, 12, 20.0), 60030) == 6  # silence: the ticks survive the counter's values


def test_a_kind_with_a_counter_keeps_the_ticks_in_its_place():
    f = rules.ReportFilter(CountingCodec, default_deadband=1, max_silence_ms=60000, sensors=["a", "b"])
    assert len(f._last) == 2 * len(CountingCodec.FIELDS)  # no extra double per sensor for the ticks
    assert f.check("b", (7, 10, 20.0), 100) == FIRST
    assert f.check("a", (1, 10, 20.0), 200) == FIRST
    assert f.check("b", (8, 10, 20.0), 60099) == rules.SUPPRESSED
    assert f.check("b", (9, 10, 20.0), 60100) == 6  # 60,000 ms after b's report, not a's
    assert f.check("c", (1, 1, 1.0), 0) == FIRST and len(f._last) == 3 * len(CountingCodec.FIELDS)
    assert f.check("c", (2, 1, 1.0), 10) == rules.SUPPRESSED


def test_missing_fields_and_many_sensors():
    f = rules.ReportFilter(FakeCodec, default_deadband=1, max_silence_ms=60000)
    assert f.check("s", (False, None, 20.0), 0) == FIRST
    assert f.check("s", (False, None, 20.5), 10) == rules.SUPPRESSED  # still missing: no news
    assert f.check("s", (False, 3, 20.5), 20) == CHANGE  # it came back
    assert f.check("s", (True, 3, 20.5), 30) == EVENT
    assert f.check("s", (False, 3, 20.5), 40) == CHANGE  # a bool went back
    # A flood of unknown ids past the per-source memory starts it afresh: more reports, no error.
    for i in range(600):
        assert f.check("x%d" % i, (False, 1, 1.0), 50) == FIRST
    assert f.check("x599", (False, 1, 1.0), 60) == rules.SUPPRESSED
    assert f.check("s", (False, 3, 20.5), 70) == FIRST  # forgotten in the flood


def test_configured_sensors_have_their_memory_from_the_start():
    f = rules.ReportFilter(FakeCodec, default_deadband=1, max_silence_ms=60000, sensors=["a", "b"])
    size = len(f._last)
    assert size == 2 * (len(FakeCodec.FIELDS) + 1) and f.index("a") == 0 and f.index("b") == 1
    assert f.slots == {} and f.sensors == "\na\nb\n"  # one string, no dict entry per configured id
    assert f.index("c") == -1 and f.index("a\nb") == -1 and f.index("") == -1
    assert f.check("b", (False, None, 20.0), 0) == FIRST  # a slot, but nothing reported yet
    assert f.check("b", (False, None, 20.5), 10) == rules.SUPPRESSED
    assert f.check("a", (False, 1, 1.0), 20) == FIRST
    assert f.check("a", (False, 3, 1.0), 30) == DEADBAND
    assert len(f._last) == size  # no growth for configured sensors
    assert f.check("c", (False, 1, 1.0), 40) == FIRST  # an id outside the list still works
    assert f.check("c", (False, 1, 1.0), 50) == rules.SUPPRESSED and f.slots == {"c": size}
    assert f.check("b", (False, None, 20.5), 60) == rules.SUPPRESSED  # its slot kept apart from c's
