"""InfluxDB-compatible HTTP sinks: 1.x `/write` and 2.x/3.x/VictoriaMetrics `/api/v2/write`.

Each implements collector/sinks/base.py's `Sink`: one body of line protocol becomes `Delivered`,
`SinkRetry` or `SinkConfigError`. The response table with the reasoning is in
docs/collector-writes.md; each branch below says why in one line.
"""

from __future__ import annotations

import base64
import email.utils
import gzip
import io
import json
import logging
import time
from collections import deque
from types import TracebackType
from urllib.parse import urlencode

import aiohttp

from collector.sinks.base import Delivered, SinkConfigError, SinkRetry

log = logging.getLogger(__name__)

_RETRY_AFTER_MAX_S = 3600.0
_LARGE_BODY = 1 << 20  # aiohttp's threshold for a raw bytes body (payload.TOO_LARGE_BYTES_BODY)


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """`Retry-After` as seconds: delta-seconds or an HTTP date (RFC 9110 10.2.3); None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), _RETRY_AFTER_MAX_S)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # HTTP dates are GMT
        return None
    delta = when.timestamp() - (time.time() if now is None else now)
    return min(max(delta, 0.0), _RETRY_AFTER_MAX_S)


def error_message(body: bytes) -> str:
    """The server's error text: InfluxDB 1.x `{"error":..}`, 2.x `{"message":..}`, VictoriaMetrics plain."""
    text = body.decode("utf-8", "replace")
    try:
        doc = json.loads(text)
    except ValueError:
        return text.strip()
    if isinstance(doc, dict):
        for key in ("error", "message"):
            if isinstance(doc.get(key), str):
                return str(doc[key])
    return text.strip()


def named_bad_lines(message: str, lines: list[bytes]) -> list[int]:
    """Indexes of the lines InfluxDB names as unparseable (`unable to parse '<line>': why`)."""
    if "unable to parse '" not in message:
        return []
    named = []
    for i, ln in enumerate(lines):
        if "unable to parse '" + ln.decode("utf-8", "replace") + "'" in message:
            named.append(i)
    return named


class HttpLineSink:
    """One aiohttp session reused for every request; `write` applies the response table."""

    name = "influx"

    def __init__(self, *, gzip_body: bool = False, timeout_s: float = 10.0, gzip_level: int = 1) -> None:
        self.gzip_body = gzip_body
        self.gzip_level = gzip_level
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    # Subclasses say where and as whom.
    def endpoint(self) -> str:
        raise NotImplementedError

    def headers(self) -> dict[str, str]:
        return {}

    async def __aenter__(self) -> HttpLineSink:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        return self._session

    async def post(self, body: bytes) -> tuple[int, dict[str, str], bytes]:
        """One POST; connection errors and timeouts become `SinkRetry`."""
        headers = {"Content-Type": "text/plain; charset=utf-8", **self.headers()}
        data = body
        if self.gzip_body:
            data = gzip.compress(body, self.gzip_level)
            headers["Content-Encoding"] = "gzip"
        # A write gathered while the database was busy can pass 1 MiB, where aiohttp warns
        # (ResourceWarning) about a raw bytes body and wants a file object: it then streams it.
        payload: bytes | io.BytesIO = io.BytesIO(data) if len(data) > _LARGE_BODY else data
        try:
            async with self._get_session().post(self.endpoint(), data=payload, headers=headers) as resp:
                return resp.status, dict(resp.headers), await resp.read()
        except TimeoutError:
            # The server may have committed before we gave up: resending is safe (same series and
            # timestamp overwrite), losing it is not.
            raise SinkRetry("timeout waiting for the database") from None
        except (aiohttp.ClientError, OSError) as exc:
            # Refused, reset, DNS: the database is down or restarting; the data is still ours.
            raise SinkRetry(f"connection error: {exc}") from None

    async def create_database(self) -> bool:
        """Called when the server says the database is missing; True if it now exists (retry)."""
        return False

    async def write(self, body: bytes) -> Delivered:
        """Deliver one body (newline-separated lines) or raise `SinkRetry` / `SinkConfigError`."""
        done = Delivered()
        # In order; refused chunks are split in place. Each chunk carries the body index of its
        # first line, or (after bad lines were taken out) the index of every line.
        work: deque[tuple[bytes, int | list[int]]] = deque([(body, 0)])
        created = False
        while work:
            chunk, where = work.popleft()
            if not chunk:
                continue
            status, headers, resp = await self.post(chunk)
            done.requests += 1
            if 200 <= status < 300:
                # 204 (or 200 from proxies/VictoriaMetrics): every line of this chunk is stored.
                done.accepted += chunk.count(b"\n") + 1
                continue
            message = error_message(resp)
            if status in (401, 403):
                # Credentials or permissions: the data is fine, an operator must act; hold it.
                raise SinkConfigError(f"HTTP {status}: {message}", status)
            if status == 404:
                # Database/bucket missing or wrong URL: never the data's fault. With
                # `create_database` the sink creates it once and resends; otherwise it is held.
                if not created and "database not found" in message and await self.create_database():
                    created = True
                    work.appendleft((chunk, where))
                    continue
                raise SinkConfigError(f"HTTP {status}: {message}", status)
            lines: list[bytes] = []
            index: list[int] = []
            if status in (400, 413, 422):
                lines = chunk.split(b"\n")
                index = where if isinstance(where, list) else list(range(where, where + len(lines)))
            if status == 413:
                # Body too large for the server: halves always fit eventually; one line that alone
                # is too large can never be written.
                if len(lines) == 1:
                    done.rejected.append((chunk, f"HTTP 413: {message}"))
                    done.rejected_at.append(index[0])
                else:
                    mid = len(lines) // 2
                    work.extendleft(_halves(lines, index, mid))
                continue
            if status in (400, 422):
                # Bad data (parse error, type conflict, outside retention): retrying the same body
                # can never succeed. Isolate the bad lines, dead-letter them, resend the others.
                bad = named_bad_lines(message, lines)
                if bad:
                    # The server named them: reject exactly those, resend the rest (it may already
                    # hold them after a partial write; a rewrite is harmless).
                    badset = set(bad)
                    done.rejected.extend((lines[i], f"HTTP {status}: {message}") for i in bad)
                    done.rejected_at.extend(index[i] for i in bad)
                    keep = [i for i in range(len(lines)) if i not in badset]
                    work.appendleft((b"\n".join(lines[i] for i in keep), [index[i] for i in keep]))
                elif len(lines) == 1:
                    # A single refused line is the bad one.
                    done.rejected.append((chunk, f"HTTP {status}: {message}"))
                    done.rejected_at.append(index[0])
                else:
                    # Not named (type conflict, VictoriaMetrics): bisect until single lines.
                    mid = len(lines) // 2
                    work.extendleft(_halves(lines, index, mid))
                continue
            if status in (429, 503):
                # Overloaded or rate limited: the server says when to come back; else back off.
                raise SinkRetry(
                    f"HTTP {status}: {message}", retry_after_seconds(headers.get("Retry-After")), status
                )
            if status == 408 or status >= 500:
                # 500/502/504 and friends: a server or proxy fault, not the data's; back off, resend.
                raise SinkRetry(f"HTTP {status}: {message}", status=status)
            # Any other 4xx (405, 414, a proxy's own refusal): nothing says the data is bad, so
            # dead-lettering would lose good points; treat as a configuration problem and hold.
            raise SinkConfigError(f"HTTP {status}: {message}", status)
        return done


def _halves(lines: list[bytes], index: list[int], mid: int) -> list[tuple[bytes, int | list[int]]]:
    """The two halves of a refused chunk, in `extendleft` order (the first half goes first)."""
    return [(b"\n".join(lines[mid:]), index[mid:]), (b"\n".join(lines[:mid]), index[:mid])]


class InfluxV1Sink(HttpLineSink):
    """InfluxDB 1.x: POST /write?db=..&rp=..&precision=ms, HTTP basic auth if a user is given."""

    name = "influx_v1"

    def __init__(
        self,
        url: str,
        db: str,
        rp: str | None = None,
        user: str | None = None,
        password: str | None = None,
        *,
        gzip_body: bool = False,
        timeout_s: float = 10.0,
        create_database: bool = False,
    ) -> None:
        super().__init__(gzip_body=gzip_body, timeout_s=timeout_s)
        query = {"db": db, "precision": "ms"}
        if rp:
            query["rp"] = rp
        self.db = db
        self.create = create_database
        self._base = url.rstrip("/")
        self._url = self._base + "/write?" + urlencode(query)
        self._headers = {}
        if user:
            token = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
            self._headers["Authorization"] = f"Basic {token}"

    def endpoint(self) -> str:
        return self._url

    def headers(self) -> dict[str, str]:
        return self._headers

    async def create_database(self) -> bool:
        """`CREATE DATABASE` (a no-op when it exists) if `create_database` is set; needs admin rights."""
        if not self.create:
            return False
        q = 'CREATE DATABASE "' + self.db.replace("\\", "\\\\").replace('"', '\\"') + '"'
        try:
            async with self._get_session().post(
                self._base + "/query", data={"q": q}, headers=self._headers
            ) as resp:
                status, text = resp.status, error_message(await resp.read())
        except TimeoutError:
            raise SinkRetry("timeout creating the database") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise SinkRetry(f"connection error creating the database: {exc}") from None
        if status != 200 or '"error"' in text:
            # No admin rights, or a name the server refuses: the operator must create it.
            raise SinkConfigError(
                f"database {self.db!r} not found and CREATE DATABASE failed: HTTP {status}: {text}", 404
            )
        log.warning("database %r did not exist: created it (influx.create_database = true)", self.db)
        return True


class InfluxV2Sink(HttpLineSink):
    """InfluxDB 2.x/3.x and VictoriaMetrics: POST /api/v2/write?org=..&bucket=..&precision=ms."""

    name = "influx_v2"

    def __init__(
        self, url: str, org: str, bucket: str, token: str, *, gzip_body: bool = False, timeout_s: float = 10.0
    ) -> None:
        super().__init__(gzip_body=gzip_body, timeout_s=timeout_s)
        self._url = (
            url.rstrip("/") + "/api/v2/write?" + urlencode({"org": org, "bucket": bucket, "precision": "ms"})
        )
        self._headers = {"Authorization": f"Token {token}"} if token else {}

    def endpoint(self) -> str:
        return self._url

    def headers(self) -> dict[str, str]:
        return self._headers
