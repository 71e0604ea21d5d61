"""edge/ports/posix.py `sync_clock`: SNTP from `ntp_host`, against the rig's server (hil/ntp.py).
(The MicroPython unix port runs the same code: the storm scenario's gw-03 sets its clock with it.)"""

from __future__ import annotations

import time

from edge.ports.posix import PosixPort
from hil.ntp import SntpServer


def test_sync_clock_asks_ntp_host_and_fails_while_it_is_silent() -> None:
    server = SntpServer()
    try:
        port = PosixPort(verbose=False)
        assert port.sync_clock(server.host) is False  # silent: no clock (0.5 s timeout)
        assert server.queries == 1
        server.answering = True
        assert port.sync_clock(server.host) is True
        assert abs(port.utc_ms() - time.time() * 1000) < 100  # the server tells the host's time
        assert port.sync_clock("127.0.0.1:1") is False  # nothing listens: refused, not a crash
        assert port.sync_clock("no-such-host.invalid") is False
    finally:
        server.close()
