"""edge.mqtt.client against a real private Mosquitto, under CPython and under the real `micropython`.

paho-mqtt is the independent observer: it counts what reached a subscriber with a persistent
session, so "every QoS 1 message arrived at least once" is checked by a client that is not ours.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from edge.mqtt import packets as P
from edge.mqtt.client import MQTTClient, backoff_delays
from edge.mqtt.connect import Will
from edge.mqtt.errors import (
    ConnectionLost,
    ConnectRefused,
    KeepaliveTimeout,
    MQTTError,
    NotAuthorised,
    ProtocolError,
    SubscribeRefused,
)
from hil.services import Mosquitto, free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent.parent
HANG_GUARD = 30.0  # seconds: a bound so a bug fails the test instead of hanging it, not a speed goal


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    async def guarded() -> Any:
        return await asyncio.wait_for(coro, HANG_GUARD)

    return asyncio.run(guarded())


def wait_until(cond: Callable[[], bool], timeout: float = HANG_GUARD) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


async def await_until(cond: Callable[[], bool], timeout: float = HANG_GUARD) -> bool:
    """wait_until for use inside the event loop, which must keep running (closes happen in callbacks)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


class Counter:
    """A paho subscriber that records every payload it receives (duplicates included)."""

    def __init__(self, port: int, topic: str, client_id: str = "counter", clean: bool = False) -> None:
        self.got: list[bytes] = []
        self.retained: list[tuple[bytes, bool]] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean,
                             protocol=mqtt.MQTTv311)
        self.c.reconnect_delay_set(1, 1)
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.c.on_subscribe = lambda c, u, mid, rcs, p: self.subscribed.set()
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port, keepalive=10)
        self.c.loop_start()
        assert self.subscribed.wait(10)

    def _on_message(self, c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.got.append(bytes(msg.payload))
            self.retained.append((bytes(msg.payload), bool(msg.retain)))

    def distinct(self) -> set[bytes]:
        with self.lock:
            return set(self.got)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def counter_factory() -> Iterator[Callable[..., Counter]]:
    made: list[Counter] = []

    def make(*args: Any, **kwargs: Any) -> Counter:
        made.append(Counter(*args, **kwargs))
        return made[-1]

    yield make
    for c in made:
        c.close()


def test_round_trip_qos0_qos1_and_incoming_acked(mosquitto: Mosquitto) -> None:
    got: list[tuple[bytes, bytes, bool]] = []

    def on_message(topic: bytes, payload: memoryview, retain: bool) -> None:
        got.append((topic, bytes(payload), retain))  # the view is only valid during the call

    async def main() -> None:
        c = MQTTClient("rt", "127.0.0.1", mosquitto.port, clean_session=False, on_message=on_message)
        assert await c.connect() is False
        assert await c.subscribe("rt/#", qos=1) == 1
        assert await c.publish("rt/a", b"zero", qos=0) == 0
        pid = await c.publish("rt/b", b"one", qos=1)
        assert pid > 0 and c.acked(pid) and c.inflight == 0
        big = bytes(range(256)) * 3  # 768 bytes: near the 1024-byte receive buffer
        await c.publish("rt/城市", big, qos=1)
        while len(got) < 3:
            await asyncio.sleep(0.02)
        assert sorted(got) == sorted([(b"rt/a", b"zero", False), (b"rt/b", b"one", False),
                                      ("rt/城市".encode(), big, False)])
        await c.disconnect()
        # The session persists; had we not sent PUBACK, the broker would redeliver now.
        pub = MQTTClient("rt-pub", "127.0.0.1", mosquitto.port)
        await pub.connect()
        await pub.publish("rt/c", b"while away", qos=1)
        await pub.disconnect()
        assert await c.connect() is True
        # Mosquitto resends unacked messages before queued ones, so a redelivery would come first.
        assert await await_until(lambda: len(got) >= 4)
        assert got[3:] == [(b"rt/c", b"while away", False)]
        await c.unsubscribe("rt/#")
        await c.disconnect()
        assert c.handler_errors == c.dropped == c.unknown_acks == 0

    run(main())


def test_oversized_incoming_message_is_counted_and_acked(mosquitto: Mosquitto) -> None:
    got: list[bytes] = []

    async def main() -> None:
        c = MQTTClient("small", "127.0.0.1", mosquitto.port, clean_session=False, buffer_size=128,
                       on_message=lambda t, p, r: got.append(bytes(p)))
        await c.connect()
        await c.subscribe("sz/#")
        pub = MQTTClient("sz-pub", "127.0.0.1", mosquitto.port, buffer_size=128)
        await pub.connect()
        await pub.publish("sz/big", b"x" * 1000)  # payloads are not copied into the buffer
        await pub.publish("sz/small", b"ok")
        while not got:
            await asyncio.sleep(0.02)
        assert got == [b"ok"] and c.dropped == 1
        await c.disconnect()
        await pub.publish("sz/marker", b"m")  # queued behind any redelivery of the big one
        assert await c.connect() is True
        assert await await_until(lambda: len(got) >= 2)
        assert got == [b"ok", b"m"] and c.dropped == 1  # acked, so not redelivered
        await c.disconnect()
        await pub.disconnect()

    run(main())


def test_retained_and_will(mosquitto: Mosquitto, counter_factory: Callable[..., Counter]) -> None:
    async def main() -> None:
        will = Will("w/gw1/status", b"offline", qos=1, retain=True)
        gw = MQTTClient("gw1", "127.0.0.1", mosquitto.port, will=will, keepalive=30)
        await gw.connect()
        await gw.publish("w/gw1/status", b"online", qos=1, retain=True)
        seen = counter_factory(mosquitto.port, "w/#", client_id="late", clean=True)
        assert await await_until(lambda: seen.retained == [(b"online", True)])
        gw.close()  # drop TCP without DISCONNECT: the broker must publish the will
        assert await await_until(lambda: b"offline" in seen.distinct())
        fresh = counter_factory(mosquitto.port, "w/#", client_id="later", clean=True)
        assert await await_until(lambda: fresh.retained == [(b"offline", True)])
        # A clean DISCONNECT discards the will.
        gw2 = MQTTClient("gw2", "127.0.0.1", mosquitto.port, will=Will("w/gw2/status", b"gone"))
        await gw2.connect()
        await gw2.publish("w/gw2/status", b"here")
        await gw2.disconnect()
        marker = MQTTClient("marker", "127.0.0.1", mosquitto.port)
        await marker.connect()
        await marker.publish("w/marker", b"marker")
        await marker.disconnect()
        assert await await_until(lambda: b"marker" in seen.distinct())
        assert b"gone" not in seen.distinct() and b"here" in seen.distinct()

    run(main())


@pytest.fixture
def auth_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    pw = tmp_path / "passwd"
    cmd = ["mosquitto_passwd", "-b", "-c", str(pw), "gw1", "s3cret"]
    subprocess.run(cmd, check=True, capture_output=True)
    acl = tmp_path / "acl"
    acl.write_text("user gw1\ntopic readwrite city/gw1/#\n")
    broker = Mosquitto(workdir=str(tmp_path / "mq"), password_file=str(pw), acl_file=str(acl))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def test_auth_bad_password_refused(auth_broker: Mosquitto) -> None:
    async def main() -> None:
        # Mosquitto 2.0 answers a wrong password on MQTT 3.1.1 with return code 5 (not authorised),
        # not 4 (bad user name or password); both are ConnectRefused, and the agent treats them alike.
        bad = MQTTClient("gw1", "127.0.0.1", auth_broker.port, username="gw1", password="wrong")
        with pytest.raises(NotAuthorised) as info:
            await bad.connect()
        assert info.value.code == 5 and isinstance(info.value, ConnectRefused) and not bad.connected
        anon = MQTTClient("anon", "127.0.0.1", auth_broker.port)
        with pytest.raises(NotAuthorised):
            await anon.connect()
        good = MQTTClient("gw1", "127.0.0.1", auth_broker.port, username="gw1", password="s3cret")
        await good.connect()
        assert await good.subscribe("city/gw1/cmd") == 1
        await good.publish("city/gw1/up", b"ok")
        await good.disconnect()

    run(main())


def test_connection_refused_is_an_error_not_a_hang() -> None:
    async def main() -> None:
        c = MQTTClient("nobody", "127.0.0.1", free_port())
        with pytest.raises(ConnectionLost):
            await c.connect(timeout=5)
        assert not c.connected
        with pytest.raises(ConnectionLost):
            await c.publish("t", b"x")

    run(main())


async def publish_through_outages(c: MQTTClient, n: int, on_half: Callable[[], None]) -> int:
    """The agent's reconnect loop in miniature: returns how many connects it took."""
    i = 0
    connects = 0
    delays = backoff_delays(0.05, 0.5)
    while True:
        try:
            if not c.connected:
                await c.connect(timeout=5)
                connects += 1
                delays = backoff_delays(0.05, 0.5)
            while i < n:
                await c.publish("rs/data", b"%d" % i, qos=1, wait=False)
                i += 1
                if i == n // 2:
                    on_half()
            await c.wait_inflight(0)
            return connects
        except MQTTError:
            await asyncio.sleep(next(delays))


def test_broker_restart_every_qos1_message_arrives(
    mosquitto: Mosquitto, counter_factory: Callable[..., Counter]
) -> None:
    n = 400
    seen = counter_factory(mosquitto.port, "rs/#")

    async def main() -> int:
        c = MQTTClient("rs-pub", "127.0.0.1", mosquitto.port, clean_session=False, max_inflight=16)
        connects = await publish_through_outages(c, n, mosquitto.restart)
        await c.disconnect()
        return connects

    connects = run(main())
    assert connects >= 2
    want = {b"%d" % i for i in range(n)}
    assert wait_until(lambda: seen.distinct() >= want), sorted(want - seen.distinct())[:10]


def test_paused_broker_is_detected_by_keepalive(mosquitto: Mosquitto) -> None:
    async def main() -> None:
        c = MQTTClient("ka", "127.0.0.1", mosquitto.port, keepalive=2, ping_timeout=1)
        await c.connect()
        await c.publish("ka/x", b"before")
        mosquitto.pause()
        try:
            with pytest.raises(KeepaliveTimeout):
                await c.publish("ka/x", b"during")  # no PUBACK ever; the ping timeout ends the wait
            assert isinstance(await c.wait_lost(), KeepaliveTimeout)
            assert c.inflight == 1  # kept for the next connect
        finally:
            mosquitto.resume()
        await c.connect()
        await c.wait_inflight(0)  # the retransmitted "during" is acked after the reconnect
        assert c.inflight == 0 and c.retransmitted == 1
        await c.disconnect()

    run(main())


def test_paused_broker_releases_a_writer_stuck_in_drain(mosquitto: Mosquitto) -> None:
    async def flood(c: MQTTClient) -> MQTTError:
        chunk = bytes(8192)
        try:
            while True:
                await c.publish("ka/flood", chunk, qos=0)  # blocks once the socket buffers are full
        except MQTTError as exc:
            return exc

    async def main() -> None:
        c = MQTTClient("ka-flood", "127.0.0.1", mosquitto.port, keepalive=2, ping_timeout=1)
        await c.connect()
        mosquitto.pause()
        try:
            flooder = asyncio.create_task(flood(c))
            assert isinstance(await c.wait_lost(), KeepaliveTimeout)
            assert isinstance(await flooder, KeepaliveTimeout)
        finally:
            mosquitto.resume()

    run(main())


def micropython_binary() -> Path:
    micropython = Path(sys.executable).parent / "micropython"
    if not micropython.exists():
        pytest.fail(f"{micropython} missing: the dev install provides it")
    return micropython


def micropython_env() -> dict[str, str]:
    """The repo's source on MICROPYPATH (after the frozen asyncio), nothing from the caller's MICROPY*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROPY")}
    env["MICROPYPATH"] = f".frozen:{ROOT}"
    return env


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[Mosquitto, Path]]:
    """A Mosquitto whose only listener speaks TLS, with a self-signed certificate for localhost."""
    key, crt = tmp_path / "k.pem", tmp_path / "c.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(crt)],
        check=True, capture_output=True,
    )
    key.chmod(0o644)  # Mosquitto started as root reads it after dropping to its own user
    broker = Mosquitto(workdir=str(tmp_path / "mq"), extra_config=f"certfile {crt}\nkeyfile {key}\n")
    broker.start()
    try:
        yield broker, crt
    finally:
        broker.stop()


def test_tls(tls_broker: tuple[Mosquitto, Path]) -> None:
    import ssl

    broker, crt = tls_broker
    ctx = ssl.create_default_context(cafile=str(crt))
    got: list[bytes] = []

    async def main() -> None:
        c = MQTTClient("tls", "127.0.0.1", broker.port, ssl=ctx, server_hostname="localhost",
                       on_message=lambda t, p, r: got.append(bytes(p)))
        await c.connect()
        await c.subscribe("tls/#")
        await c.publish("tls/a", b"secret" * 100)
        while not got:
            await asyncio.sleep(0.02)
        await c.disconnect()
        plain = MQTTClient("plain", "127.0.0.1", broker.port)
        with pytest.raises(ConnectionLost):
            await plain.connect(timeout=5)

    run(main())
    assert got == [b"secret" * 100]


MP_TLS_SCRIPT = """
import asyncio, ssl, sys
from edge.mqtt.client import MQTTClient

got = []

async def main():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    with open(sys.argv[2], "rb") as f:
        ctx.load_verify_locations(cadata=f.read())
    c = MQTTClient("mp-tls", "127.0.0.1", int(sys.argv[1]), ssl=ctx, server_hostname="localhost",
                   on_message=lambda t, p, r: got.append(bytes(p)))
    await c.connect()
    await c.subscribe("tls/#")
    await c.publish("tls/a", b"secret" * 100)
    while not got:
        await asyncio.sleep(0.02)
    await c.disconnect()
    print("TLS ok" if got == [b"secret" * 100] else "TLS wrong %r" % got)

asyncio.run(main())
"""


@pytest.mark.micropython
def test_micropython_tls(tls_broker: tuple[Mosquitto, Path], tmp_path: Path) -> None:
    import ssl

    broker, crt = tls_broker
    der = tmp_path / "c.der"
    der.write_bytes(ssl.PEM_cert_to_DER_cert(crt.read_text()))
    script = tmp_path / "mp_tls.py"
    script.write_text(MP_TLS_SCRIPT)
    out = subprocess.run(
        [str(micropython_binary()), "-X", "heapsize=128K", str(script), str(broker.port), str(der)],
        capture_output=True, text=True, env=micropython_env(), timeout=HANG_GUARD,
    )
    assert out.returncode == 0 and out.stdout.strip() == "TLS ok", out.stdout + out.stderr


# -- the same client under the real MicroPython interpreter ----------------------------------------

MP_SCRIPT = """
import asyncio, sys
from edge.mqtt.client import MQTTClient, backoff_delays
from edge.mqtt.errors import ConnectionLost, MQTTError

port = int(sys.argv[1])
n = int(sys.argv[2])
got = []

def on_message(topic, payload, retain):
    got.append((topic, bytes(payload)))

async def round_trip():
    c = MQTTClient("mp-rt", "127.0.0.1", port, on_message=on_message, keepalive=10)
    await c.connect()
    assert await c.subscribe("mp/#", 1) == 1
    await c.publish("mp/a", b"zero", qos=0)
    await c.publish("mp/b", b"one", qos=1)
    while len(got) < 2:
        await asyncio.sleep(0.02)
    got.sort()
    assert got == [(b"mp/a", b"zero"), (b"mp/b", b"one")], got
    await c.disconnect()
    print("ROUNDTRIP ok")

async def through_restart():
    c = MQTTClient("mp-pub", "127.0.0.1", port, clean_session=False, max_inflight=8)
    i = 0
    connects = 0
    delays = backoff_delays(0.05, 0.5)
    while True:
        try:
            if not c.connected:
                await c.connect(5)
                connects += 1
            while i < n:
                await c.publish("rs/data", b"%d" % i, qos=1, wait=False)
                i += 1
                if i == n // 2:
                    print("HALF")
                    await c.wait_lost()
            await c.wait_inflight(0)
            break
        except MQTTError as e:
            await asyncio.sleep(next(delays))
    await c.disconnect()
    print("DONE connects=%d retransmitted=%d" % (connects, c.retransmitted))

async def flood(c, chunk):
    try:
        while True:
            await c.publish("ka/flood", chunk, qos=0)  # blocks in drain once the socket buffers fill
    except MQTTError as e:
        return e

async def paused():
    c = MQTTClient("mp-ka", "127.0.0.1", port, keepalive=2, ping_timeout=1)
    await c.connect()
    print("PAUSE")
    await asyncio.sleep(0.5)
    flooder = asyncio.create_task(flood(c, bytes(8192)))
    err = await c.wait_lost()
    err2 = await flooder
    print("LOST %s %s" % (type(err).__name__, type(err2).__name__))

async def refused():
    c = MQTTClient("mp-none", "127.0.0.1", int(sys.argv[3]))
    try:
        await c.connect(5)
    except ConnectionLost:
        print("REFUSED ok")

asyncio.run(refused())
asyncio.run(round_trip())
asyncio.run(through_restart())
asyncio.run(paused())
"""


@pytest.mark.micropython
def test_micropython_round_trip_restart_and_pause(
    mosquitto: Mosquitto, counter_factory: Callable[..., Counter], tmp_path: Path
) -> None:
    micropython = micropython_binary()
    n = 200
    seen = counter_factory(mosquitto.port, "rs/#")
    script = tmp_path / "mp_mqtt.py"
    script.write_text(MP_SCRIPT)
    env = micropython_env()
    out = tmp_path / "mp.out"
    with open(out, "w") as sink:
        proc = subprocess.Popen(
            [str(micropython), "-X", "heapsize=128K", str(script), str(mosquitto.port), str(n),
             str(free_port())],
            stdout=sink, stderr=subprocess.STDOUT, env=env,
        )
    lines: list[str] = []
    deadline = time.monotonic() + HANG_GUARD
    try:
        while True:  # act on the script's cues; a file, not a pipe, so a hung script cannot hang us
            exited = proc.poll() is not None
            new = out.read_text().splitlines()[len(lines):]
            if not exited and new and not out.read_text().endswith("\n"):
                new = new[:-1]  # a line still being written
            for line in new:
                lines.append(line)
                if line.startswith("HALF"):
                    mosquitto.restart()
                elif line.startswith("PAUSE"):
                    mosquitto.pause()
                elif line.startswith("LOST"):
                    mosquitto.resume()
            if exited:
                break
            assert time.monotonic() < deadline, "micropython hung:\n" + "\n".join(lines)
            time.sleep(0.02)
        assert proc.returncode == 0, "\n".join(lines)
    finally:
        mosquitto.resume()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "REFUSED ok" in lines and "ROUNDTRIP ok" in lines, lines
    # A stalled broker is detected by the keepalive, and a writer blocked in drain() is released.
    assert "LOST KeepaliveTimeout KeepaliveTimeout" in lines, lines
    done = [ln for ln in lines if ln.startswith("DONE")]
    assert done and int(done[0].split("connects=")[1].split()[0]) >= 2, lines
    want = {b"%d" % i for i in range(n)}
    assert wait_until(lambda: seen.distinct() >= want), sorted(want - seen.distinct())[:10]


# -- a scripted peer, for what Mosquitto never sends (SUBACK 0x80, malformed bytes, silence) ---------


Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class ScriptedBroker:
    """An asyncio server whose connections the test drives packet by packet."""

    def __init__(self) -> None:
        self.conns: asyncio.Queue[Conn] = asyncio.Queue()
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    async def __aenter__(self) -> ScriptedBroker:
        async def on_conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await self.conns.put((r, w))

        self.server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        while not self.conns.empty():
            self.conns.get_nowait()[1].close()

    async def accept(self, session_present: bool = False) -> Conn:
        r, w = await self.conns.get()
        b0, _ = await read_packet(r)
        assert b0 == 0x10
        w.write(bytes((0x20, 2, int(session_present), 0)))
        return r, w


async def read_packet(r: asyncio.StreamReader) -> tuple[int, bytes]:
    data = b""
    while True:
        hl, b0, rem = P.decode_header(data, 0, len(data))
        if hl:
            break
        data += await r.readexactly(1)
    return b0, await r.readexactly(rem) if rem else b""


def test_suback_failure_is_subscribe_refused() -> None:
    async def main() -> None:
        async with ScriptedBroker() as b:
            c = MQTTClient("s", "127.0.0.1", b.port)
            connecting = asyncio.create_task(c.connect())
            r, w = await b.accept()
            await connecting
            sub = asyncio.create_task(c.subscribe("city/gw2/cmd"))
            b0, body = await read_packet(r)
            assert b0 == 0x82
            w.write(b"\x90\x03" + body[:2] + b"\x80")
            with pytest.raises(SubscribeRefused):
                await sub
            assert c.connected  # a refusal is an answer, not a broken connection
            c.close()
            w.close()

    run(main())


@pytest.mark.parametrize(
    "garbage",
    [b"\x40\x03\x00\x01\x00", b"\x30\xff\xff\xff\xff\x01", b"\x00\x00", b"\x20\x02\x00\x00", b"\x34\x00"],
    ids=["long-puback", "5-byte-length", "reserved-type", "second-connack", "publish-qos2"],
)
def test_malformed_bytes_from_broker_are_protocol_error(garbage: bytes) -> None:
    async def main() -> None:
        async with ScriptedBroker() as b:
            c = MQTTClient("m", "127.0.0.1", b.port)
            connecting = asyncio.create_task(c.connect())
            r, w = await b.accept()
            await connecting
            pub = asyncio.create_task(c.publish("t", b"x"))
            await read_packet(r)
            w.write(garbage)
            with pytest.raises(ProtocolError):
                await pub
            assert isinstance(c.error, ProtocolError) and c.inflight == 1
            w.close()

    run(main())


def test_silent_broker_is_a_connect_timeout() -> None:
    async def main() -> None:
        async with ScriptedBroker() as b:
            c = MQTTClient("q", "127.0.0.1", b.port)
            with pytest.raises(KeepaliveTimeout):
                await c.connect(timeout=0.5)
            assert not c.connected
            (await b.conns.get())[1].close()

    run(main())


@pytest.mark.parametrize("clean", [False, True])
def test_retransmission_keeps_packet_ids_and_order(clean: bool) -> None:
    """Unacked QoS 1 publishes go out again first on the next connect, same ids; DUP iff persistent."""

    async def main() -> None:
        async with ScriptedBroker() as b:
            c = MQTTClient("r", "127.0.0.1", b.port, clean_session=clean, max_inflight=4)
            connecting = asyncio.create_task(c.connect())
            r, w = await b.accept()
            await connecting
            pids = [await c.publish(f"t/{i}", b"m%d" % i, wait=False) for i in range(3)]
            first = [await read_packet(r) for _ in range(3)]
            w.write(b"\x40\x02" + pids[1].to_bytes(2, "big"))  # only the middle one is acked
            await c.wait_ack(pids[1])
            w.close()
            assert isinstance(await c.wait_lost(), ConnectionLost)
            connecting = asyncio.create_task(c.connect())
            r, w = await b.accept(session_present=not clean)
            again = [await read_packet(r) for _ in range(2)]
            await connecting
            dup = 0x08 if not clean else 0
            assert again == [(first[0][0] | dup, first[0][1]), (first[2][0] | dup, first[2][1])]
            assert c.retransmitted == 2 and c.inflight == 2
            for pid in (pids[2], pids[0], 999):  # acks in any order; 999 was never sent
                w.write(b"\x40\x02" + pid.to_bytes(2, "big"))
            await c.wait_inflight(0)
            while c.unknown_acks == 0:
                await asyncio.sleep(0.01)
            c.close()
            w.close()

    run(main())


def test_handler_error_is_counted_and_message_still_acked() -> None:
    def broken(topic: bytes, payload: memoryview, retain: bool) -> None:
        raise RuntimeError("application bug")

    async def main() -> None:
        async with ScriptedBroker() as b:
            c = MQTTClient("h", "127.0.0.1", b.port, on_message=broken)
            connecting = asyncio.create_task(c.connect())
            r, w = await b.accept()
            await connecting
            w.write(b"\x32\x06\x00\x01t\x12\x34x")  # PUBLISH QoS 1, topic "t", pid 0x1234, "x"
            assert await read_packet(r) == (0x40, b"\x12\x34")
            assert c.handler_errors == 1 and c.connected
            c.close()
            w.close()

    run(main())
