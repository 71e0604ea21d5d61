"""A water-quality station line on a serial port: pymodbus RTU server over the water Simulator.

Gives edge/modbus.py a real, independent Modbus implementation to talk to (on a pty in tests,
on a USB RS-485 adapter on a rig). Each slave serves the 18-register map of devices/water at
address 0 for both function 03 (holding) and 04 (input); reads past the map get pymodbus's own
exception answer (2, illegal address), and unknown slave ids are ignored (silence), as on a
real bus. Wire faults are injected on the way out:

    silence  no answer          bad_crc  last CRC byte flipped
    garbage  random bytes       exception  exception 4 (device failure) instead of data

Registers are a snapshot at simulated time --now-ms, or advance with real time every --update-ms.
Prints READY (flushed) once the port is open, so a caller knows requests will be heard.
Usage: python -m hil.water_slave --port /dev/pts/3 --slaves 1:ABCD,2:CDAB --now-ms 0
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from devices.common.modbus import build_exception
from devices.common.rng import Rng
from devices.water import codec
from devices.water.sim import Simulator

FAULTS = ("silence", "bad_crc", "garbage", "exception")


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

    def __init__(self, mode: str | None, rate: float, seed: int, served: Sequence[int] = ()) -> None:
        if mode is not None and mode not in FAULTS:
            raise ValueError(f"unknown fault {mode!r}; known: {', '.join(FAULTS)}")
        self.mode = mode
        self.rate = rate
        self.rng = Rng(seed ^ 0x5A5A)
        self.injected = 0
        self.served = frozenset(served)

    def __call__(self, sending: bool, data: bytes) -> bytes:
        if sending and self.served and data and data[0] not in self.served:
            return b""  # pymodbus answers unknown ids with an exception; a real bus stays silent
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
) -> None:
    """Serve until cancelled; with `update_ms` the registers advance with real time from `now_ms`."""
    from pymodbus.server import ModbusSerialServer
    from pymodbus.simulator import DataType, SimData, SimDevice

    sims = {addr: station(addr, wo, seed) for addr, wo in slaves}
    devices = []
    for addr, sim in sims.items():
        regs = sim.registers(addr, now_ms)
        # pymodbus wants all four tables; the stations have no coils or discrete inputs to speak of.
        bits = [SimData(address=0, count=16, values=False, datatype=DataType.BITS)]
        block = [SimData(address=0, values=regs, datatype=DataType.REGISTERS)]
        devices.append(SimDevice(id=addr, simdata=(bits, list(bits), block, list(block))))

    def connected(up: bool) -> None:
        if up:
            print("READY", flush=True)

    server = ModbusSerialServer(
        devices,
        port=port,
        baudrate=baud,
        trace_packet=FaultInjector(fault, fault_rate, seed, [a for a, _ in slaves]),
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
            for addr, sim in sims.items():
                regs = sim.registers(addr, t)
                for fn in (3, 4):
                    await server.context.async_setValues(addr, fn, 0, regs)

    ticker = asyncio.create_task(advance())
    try:
        await server.serve_forever()
    finally:
        ticker.cancel()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hil.water_slave", description=__doc__.split("\n")[0])
    ap.add_argument("--port", required=True, help="serial device, e.g. /dev/pts/3 or /dev/ttyUSB0")
    ap.add_argument("--slaves", default="1", help="slave ids with word order, e.g. 1:ABCD,2:CDAB")
    ap.add_argument("--baud", type=int, default=9600)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--now-ms", type=int, default=0, help="simulated time of the register snapshot")
    ap.add_argument("--update-ms", type=int, default=0, help="advance the registers this often (0: fixed)")
    ap.add_argument("--fault", choices=FAULTS, default=None)
    ap.add_argument("--fault-rate", type=float, default=1.0)
    args = ap.parse_args(argv)
    try:
        asyncio.run(
            serve(
                args.port,
                parse_slaves(args.slaves),
                baud=args.baud,
                seed=args.seed,
                now_ms=args.now_ms,
                update_ms=args.update_ms,
                fault=args.fault,
                fault_rate=args.fault_rate,
            )
        )
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
