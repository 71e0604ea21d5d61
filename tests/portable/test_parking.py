"""Parking codec: wire vectors (whole, split, byte by byte), simulator round trips and fault modes."""

from binascii import unhexlify

from devices.common.crc import crc16_modbus
from devices.common.errors import BAD_LENGTH, UNSUPPORTED
from devices.parking import codec, sim_encode, vectors
from devices.parking.sim import Simulator
from tests.portable import codec_check


def test_vectors_whole():
    codec_check.check_vectors_whole(codec, vectors.VECTORS)


def test_vectors_split_at_every_position():
    codec_check.check_vectors_split(codec, vectors.VECTORS)


def test_vectors_byte_by_byte():
    codec_check.check_vectors_byte_by_byte(codec, vectors.VECTORS)


def test_good_vectors_encode_back():
    for name, hx, consumed, expected in vectors.VECTORS:
        if isinstance(expected, tuple) and consumed == len(hx) // 2:
            assert sim_encode.encode(expected[0], expected[1]) == unhexlify(hx), name


def _frames(sim, frames, t_step_ms=5000):
    """Yield up to `frames` simulator frames as (wire bytes, reading it must give or None); a
    generator, so a board heap never holds them all."""
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
    sim = Simulator(["P-00012", 13, "P-00101", "P-65534"], seed=7, heartbeat_s=60, mean_stay_s=600,
                    mean_vacant_s=300)
    count = 0
    events = 0
    ids = set()
    for f, reading in _frames(sim, 300):
        count += 1
        assert reading is not None
        n, r = codec.decode(f)
        assert n == len(f) and codec_check.same(r, reading)
        assert sim_encode.encode(reading[0], reading[1]) == f
        ids.add(reading[0])
        if codec.is_event(reading[1]):
            events += 1
            assert reading[1][0] == (reading[1][1] == sim_encode.ARRIVAL)
    assert count == 300
    assert events > 10  # cars did come and go
    assert ids == set(["P-00012", "P-00013", "P-00101", "P-65534"])


def test_simulator_is_deterministic_and_events_alternate():
    a = Simulator(["P-00001", "P-00002"], seed=3, heartbeat_s=60, mean_stay_s=400)
    b = _frames(Simulator(["P-00001", "P-00002"], seed=3, heartbeat_s=60, mean_stay_s=400), 120)
    last = {}
    seqs = {}
    for f, (sid, fields) in _frames(a, 120):
        assert next(b)[0] == f
        if sid in seqs:
            assert fields[2] == (seqs[sid] + 1) & 0xFFFF  # no gap without faults
        seqs[sid] = fields[2]
        if fields[1] != sim_encode.HEARTBEAT:
            if sid in last:
                assert last[sid] != fields[1]  # arrival, departure, arrival, ...
            last[sid] = fields[1]
    assert len(last) == 2


def test_rs485_link_has_no_rssi():
    for f, (sid, fields) in _frames(Simulator([5, 6], seed=2, link="rs485"), 20):
        assert fields[7] is None


def test_occupied_shifts_the_field():
    """The simulated signature is what a detector keys on: z moves by far more than the noise."""
    sums = [0, 0]
    counts = [0, 0]
    for f, (sid, fields) in _frames(Simulator([9], seed=11, heartbeat_s=30, mean_stay_s=900), 200):
        k = 1 if fields[0] else 0
        sums[k] += fields[5]
        counts[k] += 1
    assert counts[0] and counts[1]
    assert abs(sums[1] / counts[1] - sums[0] / counts[0]) > 80


def test_fault_modes_never_give_a_wrong_reading():
    for mode in ("garbage", "truncate", "bad_crc", "silence", "stuck"):
        sim = Simulator(["P-00012", "P-00013", "P-00014"], seed=5, heartbeat_s=60, mean_stay_s=300)
        sim.set_fault(mode, 0.5)
        rx = codec_check.Receiver(codec)
        expected = []  # sent and not yet decoded: a stub may hold back the frame after it
        sent = 0
        faulty = 0
        t = 0
        for _ in range(600):
            f = sim.next_frame(t)
            t += 5000
            if sim.last_reading is not None:
                expected.append(sim.last_reading)
                sent += 1
            elif f is not None:
                faulty += 1
            if f is not None:
                rx.feed(f, expected)
        last = ("P-00099", (False, 0, 0, 1, 2, 3, 3600, -80))  # flushes a trailing stub
        expected.append(last)
        rx.feed(sim_encode.encode(last[0], last[1]), expected)
        # every good frame arrived, in order, exactly; every faulty one was an error, never a reading
        assert not expected and rx.readings == sent + 1, mode
        if mode == "garbage":
            assert faulty > 10 and rx.errors > 0, mode  # back-to-back bursts are one run of noise
        elif mode in ("truncate", "bad_crc"):
            assert faulty > 10 and rx.errors >= faulty, mode
        else:
            assert rx.errors == 0, mode


def test_stuck_sensor_repeats_values():
    sim = Simulator(["P-00012"], seed=5, heartbeat_s=60, mean_stay_s=120)
    sim.set_fault("stuck", 1.0)
    seen = None
    for f, (sid, fields) in _frames(sim, 30):
        assert fields[1] == sim_encode.HEARTBEAT  # a stuck sensor sees no car come or go
        frozen = (fields[0],) + fields[3:]  # occupied, field, battery, rssi
        assert seen is None or frozen == seen
        seen = frozen
    assert seen is not None


def test_alarm_and_event_rules():
    fields = (False, 0, 1, 0, 0, 0, 3299, -90)
    assert codec.alarm(fields) == "low_battery"
    assert codec.alarm(fields, {"low_battery_mv": 3200}) is None
    assert codec.alarm((False, 0, 1, 0, 0, 0, 3300, -90)) is None
    assert codec.is_event((True, sim_encode.ARRIVAL, 1, 0, 0, 0, 3600, None))
    assert codec.is_event((False, sim_encode.DEPARTURE, 1, 0, 0, 0, 3600, None))
    assert not codec.is_event((True, sim_encode.HEARTBEAT, 1, 0, 0, 0, 3600, None))
    assert len(codec.FIELDS) == len(sim_encode.UNITS) == 8 and codec.KIND_CODE == 1
    for i in codec.ANALOG + codec.COUNTERS:
        assert 0 <= i < len(codec.FIELDS)


def test_len_limits_are_the_decoders():
    """sim_encode.MIN_LEN/MAX_LEN (sim_encode's public copies) are the LEN edges decode enforces, as the
    vectors' extremes pin the field ranges: the decoder checks its own compile-time copies."""
    for ln, code in (
        (sim_encode.MIN_LEN - 1, BAD_LENGTH),
        (sim_encode.MIN_LEN, UNSUPPORTED),
        (sim_encode.MAX_LEN, UNSUPPORTED),
        (sim_encode.MAX_LEN + 1, BAD_LENGTH),
    ):
        f = bytearray([sim_encode.SYNC0, sim_encode.SYNC1, ln, 1, 0, 9]) + bytearray(max(0, ln - 3))  # type 9
        crc = crc16_modbus(f)
        f += bytearray([crc & 0xFF, crc >> 8])
        n, r = codec.decode(f)
        assert r.code == code and n == (2 if code == BAD_LENGTH else len(f)), (ln, n, r)


def test_rules_never_suppress_an_event():
    """With the sample's deadbands, every arrival and departure still goes out (billing)."""
    from edge import rules

    f = rules.ReportFilter(codec, deadbands={"mag_x": 40, "mag_y": 40, "mag_z": 40, "battery_mv": 50},
                           max_silence_ms=900000)
    sim = Simulator(["P-00012", "P-00013"], seed=9, heartbeat_s=60, mean_stay_s=300, mean_vacant_s=300)
    events = 0
    ticks = 0
    for frame, (sid, fields) in _frames(sim, 150):
        ticks += 1000
        reason = f.check(sid, fields, ticks, codec.alarm(fields))
        if codec.is_event(fields):
            events += 1
            assert reason == 2 or reason == 1  # edge.rules' reasons: event, first
    assert events > 5


def test_encode_refuses_what_decode_would_reject():
    good = (True, 1, 1, 0, 0, 0, 3600, -90)
    for sid, fields in (("P-00000", good), ("X-00001", good), ("P-00001", (False, 1) + good[2:]),
                        ("P-00001", good[:3] + (8001,) + good[4:]), ("P-00001", good[:6] + (1999, -90)),
                        ("P-00001", good[:7] + (1,)), ("P-00001", (True, 3) + good[2:]),
                        ("P-12", good), ("P-0001x", good)):
        try:
            sim_encode.encode(sid, fields)
        except ValueError:
            continue
        raise AssertionError("encoded %r %r" % (sid, fields))
