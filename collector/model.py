"""The collector's unit of data: one point, as InfluxDB sees it.

A point is deterministic from its reading (same series, same timestamp), which is what makes a
retried write idempotent: writing it twice leaves one point.
"""

from __future__ import annotations

from typing import NamedTuple

FieldValue = bool | int | float | str


class Point(NamedTuple):
    measurement: str
    tags: tuple[tuple[str, str], ...]  # sorted by key; empty values are omitted by the producer
    fields: tuple[tuple[str, FieldValue], ...]  # in the kind's FIELDS order; bool/int/float kept apart
    ts_ms: int  # UTC milliseconds since the epoch
