"""The runtime for Linux gateways: CPython on a Pi, and the MicroPython unix port (HIL rigs).

Both interpreters run this same module: serial ports are ttys through edge.ports.tty, the clock is
the OS clock (trusted when the config says the OS runs NTP), a reboot is a process exit that the
supervisor (systemd, the rig) turns into a restart.
"""

import os
import sys
import time

from edge.compat import IS_MICROPYTHON, const

_REBOOT_EXIT_CODE = const(75)  # EX_TEMPFAIL: "restart me", for systemd's RestartForceExitStatus


_NTP_EPOCH_S = const(2208988800)  # 1900-01-01 -> 1970-01-01


class PosixPort:
    def __init__(self, verbose=True):
        self.verbose = verbose
        self._ntp_ms = 0  # what SNTP said minus the OS clock, once `sync_clock` succeeded

    def _os_ms(self):
        if IS_MICROPYTHON:
            return time.time_ns() // 1000000
        return int(time.time() * 1000)

    def utc_ms(self):
        return self._os_ms() + self._ntp_ms

    def sync_clock(self, host):
        """One SNTP query to `host` ("name" or "name:port", port 123 by default); True if it answered.

        Usually the OS keeps time (systemd-timesyncd, chrony: `trust_os_clock`); without it, this
        is how a posix agent learns UTC (HIL rigs point `ntp_host` at their own server). Blocks for
        at most 0.5 s, like ntptime on a board.
        """
        import socket
        import struct

        parts = host.split(":")
        try:
            addr = socket.getaddrinfo(parts[0], int(parts[1]) if len(parts) > 1 else 123)[0][-1]
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                s.settimeout(0.5)
                query = bytearray(48)
                query[0] = 0x1B  # LI 0, version 3, mode 3 (client)
                s.sendto(query, addr)
                msg = s.recv(48)
            finally:
                s.close()
            secs, frac = struct.unpack("!II", msg[40:48])  # transmit timestamp
        except (OSError, ValueError, IndexError):  # no answer, no such host, a short reply
            return False
        if secs == 0:
            return False
        self._ntp_ms = (secs - _NTP_EPOCH_S) * 1000 + (frac * 1000 >> 32) - self._os_ms()
        return True

    def makedirs(self, path):
        parts = path.split("/")
        cur = "" if parts[0] else "/"
        for p in parts:
            if not p:
                continue
            cur = cur + p if cur in ("", "/") else cur + "/" + p
            try:
                os.mkdir(cur)
            except OSError:
                pass  # exists; a real failure shows when the log opens its files

    def open_serial(self, path, baud):
        from edge.ports.tty import Tty

        return Tty(path, baud)

    def ssl_context(self, broker):
        if not broker.get("tls"):
            return None
        import ssl

        if IS_MICROPYTHON:
            from edge.ports.tls import micropython_context

            return micropython_context(broker, self.log)
        ctx = ssl.create_default_context(cafile=broker.get("ca_file"))
        if broker.get("certfile"):
            ctx.load_cert_chain(broker["certfile"], broker["keyfile"])
        return ctx

    def mem_free(self):
        if IS_MICROPYTHON:
            import gc

            return gc.mem_free()
        return None  # a Pi has memory to spare; the OS reports it better than we could

    def feed_watchdog(self):
        pass

    def reboot(self):
        sys.exit(_REBOOT_EXIT_CODE)

    def log(self, text):
        if self.verbose:
            self.say("citybrain-gw: " + text)

    def say(self, line):
        """One console line, always (the start-up summary, warnings); flushed, for journald."""
        print(line)
        if not IS_MICROPYTHON:
            sys.stdout.flush()
