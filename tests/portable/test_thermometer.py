"""Thermometer codec: wire vectors (whole, split, byte by byte), simulator round trips and faults."""

from binascii import unhexlify

from devices.common.errors import BAD_SYNTAX, BAD_VALUE, DecodeError
from devices.thermometer import codec, sim_encode, vectors
from devices.thermometer.sim import Simulator
from tests.portable import codec_check


def test_vectors_whole():
    codec_check.check_vectors_whole(codec, vectors.VECTORS)


def test_vectors_split_at_every_position():
    codec_check.check_vectors_split(codec, vectors.VECTORS)


def test_vectors_byte_by_byte():
    codec_check.check_vectors_byte_by_byte(codec, vectors.VECTORS)


def test_good_vectors_encode_back():
    for name, hx, consumed, expected in vectors.VECTORS:
        if isinstance(expected, tuple) and consumed == len(hx) // 2 and name != "one_decimal_body" \
                and name != "lowercase_checksum":
            assert sim_encode.encode(expected[0], expected[1]) == unhexlify(hx), name


def test_checksum_is_over_utf8_bytes():
    line = sim_encode.encode("杭州东站-3", (36.52, 22.4, 1, 45, True))
    star = line.index(b"*")
    x = 0
    for c in line[1:star]:
        x ^= c
    assert line[star + 1:star + 3] == (b"%02X" % x)
    assert "杭州东站-3".encode("utf-8") in line  # the id travels as UTF-8, not escaped


def _frames(sim, frames, t_step_ms=1000):
    """Yield up to `frames` simulator lines as (wire bytes, reading it must give or None)."""
    t = 1000000
    got = 0
    calls = 0
    while got < frames and calls < frames * 200:
        calls += 1
        f = sim.next_frame(t)
        if f is None:
            if sim.last_reading is None:
                t += t_step_ms
            continue
        got += 1
        yield f, sim.last_reading


def test_simulator_round_trip():
    sim = Simulator(["杭州东站-3", "GATE-01", "西湖-B2"], seed=7, fever_rate=0.05)
    count = 0
    fevers = 0
    ids = set()
    seqs = {}
    for f, reading in _frames(sim, 300):
        count += 1
        assert reading is not None
        n, r = codec.decode(f)
        assert n == len(f) and codec_check.same(r, reading)
        assert sim_encode.encode(reading[0], reading[1]) == f
        sid, fields = reading
        ids.add(sid)
        if sid in seqs:
            assert fields[2] == (seqs[sid] + 1) & 0xFFFF
        seqs[sid] = fields[2]
        assert codec.is_event(fields)
        if codec.alarm(fields) == "fever":
            fevers += 1
        assert 30.0 <= fields[0] <= 45.0 and -30.0 <= fields[1] <= 60.0
    assert count == 300 and 3 <= fevers < 60
    assert ids == set(["杭州东站-3", "GATE-01", "西湖-B2"])


def test_simulator_is_deterministic_and_realistic():
    a = _frames(Simulator(["A-1", "A-2"], seed=3, rangefinder=False), 200)
    b = _frames(Simulator(["A-1", "A-2"], seed=3, rangefinder=False), 200)
    total = 0.0
    n = 0
    lo = 99.0
    hi = 0.0
    for (fa, ra), (fb, rb) in zip(a, b):
        assert fa == fb
        body = ra[1][0]
        assert ra[1][3] is None  # no rangefinder: distance absent
        total += body
        n += 1
        lo = min(lo, body)
        hi = max(hi, body)
    assert n == 200
    assert 36.2 < total / n < 36.9 and hi - lo > 0.8


def test_fault_modes_never_give_a_wrong_reading():
    for mode in ("garbage", "truncate", "bad_crc", "silence", "stuck"):
        sim = Simulator(["杭州东站-3", "GATE-01"], seed=5)
        sim.set_fault(mode, 0.5)
        rx = codec_check.Receiver(codec)
        expected = []  # sent and not yet decoded: a stub may hold back the line after it
        sent = 0
        faulty = 0
        t = 0
        for _ in range(600):
            f = sim.next_frame(t)
            t += 1000
            if sim.last_reading is not None:
                expected.append(sim.last_reading)
                sent += 1
            elif f is not None:
                faulty += 1
            if f is not None:
                rx.feed(f, expected)
        last = ("END", (36.5, 20.0, 0, None, False))  # flushes a trailing stub
        expected.append(last)
        rx.feed(sim_encode.encode(last[0], last[1]), expected)
        # every good line arrived, in order, exactly; every faulty one was an error, never a reading
        assert not expected and rx.readings == sent + 1, mode
        if mode == "garbage":
            assert faulty > 10 and rx.errors > 0, mode  # back-to-back bursts are one run of noise
        elif mode in ("truncate", "bad_crc"):
            assert faulty > 10 and rx.errors >= faulty, mode
        else:
            assert rx.errors == 0, mode


def test_garbage_spewing_station_cannot_stall_the_parser():
    rx = codec_check.Receiver(codec)
    noise = b"$" + b"\x01\x02noise" * 40
    rx.feed(noise, [])
    assert rx.errors >= 2 and len(rx.buf) < sim_encode.MAX_LINE  # consumed, not hoarded
    good = sim_encode.encode("GATE-01", (36.5, 20.0, 1, 50, True))
    rx.feed(good, [("GATE-01", (36.5, 20.0, 1, 50, True))])
    assert rx.readings == 1


def test_limits_are_the_decoders():
    """sim_encode.MAX_ID and the ranges (sim_encode's public copies) are the edges decode enforces: the
    decoder checks its own compile-time copies, so each edge is tried and one step past it."""

    def line(station, body, amb, dist):
        sign = "-" if amb < 0 else ""
        amb = abs(amb)
        tail = ",1,%d.%02d,%s%d.%d,%d,00" % (body // 100, body % 100, sign, amb // 10, amb % 10, dist)
        return codec.decode(sim_encode.frame(station, tail.encode()))[1]

    body, amb, dist = 3650, 200, 50
    assert line(b"S" * sim_encode.MAX_ID, body, amb, dist)[0] == "S" * sim_encode.MAX_ID
    r = line(b"S" * (sim_encode.MAX_ID + 1), body, amb, dist)
    assert isinstance(r, DecodeError) and r.code == BAD_SYNTAX
    for b, a, d in (
        (sim_encode.BODY_MIN, amb, dist),
        (sim_encode.BODY_MAX, amb, dist),
        (body, sim_encode.AMBIENT_MIN, dist),
        (body, sim_encode.AMBIENT_MAX, dist),
        (body, amb, sim_encode.DIST_MIN),
        (body, amb, sim_encode.DIST_MAX),
    ):
        sid, fields = line(b"G", b, a, d)
        assert fields[0] == b / 100.0 and fields[1] == a / 10.0 and fields[3] == d, (b, a, d)
    for b, a, d in (
        (sim_encode.BODY_MIN - 1, amb, dist),
        (sim_encode.BODY_MAX + 1, amb, dist),
        (body, sim_encode.AMBIENT_MIN - 1, dist),
        (body, sim_encode.AMBIENT_MAX + 1, dist),
        (body, amb, sim_encode.DIST_MIN - 1),
        (body, amb, sim_encode.DIST_MAX + 1),
    ):
        r = line(b"G", b, a, d)
        assert isinstance(r, DecodeError) and r.code == BAD_VALUE, (b, a, d, r)


def test_stuck_station_repeats_values():
    sim = Simulator(["GATE-01"], seed=5)
    sim.set_fault("stuck", 1.0)
    seen = None
    for f, (sid, fields) in _frames(sim, 20):
        frozen = (fields[0], fields[1], fields[3])
        assert seen is None or frozen == seen
        seen = frozen
    assert seen is not None


def test_alarm_and_event_rules():
    assert codec.alarm((37.3, 20.0, 1, 50, True)) == "fever"  # at the threshold counts
    assert codec.alarm((37.29, 20.0, 1, 50, True)) is None
    assert codec.alarm((37.4, 20.0, 1, 50, True), {"fever_c": 37.5}) is None
    assert codec.alarm((37.5, 20.0, 1, 50, True), {"fever_c": 37.5}) == "fever"
    assert codec.is_event((36.5, 20.0, 1, None, False))  # every person screened is reported
    assert len(codec.FIELDS) == len(sim_encode.UNITS) == 5 and codec.KIND_CODE == 4
    for i in codec.ANALOG + codec.COUNTERS:
        assert 0 <= i < len(codec.FIELDS)


def test_rules_report_every_person():
    from edge import rules

    f = rules.ReportFilter(codec, default_deadband=5, max_silence_ms=600000)
    ticks = 0
    for line, (sid, fields) in _frames(Simulator(["GATE-01"], seed=4), 50):
        ticks += 1000
        assert f.check(sid, fields, ticks, codec.alarm(fields)) != rules.SUPPRESSED
    assert f.suppressed == 0


def test_encode_refuses_what_decode_would_reject():
    good = (36.5, 20.0, 1, 50, True)
    for sid, fields in (("", good), ("A,B", good), ("A*", good), ("A$", good), ("S" * 33, good),
                        ("A", (29.99,) + good[1:]), ("A", (45.01,) + good[1:]),
                        ("A", (36.5, 60.1) + good[2:]),
                        ("A", good[:2] + (65536,) + good[3:]), ("A", good[:3] + (251, True))):
        try:
            sim_encode.encode(sid, fields)
        except ValueError:
            continue
        raise AssertionError("encoded %r %r" % (sid, fields))
