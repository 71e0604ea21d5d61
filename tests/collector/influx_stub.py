"""A scriptable InfluxDB-like HTTP server for the sink and writer tests (aiohttp, a free port).

It keeps what it "stored" (a list of lines, in arrival order) and every request body it saw, and
answers each request with the next scripted response, or by its data rules: lines containing
`BAD` are refused in the style of one server (see `style`); bodies over `max_body` get 413.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class Reply:
    status: int
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # sleep AFTER reading the body: a server that may have committed
    store: bool = False  # store the body's good lines before answering (a write that happened)


class InfluxStub:
    def __init__(self, *, style: str = "influx", max_body: int | None = None) -> None:
        # "influx": 400 naming bad lines, good ones kept; "vm": 400 refusing all, naming none;
        # "retention": 422, good ones kept, bad ones dropped unnamed (InfluxDB 2.x retention).
        self.style = style
        self.max_body = max_body
        self.delay_s = 0.0  # every unscripted answer waits this long (a slow database)
        self.script: deque[Reply] = deque()
        self.bodies: list[bytes] = []
        self.stored: list[bytes] = []
        self.requests: list[tuple[str, dict[str, str]]] = []  # (path?query, headers)
        self.times: list[float] = []  # loop time each request arrived
        self.on_request: Callable[[], None] | None = None
        self.active = 0  # requests being answered now, and the most at once
        self.max_active = 0
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> InfluxStub:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/write", self._handle)
        app.router.add_post("/api/v2/write", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> InfluxStub:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _store(self, lines: list[bytes]) -> None:
        self.stored.extend(ln for ln in lines if b"BAD" not in ln)

    async def _handle(self, request: web.Request) -> web.Response:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            return await self._answer(request)
        finally:
            self.active -= 1

    async def _answer(self, request: web.Request) -> web.Response:
        raw = await request.read()
        # aiohttp inflates a gzip request body itself; accept either, record the plain text.
        body = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
        self.bodies.append(body)
        self.times.append(asyncio.get_running_loop().time())
        self.requests.append((request.path_qs, dict(request.headers)))
        if self.on_request is not None:
            self.on_request()
        lines = body.split(b"\n")
        if self.script:
            reply = self.script.popleft()
            if reply.store:
                self._store(lines)
            if reply.delay_s:
                await asyncio.sleep(reply.delay_s)
            return web.Response(status=reply.status, text=reply.body, headers=reply.headers)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.max_body is not None and len(raw) > self.max_body:
            return web.Response(status=413, text='{"error":"Request Entity Too Large"}')
        bad = [ln for ln in lines if b"BAD" in ln]
        if not bad:
            self._store(lines)
            return web.Response(status=204)
        if self.style == "vm":
            return web.Response(status=400, text="cannot parse influx line protocol data: BAD field\n")
        if self.style == "retention":  # InfluxDB 2.x: good points stored, bad ones dropped, none named
            self._store(lines)
            msg = (
                "failure writing points to database: partial write: "
                f"points beyond retention policy dropped={len(bad)}"
            )
            return web.Response(
                status=422,
                text=json.dumps({"code": "unprocessable entity", "message": msg}),
                content_type="application/json",
            )
        self._store(lines)
        reasons = "\n".join(f"unable to parse '{ln.decode()}': invalid field format" for ln in bad)
        return web.Response(
            status=400,
            text=json.dumps({"error": f"partial write: {reasons} dropped=0"}),
            content_type="application/json",
        )
