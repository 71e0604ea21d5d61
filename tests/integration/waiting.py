"""Polling waits for the integration tests that watch real servers: a condition, a bound and a
name for the failure message (what did not happen), in one place."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def await_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    """The same from a coroutine, yielding to the loop between checks."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
