"""Modbus RTU master on asyncio: one request at a time on one RS-485 line, over an edge.ports port.

RTU frames have no start marker; the spec separates them by at least 3.5 character times of
silence (fixed at 1.75 ms above 19200 baud). So before each request the master drops stale
input and waits until the line has been quiet that long, which also lets the tail of a bad or
late answer pass instead of corrupting the next one. The answer's end is known from its byte
count, so no gap timing is needed on receive; the response timeout starts when the request has
left the wire (its transmit time is added).

`read` never raises for wire problems (timeouts, CRC errors, exception answers): it returns a
DecodeError and counts it per slave. A dead port (the OSError of an unplugged adapter or a closed
pty) is counted (`io`) and raised: no answer can come until the owner reopens the port, and a
timeout would hide that forever. Arguments out of the spec's range are a programming error and
raise ValueError.
"""

import asyncio

from devices.common.errors import (
    BAD_CRC,
    BAD_HEADER,
    DEVICE_EXCEPTION,
    TIMEOUT,
    DecodeError,
)
from devices.common.modbus import MAX_ADU, build_read, parse_response
from edge.compat import const, ticks_add, ticks_diff, ticks_ms

# Per-slave counter slots (a list per slave; `counters(slave)` hands it out read-only by convention).
C_REQUESTS = const(0)
C_OK = const(1)
C_TIMEOUT = const(2)
C_CRC = const(3)
C_EXCEPTION = const(4)
C_OTHER = const(5)  # wrong function, byte count mismatch, frame too long
C_NOISE = const(6)  # bytes skipped before an answer (line noise, echo); not a failure by itself
C_IO = const(7)  # the port raised OSError
N_COUNTERS = const(8)
COUNTER_NAMES = ("requests", "ok", "timeout", "crc", "exception", "other", "noise", "io")

_QUIET_ROUNDS = const(50)  # give up waiting for silence after this many gaps; send anyway

if hasattr(asyncio, "sleep_ms"):
    _sleep_ms = asyncio.sleep_ms
else:  # CPython

    async def _sleep_ms(ms):
        await asyncio.sleep(ms / 1000)


class Master:
    def __init__(self, port, timeout_ms=500, bits_per_char=10):
        """`port` follows edge.ports; 8N1 is 10 bits a character, 8E1/8N2 are 11."""
        self.port = port
        self.timeout_ms = timeout_ms
        char_us = bits_per_char * 1000000 // port.baud
        self.char_us = char_us
        gap_us = 1750 if port.baud > 19200 else (7 * char_us + 1) // 2
        self.gap_ms = (gap_us + 999) // 1000
        self._buf = bytearray(MAX_ADU)
        self._mv = memoryview(self._buf)
        self._req = bytearray(8)
        self._stats = {}
        self.last_exception = 0  # the exception code of the latest exception answer

    def counters(self, slave):
        """The counter list for `slave` (indices C_*); zeros if it was never polled."""
        c = self._stats.get(slave)
        if c is None:
            c = [0] * N_COUNTERS
            self._stats[slave] = c
        return c

    def slaves(self):
        return sorted(self._stats)

    async def _quiet(self):
        """Drop stale input and wait until the line has been silent for one gap."""
        port = self.port
        port.discard()
        for _ in range(_QUIET_ROUNDS):
            await _sleep_ms(self.gap_ms)
            if port.discard() == 0:
                return

    async def read(self, slave, fn, address, count, timeout_ms=None):
        """Read `count` registers; return a memoryview of their 2*count bytes or a DecodeError.

        The view points into the master's receive buffer and is valid until the next call.
        """
        n_req = build_read(self._req, slave, fn, address, count)
        c = self.counters(slave)
        c[C_REQUESTS] += 1
        if timeout_ms is None:
            timeout_ms = self.timeout_ms
        try:
            await self._quiet()
            await self.port.write(self._req)
            tx_ms = (n_req * self.char_us + 999) // 1000
            result = await self._receive(slave, fn, count, timeout_ms + tx_ms, c)
        except OSError:
            c[C_IO] += 1
            raise
        if isinstance(result, DecodeError):
            code = result.code
            if code == TIMEOUT:
                c[C_TIMEOUT] += 1
            elif code == BAD_CRC:
                c[C_CRC] += 1
            elif code == DEVICE_EXCEPTION:
                c[C_EXCEPTION] += 1
                self.last_exception = result.detail
            else:
                c[C_OTHER] += 1
            return result
        c[C_OK] += 1
        return result

    async def _receive(self, slave, fn, count, timeout_ms, c):
        buf = self._buf
        mv = self._mv
        deadline = ticks_add(ticks_ms(), timeout_ms)
        n = 0
        while True:
            left = ticks_diff(deadline, ticks_ms())
            if left <= 0:
                return DecodeError(TIMEOUT, "partial answer" if n else "no answer")
            if n == len(buf):
                return DecodeError(BAD_HEADER, "answer too long")
            got = await self.port.readinto(mv[n:], left)
            if got == 0:
                continue
            n += got
            while n:
                used, res = parse_response(buf, 0, n, slave, fn, count)
                if used == 0:
                    break
                if isinstance(res, DecodeError) and res.code == BAD_HEADER:
                    # Noise before the answer: skip it and keep listening.
                    c[C_NOISE] += used
                    buf[0 : n - used] = buf[used:n]  # rare path: a copy is fine
                    n -= used
                    continue
                if isinstance(res, DecodeError):
                    return res
                return mv[res : res + 2 * count]
