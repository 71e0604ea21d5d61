"""The sink interface: what the writer (collector/writer.py) needs from a database output.

A sink turns one body of line protocol into one of three answers:

- `Delivered`: done. Every line is either in the database or in `rejected` with the server's reason
  and its index in the body (the writer dead-letters those and tells each submit how many of its
  lines were refused). Good lines are never dropped.
- `SinkRetry(retry_after)`: nothing is known to be done; send the same body again later. Safe even if
  the server did commit part of it, because a point is deterministic (same series and timestamp
  overwrite: a duplicate write leaves one point).
- `SinkConfigError`: the server refuses us, not the data (credentials, database). Retrying cannot
  help until an operator acts; the data must be held, never dead-lettered.

Telegraf's split: this module is the interface, each output lives beside it (sinks/influx.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


class SinkError(Exception):
    """Root of the sink errors."""


class SinkRetry(SinkError):
    """Transient: resend the whole body later (after `retry_after` seconds if the server said)."""

    def __init__(self, detail: str, retry_after: float | None = None, status: int | None = None) -> None:
        super().__init__(detail)
        self.retry_after = retry_after
        self.status = status


class SinkConfigError(SinkError):
    """Fatal until an operator fixes config or credentials: hold the data, alert loudly."""

    def __init__(self, detail: str, status: int) -> None:
        super().__init__(detail)
        self.status = status


@dataclass
class Delivered:
    accepted: int = 0  # lines the server took
    rejected: list[tuple[bytes, str]] = field(default_factory=list)  # (line, server's reason)
    requests: int = 0
    # Index in the written body of each `rejected` line, same order (the writer maps them to submits).
    rejected_at: list[int] = field(default_factory=list)


class Sink(Protocol):
    async def write(self, body: bytes) -> Delivered: ...
