"""CPython's side of edge/ports/tty.py: opening a tty without waiting for carrier, and waiting for
a byte through the event loop (MicroPython waits with asyncio.StreamReader instead). Not imported
on MicroPython, so a board does not intern these names."""

import asyncio
import os
import tty


def open_raw(path):
    """The tty at `path` (or the open fd `path`, adopted) as an unbuffered binary file, set raw."""
    fd = path
    if not isinstance(fd, int):
        # O_NONBLOCK so open() cannot hang waiting for carrier; reads are poll-gated anyway.
        fd = os.open(fd, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        os.set_blocking(fd, True)
    f = open(fd, "r+b", buffering=0)
    tty.setraw(fd)
    return f


async def readable(fd, timeout_ms):
    """Wait until `fd` is readable; False after `timeout_ms` (None: no limit)."""
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    loop.add_reader(fd, _wake, fut)
    try:
        await (fut if timeout_ms is None else asyncio.wait_for(fut, timeout_ms / 1000))
    except asyncio.TimeoutError:
        return False
    finally:
        loop.remove_reader(fd)
    return True


def _wake(fut):
    if not fut.done():
        fut.set_result(True)
