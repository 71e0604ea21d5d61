"""A serial adapter pulled right behind a frame: the bytes the gateway already took are a frame it
received, so `Tty.readinto` hands them over and only the next read reports the dead port."""

import asyncio
import os
import pty

from edge.ports.tty import Tty


def test_bytes_read_before_a_hangup_are_returned_then_the_port_is_dead() -> None:
    master, slave = pty.openpty()
    port = Tty(slave, 9600)
    frame = b"\xaa\x01\x02\x03\x55"
    os.write(master, frame)
    taken = 0
    take = port._take

    def take_then_pull() -> bool:
        nonlocal taken
        take()
        taken += 1
        if taken == len(frame):
            os.close(master)  # the adapter goes the moment its last byte was read
        return True

    port._take = take_then_pull  # type: ignore[method-assign]

    async def main() -> tuple[bytes, bool]:
        buf = bytearray(64)
        n = await port.readinto(buf, 500)
        try:
            await port.readinto(buf, 500)
        except OSError:
            return bytes(buf[:n]), True
        return bytes(buf[:n]), False

    try:
        got, dead = asyncio.run(main())
    finally:
        port.close()
    assert got == frame
    assert dead, "the read after the hangup must report the dead port"

