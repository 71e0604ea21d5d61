"""The runtime for MicroPython boards (ESP32 class): UART, NTP, watchdog, reset (no WiFi join yet).

Everything above this module is shared with the Linux runtime (edge/ports/posix.py). Serial
ports are named "uart<id>:<tx>:<rx>" in the config, e.g. "uart2:17:16". Compiled and loaded in
CI, and type-checked against the ESP32 stubs (scripts/board_types.py); exercised on real hardware
only (no board in CI; docs/gateway.md says what the type check cannot show).
"""

import asyncio

_WDT_MS = 30000


class UartPort:
    """machine.UART behind the edge.ports interface."""

    def __init__(self, spec, baud):
        from machine import UART, Pin

        parts = spec[4:].split(":")
        uid = int(parts[0])
        if len(parts) == 3:
            self.uart = UART(uid, baud, tx=Pin(int(parts[1])), rx=Pin(int(parts[2])), timeout=0)
        else:
            self.uart = UART(uid, baud, timeout=0)
        self.baud = baud
        self._reader = asyncio.StreamReader(self.uart)
        self._writer = asyncio.StreamWriter(self.uart, {})

    async def write(self, buf):
        self._writer.write(buf)
        await self._writer.drain()

    async def readinto(self, buf, timeout_ms):
        if timeout_ms is None:
            return await self._reader.readinto(buf) or 0
        try:
            return await asyncio.wait_for_ms(self._reader.readinto(buf), timeout_ms) or 0
        except asyncio.TimeoutError:
            return 0

    def discard(self):
        n = self.uart.any()
        if n:
            self.uart.read(n)
        return n

    def close(self):
        self.uart.deinit()


class BoardPort:
    name = "board"

    def __init__(self, verbose=False):
        self.verbose = verbose
        self._wdt = None

    def utc_ms(self):
        import time

        # MicroPython's epoch is 2000-01-01 on most ports; time.time() counts from it there.
        t = time.time()
        if time.gmtime(0)[0] == 2000:
            t += 946684800
        return t * 1000

    def sync_clock(self, host):
        try:
            import ntptime

            ntptime.host = host
            ntptime.settime()
            return True
        except Exception:  # no network yet, DNS failure, timeout: try again later
            return False

    def makedirs(self, path):
        import os

        cur = ""
        for p in path.split("/"):
            if p:
                cur = cur + "/" + p if cur else p
                try:
                    os.mkdir(cur)
                except OSError:
                    pass

    def open_serial(self, spec, baud):
        if not spec.startswith("uart"):
            raise OSError(19, "serial port must be named uart<id>[:<tx>:<rx>], got %r" % spec)
        return UartPort(spec, baud)

    def ssl_context(self, broker):
        if not broker.get("tls"):
            return None
        from edge.ports.tls import micropython_context

        return micropython_context(broker, self.log)

    def mem_free(self):
        import gc

        gc.collect()
        return gc.mem_free()

    def feed_watchdog(self):
        if self._wdt is None:
            from machine import WDT

            self._wdt = WDT(timeout=_WDT_MS)
        self._wdt.feed()

    def reboot(self):
        import machine

        machine.reset()

    def log(self, text):
        if self.verbose:
            print(text)

    def say(self, line):
        """One console line, always (the start-up summary, warnings)."""
        print(line)
