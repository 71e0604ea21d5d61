"""Modbus RTU ADU vectors (devices.common.modbus), whole, split and byte by byte.

The request and response frames marked "pymodbus" were captured from pymodbus 3.16's RTU
server (hil/water_slave.py), an implementation independent of ours.
"""

from devices.common import modbus
from devices.common.crc import crc16_modbus
from devices.common.errors import BAD_CRC, BAD_HEADER, BAD_LENGTH, DEVICE_EXCEPTION, DecodeError

_P1 = (
    "010324" "40dd09af41034cc84195aac53ed9a67e4113c58a43a4a7833f4a9b2e431dd3aa415e1307" "973a"
)
_P2 = (
    "020424" "09af40dd4cc84103aac54195a67e3ed9c58a4113a78343a49b2e3f4ad3aa431d1307415e" "505c"
)

REQUESTS = [
    ("pymodbus: slave 1 fn 3 regs 0..17", 1, 3, 0, 18, "010300000012c5c7"),
    ("pymodbus: slave 2 fn 4 regs 0..17", 2, 4, 0, 18, "020400000012" "7034"),
    ("slave 247 fn 3 reg 0xFFFF x1", 247, 3, 0xFFFF, 1, None),
]

# (name, hex, slave, fn, count, results): results is the list of parse outcomes in order, each an
# error code or the register data hex; leading BAD_HEADER results are merged (how many bytes a
# resync skips at once depends on how the bytes arrive, what it skips does not).
FRAMES = [
    ("pymodbus: water map, slave 1 fn 3", _P1, 1, 3, 18, [_P1[6:-4]]),
    ("pymodbus: water map CDAB, slave 2 fn 4", _P2, 2, 4, 18, [_P2[6:-4]]),
    ("one register", "01030201023815", 1, 3, 1, ["0102"]),
    ("exception 2, illegal address", "018302c0f1", 1, 3, 2, [DEVICE_EXCEPTION]),
    ("exception with bad CRC", "018302c0f0", 1, 3, 2, [BAD_CRC]),
    ("bad CRC", _P1[:-4] + "973b", 1, 3, 18, [BAD_CRC]),
    ("leading noise then answer", "00ff" + _P1, 1, 3, 18, [BAD_HEADER, _P1[6:-4]]),
    ("answer from another slave", "02030201027c15", 1, 3, 1, [BAD_HEADER]),
    ("wrong function", "01040201023961", 1, 3, 1, [BAD_HEADER]),
    ("byte count mismatch", "0103040102" + "0304", 1, 3, 1, [BAD_LENGTH, BAD_HEADER]),
    ("two answers back to back", "01030201023815" "01030201023815", 1, 3, 1, ["0102", "0102"]),
    ("truncated answer", _P1[:30], 1, 3, 18, []),
    ("empty", "", 1, 3, 18, []),
]


def _run(chunks, slave, fn, count):
    """Feed chunks into a growing buffer, parse as a master would; return (results, bytes left)."""
    buf = bytearray()
    out = []
    for chunk in chunks:
        buf.extend(chunk)
        while True:
            used, res = modbus.parse_response(buf, 0, len(buf), slave, fn, count)
            if used == 0:
                assert res is None
                break
            assert 0 < used <= len(buf)
            if isinstance(res, DecodeError):
                if not (res.code == BAD_HEADER and out and out[-1] == BAD_HEADER):
                    out.append(res.code)
            else:
                out.append(bytes(buf[res : res + 2 * count]).hex())
            buf = buf[used:]
    return out, len(buf)


def test_build_read():
    buf = bytearray(8)
    for name, slave, fn, addr, count, hx in REQUESTS:
        assert modbus.build_read(buf, slave, fn, addr, count) == 8, name
        if hx is not None:
            assert bytes(buf).hex() == hx, name
        assert crc16_modbus(buf) == 0, name  # CRC over a whole good RTU frame is 0


def test_build_read_rejects_bad_arguments():
    buf = bytearray(8)
    for args in ((0, 3, 0, 1), (248, 3, 0, 1), (1, 6, 0, 1), (1, 3, 0, 0), (1, 3, 0, 126), (1, 3, 0xFFFF, 2)):
        try:
            modbus.build_read(buf, *args)
        except ValueError:
            continue
        raise AssertionError("accepted %r" % (args,))


def test_builders_match_vectors():
    assert modbus.build_exception(1, 3, 2).hex() == "018302c0f1"
    assert modbus.build_response(1, 3, bytes.fromhex(_P1[6:-4])).hex() == _P1
    assert modbus.build_response(2, 4, bytes.fromhex(_P2[6:-4])).hex() == _P2
    assert modbus.build_response(1, 3, b"\x01\x02").hex() == "01030201023815"


def test_exception_detail_is_code():
    used, res = modbus.parse_response(bytes.fromhex("018302c0f1"), 0, 5, 1, 3, 2)
    assert used == 5 and res.code == DEVICE_EXCEPTION and res.detail == 2


def test_frames_whole():
    for name, hx, slave, fn, count, results in FRAMES:
        b = bytes.fromhex(hx)
        out, left = _run([b], slave, fn, count)
        assert out == results, (name, out)
        if not results:
            assert left == len(b), name


def test_frames_split_everywhere():
    for name, hx, slave, fn, count, results in FRAMES:
        b = bytes.fromhex(hx)
        for k in range(len(b) + 1):
            out, _ = _run([b[:k], b[k:]], slave, fn, count)
            assert out == results, (name, k, out)


def test_frames_byte_by_byte():
    for name, hx, slave, fn, count, results in FRAMES:
        b = bytes.fromhex(hx)
        out, _ = _run([b[i : i + 1] for i in range(len(b))], slave, fn, count)
        assert out == results, (name, out)


def test_offsets_respected():
    b = bytes.fromhex("aaaa" + _P1 + "bbbb")
    used, res = modbus.parse_response(b, 2, len(b) - 2, 1, 3, 18)
    assert used == len(_P1) // 2 and res == 5
    assert modbus.parse_response(b, 2, 20, 1, 3, 18) == (0, None)


# The master's parsing loop over a scripted port (the real tty + pymodbus run in
# tests/integration/test_modbus_pty.py; this covers the byte arrival patterns a pty cannot force).


class _ScriptPort:
    """Answers each request with the next scripted list of chunks; raises OSError on cue."""

    baud = 115200

    def __init__(self, answers):
        self.answers = list(answers)
        self.chunks = []
        self.written = []

    async def write(self, buf):
        self.written.append(bytes(buf))
        answer = self.answers.pop(0)
        if answer == "oserror":
            raise OSError(5, "unplugged")
        self.chunks = list(answer)

    async def readinto(self, buf, timeout_ms):
        import asyncio

        if not self.chunks:
            await asyncio.sleep(timeout_ms / 1000)
            return 0
        chunk = self.chunks.pop(0)
        buf[0 : len(chunk)] = chunk
        return len(chunk)

    def discard(self):
        return 0


def _master_reads(answers, count=18):
    import asyncio

    from edge import modbus as master_mod

    port = _ScriptPort(answers)
    m = master_mod.Master(port, timeout_ms=30)

    async def go():
        out = []
        for _ in range(len(answers)):
            r = await m.read(1, 3, 0, count)
            out.append(r if isinstance(r, DecodeError) else bytes(r).hex())
        return out

    return asyncio.run(go()), m, port


def test_master_assembles_split_answer_after_noise():
    frame = bytes.fromhex(_P1)
    chunks = [b"\x00\xff", frame[:1], frame[1:7], frame[7:]]
    out, m, port = _master_reads([chunks, [bytes([b]) for b in frame]])
    assert out == [_P1[6:-4], _P1[6:-4]]
    assert port.written[0].hex() == "010300000012c5c7"
    from edge import modbus as master_mod

    c = m.counters(1)
    assert c[master_mod.C_OK] == 2 and c[master_mod.C_NOISE] == 2 and c[master_mod.C_REQUESTS] == 2


def test_master_errors_are_typed_and_counted():
    from devices.common.errors import TIMEOUT
    from edge import modbus as master_mod

    frame = bytes.fromhex(_P1)
    answers = [[], [frame[:20]], [frame[:-1] + b"\x00"], [bytes.fromhex("018302c0f1")]]
    out, m, port = _master_reads(answers)
    assert [r.code for r in out] == [TIMEOUT, TIMEOUT, BAD_CRC, DEVICE_EXCEPTION]
    assert out[1].detail == "partial answer" and out[3].detail == 2
    c = m.counters(1)
    assert c[master_mod.C_TIMEOUT] == 2 and c[master_mod.C_CRC] == 1 and c[master_mod.C_EXCEPTION] == 1
    assert c[master_mod.C_IO] == 0 and c[master_mod.C_OK] == 0 and c[master_mod.C_REQUESTS] == 4
    assert m.counters(2) == [0] * master_mod.N_COUNTERS


def test_master_dead_port_raises_for_its_owner_to_reopen():
    # A timeout here would hide an unplugged adapter forever: the source must see the OSError.
    from edge import modbus as master_mod

    try:
        _master_reads([[], "oserror"])
    except OSError as exc:
        assert exc.args[0] == 5
    else:
        raise AssertionError("a dead port was reported as a timeout")
    port = _ScriptPort(["oserror"])
    m = master_mod.Master(port, timeout_ms=30)
    import asyncio

    try:
        asyncio.run(m.read(1, 3, 0, 18))
    except OSError:
        pass
    c = m.counters(1)
    assert c[master_mod.C_IO] == 1 and c[master_mod.C_REQUESTS] == 1 and c[master_mod.C_TIMEOUT] == 0


def test_master_gap_follows_the_spec():
    from edge import modbus as master_mod

    class P:
        baud = 9600

    assert master_mod.Master(P()).gap_ms == 4  # 3.5 x 1.04 ms
    P.baud = 19200
    assert master_mod.Master(P()).gap_ms == 2  # 3.5 x 0.52 ms, rounded up
    P.baud = 115200
    assert master_mod.Master(P()).gap_ms == 2  # fixed 1.75 ms above 19200, rounded up
