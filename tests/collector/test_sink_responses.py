"""Every response the sink can get, against a stub server: which lines are stored, which rejected."""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Awaitable, Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from influx_stub import InfluxStub, Reply

from collector.sinks.base import Delivered, SinkConfigError, SinkRetry
from collector.sinks.influx import (
    InfluxV1Sink,
    InfluxV2Sink,
    error_message,
    named_bad_lines,
    retry_after_seconds,
)

GOOD = [f"m,s=s{i} v={i}i {1700000000000 + i}".encode() for i in range(10)]


def body(lines: list[bytes]) -> bytes:
    return b"\n".join(lines)


def run(test: Callable[[InfluxStub], Awaitable[None]], **stub_kw: object) -> None:
    async def main() -> None:
        async with InfluxStub(**stub_kw) as stub:  # type: ignore[arg-type]
            await test(stub)

    asyncio.run(main())


def v1(stub: InfluxStub, **kw: object) -> InfluxV1Sink:
    return InfluxV1Sink(stub.url, "city", **kw)  # type: ignore[arg-type]


def test_204_stores_everything_with_db_and_ms_precision() -> None:
    async def t(stub: InfluxStub) -> None:
        async with v1(stub) as sink:
            done = await sink.write(body(GOOD))
        assert done == Delivered(accepted=10, rejected=[], requests=1)
        assert stub.stored == GOOD
        path, _ = stub.requests[0]
        assert path == "/write?db=city&precision=ms"

    run(t)


def test_v1_rp_and_basic_auth_and_v2_token() -> None:
    async def t(stub: InfluxStub) -> None:
        async with InfluxV1Sink(stub.url, "city", rp="raw", user="u", password="p") as s1:
            await s1.write(GOOD[0])
        async with InfluxV2Sink(stub.url, "org 1", "b", "tok") as s2:
            await s2.write(GOOD[1])
        (p1, h1), (p2, h2) = stub.requests
        assert p1 == "/write?db=city&precision=ms&rp=raw"
        assert h1["Authorization"] == "Basic dTpw"
        assert p2 == "/api/v2/write?org=org+1&bucket=b&precision=ms"
        assert h2["Authorization"] == "Token tok"
        assert stub.stored == GOOD[:2]

    run(t)


def test_gzip_body_is_sent_compressed() -> None:
    async def t(stub: InfluxStub) -> None:
        async with v1(stub, gzip_body=True) as sink:
            await sink.write(body(GOOD))
        assert stub.requests[0][1]["Content-Encoding"] == "gzip"
        assert stub.stored == GOOD

    run(t)


def test_400_partial_write_naming_the_bad_line_rejects_exactly_it() -> None:
    bad = b'm,s=x v=BAD 1700000000005'
    lines = [*GOOD[:5], bad, *GOOD[5:]]

    async def t(stub: InfluxStub) -> None:
        async with v1(stub) as sink:
            done = await sink.write(body(lines))
        assert [ln for ln, _ in done.rejected] == [bad]
        assert "unable to parse" in done.rejected[0][1]
        assert done.accepted == 10
        assert done.requests == 2  # the partial write, then the good lines again (an overwrite)
        assert set(stub.stored) == set(GOOD)
        assert stub.bodies[1] == body(GOOD)

    run(t)


def test_400_without_names_bisects_to_the_bad_lines() -> None:
    bad1, bad2 = b"m,s=x v=BAD 1", b"m,s=y v=BAD 2"
    lines = [*GOOD[:3], bad1, *GOOD[3:8], bad2, *GOOD[8:]]

    async def t(stub: InfluxStub) -> None:
        async with v1(stub) as sink:
            done = await sink.write(body(lines))
        assert [ln for ln, _ in done.rejected] == [bad1, bad2]
        assert done.accepted == 10
        assert sorted(stub.stored) == sorted(GOOD)  # VictoriaMetrics stores nothing of a refused body
        assert len(stub.bodies) < 2 * len(lines)  # bisection, not one request per line

    run(t, style="vm")


def test_422_unnamed_partial_write_bisects_and_keeps_good_points() -> None:
    bad = b"m,s=old v=BAD 1"
    lines = [*GOOD[:4], bad, *GOOD[4:]]

    async def t(stub: InfluxStub) -> None:
        async with v1(stub) as sink:
            done = await sink.write(body(lines))
        assert [ln for ln, _ in done.rejected] == [bad]
        assert "HTTP 422" in done.rejected[0][1] and "retention" in done.rejected[0][1]
        assert set(stub.stored) == set(GOOD)

    run(t, style="retention")


def test_413_splits_in_halves_until_bodies_fit() -> None:
    lines = [f"m,s=s{i} v={i}i,pad=\"{'x' * 60}\" {i}".encode() for i in range(40)]

    async def t(stub: InfluxStub) -> None:
        async with v1(stub) as sink:
            done = await sink.write(body(lines))
        assert done.rejected == []
        assert done.accepted == 40
        assert stub.stored == lines  # in order
        assert len(stub.bodies[0]) > 800  # it tried the whole body first
        assert sorted({len(b.split(b"\n")) for b in stub.bodies}) == [5, 10, 20, 40]  # then halves

    run(t, max_body=800)


def test_413_on_a_single_line_rejects_that_line_only() -> None:
    huge = b'm,s=huge v="' + b"x" * 2000 + b'" 1'

    async def t(stub: InfluxStub) -> None:
        async with v1(stub) as sink:
            done = await sink.write(body([GOOD[0], huge, GOOD[1]]))
        assert [ln for ln, _ in done.rejected] == [huge]
        assert done.rejected[0][1].startswith("HTTP 413")
        assert stub.stored == GOOD[:2]

    run(t, max_body=800)


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_seconds_is_honoured(status: int) -> None:
    async def t(stub: InfluxStub) -> None:
        stub.script.append(Reply(status, '{"error":"busy"}', {"Retry-After": "7"}))
        async with v1(stub) as sink:
            with pytest.raises(SinkRetry) as info:
                await sink.write(body(GOOD))
            assert info.value.retry_after == 7.0
            assert info.value.status == status
            assert await sink.write(body(GOOD)) == Delivered(10, [], 1)
        assert stub.stored == GOOD

    run(t)


def test_503_retry_after_as_http_date() -> None:
    async def t(stub: InfluxStub) -> None:
        when = email.utils.formatdate(time.time() + 30, usegmt=True)
        stub.script.append(Reply(503, "overloaded", {"Retry-After": when}))
        async with v1(stub) as sink:
            with pytest.raises(SinkRetry) as info:
                await sink.write(body(GOOD))
        assert info.value.retry_after is not None and 25 <= info.value.retry_after <= 30

    run(t)


@pytest.mark.parametrize("status", [500, 502, 504, 408])
def test_server_errors_are_retried_then_succeed(status: int) -> None:
    async def t(stub: InfluxStub) -> None:
        stub.script.append(Reply(status, '{"error":"engine: cache-max-memory-size exceeded"}'))
        async with v1(stub) as sink:
            with pytest.raises(SinkRetry) as info:
                await sink.write(body(GOOD))
            assert info.value.retry_after is None
            done = await sink.write(body(GOOD))
        assert done.accepted == 10
        assert stub.stored == GOOD
        assert stub.bodies[0] == stub.bodies[1]

    run(t)


def test_timeout_after_the_server_read_the_body_is_retried_with_the_same_body() -> None:
    async def t(stub: InfluxStub) -> None:
        stub.script.append(Reply(204, delay_s=2.0, store=True))  # committed, answer too late
        async with v1(stub, timeout_s=0.3) as sink:
            with pytest.raises(SinkRetry, match="timeout"):
                await sink.write(body(GOOD))
            done = await sink.write(body(GOOD))
        assert done.accepted == 10
        assert stub.bodies == [body(GOOD), body(GOOD)]
        assert stub.stored == GOOD + GOOD  # written twice: the same points, one per series+time in a real db

    run(t)


@pytest.mark.parametrize("status", [401, 403, 404, 405])
def test_auth_and_config_errors_are_fatal_and_reject_nothing(status: int) -> None:
    async def t(stub: InfluxStub) -> None:
        stub.script.append(Reply(status, '{"error":"authorization failed"}'))
        async with v1(stub) as sink:
            with pytest.raises(SinkConfigError) as info:
                await sink.write(body(GOOD))
        assert info.value.status == status
        assert stub.stored == []

    run(t)


def test_connection_refused_is_retryable() -> None:
    async def main() -> None:
        stub = await InfluxStub().start()
        url = stub.url
        await stub.stop()
        async with InfluxV1Sink(url, "city", timeout_s=2.0) as sink:
            with pytest.raises(SinkRetry, match="connection"):
                await sink.write(GOOD[0])

    asyncio.run(main())


def test_retry_after_parsing() -> None:
    now = 1_800_000_000.0
    assert retry_after_seconds("120") == 120.0
    assert retry_after_seconds(" 0 ") == 0.0
    assert retry_after_seconds(email.utils.formatdate(now + 90, usegmt=True), now) == 90.0
    assert retry_after_seconds(email.utils.formatdate(now - 90, usegmt=True), now) == 0.0
    assert retry_after_seconds("99999999") == 3600.0
    for junk in (None, "", "soon", "-5", "1.5"):
        assert retry_after_seconds(junk) is None


def test_error_message_and_named_lines() -> None:
    assert error_message(b'{"error":"x \\"q\\""}') == 'x "q"'
    assert error_message(b'{"code":"invalid","message":"y"}') == "y"
    assert error_message(b"plain text\n") == "plain text"
    lines = [b"m a=1 1", b"m,t=x\\ y a=\"it's\" 2", b"m a=3 3"]
    msg = "partial write: unable to parse 'm,t=x\\ y a=\"it's\" 2': bad\nunable to parse 'zz': bad dropped=0"
    assert named_bad_lines(msg, lines) == [1]
    assert named_bad_lines("field type conflict dropped=1", lines) == []


@settings(max_examples=40, deadline=None)
@given(
    marks=st.lists(st.booleans(), min_size=1, max_size=40),
    style=st.sampled_from(["influx", "vm", "retention"]),
    max_body=st.sampled_from([None, 200, 700]),
)
def test_any_mix_of_bad_lines_rejects_exactly_them_and_stores_the_rest(
    marks: list[bool], style: str, max_body: int | None
) -> None:
    lines = [b"m,s=x v=BAD %d" % i if bad else b"m,s=s v=%di %d" % (i, i) for i, bad in enumerate(marks)]

    async def t(stub: InfluxStub) -> None:
        async with v1(stub) as sink:
            done = await sink.write(body(lines))
        assert [ln for ln, _ in done.rejected] == [ln for ln, bad in zip(lines, marks, strict=True) if bad]
        # Each refused line's index in the body (the writer charges each submit its own refusals).
        assert done.rejected_at == [i for i, bad in enumerate(marks) if bad]
        assert set(stub.stored) == {ln for ln, bad in zip(lines, marks, strict=True) if not bad}
        assert done.accepted == marks.count(False)

    run(t, style=style, max_body=max_body)


def test_a_body_over_a_mebibyte_is_sent_whole_without_a_warning() -> None:
    """A write gathered while the database was busy can pass 1 MiB: aiohttp warns about such a raw
    bytes body (a ResourceWarning, an error here), so the sink streams it from a file object."""
    lines = [f"m,s=s{i % 50} v={i}i,pad=\"{'x' * 40}\" {1700000000000 + i}".encode() for i in range(20_000)]
    big = body(lines)
    assert len(big) > 1 << 20

    async def t(stub: InfluxStub) -> None:
        async with v1(stub) as sink:
            done = await sink.write(big)
        assert done == Delivered(accepted=len(lines), rejected=[], requests=1)
        assert stub.stored == lines

    run(t)
