"""Where readings come from: serial ports, Modbus buses and MQTT site brokers.

A source only moves bytes: it owns its port, feeds the kind's codec and hands each decoded reading
to `Source.take`, which applies the edge rules and counts every rejection per sensor, then to the
`accept` callable it was built with (the agent's log). Concrete sources live in serial.py,
modbus.py and mqtt.py; each is built from its config section, the runtime (edge.ports) and
`accept`, never from the whole agent.

One port lifecycle for every transport (`Source.run`): `open` the link, `pump` it, and when it dies
(OSError from a serial port or bus, MQTTError from a site broker) close it, count `port_down`
against the port's name, back off (full jitter, edge.mqtt.client.backoff_delays, reset by a
successful open) and open it again. A USB adapter pulled and plugged back resumes on its own.
"""

import asyncio

from devices import load
from devices.common.errors import N_CODES, NAMES
from edge.compat import const
from edge.mqtt.client import backoff_delays
from edge.mqtt.errors import MQTTError
from edge.rules import SUPPRESSED, ReportFilter

# Source-level error codes beyond the codecs' (index into the same counter row).
UNKNOWN_SENSOR = N_CODES  # a well-formed reading from a sensor the config does not list
PORT_DOWN = N_CODES + 1  # the port could not be opened, or died (unplugged, broker gone)
# Error rows kept by name: the port's, and this many sensor ids (known or not); errors of any
# further id are counted in one row, "(other ids)" (11 characters: a heap string, not one more
# interned name), so a flood of distinct unknown ids cannot grow the heap.
_ERROR_IDS = const(16)

class Source:
    """Configured state shared by every transport: codec, rules, limits, counters."""

    def __init__(self, cfg, port, accept):
        self.port = port  # the runtime: open_serial, ssl_context, log
        self.accept = accept  # (sensor, kind code, fields, urgent, alarm): the agent's log
        self.path = cfg.get("port")  # the port's name in logs and error counts
        self.kind = cfg["kind"]
        self.codec = load(self.kind)
        self.kind_code = self.codec.KIND_CODE
        # The configured overrides only (None: the kind's own): a kind's `alarm` takes the rest
        # from its ALARM_LIMITS (docs/devices.md), so no merged copy per source is kept.
        self.limits = cfg.get("alarm_limits")  # its names were checked by edge.config
        sensors = cfg.get("sensors")
        self.filter = ReportFilter(self.codec, cfg.get("deadband"), 0,
                                   cfg.get("max_silence_s", 300) * 1000, sensors)
        self.opened = None  # True while the port is open, False after it failed; None: not tried
        self.errors = {}  # sensor, port name or "(other ids)" -> counter row, made on first error
        self.readings = 0
        self.reported = 0

    def error(self, key, code):
        """Count error `code` against `key` in `errors`: a sensor id or the port's name."""
        errors = self.errors
        row = errors.get(key)
        if row is None:
            if key != self.path and len(errors) >= _ERROR_IDS:
                key = "(other ids)"
                row = errors.get(key)
            if row is None:
                row = errors[key] = [0] * (PORT_DOWN + 1)
        row[code] += 1

    def take(self, sensor, fields, now_ticks):
        """One decoded reading: rules, then the agent's log. Returns True if it was reported."""
        self.readings += 1
        if self.filter.sensors is not None and self.filter.index(sensor) < 0:
            self.error(sensor, UNKNOWN_SENSOR)
            return False
        alarm = self.codec.alarm(fields, self.limits)
        reason = self.filter.check(sensor, fields, now_ticks, alarm)
        if reason == SUPPRESSED:
            return False
        self.reported += 1
        urgent = alarm is not None or self.codec.is_event(fields)
        self.accept(sensor, self.kind_code, fields, urgent, alarm)
        return True

    def error_report(self):
        """{who: {code_name: n}} for the status message (allocates: status time only)."""
        names = NAMES + ("unknown_sensor", "port_down")
        out = {}
        for who in self.errors:
            row = self.errors[who]
            named = {}
            for i in range(len(row)):
                if row[i]:
                    named[names[i]] = row[i]
            out[who] = named
        return out

    # The `set` command's checks and changes are in edge/command.py (loaded on a first command);
    # a transport that polls overrides these two.

    def check_poll(self, poll_ms):
        raise ValueError("source %s does not poll" % self.kind)

    def set_poll(self, poll_ms):
        self.check_poll(poll_ms)

    def housekeep(self, now_ticks):
        """Called by the agent every second: time-based checks that need no timer of their own."""

    async def run(self):
        """The port lifecycle (see the module docstring); runs until cancelled."""
        delays = None
        while True:
            link = None
            try:
                link = await self.open()
                self.opened = True
                delays = None
                await self.pump(link)
            except (OSError, MQTTError) as exc:
                self.opened = False
                self.error(self.path, PORT_DOWN)
                self.port.log("%s: %s; reopening" % (self.path, exc))
            finally:
                if link is not None:
                    link.close()
            if delays is None:
                delays = backoff_delays(1, 60)
            await asyncio.sleep(next(delays))

    async def open(self):
        """The opened link (it has `close()`); OSError or MQTTError if it cannot be opened."""
        return self.port.open_serial(self.path, self.baud)  # type: ignore[attr-defined]  # set by serial, modbus

    async def pump(self, link):
        """Read `link` until it dies (raise OSError or MQTTError); never returns normally."""
        raise NotImplementedError
