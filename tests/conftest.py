"""Shared fixtures: real services on free ports, and a guard that fails tests leaking threads."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from hil.services import (  # noqa: E402
    InfluxDB,
    Mosquitto,
    ServiceError,
    VictoriaMetrics,
    micropython32_binary,
)


@pytest.fixture(scope="session")
def micropython32() -> str:
    """The 32-bit MicroPython unix port (Debian's i386 build, installed by scripts/setup).

    Missing is a failure, not a skip: CI must never pass without the 32-bit runs.
    """
    try:
        return micropython32_binary()
    except ServiceError as exc:
        pytest.fail(str(exc))


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A private Mosquitto on a free port (never the machine's :1883), stopped by PID after the test."""
    broker = Mosquitto(workdir=str(tmp_path / "mosquitto"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def influxdb(tmp_path: Path) -> Iterator[InfluxDB]:
    """A private InfluxDB 1.x on free ports with its data in tmp_path, stopped by PID after the test."""
    server = InfluxDB(workdir=str(tmp_path / "influxdb"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def victoriametrics(tmp_path: Path) -> Iterator[VictoriaMetrics]:
    """A private VictoriaMetrics on a free port with its data in tmp_path, stopped by PID after the test."""
    server = VictoriaMetrics(workdir=str(tmp_path / "victoria-metrics"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail any test that leaves a non-daemon thread running (a hung client, an unjoined worker)."""
    before = set(threading.enumerate())
    yield
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive() and not t.daemon]
    for t in leaked:
        t.join(timeout=2.0)
    leaked = [t for t in leaked if t.is_alive()]
    assert not leaked, f"test leaked threads: {leaked}"
