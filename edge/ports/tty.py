"""A raw POSIX serial tty (RS-485 adapter, /dev/ttyUSB0, or a pty in tests) as an asyncio port.

Runs on CPython and on the MicroPython unix port, which share termios and select.poll but not
the asyncio internals: MicroPython waits for readability with asyncio.StreamReader on the file
object, CPython with loop.add_reader. Bytes are then taken one at a time while poll says more are
waiting, because MicroPython's readinto keeps reading until the buffer is full and would block
on a partial frame; at RS-485 speeds a byte per call costs nothing that matters.
"""

import select
import termios

from edge.compat import IS_MICROPYTHON, const

_DISCARD_MAX = const(4096)  # a line that never goes quiet must not keep discard() spinning


class Tty:
    """A raw 8N1 tty opened by path, or adopted from an open fd (which the Tty then owns).

    CPython's parts (os.open flags, loop.add_reader) are in tty_cpython.py: a board's unix port
    would otherwise intern their ~15 names for the whole run (docs/benchmarks.md, "Memory")."""

    def __init__(self, path, baud=9600):
        self.baud = baud
        if IS_MICROPYTHON:
            self._f = open(path, "r+b")
            termios.setraw(self._f.fileno())
        else:
            from edge.ports.tty_cpython import open_raw

            self._f = open_raw(path)
        fd = self._f.fileno()
        attrs = termios.tcgetattr(fd)
        # CLOCAL: an RS-485 adapter has no carrier line to wait for; CREAD: enable the receiver.
        attrs[2] |= getattr(termios, "CLOCAL", 0o4000) | getattr(termios, "CREAD", 0o200)
        b = getattr(termios, "B%d" % baud, None)
        if b is None:
            # Linux values for the speeds MicroPython's termios does not name (built here, once
            # per open, rather than kept as a module global).
            linux = {1200: 9, 2400: 11, 4800: 12, 9600: 13, 19200: 14, 38400: 15, 57600: 4097, 115200: 4098}
            b = linux.get(baud)
            if b is None:
                raise ValueError("unsupported baud %d" % baud)
        attrs[4] = b
        attrs[5] = b
        termios.tcsetattr(fd, termios.TCSANOW, attrs)
        self.poll = select.poll()
        self.poll.register(self._f, select.POLLIN)
        self._buf = bytearray(1)
        self._reader = None
        if IS_MICROPYTHON:
            import asyncio

            self._reader = asyncio.StreamReader(self._f)

    def _ready(self):
        for _obj, ev in self.poll.poll(0):
            if ev & select.POLLIN:
                return True
            if ev & (select.POLLHUP | select.POLLERR):
                raise OSError(5, "tty hung up")  # EIO, as a read would say
        return False

    def _take(self):
        """Read the byte poll said is waiting into self._buf. A hung-up tty (the adapter pulled,
        the pty's other side closed) polls readable and reads EOF for ever: that is a dead port."""
        if self._f.readinto(self._buf) != 1:
            raise OSError(5, "tty hung up")  # EIO, as a write to it says

    async def write(self, buf):
        self._f.write(buf)

    async def readinto(self, buf, timeout_ms):
        # The wait for the first byte is in this coroutine, not one it awaits: a serial source
        # waits here all its life, and each coroutine in that chain holds a frame (96 B a port
        # on a 32-bit board).
        if len(buf) == 0:
            return 0
        one = self._buf
        if self._ready():
            self._take()
        elif timeout_ms is not None and timeout_ms <= 0:
            return 0
        elif self._reader is None:
            from edge.ports.tty_cpython import readable

            if not await readable(self._f.fileno(), timeout_ms):
                return 0
            self._take()
        else:
            import asyncio

            try:
                if timeout_ms is None:
                    n = await self._reader.readinto(one)
                else:
                    n = await asyncio.wait_for_ms(self._reader.readinto(one), timeout_ms)
            except asyncio.TimeoutError:
                return 0
            if n != 1:
                raise OSError(5, "tty hung up")
        buf[0] = one[0]
        n = 1
        limit = len(buf)
        while n < limit:
            try:
                if not self._ready():
                    break
                self._take()
            except OSError:
                # Hung up after these bytes arrived (the adapter pulled just behind a frame): hand
                # over what was read; the next read reports the dead port.
                break
            buf[n] = one[0]
            n += 1
        return n

    def discard(self):
        n = 0
        while n < _DISCARD_MAX and self._ready():
            self._take()
            n += 1
        return n

    def close(self):
        f, self._f = self._f, None
        if f is not None:
            try:
                self.poll.unregister(f)
            except (OSError, KeyError, ValueError):
                pass
            f.close()
