"""/healthz's judgement: is the collector taking data (ok), taking it with trouble (degraded), or not
taking it (down)?

`down` (HTTP 503) means a load balancer or supervisor should act: not connected or subscribed to the
broker, or draining. `degraded` (HTTP 200, with reasons) means data still flows into durable storage
but an operator should look: the database is not writable or refuses lines (they are
dead-lettered), the spool is growing, or dead letters spike. Each judgement compares a counter with
its value one window ago (`[health]` in collector/sample.toml), sampled every second.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import NamedTuple

from collector.config import HealthConfig


class _Sample(NamedTuple):
    t: float
    spool_lines: int
    dead_letters: int  # added since start
    db_refused: int  # lines the database refused since start


class Health:
    def __init__(
        self, config: HealthConfig, now: float, writer: Mapping[str, object], dead_letters: int
    ) -> None:
        self.config = config
        # The first baseline is the state at start: leftovers in the spool are not "growing".
        self._samples: deque[_Sample] = deque([_now(now, writer, dead_letters)])
        self._keep = max(config.refusal_window, config.spool_window, config.dead_letter_window)

    def sample(self, now: float, writer: Mapping[str, object], dead_letters: int) -> None:
        """Remember the counters (the service calls this every second)."""
        self._samples.append(_now(now, writer, dead_letters))
        # Keep one sample older than the longest window: it is that window's baseline.
        while len(self._samples) >= 2 and self._samples[1].t <= now - self._keep:
            self._samples.popleft()

    def _ago(self, now: float, window: float) -> _Sample:
        """The newest sample at least `window` old (or the oldest kept: the start)."""
        base = self._samples[0]
        for s in self._samples:
            if s.t > now - window:
                break
            base = s
        return base

    def reasons(self, now: float, writer: Mapping[str, object], dead_letters: int) -> list[str]:
        """Why the collector is degraded right now ([] when it is not)."""
        cfg = self.config
        cur = _now(now, writer, dead_letters)  # not kept: /healthz may be polled at any rate
        out: list[str] = []
        state = writer.get("sink_state", "ok")
        if state != "ok":
            out.append(
                f"database not writable ({state}), data held in the spool: {writer.get('last_error', '')}"
            )
        refused = cur.db_refused - self._ago(now, cfg.refusal_window).db_refused
        if refused > 0:
            out.append(
                f"database refused {refused} lines in the last {cfg.refusal_window:.0f} s "
                f"(dead-lettered): {writer.get('last_refusal', '')}"
            )
        grew = cur.spool_lines - self._ago(now, cfg.spool_window).spool_lines
        if cur.spool_lines > 0 and grew > 0:
            out.append(
                f"spool growing: {cur.spool_lines} lines held, +{grew} in the last {cfg.spool_window:.0f} s"
            )
        spike = cur.dead_letters - self._ago(now, cfg.dead_letter_window).dead_letters
        if spike > cfg.dead_letter_spike:
            out.append(
                f"{spike} dead letters in the last {cfg.dead_letter_window:.0f} s "
                f"(health.dead_letter_spike = {cfg.dead_letter_spike})"
            )
        return out


def _now(now: float, writer: Mapping[str, object], dead_letters: int) -> _Sample:
    return _Sample(now, _int(writer.get("spool_lines")), dead_letters, _int(writer.get("db_refused")))


def _int(v: object) -> int:
    return int(v) if isinstance(v, int | float) else 0
