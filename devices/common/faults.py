"""The fault modes every device simulator offers, checked in one place.

garbage: random bytes instead of a frame; truncate: a frame cut short; bad_crc: a frame whose
check fails (for JSON, a field of the wrong type); stuck: the sensor repeats its last values;
silence: nothing at all. None is a healthy sensor.
"""

FAULTS = (None, "garbage", "truncate", "bad_crc", "stuck", "silence")


def check_fault(mode, rate):
    """ValueError for an unknown mode or a rate outside 0..1 (a typo must not run a clean test)."""
    if mode not in FAULTS:
        raise ValueError("unknown fault mode %r" % (mode,))
    if not 0.0 <= rate <= 1.0:
        raise ValueError("fault rate must be within 0..1, got %r" % (rate,))
