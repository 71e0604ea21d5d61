"""A serial port carrying one device kind's frames (parking bays, screening stations).

One owner per port: this task reads into one preallocated buffer and lets the kind's codec find
frames in it. A frame that starts and never ends (the line went quiet mid-frame) is dropped and
counted by `housekeep`, which the agent calls every second: waiting for bytes then needs no timer,
which on MicroPython would be two tasks and a closure per read. Garbage, bad CRCs and truncated
frames are the codec's typed errors, counted per sensor (or per port when no sensor can be named);
a port that disappears (USB adapter pulled) is reopened with backoff and counted (`Source.run`).
"""

from devices.common.errors import TIMEOUT, DecodeError
from edge.compat import const, ticks_diff, ticks_ms
from edge.sources import Source

# Two of the longest frame a serial kind sends (a thermometer line, 128 B; a parking frame <= 70 B):
# a frame always fits whole, and bytes that do not fit wait in the port's own buffer for the next
# read. 512 cost a 128-sensor board 512 B more for nothing.
_BUF = const(256)
_QUIET_MS = const(1000)  # a partial frame older than this will never be completed


class SerialSource(Source):
    def __init__(self, cfg, port, accept):
        Source.__init__(self, cfg, port, accept)
        self.baud = cfg["baud"]
        self._buf = bytearray(_BUF)
        self._fill = 0  # bytes in _buf not yet decoded (a partial frame)
        self._rx_at = 0  # ticks of the last bytes received

    def housekeep(self, now_ticks):
        if self._fill and ticks_diff(now_ticks, self._rx_at) >= _QUIET_MS:
            self.error(self.path, TIMEOUT)
            self._fill = 0  # pump sees it when bytes arrive next

    async def pump(self, port):
        buf = self._buf
        mv = memoryview(buf)  # one per (re)open: slices of it allocate nothing
        decode = self.codec.decode
        self._fill = 0
        while True:
            start = self._fill
            n = await port.readinto(mv[start:], None)
            if n == 0:
                continue
            self._rx_at = ticks_ms()
            fill = self._fill
            if fill != start:  # housekeep dropped a stale partial frame meanwhile
                buf[fill:fill + n] = mv[start:start + n]
            fill += n
            pos = 0
            while pos < fill:
                used, result = decode(buf, pos, fill)
                if used == 0:
                    break
                pos += used
                if isinstance(result, DecodeError):
                    self.error(self.path, result.code)
                else:
                    self.take(result[0], result[1], self._rx_at)
            if pos:
                buf[0:fill - pos] = mv[pos:fill]
                fill -= pos
            elif fill == len(buf):
                # The codec wants more than the buffer holds: its own length cap failed. Drop all.
                self.error(self.path, TIMEOUT)
                fill = 0
            self._fill = fill
