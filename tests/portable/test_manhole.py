"""Manhole codec: JSON payload vectors, prefixes, offsets, simulator round trips and faults.

A lid message is a whole MQTT payload, not a byte stream, so "split" here means: every proper
prefix of a payload (what a cut-off upload delivers) is a typed error, never a reading, and
decoding through start/end offsets in a larger buffer gives the same answer as the payload alone.
"""

from devices.common.errors import BAD_SYNTAX, BAD_VALUE, DecodeError
from devices.manhole import codec, sim_encode, vectors
from devices.manhole.sim import Simulator
from tests.portable import codec_check


def test_metadata():
    assert codec.KIND == "manhole" and codec.KIND_CODE == 2
    assert len(codec.FIELDS) == len(sim_encode.UNITS)
    assert all(0 <= i < len(codec.FIELDS) for i in codec.ANALOG)


def test_vectors_whole():
    for name, hx, consumed, expected in vectors.VECTORS:
        n, r = codec.decode(bytes.fromhex(hx))
        assert n == consumed and codec_check.matches(r, expected), (name, n, r)


def test_vectors_prefixes_never_read():
    for name, hx, consumed, expected in vectors.VECTORS:
        b = bytes.fromhex(hx)
        whole = b.rstrip()
        for k in range(1, len(b)):
            n, r = codec.decode(b, 0, k)
            assert n == k, (name, k)
            if isinstance(expected, int) or expected is None:
                continue  # a prefix of a bad payload may be anything but an exception
            if k >= len(whole):
                assert codec_check.matches(r, expected), (name, k)  # only trailing whitespace missing
            else:
                assert isinstance(r, DecodeError), (name, k, r)


def test_vectors_at_offsets():
    for name, hx, consumed, expected in vectors.VECTORS:
        b = bytes.fromhex(hx)
        big = b"{{garbage" + b + b"}}"
        n, r = codec.decode(memoryview(big), 9, 9 + len(b))
        assert n == consumed and codec_check.matches(r, expected), (name, n, r)


def test_sensor_id_must_match():
    b = bytes.fromhex(vectors.VECTORS[0][1])
    assert codec.decode(b, sensor_id="MH-0123")[1][0] == "MH-0123"
    n, r = codec.decode(b, sensor_id="MH-9999")
    assert n == len(b) and isinstance(r, DecodeError)


def test_limits_are_the_decoders():
    """sim_encode.MAX_ID_CHARS and MAX_DEPTH (sim_encode's public copies) are the edges decode enforces,
    and each field's range is exactly the documented one: the decoder checks its own copies."""

    def decode(dev="MH-1", extra="", **values):
        keys = {"tilt": "1.0", "bat_mv": "3600"}
        keys.update(values)
        text = '{"devId":"%s","open":false,"displaced":false%s' % (dev, extra)
        for k in keys:
            text += ',"%s":%s' % (k, keys[k])
        return codec.decode((text + "}").encode())[1]

    assert decode("M" * sim_encode.MAX_ID_CHARS)[0] == "M" * sim_encode.MAX_ID_CHARS
    r = decode("M" * (sim_encode.MAX_ID_CHARS + 1))
    assert isinstance(r, DecodeError) and r.code == BAD_VALUE
    k = sim_encode.MAX_DEPTH - 1  # the message itself is one level
    assert decode(extra=',"x":' + "[" * k + "]" * k)[0] == "MH-1"
    r = decode(extra=',"x":' + "[" * (k + 1) + "]" * (k + 1))
    assert isinstance(r, DecodeError) and r.code == BAD_SYNTAX
    for key, good, bad in (
        ("tilt", ("0", "180", "180.0"), ("-0.01", "180.01")),
        ("water_cm", ("0", "1000.0"), ("-0.1", "1000.01")),
        ("ch4_ppm", ("0.0", "1000000"), ("-1", "1000000.5")),
        ("h2s_ppm", ("0", "2000.00"), ("-0.01", "2000.01")),
        ("bat_mv", ("0", "5000"), ("-1", "5001")),
        ("rssi", ("-150", "0"), ("-151", "1")),
    ):
        for v in good:
            assert not isinstance(decode(**{key: v}), DecodeError), (key, v)
        for v in bad:
            r = decode(**{key: v})
            assert isinstance(r, DecodeError) and r.code == BAD_VALUE, (key, v, r)


def test_encode_round_trip():
    for dev, fields in (
        ("MH-1", (0.0, False, False, 0.0, 0.0, 0.0, 0, -150)),
        ("雨水井-7", (180.0, True, True, 1000.0, 1000000.0, 2000.0, 5000, 0)),
        ('q"uo\\te', (12.3, False, True, None, None, 0.07, 3300, None)),
    ):
        assert codec_check.same(codec.decode(sim_encode.encode(dev, fields, ts=1764140000))[1], (dev, fields))


def test_encode_matches_vector():
    name, hx, consumed, expected = vectors.VECTORS[0]
    assert sim_encode.encode(expected[0], expected[1], ts=1764140000).hex() == hx


def test_simulator_round_trip():
    sim = Simulator(["MH-1", "井盖-2", "MH-3"], seed=5, rain_chance=0.05, open_chance=0.05)
    seen = {}
    for t in range(400):
        frame = sim.next_frame(1764140000000 + t * 60000)
        n, r = codec.decode(frame)
        assert n == len(frame) and codec_check.same(r, sim.last_reading), (t, frame)
        a = codec.alarm(r[1], {"overflow_cm": 60.0})
        seen[a] = 1
    assert "lid_open" in seen and "overflow" in seen and None in seen


def test_simulator_faults():
    sim = Simulator(["MH-1"], seed=2)
    for mode in ("garbage", "truncate", "bad_crc"):
        sim.set_fault(mode)
        for t in range(20):
            f = sim.next_frame(t * 1000)
            n, r = codec.decode(f)
            assert n == len(f) and isinstance(r, DecodeError) and r.code == BAD_SYNTAX, (mode, f)
            assert sim.last_reading is None
    sim.set_fault("silence")
    assert sim.next_frame(0) is None and sim.last_reading is None
    sim.set_fault(None)
    good = sim.next_frame(1000)
    reading = sim.last_reading
    sim.set_fault("stuck")
    assert sim.next_frame(2000) == good and sim.last_reading == reading


def test_simulator_is_seeded():
    a = Simulator(["A", "B"], seed=9)
    b = Simulator(["A", "B"], seed=9)
    for t in range(30):
        assert a.next_frame(t * 1000) == b.next_frame(t * 1000)


def test_alarms_and_events():
    ok = (1.0, False, False, 30.0, 10.0, 0.2, 3600, -80)
    assert codec.alarm(ok) is None and not codec.is_event(ok)
    assert codec.alarm((80.0, True, False, 30.0, 10.0, 0.2, 3600, -80)) == "lid_open"
    disp = (20.0, True, True, 30.0, 10.0, 0.2, 3600, -80)
    assert codec.alarm(disp) == "lid_displaced" and codec.is_event(disp)
    assert codec.alarm((1.0, False, False, 30.0, 6000.0, 0.2, 3600, -80)) == "gas"
    assert codec.alarm((1.0, False, False, 30.0, 10.0, 12.0, 3600, -80)) == "gas"
    assert codec.alarm((1.0, False, False, 160.0, 10.0, 0.2, 3600, -80)) == "overflow"
    assert codec.alarm((1.0, False, False, 160.0, 10.0, 0.2, 3600, -80), {"overflow_cm": 200.0}) is None
    assert codec.alarm((1.0, False, False, None, None, None, 3200, None)) == "low_battery"
