"""Real servers for tests, rigs and the demo: each on a free port, with a temp data dir, stopped by PID.

Used by the pytest fixtures (tests/conftest.py), by HIL rigs and by the demo, so there is one way
to start a Mosquitto, an InfluxDB or a VictoriaMetrics. Nothing here depends on a service the
machine already runs (a Mosquitto on :1883 is ignored on purpose).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType


class ServiceError(RuntimeError):
    """A service binary is missing or the server did not come up."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServiceError(f"process exited with code {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise ServiceError(f"nothing listening on 127.0.0.1:{port} after {timeout:.0f}s")


def find_binary(name: str, *extra_dirs: str) -> str:
    path = shutil.which(name)
    if path:
        return path
    for d in (*extra_dirs, "/usr/sbin", "/usr/bin", "/usr/local/bin", "/usr/local/sbin"):
        candidate = Path(d) / name
        if candidate.exists():
            return str(candidate)
    raise ServiceError(f"{name} not found: install it (scripts/test does: apt-get install ...)")


class Service:
    """Base: a subprocess with a temp dir; a context manager; stop() = SIGTERM, then SIGKILL."""

    name = "service"

    def __init__(self, workdir: str | None = None) -> None:
        self._own_dir = workdir is None
        self.dir = Path(workdir or tempfile.mkdtemp(prefix=f"citybrain-{self.name}-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.dir / f"{self.name}.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    def ready_port(self) -> int:
        raise NotImplementedError

    def start(self, timeout: float = 30.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed in stop()
        self._log = log
        self.proc = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, cwd=self.dir, start_new_session=True
        )
        try:
            wait_for_port(self.ready_port(), timeout, self.proc)
        except ServiceError as exc:
            self.stop()
            raise ServiceError(f"{self.name}: {exc}; log: {self.log_tail()}") from None

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout)
        self._log.close()

    def kill(self) -> None:
        """SIGKILL, as a crash or power cut would: no clean shutdown, data dir kept."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
            self._log.close()

    def pause(self) -> None:
        """SIGSTOP: the server hangs (open sockets, no answers), as an overloaded box does."""
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGCONT)

    def restart(self) -> None:
        self.stop()
        self.start()

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Service:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cleanup()


class Mosquitto(Service):
    """A private Mosquitto 2.x: anonymous allowed unless `password_file`/`acl_file` are given."""

    name = "mosquitto"

    def __init__(
        self,
        port: int | None = None,
        *,
        workdir: str | None = None,
        persistence: bool = True,
        max_queued_messages: int = 1_000_000,
        extra_config: str = "",
        password_file: str | None = None,
        acl_file: str | None = None,
    ) -> None:
        super().__init__(workdir)
        self.port = port or free_port()
        self.persistence = persistence
        self.max_queued_messages = max_queued_messages
        self.extra_config = extra_config
        self.password_file = password_file
        self.acl_file = acl_file

    def config_text(self) -> str:
        lines = [
            f"listener {self.port} 127.0.0.1",
            f"allow_anonymous {'false' if self.password_file else 'true'}",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.dir}/",
            "autosave_interval 1",
            f"max_queued_messages {self.max_queued_messages}",
            "max_inflight_messages 100",
            "log_dest stdout",
            "log_type error",
            "log_type warning",
            "log_type notice",
        ]
        if self.password_file:
            lines.append(f"password_file {self.password_file}")
        if self.acl_file:
            lines.append(f"acl_file {self.acl_file}")
        return "\n".join(lines) + "\n" + self.extra_config

    def command(self) -> list[str]:
        conf = self.dir / "mosquitto.conf"
        conf.write_text(self.config_text())
        return [find_binary("mosquitto"), "-c", str(conf)]

    def ready_port(self) -> int:
        return self.port
