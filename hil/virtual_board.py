"""A 'virtual board': the MicroPython unix port behind a pseudo-terminal, flashed and booted like a board.

A field tech's tools (`mpremote`, `citybrain provision flash`) talk to a board through its USB
serial port. Here the unix port plays the board: it runs its REPL on the *master* side of a pty and
`port` is the slave, a `/dev/pts/N` path that mpremote opens like `/dev/ttyUSB0`. (The other way
round does not work: two processes on the slave side both write towards the master and never hear
each other.) The board's filesystem is `dir`, the process's cwd, because the unix port's `open`
and `os` work on the host filesystem relative to it.

mpremote must be used with `resume`: its soft reset (Ctrl-D) ends the unix port's REPL, which is
this board's reboot. `boot()` is the power cycle after flashing: it ends the REPL and starts
`micropython main.py` in `dir` with `MICROPYPATH=.frozen:<dir>`, so only the flashed files (and
the interpreter's frozen asyncio) can be imported, as on a board. Every process is stopped by PID.

With `reset_runs_main=True` the board also behaves like one on its serial port: Ctrl-D at the
friendly REPL (the unix port then exits 0) runs `main.py` on the same pty, its console readable on
`port`, and when main.py ends (a crash, or Ctrl-C sent on the port) the REPL comes back.
`citybrain provision flash` resets a board this way for its self-test, and stops the running
agent with Ctrl-C to flash it again. `python -m hil.virtual_board` starts a board this way.

From a shell (`python -m hil.virtual_board --help`):

  python -m hil.virtual_board --dir /tmp/board            # REPL on a printed /dev/pts/N until Ctrl-C
  citybrain provision flash --resume --port /dev/pts/N build/gw-xihu-0001
  python -m hil.virtual_board --dir /tmp/board --boot     # run the flashed main.py, console here
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tty
from collections.abc import Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Self

from hil.services import ServiceError, micropython_binary, stop_process

_PROMPT = b">>> "


class VirtualBoard:
    """One board: `start()` (REPL on `port`), flash it with mpremote, `boot()` runs main.py, `stop()`.

    `heapsize` (e.g. "256K") caps the MicroPython heap like a board's RAM; None is the unix
    port's default. The console of the booted program goes to `console_log` (outside `dir`).
    """

    def __init__(self, board_dir: str | Path | None = None, *, heapsize: str | None = None,
                 reset_runs_main: bool = False) -> None:
        self._work = Path(tempfile.mkdtemp(prefix="citybrain-vboard-"))
        self.dir = Path(board_dir) if board_dir is not None else self._work / "fs"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.console_log = self._work / "console.log"
        self.heapsize = heapsize
        self.port = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self._slave: int | None = None
        self._console: int | None = None
        self.reset_runs_main = reset_runs_main
        self._master: int | None = None  # kept (reset_runs_main) to start main.py / the REPL on it
        self._lock = threading.Lock()
        self._supervisor: threading.Thread | None = None

    def _argv(self, *args: str) -> list[str]:
        argv = [micropython_binary()]
        if self.heapsize:
            argv += ["-X", f"heapsize={self.heapsize}"]
        return argv + list(args)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        """Powered on: its process runs, or (reset_runs_main) it is between the REPL and main.py."""
        if self._supervisor is not None and self._supervisor.is_alive():
            return True
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 10.0) -> str:
        """Power on into the REPL; returns the serial port path once the prompt has been seen."""
        self.stop()
        master, slave = os.openpty()
        tty.setraw(slave)
        try:
            self.proc = self._spawn(master, repl=True)
        finally:
            if self.reset_runs_main:
                self._master = master
            else:
                os.close(master)
        # We keep the slave open while mpremote is not connected: with no slave open the master
        # reads EIO and the REPL would exit, as a board would not when its cable is pulled.
        self._slave = slave
        self.port = os.ttyname(slave)
        self._wait_prompt(timeout)
        return self.port

    def _spawn(self, master: int, *, repl: bool) -> subprocess.Popen[bytes]:
        env = None if repl else dict(os.environ, MICROPYPATH=f".frozen:{self.dir}")
        # main.py does not read the console: its input is the supervisor's, which watches for Ctrl-C.
        return subprocess.Popen(self._argv() if repl else self._argv("main.py"),
                                stdin=master if repl else subprocess.DEVNULL, stdout=master,
                                stderr=master, cwd=self.dir, env=env, start_new_session=True)

    @staticmethod
    def _run_main(proc: subprocess.Popen[bytes], master: int) -> int:
        """Wait for main.py to end; Ctrl-C on the port stops it (SIGINT: KeyboardInterrupt), as on a
        board. The bytes after the Ctrl-C stay unread, for the REPL that comes back (mpremote sends
        Ctrl-C, then Ctrl-A for the raw REPL)."""
        while proc.poll() is None:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready and os.read(master, 1) == b"\x03":
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGINT)
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    stop_process(proc, signal.SIGKILL)
        return proc.returncode

    def _supervise(self, master: int) -> None:
        """reset_runs_main: REPL exits 0 (Ctrl-D) -> main.py; main.py ends (or Ctrl-C) -> the REPL again."""
        repl = True
        while True:
            with self._lock:
                proc = self.proc
            if proc is None:
                return
            code = proc.wait() if repl else self._run_main(proc, master)
            with self._lock:
                if self.proc is not proc:
                    return  # stop() took it
                if repl and code != 0:
                    return  # the REPL died: a dead board
                repl = not repl
                if not repl and not (self.dir / "main.py").exists():
                    repl = True
                self.proc = self._spawn(master, repl=repl)

    def _wait_prompt(self, timeout: float) -> None:
        """Read (and so discard) the banner up to the first prompt: mpremote then starts clean."""
        assert self._slave is not None and self.proc is not None
        seen = b""
        deadline = time.monotonic() + timeout
        while _PROMPT not in seen:
            left = deadline - time.monotonic()
            if self.proc.poll() is not None or left <= 0:
                code = self.proc.poll()
                self.stop()
                raise ServiceError(f"virtual board: no REPL prompt (exit code {code}); got {seen[-300:]!r}")
            ready, _, _ = select.select([self._slave], [], [], min(left, 0.2))
            if ready:
                seen += os.read(self._slave, 4096)
        if self.reset_runs_main and self._master is not None:
            self._supervisor = threading.Thread(target=self._supervise, args=(self._master,), daemon=True)
            self._supervisor.start()

    def boot(self, main: str = "main.py") -> None:
        """Reset and run the flashed `main` as a board does after power-on; console to `console_log`."""
        self.stop()
        if not (self.dir / main).exists():
            raise ServiceError(f"virtual board: nothing flashed ({self.dir / main} is missing)")
        env = dict(os.environ, MICROPYPATH=f".frozen:{self.dir}")
        self._console = os.open(self.console_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.proc = subprocess.Popen(self._argv(main), stdin=subprocess.DEVNULL, stdout=self._console,
                                     stderr=subprocess.STDOUT, cwd=self.dir, env=env, start_new_session=True)

    def console_tail(self, n: int = 3000) -> str:
        try:
            return self.console_log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> int | None:
        """Power off: stop the running process by PID; its exit code (None if nothing ran)."""
        with self._lock:
            proc, self.proc = self.proc, None
        code = stop_process(proc) if proc is not None else None
        if self._supervisor is not None:
            self._supervisor.join()
            self._supervisor = None
        for fd in (self._slave, self._console, self._master):
            if fd is not None:
                os.close(fd)
        self._slave = self._console = self._master = None
        self.port = ""
        return code

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self._work, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hil.virtual_board",
        description="the MicroPython unix port as a board on a /dev/pts serial port")
    parser.add_argument("--dir", type=Path,
                        help="the board's filesystem (default: a temp dir, removed at exit)")
    parser.add_argument("--heapsize", default=None, help="MicroPython heap, e.g. 256K (default: the port's)")
    parser.add_argument("--boot", action="store_true", help="run the flashed main.py instead of the REPL")
    args = parser.parse_args(argv)
    if args.boot and args.dir is None:
        parser.error("--boot needs --dir (the filesystem that was flashed)")
    stop = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # A board on its serial port: `flash`'s self-test resets it (Ctrl-D) to run main.py there.
    board = VirtualBoard(args.dir, heapsize=args.heapsize, reset_runs_main=not args.boot)
    try:
        if args.boot:
            board.boot()
            print(f"booted {board.dir / 'main.py'} (pid {board.pid}); Ctrl-C powers it off", flush=True)
        else:
            port = board.start()
            print(f"virtual board on {port}, filesystem {board.dir} (pid {board.pid})\n"
                  f"  flash: citybrain provision flash --resume --port {port} <image>\n"
                  f"  other mpremote commands need `resume`: mpremote connect {port} resume fs ls\n"
                  "Ctrl-C powers it off", flush=True)
        shown = 0
        while not stop and board.alive():
            if args.boot:
                text = board.console_tail(1 << 30)
                sys.stdout.write(text[shown:])
                sys.stdout.flush()
                shown = len(text)
            time.sleep(0.2)
        code = board.stop()
        if args.boot:
            sys.stdout.write(board.console_tail(1 << 30)[shown:])
        print(f"powered off (exit code {code})")
        return 0
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        board.cleanup()  # removes the filesystem only if it was a temp dir


if __name__ == "__main__":
    sys.exit(main())
