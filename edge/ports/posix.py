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


class PosixPort:
    def __init__(self, verbose=True):
        self.verbose = verbose

    def utc_ms(self):
        if IS_MICROPYTHON:
            return time.time_ns() // 1000000
        return int(time.time() * 1000)

    def sync_clock(self, host):
        """The OS keeps time (systemd-timesyncd, chrony); see `trust_os_clock`."""
        return False

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

    def log(self, msg):
        if self.verbose:
            self.say("citybrain-gw: " + msg)

    def say(self, line):
        """One console line, always (the start-up summary, warnings); flushed, for journald."""
        print(line)
        if not IS_MICROPYTHON:
            sys.stdout.flush()
