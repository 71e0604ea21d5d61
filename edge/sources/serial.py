"""A serial port carrying one device kind's frames (parking bays, screening stations).

One owner per port: this task reads into one preallocated buffer and lets the kind's codec find
frames in it. Garbage, bad CRCs and truncated frames are the codec's typed errors, counted per
sensor (or per port when no sensor can be named); a port that disappears (USB adapter pulled) is
reopened with backoff and counted, never a crash.
"""

import asyncio

from devices.common.errors import TIMEOUT, DecodeError
from edge.compat import const, ticks_ms
from edge.sources import Source

_BUF = const(512)


class SerialSource(Source):
    def __init__(self, agent, cfg):
        Source.__init__(self, agent, cfg)
        self.path = cfg["port"]
        self.baud = cfg["baud"]
        self._buf = bytearray(_BUF)
        self._mv = memoryview(self._buf)
        self.reopens = 0

    async def run(self):
        delay = 1
        while True:
            try:
                port = self.agent.port.open_serial(self.path, self.baud)
            except OSError as exc:
                self.error(self.path, TIMEOUT)
                self.agent.port.log("%s: cannot open: %s" % (self.path, exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60)
                continue
            delay = 1
            try:
                await self.pump(port)
            except OSError as exc:
                self.reopens += 1
                self.error(self.path, TIMEOUT)
                self.agent.port.log("%s: %s; reopening" % (self.path, exc))
            finally:
                port.close()
            await asyncio.sleep(delay)

    async def pump(self, port):
        buf = self._buf
        mv = self._mv
        decode = self.codec.decode
        fill = 0
        while True:
            n = await port.readinto(mv[fill:], 1000)
            if n == 0:
                if fill:
                    # A frame started and the line went quiet for a second: it will never end.
                    self.error(self.path, TIMEOUT)
                    fill = 0
                continue
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
                    self.take(result[0], result[1], ticks_ms())
            if pos:
                buf[0:fill - pos] = mv[pos:fill]
                fill -= pos
            elif fill == len(buf):
                # The codec wants more than the buffer holds: its own length cap failed. Drop all.
                self.error(self.path, TIMEOUT)
                fill = 0
