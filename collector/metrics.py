"""Metrics in Prometheus text format and /healthz, on one small aiohttp port.

A tiny registry (counters, gauges, one histogram) rather than a client library: the collector needs a
dozen series, and every drop or refusal must be one of them. Gauges that mirror another object's
state (the writer's buffer, the dedup window) are read at scrape time through `collect` callbacks, so
they cannot go stale.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping

from aiohttp import web

log = logging.getLogger(__name__)

PREFIX = "citybrain_collector_"
Labels = tuple[tuple[str, str], ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Labels, extra: str = "") -> str:
    parts = [f'{k}="{_escape(v)}"' for k, v in labels]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _num(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v)) if not float(v).is_integer() else str(int(v))


class Family:
    def __init__(self, name: str, kind: str, help_text: str) -> None:
        self.name = PREFIX + name
        self.kind = kind
        self.help = help_text
        self.values: dict[Labels, float] = {}

    def lines(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} {self.kind}"
        for labels, v in sorted(self.values.items()):
            yield f"{self.name}{_labels(labels)} {_num(v)}"


class Counter(Family):
    def __init__(self, name: str, help_text: str) -> None:
        super().__init__(name, "counter", help_text)

    def inc(self, n: float = 1, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        self.values[key] = self.values.get(key, 0) + n

    def get(self, **labels: str) -> float:
        return self.values.get(tuple(sorted(labels.items())), 0)

    def mirror(self, total: float, **labels: str) -> None:
        """Set from a count another object keeps (the writer's): it only grows, like this counter."""
        self.values[tuple(sorted(labels.items()))] = total


class Gauge(Family):
    def __init__(self, name: str, help_text: str) -> None:
        super().__init__(name, "gauge", help_text)

    def set(self, v: float, **labels: str) -> None:
        self.values[tuple(sorted(labels.items()))] = v

    def get(self, **labels: str) -> float:
        return self.values.get(tuple(sorted(labels.items())), 0)


class Histogram(Family):
    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...]) -> None:
        super().__init__(name, "histogram", help_text)
        self.buckets = (*buckets, math.inf)
        self.counts = [0] * len(self.buckets)
        self.sum = 0.0
        self.count = 0

    def observe(self, v: float) -> None:
        for i, bound in enumerate(self.buckets):
            if v <= bound:
                self.counts[i] += 1
        self.sum += v
        self.count += 1

    def lines(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        for bound, n in zip(self.buckets, self.counts, strict=True):
            yield f'{self.name}_bucket{{le="{_num(bound)}"}} {n}'
        yield f"{self.name}_sum {_num(self.sum)}"
        yield f"{self.name}_count {self.count}"


class Metrics:
    """Every series the collector exports. Updated from the asyncio loop only."""

    def __init__(self) -> None:
        self.messages = Counter("messages_total", "MQTT messages received, by channel and outcome.")
        self.readings = Counter(
            "readings_total",
            "Readings, by channel and outcome: written (stored by the database), spooled (durable, "
            "written later), rejected (by the collector), db_refused (by the database, dead-lettered).",
        )
        self.dead_letters = Counter("dead_letters_total", "Messages or readings dead-lettered, by reason.")
        self.type_conflicts = Counter(
            "type_conflicts_total",
            "Lines the database refused as a field-type conflict (dead-lettered, never written).",
        )
        self.dead_letters_dropped = Counter(
            "dead_letters_dropped_total",
            "Dead letters deleted to keep the store's bounds, by cause (age, size).",
        )
        self.dead_letter_store = Gauge(
            "dead_letter_store", "Dead-letter store state (entries, bytes, truncated payloads), by stat name."
        )
        self.receipts = Counter(
            "receipts_total",
            "Receipts to gateways: sent (published), marked (batches and alarms receipted), "
            "dropped (not published: broker connection down; the next receipt carries them).",
        )
        self.dedup_hits = Counter("dedup_hits_total", "Redelivered batches recognised and skipped.")
        self.ignored = Counter(
            "ignored_total", "Entries left out of a stored message, by reason (unknown_status_key)."
        )
        self.not_durable = Counter(
            "not_durable_total", "Writer.submit refusals (message left unacknowledged, retried)."
        )
        self.write_seconds = Histogram(
            "write_latency_seconds",
            "Time from a message's arrival to its readings being durable.",
            (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.inflight = Gauge("inflight_messages", "Messages received and not yet acknowledged.")
        self.waiting = Gauge(
            "waiting_messages", "Messages received beyond the in-flight cap, not yet started."
        )
        self.over_receive_maximum = Counter(
            "over_receive_maximum_total",
            "Messages the broker sent beyond our Receive Maximum (queued, not lost).",
        )
        self.connected = Gauge("mqtt_connected", "1 while connected to the broker.")
        self.last_seen = Gauge("gateway_last_seen_seconds", "Unix time of the last message from a gateway.")
        self.silent = Gauge("gateway_silent", "1 when a gateway has been silent longer than its heartbeat.")
        self.compiled = Gauge(
            "compiled",
            "1 where a compiled hot-path module runs (fastup: collector/_fastup.c, hotpath: the mypyc "
            "build of collector/hotpath.py), 0 where its pure-Python fallback does.",
        )
        self.writer = Gauge("writer", "Writer state (buffer depth, oldest buffered age, ...), by stat name.")
        # Every Family attribute above, in definition order: a new series cannot be left out.
        self.families: list[Family] = [v for v in vars(self).values() if isinstance(v, Family)]
        self.collect: list[Callable[[], None]] = []

    def render(self) -> str:
        for fn in self.collect:
            try:
                fn()
            except Exception:  # a failing collector callback must not take /metrics down
                log.exception("metrics collect callback failed")
        return "\n".join(line for fam in self.families for line in fam.lines()) + "\n"

    def mirror_stats(self, stats: Mapping[str, object]) -> None:
        """Export every numeric entry of a `stats` dict (the writer's) as `writer{stat="..."}`."""
        for key, value in stats.items():
            if isinstance(value, bool):
                value = int(value)
            if isinstance(value, int | float):
                self.writer.set(float(value), stat=str(key))


class MetricsServer:
    """GET /metrics (Prometheus text) and GET /healthz: 200 while the collector takes data (status
    "ok" or "degraded", with reasons), 503 when it does not (status "down")."""

    def __init__(self, metrics: Metrics, health: Callable[[], tuple[bool, dict[str, object]]]) -> None:
        self.metrics = metrics
        self.health = health
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(text=self.metrics.render(), content_type="text/plain", charset="utf-8")

    async def _healthz(self, request: web.Request) -> web.Response:
        ok, detail = self.health()
        return web.Response(
            text=json.dumps({"ok": ok, **detail}), status=200 if ok else 503, content_type="application/json"
        )

    async def start(self, host: str, port: int) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
