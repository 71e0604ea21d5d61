"""A water-quality station line on a serial port: pymodbus RTU server over the water Simulator.

Gives edge/modbus.py a real, independent Modbus implementation to talk to (on a pty in tests,
on a USB RS-485 adapter on a rig). Each slave serves the 18-register map of devices/water at
address 0 for both function 03 (holding) and 04 (input); reads past the map get pymodbus's own
exception answer (2, illegal address), and unknown slave ids are ignored (silence), as on a
real bus. Wire faults are injected on the way out:

    silence  no answer          bad_crc  last CRC byte flipped
    garbage  random bytes       exception  exception 4 (device failure) instead of data

With --config (a water source block of a gateway config, e.g. devices/water/sample.json) each
slave there is served in its own register layout: the built-in map at its `register`, or its
vendor `map` (types, scales, offsets, word orders, addresses), encoded with pymodbus' own
conversion; registers between mapped ones hold 0.

Registers are a snapshot at simulated time --now-ms, or advance with real time every --update-ms.
Prints READY (flushed) once the port is open, so a caller knows requests will be heard.
Usage: python -m hil.water_slave --port /dev/pts/3 --slaves 1:ABCD,2:CDAB --now-ms 0
       python -m hil.water_slave --port /dev/pts/3 --config devices/water/sample.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from devices.common.modbus import build_exception
from devices.common.rng import Rng
from devices.water import codec
from devices.water.sim import Simulator

FAULTS = ("silence", "bad_crc", "garbage", "exception")

# One entry of a slave's register map with every default filled in (edge.config.REGISTER):
# (field, register, type name, scale, offset, word order "ABCD"/"CDAB").
Entry = tuple[str, int, str, float, float, str]


def map_entries(slave: Mapping[str, Any]) -> list[Entry]:
    """A slave's register map as the gateway reads it: its `map`, or the built-in one at `register`."""
    from edge.config import REGISTER

    order = slave.get("word_order") or codec.DEFAULT_WORD_ORDER
    if slave.get("map") is None:
        base = slave.get("register", 0)
        return [(f, base + 2 * i, "float32", 1, 0, order) for i, f in enumerate(codec.FIELDS)]
    out = []
    for field, e in slave["map"].items():
        typ, scale, offset = (e.get(k, REGISTER[k][1]) for k in ("type", "scale", "offset"))
        out.append((field, e["register"], typ, scale, offset, e.get("word_order") or order))
    return out


def _pymodbus_type(name: str) -> Any:
    from pymodbus.client.mixin import ModbusClientMixin

    return getattr(ModbusClientMixin.DATATYPE, name.upper())


def _words(order: str) -> Literal["big", "little"]:
    """pymodbus' name for a word order: "little" is CDAB (low register first)."""
    return "little" if order == "CDAB" else "big"


def bank(entries: Sequence[Entry], fields: Sequence[float]) -> dict[int, int]:
    """The registers (address -> 16-bit word) a slave with this map holds for `fields`: integers are
    round((value - offset) / scale), refused (ValueError) if the type cannot hold them."""
    from pymodbus.client.mixin import ModbusClientMixin

    out: dict[int, int] = {}
    for field, reg, typ, scale, offset, order in entries:
        v = fields[codec.FIELDS.index(field)]
        raw: float | int = v if typ == "float32" else round((v - offset) / scale)
        regs = ModbusClientMixin.convert_to_registers(raw, _pymodbus_type(typ), word_order=_words(order))
        for i, w in enumerate(regs):
            out[reg + i] = w
    return out


def scaled(raw: float, scale: float, offset: float) -> float:
    """raw * scale + offset as the gateway documents it (devices/water/README.md): a scale whose
    inverse is a whole number is a division by it (725 / 100, exactly 7.25)."""
    v = float(raw)
    inv = 1 / scale
    if abs(scale) < 1 and abs(inv - round(inv)) < 1e-6 * abs(round(inv)):
        v = v / round(inv)
    elif scale != 1:
        v = v * scale
    return v + offset if offset else v


def served(entries: Sequence[Entry], registers: Mapping[int, int]) -> tuple[float | None, ...]:
    """The fields those registers mean, the raw numbers by pymodbus' conversion (independent of the
    gateway's), then `scaled`; None for a field the map does not have."""
    from pymodbus.client.mixin import ModbusClientMixin

    out: list[float | None] = [None] * len(codec.FIELDS)
    for field, reg, typ, scale, offset, order in entries:
        n = 1 if typ in ("int16", "uint16") else 2
        regs = [registers[reg + i] for i in range(n)]
        raw = ModbusClientMixin.convert_from_registers(regs, _pymodbus_type(typ), word_order=_words(order))
        assert isinstance(raw, int | float)
        out[codec.FIELDS.index(field)] = scaled(raw, scale, offset)
    return tuple(out)


def load_slaves(path: Path) -> list[dict[str, Any]]:
    """The `slaves` of a water source block (a JSON file such as devices/water/sample.json)."""
    block = json.loads(path.read_text(encoding="utf-8"))
    slaves: list[dict[str, Any]] = block["slaves"]
    return slaves


def parse_slaves(text: str) -> list[tuple[int, int]]:
    """ "1:ABCD,2:CDAB" (word order optional, default ABCD) to [(1, WORD_ABCD), (2, WORD_CDAB)]."""
    out = []
    for item in text.split(","):
        addr, _, order = item.partition(":")
        out.append((int(addr), codec.word_order_code(order or "ABCD")))
    return out


def station(addr: int, word_order: int, seed: int) -> Simulator:
    """The simulator behind slave `addr`: one per slave, seeded apart, so a test can recompute it."""
    return Simulator([addr], seed=seed * 1000 + addr, word_order=word_order)


class FaultInjector:
    """pymodbus trace_packet hook: rewrites outgoing frames at `rate` according to `mode`."""

    def __init__(self, mode: str | None, rate: float, seed: int, served: Sequence[int] = (),
                 mute_file: str | None = None) -> None:
        """`mute_file`: a file holding slave addresses ("3" or "1,3"; absent or empty: none) that
        do not answer while it names them (the block's `dead_slave` fault); read when it changes."""
        if mode is not None and mode not in FAULTS:
            raise ValueError(f"unknown fault {mode!r}; known: {', '.join(FAULTS)}")
        self.mode = mode
        self.rate = rate
        self.rng = Rng(seed ^ 0x5A5A)
        self.injected = 0
        self.served = frozenset(served)
        self.mute_file = mute_file
        self._muted: frozenset[int] = frozenset()
        self._mute_stamp: tuple[int, int, int] | None = None
        self.muted_answers = 0  # answers withheld for a muted slave

    def muted(self) -> frozenset[int]:
        if self.mute_file is None:
            return frozenset()
        try:
            st = os.stat(self.mute_file)
        except FileNotFoundError:
            self._muted, self._mute_stamp = frozenset(), None
            return self._muted
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp != self._mute_stamp:
            text = Path(self.mute_file).read_text()
            self._muted = frozenset(int(a) for a in text.replace(",", " ").split())
            self._mute_stamp = stamp
        return self._muted

    def __call__(self, sending: bool, data: bytes) -> bytes:
        if sending and self.served and data and data[0] not in self.served:
            return b""  # pymodbus answers unknown ids with an exception; a real bus stays silent
        if sending and data and data[0] in self.muted():
            self.muted_answers += 1
            return b""  # a dead slave: the request is on the bus, nobody answers
        if not sending or self.mode is None or len(data) < 4 or not self.rng.chance(self.rate):
            return data
        self.injected += 1
        if self.mode == "silence":
            return b""
        if self.mode == "bad_crc":
            return data[:-1] + bytes([data[-1] ^ 0xFF])
        if self.mode == "garbage":
            return bytes(self.rng.below(256) for _ in data)
        return build_exception(data[0], data[1] & 0x7F, 4)


async def serve(
    port: str,
    slaves: Sequence[tuple[int, int]],
    *,
    baud: int = 9600,
    seed: int = 1,
    now_ms: int = 0,
    update_ms: int = 0,
    fault: str | None = None,
    fault_rate: float = 1.0,
    layouts: Mapping[int, Sequence[Entry]] | None = None,
    mute_file: str | None = None,
) -> None:
    """Serve until cancelled; with `update_ms` the registers advance with real time from `now_ms`.
    `layouts` (slave address -> map entries, see `map_entries`) serves those slaves in that layout."""
    from pymodbus.server import ModbusSerialServer
    from pymodbus.simulator import DataType, SimData, SimDevice

    layouts = layouts or {}
    sims = {addr: station(addr, wo, seed) for addr, wo in slaves}

    def block_of(addr: int, t_ms: int) -> tuple[int, list[int]]:
        """(first register, words) of the slave's register bank at simulated time t_ms."""
        if addr not in layouts:
            return 0, sims[addr].registers(addr, t_ms)
        regs = bank(layouts[addr], sims[addr].reading(addr, t_ms))
        lo = min(regs)
        return lo, [regs.get(r, 0) for r in range(lo, max(regs) + 1)]

    devices = []
    for addr in sims:
        first, regs = block_of(addr, now_ms)
        # pymodbus wants all four tables; the stations have no coils or discrete inputs to speak of.
        bits = [SimData(address=0, count=16, values=False, datatype=DataType.BITS)]
        block = [SimData(address=first, values=regs, datatype=DataType.REGISTERS)]
        devices.append(SimDevice(id=addr, simdata=(bits, list(bits), block, list(block))))

    def connected(up: bool) -> None:
        if up:
            print("READY", flush=True)

    server = ModbusSerialServer(
        devices,
        port=port,
        baudrate=baud,
        trace_packet=FaultInjector(fault, fault_rate, seed, [a for a, _ in slaves], mute_file),
        trace_connect=connected,
    )
    if update_ms <= 0:
        await server.serve_forever()
        return

    async def advance() -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        while True:
            await asyncio.sleep(update_ms / 1000)
            t = now_ms + int((loop.time() - t0) * 1000)
            for addr in sims:
                first, regs = block_of(addr, t)
                for fn in (3, 4):
                    await server.context.async_setValues(addr, fn, first, regs)

    ticker = asyncio.create_task(advance())
    try:
        await server.serve_forever()
    finally:
        ticker.cancel()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m hil.water_slave", description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  python -m hil.water_slave --port /dev/pts/3 --slaves 1:ABCD,2:CDAB --now-ms 0\n"
               "  python -m hil.water_slave --port /dev/pts/3 --config devices/water/sample.json")
    ap.add_argument("--port", required=True, help="serial device, e.g. /dev/pts/3 or /dev/ttyUSB0")
    ap.add_argument("--slaves", default="1", help="slave ids with word order, e.g. 1:ABCD,2:CDAB")
    ap.add_argument("--config", type=Path, default=None,
                    help="serve the slaves of this water source block in their layouts (replaces --slaves), "
                         "e.g. devices/water/sample.json")
    ap.add_argument("--baud", type=int, default=9600)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--now-ms", type=int, default=0, help="simulated time of the register snapshot")
    ap.add_argument("--update-ms", type=int, default=0, help="advance the registers this often (0: fixed)")
    ap.add_argument("--fault", choices=FAULTS, default=None)
    ap.add_argument("--fault-rate", type=float, default=1.0)
    ap.add_argument("--mute-file", default=None,
                    help="slave addresses listed in this file (while it names them) do not answer")
    args = ap.parse_args(argv)
    slaves = parse_slaves(args.slaves)
    layouts: dict[int, list[Entry]] = {}
    if args.config is not None:
        cfg_slaves = load_slaves(args.config)
        slaves = [(s["address"], codec.word_order_code(s.get("word_order") or "ABCD")) for s in cfg_slaves]
        layouts = {s["address"]: map_entries(s) for s in cfg_slaves if s.get("map") is not None}
        # the built-in map at another first register is a layout too
        layouts.update({s["address"]: map_entries(s) for s in cfg_slaves if s.get("register", 0)})
    try:
        asyncio.run(
            serve(
                args.port,
                slaves,
                baud=args.baud,
                seed=args.seed,
                now_ms=args.now_ms,
                update_ms=args.update_ms,
                fault=args.fault,
                fault_rate=args.fault_rate,
                mute_file=args.mute_file,
                layouts=layouts,
            )
        )
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
