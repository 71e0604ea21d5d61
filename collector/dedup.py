"""Dedup stage: recognise a redelivered batch by (gateway, channel, boot, seq, t0) and skip it.

The batch's base timestamp t0 is part of the key because (boot, seq) alone is only as good as the
gateway's flash: a gateway whose state file is lost restarts at boot 1, seq 0, and its new batches
must not be taken for old ones still in the window. A true redelivery repeats t0 byte for byte.

QoS 1 is at-least-once: a batch comes again when the gateway resends after a lost PUBACK, or when the
broker redelivers what we had not acknowledged. The window is an exact set (no Bloom filter, so no
false positives that would drop a new batch), bounded twice: `window` keys per gateway and
`max_gateways` gateways, each evicted least-recently-used first. Evictions are counted.

A key is recorded only after its points are durable (`add` after `Writer.submit_lines` returned), so a
write that failed is never mistaken for a duplicate when the message comes back.

The window lives in memory and is empty after a restart. That is safe: a point is deterministic from
its reading (same measurement, tags and timestamp), so writing a redelivered batch again overwrites
each point with itself; the dedup window only saves the database that work.
"""

from __future__ import annotations

from collections import OrderedDict


class Dedup:
    def __init__(self, window: int = 256, max_gateways: int = 100_000) -> None:
        if window < 1 or max_gateways < 1:
            raise ValueError("window and max_gateways must be at least 1")
        self.window = window
        self.max_gateways = max_gateways
        self._seen: OrderedDict[str, OrderedDict[tuple[str, int, int, int], None]] = OrderedDict()
        self.hits = 0
        self.evicted_keys = 0
        self.evicted_gateways = 0

    def seen(self, gw: str, channel: str, boot: int, seq: int, t0: int = 0) -> bool:
        """True (and counted as a hit) when this batch was already written."""
        keys = self._seen.get(gw)
        if keys is None:
            return False
        key = (channel, boot, seq, t0)
        if key in keys:
            keys.move_to_end(key)
            self._seen.move_to_end(gw)
            self.hits += 1
            return True
        return False

    def add(self, gw: str, channel: str, boot: int, seq: int, t0: int = 0) -> None:
        keys = self._seen.get(gw)
        if keys is None:
            keys = self._seen[gw] = OrderedDict()
            if len(self._seen) > self.max_gateways:
                self._seen.popitem(last=False)
                self.evicted_gateways += 1
        else:
            self._seen.move_to_end(gw)
        key = (channel, boot, seq, t0)
        keys[key] = None
        keys.move_to_end(key)
        if len(keys) > self.window:
            keys.popitem(last=False)
            self.evicted_keys += 1

    def __len__(self) -> int:
        return sum(len(k) for k in self._seen.values())
