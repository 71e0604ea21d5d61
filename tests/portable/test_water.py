"""Water codec: register-data vectors (whole, split, byte by byte), both word orders, simulator."""

from devices.common.errors import BAD_VALUE
from devices.water import codec, vectors
from devices.water.sim import Simulator
from tests.portable import codec_check


def _check_vector(name, hx, consumed, expected, wo):
    b = bytes.fromhex(hx)
    n, r = codec.decode(b, word_order=wo)
    assert n == consumed and codec_check.matches(r, expected), (name, n, r)
    # split in two: the first part is "need more" until it holds a whole block
    for k in range(len(b) + 1):
        n1, r1 = codec.decode(b, 0, k, word_order=wo)
        if k < codec.DATA_LEN:
            assert (n1, r1) == (0, None), (name, k)
        else:
            assert n1 == consumed and codec_check.matches(r1, expected), (name, k)
    # byte by byte into a growing buffer: the answer comes exactly when the block is complete
    buf = bytearray()
    for i in range(len(b)):
        buf.append(b[i])
        n2, r2 = codec.decode(buf, word_order=wo)
        if n2:
            assert len(buf) == codec.DATA_LEN and n2 == consumed, (name, i)
            assert codec_check.matches(r2, expected), (name, i)
            break
    else:
        assert consumed == 0, name


def test_metadata():
    assert codec.KIND == "water" and codec.KIND_CODE == 3
    assert len(codec.FIELDS) == len(codec.UNITS) == len(codec.RANGES) == codec.N_VALUES
    assert codec.N_REGISTERS * 2 == codec.DATA_LEN
    assert all(0 <= i < len(codec.FIELDS) for i in codec.ANALOG)


def test_vectors_abcd():
    for v in vectors.VECTORS:
        _check_vector(v[0], v[1], v[2], v[3], codec.WORD_ABCD)


def test_vectors_cdab():
    for v in vectors.VECTORS_CDAB:
        _check_vector(v[0], v[1], v[2], v[3], codec.WORD_CDAB)


def test_offsets_and_sensor_id():
    b = b"\xaa" * 3 + bytes.fromhex(vectors.VECTORS[0][1]) + b"\xbb"
    n, r = codec.decode(b, 3, len(b) - 1, sensor_id=7)
    assert n == 36 and r[0] == 7 and codec_check.same(r[1], vectors.VECTORS[0][3][1])


def test_encode_round_trip_both_orders():
    fields = vectors.VECTORS[0][3][1]
    for wo in (codec.WORD_ABCD, codec.WORD_CDAB):
        data = codec.encode(5, fields, wo)
        assert len(data) == 36
        assert codec_check.same(codec.decode(data, sensor_id=5, word_order=wo), (36, (5, fields)))
    assert codec.encode(5, fields).hex() == vectors.VECTORS[0][1]
    assert codec.encode(5, fields, codec.WORD_CDAB).hex() == vectors.VECTORS_CDAB[0][1]


def test_word_order_names():
    assert codec.word_order_code("ABCD") == codec.WORD_ABCD
    assert codec.word_order_code("CDAB") == codec.WORD_CDAB
    try:
        codec.word_order_code("BADC")
    except ValueError:
        return
    raise AssertionError("BADC accepted")


def test_registers_are_big_endian_words():
    data = bytes.fromhex(vectors.VECTORS[0][1])
    regs = codec.registers(data)
    assert len(regs) == 18 and regs[0] == 0x40E8 and regs[1] == 0


def test_simulator_round_trip():
    for wo in (codec.WORD_ABCD, codec.WORD_CDAB):
        sim = Simulator([1, 2, 3], seed=7, word_order=wo, rain_chance=0.05)
        for t in range(300):
            frame = sim.next_frame(t * 60000)
            n, r = codec.decode(frame, sensor_id=sim.last_reading[0], word_order=wo)
            assert n == 36 and codec_check.same(r, sim.last_reading), (t, r)


def test_simulator_faults():
    sim = Simulator([1, 2], seed=3)
    sim.set_fault("silence")
    assert sim.next_frame(0) is None and sim.last_reading is None
    sim.set_fault("truncate")
    f = sim.next_frame(1000)
    assert len(f) < 36 and codec.decode(f) == (0, None) and sim.last_reading is None
    sim.set_fault("bad_crc")
    n, r = codec.decode(sim.next_frame(2000))
    assert n == 36 and r.code == BAD_VALUE and sim.last_reading is None
    sim.set_fault("garbage")
    f = sim.next_frame(3000)
    assert len(f) == 36 and sim.last_reading is None
    sim.set_fault(None)
    good = sim.next_frame(4000)
    reading = sim.last_reading
    sim.set_fault("stuck")
    assert sim.next_frame(5000) == good and sim.last_reading == reading
    try:
        sim.set_fault("melt")
    except ValueError:
        return
    raise AssertionError("unknown fault accepted")


def test_simulator_is_seeded():
    a = Simulator([1], seed=11)
    b = Simulator([1], seed=11)
    for t in range(20):
        assert a.next_frame(t * 1000) == b.next_frame(t * 1000)


def test_alarms():
    f = list(vectors.VECTORS[0][3][1])
    assert codec.alarm(tuple(f)) is None
    f[6] = 3.5
    assert codec.alarm(tuple(f)) == "overflow"
    assert codec.alarm(tuple(f), {"level_max_m": 5.0}) is None
    f[6] = 1.0
    f[0] = 5.5
    assert codec.alarm(tuple(f)) == "water_quality"
    f[0] = 7.0
    f[4] = 1.0
    assert codec.alarm(tuple(f)) == "water_quality"
    assert codec.alarm((None,) * 9) is None
    assert codec.is_event(tuple(f)) is False
