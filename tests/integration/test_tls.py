"""The agent's TLS path (config `tls` + `ca_file` -> PosixPort.ssl_context -> MQTTClient) on a real
Mosquitto TLS listener, under CPython and the real MicroPython unix port.

A throwaway CA signs the broker's certificate (localhost, 127.0.0.1) at test time with the openssl
CLI; a second, unrelated CA plays the wrong one. The client side is given the PEM CA file exactly
as provisioning ships it. paho on the broker's plain listener is the independent observer.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cbor2
import paho.mqtt.client as mqtt
import pytest

from hil.services import Mosquitto, free_port, wait_for_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent.parent
HANG_GUARD = 30.0  # a bound so a hang fails the test, not a speed goal
INTERPRETERS = ("cpython", "micropython")


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def _ca(d: Path, name: str) -> tuple[Path, Path]:
    key, crt = d / f"{name}.key", d / f"{name}.pem"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-days", "2", "-subj", f"/CN=citybrain {name}", "-keyout", str(key), "-out", str(crt),
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return key, crt


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    """A CA, a broker certificate it signed (EC P-256: MicroPython's mbedtls has ECDHE-ECDSA), a rogue CA."""
    d = tmp_path / "pki"
    d.mkdir()
    ca_key, ca = _ca(d, "ca")
    _rogue_key, rogue = _ca(d, "rogue-ca")
    key, csr, crt, ext = d / "server.key", d / "server.csr", d / "server.pem", d / "server.ext"
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(csr))
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
                   "basicConstraints=critical,CA:FALSE\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
             "-days", "2", "-extfile", str(ext), "-out", str(crt))
    for p in d.iterdir():
        p.chmod(0o644)  # Mosquitto started as root may drop to its own user before reading them
    return {"ca": ca, "rogue": rogue, "cert": crt, "key": key}


@contextlib.contextmanager
def running_tls_broker(tmp_path: Path, pki: dict[str, Path],
                       password_file: str | None = None) -> Iterator[tuple[Mosquitto, int]]:
    """Mosquitto with its plain listener (for the observer) plus a TLS listener; (broker, tls port)."""
    tls_port = free_port()
    extra = (f"listener {tls_port} 127.0.0.1\ncafile {pki['ca']}\ncertfile {pki['cert']}\n"
             f"keyfile {pki['key']}\n")
    broker = Mosquitto(workdir=str(tmp_path / "mq"), extra_config=extra, password_file=password_file)
    broker.start()
    try:
        wait_for_port(tls_port, 10, broker.proc)
        yield broker, tls_port
    finally:
        broker.stop()


@pytest.fixture
def tls_broker(tmp_path: Path, pki: dict[str, Path]) -> Iterator[tuple[Mosquitto, int]]:
    with running_tls_broker(tmp_path, pki) as got:
        yield got


class Observer:
    """paho on the plain listener: every (topic, payload) under `t/#` and `city/#`."""

    def __init__(self, port: int) -> None:
        self.got: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"obs-{time.monotonic_ns()}")
        self.client.on_connect = lambda c, *a: c.subscribe([("t/#", 1), ("city/#", 1)])
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert subscribed.wait(10), "observer did not subscribe"

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.got.append((msg.topic, bytes(msg.payload)))

    def wait_for(self, topic: str, timeout: float = HANG_GUARD) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                found = [p for t, p in self.got if t == topic]
            if found:
                return found
            time.sleep(0.05)
        raise AssertionError(f"nothing on {topic} within {timeout:.0f}s; got {self.got}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def observer(tls_broker: tuple[Mosquitto, int]) -> Iterator[Observer]:
    obs = Observer(tls_broker[0].port)
    try:
        yield obs
    finally:
        obs.close()


def interpreter(name: str, *args: str) -> tuple[list[str], dict[str, str]]:
    """argv and env that run the repo's source under `name` (MicroPython: frozen asyncio + source)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROPY")}
    if name == "micropython":
        exe = Path(sys.executable).parent / "micropython"
        assert exe.exists(), f"{exe} missing: the dev install provides it"
        env["MICROPYPATH"] = f".frozen:{ROOT}"
        return [str(exe), *args], env
    env["PYTHONPATH"] = str(ROOT)
    return [sys.executable, *args], env


# Runs unchanged under both interpreters: the agent's own way to make the TLS context.
CLIENT_SCRIPT = """
import asyncio, sys
from edge.mqtt.client import MQTTClient
from edge.ports.posix import PosixPort

port, ca, hostname, topic = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]

async def main():
    ctx = PosixPort(False).ssl_context({"tls": True, "ca_file": ca})
    c = MQTTClient("tls-" + topic[2:], "127.0.0.1", port, ssl=ctx,
                   server_hostname=None if hostname == "-" else hostname)
    try:
        await c.connect(10)
    except Exception as exc:
        print("REFUSED", type(exc).__name__, " ".join(str(exc).split()))
        return
    await c.publish(topic, b"over tls", 1)
    await c.disconnect()
    print("PUBLISHED")

asyncio.run(main())
"""


def run_client(tmp_path: Path, interp: str, port: int, ca: Path, hostname: str, topic: str) -> str:
    script = tmp_path / "tls_client.py"
    script.write_text(CLIENT_SCRIPT)
    argv, env = interpreter(interp, str(script), str(port), str(ca), hostname, topic)
    out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=HANG_GUARD)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout.strip()


@pytest.mark.parametrize("interp", INTERPRETERS)
def test_client_publishes_over_verified_tls(interp: str, tls_broker: tuple[Mosquitto, int],
                                            observer: Observer, pki: dict[str, Path], tmp_path: Path) -> None:
    _broker, tls_port = tls_broker
    # By address (the certificate's IP SAN) and by name (its DNS SAN, sent as SNI).
    assert run_client(tmp_path, interp, tls_port, pki["ca"], "-", "t/by-ip") == "PUBLISHED"
    assert run_client(tmp_path, interp, tls_port, pki["ca"], "localhost", "t/by-name") == "PUBLISHED"
    # A bundle of several CAs, the right one last (MicroPython loads each block separately).
    bundle = tmp_path / "bundle.pem"
    bundle.write_text(pki["rogue"].read_text() + pki["ca"].read_text())
    assert run_client(tmp_path, interp, tls_port, bundle, "-", "t/bundle") == "PUBLISHED"
    for topic in ("t/by-ip", "t/by-name", "t/bundle"):
        assert observer.wait_for(topic) == [b"over tls"]


# What each interpreter says, so an operator reading the agent's log knows it is the certificate.
WRONG_CA = {"cpython": "CERTIFICATE_VERIFY_FAILED", "micropython": "not correctly signed by the trusted CA"}
WRONG_NAME = {"cpython": "Hostname mismatch", "micropython": "does not match with the expected CN"}


@pytest.mark.parametrize("interp", INTERPRETERS)
def test_wrong_ca_or_name_is_refused_with_a_clear_error(interp: str, tls_broker: tuple[Mosquitto, int],
                                                         observer: Observer, pki: dict[str, Path],
                                                         tmp_path: Path) -> None:
    _broker, tls_port = tls_broker
    rogue = run_client(tmp_path, interp, tls_port, pki["rogue"], "-", "t/rogue")
    assert rogue.startswith("REFUSED") and WRONG_CA[interp] in rogue, rogue
    name = run_client(tmp_path, interp, tls_port, pki["ca"], "mqtt.example.org", "t/name")
    assert name.startswith("REFUSED") and WRONG_NAME[interp] in name, name
    # Proof the broker was up all along and nothing slipped through: a good client gets in after.
    assert run_client(tmp_path, interp, tls_port, pki["ca"], "-", "t/good") == "PUBLISHED"
    observer.wait_for("t/good")
    with observer.lock:
        assert not [t for t, _ in observer.got if t in ("t/rogue", "t/name")]


@pytest.mark.parametrize("interp", INTERPRETERS)
def test_agent_goes_online_over_tls(interp: str, tls_broker: tuple[Mosquitto, int], observer: Observer,
                                    pki: dict[str, Path], tmp_path: Path) -> None:
    """The whole agent (edge.main) with a provisioned-style config: `tls: true` and a PEM `ca_file`."""
    _broker, tls_port = tls_broker
    work = tmp_path / f"gw-{interp}"
    work.mkdir()
    cfg = {"gateway_id": f"gw-tls-{interp}", "broker": {"host": "127.0.0.1", "port": tls_port, "tls": True,
                                                         "ca_file": str(pki["ca"])}, "sources": []}
    (work / "config.json").write_text(json.dumps(cfg))
    argv, env = interpreter(interp, "-m", "edge.main", "config.json")
    with open(work / "agent.log", "wb") as log:
        proc = subprocess.Popen(argv, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        payloads = observer.wait_for(f"city/gw-tls-{interp}/status")
        assert cbor2.loads(payloads[0])["state"] == "online"
        assert proc.poll() is None, (work / "agent.log").read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
        proc.wait(10)


@pytest.mark.parametrize("interp", ["cpython", "micropython"])
def test_agent_with_wrong_ca_keeps_retrying_and_says_why(interp: str, tls_broker: tuple[Mosquitto, int],
                                                          pki: dict[str, Path], tmp_path: Path) -> None:
    """A misprovisioned CA is an uplink error the agent logs and retries with backoff, not a crash."""
    _broker, tls_port = tls_broker
    work = tmp_path / f"gw-{interp}"
    work.mkdir()
    cfg = {"gateway_id": "gw-rogue", "broker": {"host": "127.0.0.1", "port": tls_port, "tls": True,
                                                 "ca_file": str(pki["rogue"])},
           "uplink": {"backoff_base_ms": 100, "backoff_cap_ms": 200}, "sources": []}
    (work / "config.json").write_text(json.dumps(cfg))
    argv, env = interpreter(interp, "-m", "edge.main", "config.json")
    log_path = work / "agent.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + HANG_GUARD
        while log_path.read_text(errors="replace").count(WRONG_CA[interp]) < 3:
            assert proc.poll() is None, f"agent exited with {proc.returncode}:\n{log_path.read_text()}"
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        assert proc.poll() is None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
        proc.wait(10)
