"""Receipts stage: tell each gateway which of its batches and alarms are durable (docs/protocol.md).

The pipeline calls `durable(gw, channel, boot, seq)` once a message's readings are written, spooled
or dead-lettered on purpose, and again for a batch it recognises as a duplicate (the first receipt
may have been lost). Nothing is published there: `flush()`, run every `receipts.interval` by the
service, sends one receipt per gateway and boot that has news, so a busy gateway gets a few receipts
a second, not one per batch.

Receipts are cumulative: a gateway's (boot, channel) keeps its most recent `max_ranges` seq ranges
(merged as seqs fill the gaps), and every receipt carries all of them, so a lost receipt is healed by
the next. The state is bounded: two boots per gateway (a gateway only listens to its current boot)
and `max_gateways` gateways, least recently heard forgotten first. It lives in memory: after a
restart the collector receipts again what gateways re-send (dedup is empty too, and writing a batch
twice leaves one copy of each point).

Sans-I/O: `publish(topic, payload)` is injected (collector/ingest.py `MqttInput.publish`); when it
returns False (not connected) the gateway's news stays marked and goes out at a later flush.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

from edge import protocol
from edge.cbor import enc_head

MAX_RANGES = protocol.RECEIPT_RANGES  # the protocol's cap per channel and receipt


def encode_receipt(boot: int, up: Sequence[int], alarm: Sequence[int]) -> bytes:
    """A receipt's bytes (docs/protocol.md, "Receipt"): `up` and `alarm` flat inclusive seq ranges
    `lo0, hi0, lo1, hi1, ...`. Preferred serialization, as every sender writes; the gateway's reader
    is `edge.protocol.decode_receipt` (the encoder lives here: a board never sends a receipt).
    Written head by head (edge.cbor.enc_head): the map's shape is fixed and holds only unsigned
    integers, and cbor2's canonical dumps cost ~3-8 us a receipt, one per gateway per flush
    (tests/unit/test_cbor_vs_cbor2.py holds this to cbor2's canonical bytes)."""
    out = bytearray(b"\xa4\x00")  # a map of 4; key 0
    enc_head(out, 0, protocol.VERSION)
    out.append(1)
    enc_head(out, 0, boot)
    for key, seqs in ((2, up), (3, alarm)):
        if len(seqs) % 2 or len(seqs) > 2 * MAX_RANGES or any(n < 0 for n in seqs):
            raise ValueError(f"bad receipt ranges {seqs!r}")
        out.append(key)
        enc_head(out, 4, len(seqs))
        for n in seqs:
            enc_head(out, 0, n)
    return bytes(out)


_BOOTS_KEPT = 2


def add_seq(ranges: list[list[int]], seq: int, cap: int = MAX_RANGES) -> bool:
    """Insert `seq` into sorted, disjoint, non-adjacent inclusive `ranges`; False if already in.

    Beyond `cap` ranges the lowest (oldest: seqs grow within a boot) is dropped."""
    i = 0
    n = len(ranges)
    while i < n and ranges[i][1] < seq - 1:
        i += 1
    if i < n and ranges[i][0] <= seq <= ranges[i][1]:
        return False
    if i < n and ranges[i][0] - 1 <= seq <= ranges[i][1] + 1:
        r = ranges[i]
        if seq < r[0]:
            r[0] = seq
        else:
            r[1] = seq
            if i + 1 < n and ranges[i + 1][0] == seq + 1:  # the gap closed: merge
                r[1] = ranges.pop(i + 1)[1]
    else:
        ranges.insert(i, [seq, seq])
        if len(ranges) > cap:
            del ranges[0]
    return True


class _Boot:
    __slots__ = ("up", "alarm", "dirty")

    def __init__(self) -> None:
        self.up: list[list[int]] = []
        self.alarm: list[list[int]] = []
        self.dirty = False


class Receipts:
    def __init__(
        self,
        prefix: str,
        publish: Callable[[str, bytes], bool],
        *,
        max_ranges: int = MAX_RANGES,
        max_gateways: int = 100_000,
    ) -> None:
        if not 1 <= max_ranges <= MAX_RANGES:
            raise ValueError(f"max_ranges must be 1..{MAX_RANGES}")
        self.prefix = prefix
        self.publish = publish
        self.max_ranges = max_ranges
        self.max_gateways = max_gateways
        self._gws: OrderedDict[str, dict[int, _Boot]] = OrderedDict()
        self._dirty: set[str] = set()
        self.sent = 0  # receipts published
        self.marked = 0  # batches and alarms receipted (a duplicate counts again)
        self.held = 0  # receipts not published (publish said not connected), kept for the next flush

    def durable(self, gw: str, channel: str, boot: int, seq: int) -> None:
        """Batch (`up`) or alarm `seq` of gateway `gw`, boot `boot`, is durable: receipt it."""
        boots = self._gws.get(gw)
        if boots is None:
            boots = self._gws[gw] = {}
            if len(self._gws) > self.max_gateways:
                old, _ = self._gws.popitem(last=False)
                self._dirty.discard(old)
        else:
            self._gws.move_to_end(gw)
        b = boots.get(boot)
        if b is None:
            b = boots[boot] = _Boot()
            for old_boot in sorted(boots)[:-_BOOTS_KEPT]:
                del boots[old_boot]
            if boot not in boots:  # older than the boots kept: the gateway has moved on
                return
        add_seq(b.alarm if channel == protocol.ALARM else b.up, seq, self.max_ranges)
        b.dirty = True  # a duplicate too: its first receipt may have been lost
        self._dirty.add(gw)
        self.marked += 1

    def flush(self) -> int:
        """Publish one receipt per gateway and boot marked since the last flush; how many."""
        n = 0
        held: set[str] = set()
        for gw in self._dirty:
            boots = self._gws.get(gw)
            if boots is None:
                continue
            for boot, b in boots.items():
                if not b.dirty:
                    continue
                payload = encode_receipt(boot, [s for r in b.up for s in r], [s for r in b.alarm for s in r])
                if self.publish(protocol.topic(gw, protocol.ACK, self.prefix), payload):
                    b.dirty = False
                    n += 1
                else:
                    held.add(gw)
                    self.held += 1
        self._dirty = held
        self.sent += n
        return n
