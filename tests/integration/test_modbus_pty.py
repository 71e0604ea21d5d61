"""edge/modbus.py over edge/ports/tty.py against pymodbus's RTU server on a pseudo-terminal.

The slave is hil/water_slave.py in its own process on the pty's /dev/pts side; the master runs
on the other side, in this process (CPython) and as a `micropython` subprocess that inherits the
pty's master fd. Register values come from the water Simulator, so the test recomputes what must
arrive. Every slave process is stopped by PID at the end of its test.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import struct
import subprocess
import sys
import tty
from collections.abc import Iterator
from pathlib import Path

import pytest

from devices.common.errors import BAD_CRC, DEVICE_EXCEPTION, TIMEOUT, DecodeError
from devices.water import codec
from edge import config, modbus
from edge.ports.tty import Tty
from hil import water_slave
from hil.water_slave import station

ROOT = Path(__file__).resolve().parents[2]
SEED = 4
NOW_MS = 13 * 3600 * 1000  # early afternoon: warm water, less oxygen
SLAVES = "1:ABCD,2:CDAB"
MICROPYTHON = Path(sys.executable).parent / "micropython"
SAMPLE = ROOT / "devices" / "water" / "sample.json"  # four slaves: two built-in maps, two vendor maps
# Register maps of real products, from their manuals (devices/water/README.md, "Real products"):
# file -> requests per poll of its one slave.
VENDORS = {"ysi-odo-rtu.json": 1, "hach-ldo-aqs.json": 1, "supmea-do7013.json": 1}

pytestmark = pytest.mark.integration


def expected(addr: int, word_order: int) -> tuple[float, ...]:
    fields: tuple[float, ...] = station(addr, word_order, SEED).reading(addr, NOW_MS)
    return fields


@pytest.fixture
def line() -> Iterator[tuple[int, str]]:
    """A raw pty pair: (master fd for the bus master, /dev/pts path for the slave)."""
    master, slave = os.openpty()
    tty.setraw(slave)
    try:
        yield master, os.ttyname(slave)
    finally:
        os.close(master)
        os.close(slave)


class SlaveProcess:
    def __init__(self, path: str, *extra: str) -> None:
        cmd = [sys.executable, "-m", "hil.water_slave", "--port", path, "--slaves", SLAVES]
        cmd += ["--seed", str(SEED), "--now-ms", str(NOW_MS), *extra]
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 20)
        line = self.proc.stdout.readline() if ready else b""
        if line.strip() != b"READY":
            self.stop()
            pytest.fail(f"water slave did not come up: {line!r}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@pytest.fixture
def slave(line: tuple[int, str]) -> Iterator[SlaveProcess]:
    proc = SlaveProcess(line[1])
    try:
        yield proc
    finally:
        proc.stop()


async def _reads(fd: int, requests: list[tuple[int, int, int, int]], timeout_ms: int = 300) -> tuple[
    list[bytes | DecodeError], modbus.Master
]:
    port = Tty(os.dup(fd), 9600)
    master = modbus.Master(port, timeout_ms=timeout_ms)
    out: list[bytes | DecodeError] = []
    try:
        for req in requests:
            r = await master.read(*req)
            out.append(r if isinstance(r, DecodeError) else bytes(r))
    finally:
        port.close()
    return out, master


def test_reads_water_map_both_word_orders(line: tuple[int, str], slave: SlaveProcess) -> None:
    results, master = asyncio.run(_reads(line[0], [(1, 3, 0, 18), (2, 4, 0, 18), (1, 4, 0, 18)]))
    for data, (addr, wo) in zip(results, [(1, 0), (2, 1), (1, 0)], strict=True):
        assert isinstance(data, bytes), data
        assert codec.decode(data, sensor_id=addr, word_order=wo) == (36, (addr, expected(addr, wo)))
    assert master.counters(1)[modbus.C_OK] == 2 and master.counters(2)[modbus.C_OK] == 1


def test_silent_slave_times_out_and_line_recovers(line: tuple[int, str], slave: SlaveProcess) -> None:
    results, master = asyncio.run(_reads(line[0], [(9, 3, 0, 18), (9, 3, 0, 18), (1, 3, 0, 18)], 200))
    assert [r.code for r in results[:2] if isinstance(r, DecodeError)] == [TIMEOUT, TIMEOUT]
    assert isinstance(results[2], bytes)
    c = master.counters(9)
    assert c[modbus.C_REQUESTS] == 2 and c[modbus.C_TIMEOUT] == 2 and c[modbus.C_OK] == 0


def test_exception_answer(line: tuple[int, str], slave: SlaveProcess) -> None:
    results, master = asyncio.run(_reads(line[0], [(1, 3, 100, 2)]))
    err = results[0]
    assert isinstance(err, DecodeError) and err.code == DEVICE_EXCEPTION and err.detail == 2
    assert master.counters(1)[modbus.C_EXCEPTION] == 1 and master.last_exception == 2


@pytest.mark.parametrize(
    ("fault", "code", "counter"),
    [
        ("bad_crc", BAD_CRC, modbus.C_CRC),
        ("exception", DEVICE_EXCEPTION, modbus.C_EXCEPTION),
        ("silence", TIMEOUT, modbus.C_TIMEOUT),
        ("garbage", None, None),
    ],
)
def test_slave_faults_are_typed_and_counted(
    line: tuple[int, str], fault: str, code: int | None, counter: int | None
) -> None:
    proc = SlaveProcess(line[1], "--fault", fault)
    try:
        results, master = asyncio.run(_reads(line[0], [(1, 3, 0, 18), (2, 3, 0, 18)], 200))
    finally:
        proc.stop()
    assert all(isinstance(r, DecodeError) for r in results), results
    for addr in (1, 2):
        c = master.counters(addr)
        assert c[modbus.C_REQUESTS] == 1 and c[modbus.C_OK] == 0
        if counter is not None:
            assert c[counter] == 1
    if code is not None:
        assert all(isinstance(r, DecodeError) and r.code == code for r in results), results


MP_SCRIPT = """
import sys, struct, asyncio
from edge.ports.tty import Tty
from edge import modbus
from devices.water import codec
from devices.common.errors import DecodeError

async def main(fd):
    port = Tty(fd, 9600)
    m = modbus.Master(port, timeout_ms=300)
    for slave, wo in ((1, codec.WORD_ABCD), (2, codec.WORD_CDAB), (9, codec.WORD_ABCD)):
        r = await m.read(slave, 3, 0, 18)
        if isinstance(r, DecodeError):
            print("ERR", slave, r.code)
            continue
        n, res = codec.decode(r, sensor_id=slave, word_order=wo)
        print("OK", slave, struct.pack(">9d", *res[1]).hex())
    r = await m.read(1, 4, 100, 2)
    print("ERR", 1, r.code, r.detail)
    for s in m.slaves():
        print("COUNTERS", s, " ".join(str(x) for x in m.counters(s)))
    port.close()

asyncio.run(main(int(sys.argv[1])))
"""


@pytest.mark.micropython
def test_same_master_under_micropython(line: tuple[int, str], slave: SlaveProcess, tmp_path: Path) -> None:
    if not MICROPYTHON.exists():
        pytest.fail(f"{MICROPYTHON} missing: the venv should provide the unix port")
    script = tmp_path / "mp_master.py"
    script.write_text(MP_SCRIPT)
    fd = os.dup(line[0])
    try:
        run = subprocess.run(
            [str(MICROPYTHON), "-X", "heapsize=128K", str(script), str(fd)],
            env={**os.environ, "MICROPYPATH": ".frozen:" + str(ROOT)},  # .frozen holds asyncio
            pass_fds=[fd],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        os.close(fd)
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    want = [
        "OK 1 " + struct.pack(">9d", *expected(1, codec.WORD_ABCD)).hex(),
        "OK 2 " + struct.pack(">9d", *expected(2, codec.WORD_CDAB)).hex(),
        f"ERR 9 {TIMEOUT}",
        f"ERR 1 {DEVICE_EXCEPTION} 2",
        # requests ok timeout crc exception other noise io
        "COUNTERS 1 2 1 0 0 1 0 0 0",
        "COUNTERS 2 1 1 0 0 0 0 0 0",
        "COUNTERS 9 1 0 1 0 0 0 0 0",
    ]
    assert lines == want, run.stdout + run.stderr


# -- vendor register maps: devices/water/sample.json served by pymodbus, read by the Modbus source --


def sample_source(path: Path = SAMPLE) -> dict[str, object]:
    """The sample's source block as edge.config validates it (with each slave's read plan)."""
    block = json.loads(path.read_text(encoding="utf-8"))
    src: dict[str, object] = config.validate({"gateway_id": "gw-t", "broker": {"host": "127.0.0.1"},
                                              "sources": [block]})["sources"][0]
    return src


def sample_served(path: Path = SAMPLE) -> dict[str, tuple[float | None, ...]]:
    """sensor -> the fields its slave serves, as pymodbus reads its registers back."""
    out = {}
    for s in water_slave.load_slaves(path):
        entries = water_slave.map_entries(s)
        fields = station(s["address"], 0, SEED).reading(s["address"], NOW_MS)
        out[s["sensor"]] = water_slave.served(entries, water_slave.bank(entries, fields))
    return out


def check_against_served(got: dict[str, tuple[float | None, ...]], path: Path = SAMPLE) -> None:
    want = sample_served(path)
    assert set(got) == set(want), got
    for sensor, fields in want.items():
        for name, g, w in zip(codec.FIELDS, got[sensor], fields, strict=True):
            if w is None:
                assert g is None, (sensor, name, g)
            else:
                assert g == w, (sensor, name, g, w)  # exactly: same float, not a neighbour


# Requests per poll of each slave: the built-in map is one read of 18; the 16-bit vendor map one read
# of 0..8 (its unmapped register 7 bridged); the mixed one two (100..119 bridging 104..109, 200..202).
READS = {1: 1, 2: 1, 3: 1, 4: 2}


class _FdRuntime:
    """What a source needs of the runtime: open its bus (here the pty's master side) and log."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.lines: list[str] = []

    def open_serial(self, path: str, baud: int) -> Tty:
        return Tty(os.dup(self.fd), baud)

    def log(self, msg: str) -> None:
        self.lines.append(msg)


def read_with_the_modbus_source(line: tuple[int, str], path: Path, reads: dict[int, int]) -> None:
    """The slaves of the source block at `path`, served by pymodbus, read by ModbusSource: every
    value exactly as served, in `reads[address]` requests (all answered) per slave."""
    from edge.sources.modbus import ModbusSource

    proc = SlaveProcess(line[1], "--config", str(path))
    got: dict[str, tuple[float | None, ...]] = {}

    async def run() -> ModbusSource:
        def accept(sensor: str, kind: int, fields: tuple[float | None, ...], *_urgent_alarm: object) -> None:
            got[sensor] = fields

        src = ModbusSource(sample_source(path), _FdRuntime(line[0]), accept)
        task = asyncio.create_task(src.run())
        for _ in range(400):
            if len(got) == len(reads):
                break
            await asyncio.sleep(0.05)
        task.cancel()
        return src

    try:
        src = asyncio.run(run())
    finally:
        proc.stop()
    check_against_served(got, path)
    assert src.master is not None
    for addr, n in reads.items():
        c = src.master.counters(addr)
        assert (c[modbus.C_REQUESTS], c[modbus.C_OK]) == (n, n), (addr, c)


def test_vendor_maps_read_by_the_modbus_source(line: tuple[int, str]) -> None:
    read_with_the_modbus_source(line, SAMPLE, READS)


@pytest.mark.parametrize("name", sorted(VENDORS))
def test_real_products_maps_read_by_the_modbus_source(line: tuple[int, str], name: str) -> None:
    path = ROOT / "devices" / "water" / "vendors" / name
    (slave,) = water_slave.load_slaves(path)
    read_with_the_modbus_source(line, path, {slave["address"]: VENDORS[name]})


MP_SOURCE = """
import sys, struct, json, asyncio
from edge import config
from edge.ports.tty import Tty
from edge.sources.modbus import ModbusSource

class Runtime:
    def open_serial(self, path, baud):
        return Tty(int(sys.argv[1]), baud)
    def log(self, msg):
        print("LOG", msg)

got = {}

def accept(sensor, kind, fields, urgent, alarm):
    got[sensor] = fields

async def main():
    with open(sys.argv[2]) as f:
        block = json.load(f)
    cfg = config.validate({"gateway_id": "gw-t", "broker": {"host": "127.0.0.1"}, "sources": [block]})
    src = ModbusSource(cfg["sources"][0], Runtime(), accept)
    del cfg
    task = asyncio.create_task(src.run())
    for _ in range(400):
        if len(got) == 4:
            break
        await asyncio.sleep_ms(50)
    task.cancel()
    for sensor in sorted(got):
        hexes = ["-" if v is None else struct.pack(">d", v).hex() for v in got[sensor]]
        print("READING", sensor, " ".join(hexes))
    for s in src.slaves:
        c = src.master.counters(s.address)
        print("REQUESTS", s.address, c[0], c[1])

asyncio.run(main())
"""


@pytest.mark.micropython
def test_vendor_maps_read_under_micropython(line: tuple[int, str], tmp_path: Path) -> None:
    if not MICROPYTHON.exists():
        pytest.fail(f"{MICROPYTHON} missing: the venv should provide the unix port")
    script = tmp_path / "mp_source.py"
    script.write_text(MP_SOURCE)
    proc = SlaveProcess(line[1], "--config", str(SAMPLE))
    fd = os.dup(line[0])
    try:
        run = subprocess.run(
            [str(MICROPYTHON), "-X", "heapsize=128K", str(script), str(fd), str(SAMPLE)],
            env={**os.environ, "MICROPYPATH": ".frozen:" + str(ROOT)},
            pass_fds=[fd],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        os.close(fd)
        proc.stop()
    assert run.returncode == 0, run.stdout + run.stderr
    got: dict[str, tuple[float | None, ...]] = {}
    requests = {}
    for ln in run.stdout.splitlines():
        parts = ln.split()
        if parts[0] == "READING":
            got[parts[1]] = tuple(None if h == "-" else struct.unpack(">d", bytes.fromhex(h))[0]
                                  for h in parts[2:])
        elif parts[0] == "REQUESTS":
            requests[int(parts[1])] = (int(parts[2]), int(parts[3]))
    check_against_served(got)
    assert requests == {a: (n, n) for a, n in READS.items()}, run.stdout
