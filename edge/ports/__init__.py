"""Byte streams to field buses, with one small interface so bus masters never see the runtime.

A port object has:

* `baud` — the line speed, which a master needs for its character timing;
* `async write(buf)` — queue all of `buf` for transmission;
* `async readinto(buf, timeout_ms) -> int` — wait up to `timeout_ms` for the first byte, then
  return at once with what has arrived (at most len(buf)); 0 means nothing came in time;
  `timeout_ms=None` waits for as long as it takes, with no timer (no task per read on MicroPython);
* `discard() -> int` — drop whatever is waiting in the receive buffer, without waiting, and say
  how many bytes went;
* `close()`.

A dead port (device unplugged, pty closed) raises OSError from these calls; masters catch it at
their boundary. `tty.Tty` implements this for a POSIX serial tty (CPython and the MicroPython unix
port); a board build wraps `machine.UART` the same way.
"""
