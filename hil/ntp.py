"""A rig's NTP server: SNTP answers with the host's clock, or silence while the clock is "unset".

The `clock_unset_at_boot` fault (hil/block.py) points a gateway's `ntp_host` here and boots it
with `trust_os_clock: false`: the agent has no UTC until `answering` is set, as a board whose
network time server is unreachable after a power cut.

    server = SntpServer()          # silent
    server.answering = True        # the clock comes back
    server.close()
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time

NTP_EPOCH_S = 2208988800  # 1900-01-01 -> 1970-01-01


def ntp_reply(query: bytes, now: float) -> bytes:
    """A server-mode (4) SNTP v3 reply to `query`, stamped `now` (Unix seconds)."""
    secs = int(now) + NTP_EPOCH_S
    frac = int((now % 1) * 2**32)
    origin = query[40:48] if len(query) >= 48 else bytes(8)
    return struct.pack("!BBbb5I", 0x1C, 1, 0, -20, 0, 0, 0, secs, frac) + origin + struct.pack(
        "!4I", secs, frac, secs, frac)


class SntpServer:
    """UDP on 127.0.0.1, a free port; answers only while `answering`. `queries` counts requests."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port: int = self.sock.getsockname()[1]
        self.answering = False
        self.queries = 0
        self.answered = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sntp", daemon=True)
        self._thread.start()

    @property
    def host(self) -> str:
        """The agent's `ntp_host` for this server."""
        return f"127.0.0.1:{self.port}"

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                query, addr = self.sock.recvfrom(512)
            except TimeoutError:
                continue
            except OSError:
                return
            self.queries += 1
            if self.answering:
                with contextlib.suppress(OSError):
                    self.sock.sendto(ntp_reply(query, time.time()), addr)
                    self.answered += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
