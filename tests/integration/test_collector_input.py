"""The collector's MQTT input (collector/ingest.py) alone on a real Mosquitto: TLS with username and
password, refusals (wrong password, a certificate of another CA), and its own in-flight bound
(Mosquitto 2.0 does not keep to the Receive Maximum: the input stops reading the socket).
paho on the broker's plain listener publishes, as a gateway would."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from collector.config import MqttConfig
from collector.ingest import Message, MqttInput
from hil.services import Mosquitto
from tests.integration.test_tls import pki, running_tls_broker  # noqa: F401  (the fixture: a CA, a broker cert, a rogue CA)

pytestmark = pytest.mark.integration

HANG_GUARD = 30.0  # a bound so a hang fails the test, not a speed goal


@pytest.fixture
def secured(tmp_path: Path, pki: dict[str, Path]) -> Iterator[tuple[Mosquitto, int]]:  # noqa: F811
    """Mosquitto with a password file: a plain listener and a TLS one; (broker, tls port)."""
    pw = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(pw), "collector", "s3cret"], check=True, timeout=30)
    subprocess.run(["mosquitto_passwd", "-b", str(pw), "gw-1", "gw-pass"], check=True, timeout=30)
    pw.chmod(0o644)
    with running_tls_broker(tmp_path, pki, password_file=str(pw)) as got:
        yield got


def publish(
    port: int, messages: list[tuple[str, bytes]], user: str = "gw-1", password: str = "gw-pass"
) -> None:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="pub-" + user, protocol=mqtt.MQTTv5)
    c.username_pw_set(user, password)
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        for topic, payload in messages:
            info = c.publish(topic, payload, qos=1)
            info.wait_for_publish(timeout=HANG_GUARD)
            assert info.is_published(), topic
    finally:
        c.disconnect()
        c.loop_stop()


async def until(cond: Callable[[], object], what: str) -> None:
    """Poll `cond` until true; TimeoutError (naming `what`) after HANG_GUARD seconds."""
    try:
        async with asyncio.timeout(HANG_GUARD):
            while not cond():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise TimeoutError(f"waited {HANG_GUARD} s for: {what}") from None


def test_tls_with_password_delivers_and_acknowledges(
    secured: tuple[Mosquitto, int], pki: dict[str, Path]  # noqa: F811
) -> None:
    broker, tls_port = secured
    base = MqttConfig(
        port=tls_port, client_id="col-tls", username="collector", password="s3cret", tls=True,
        ca_file=str(pki["ca"]), reconnect_min=0.2, reconnect_max=0.5,
    )

    async def attempt(config: MqttConfig) -> MqttInput:
        got: list[Message] = []
        inp = MqttInput(config, got.extend)
        await inp.start()
        await asyncio.sleep(1.5)  # several attempts at reconnect_min 0.2 s
        await inp.close()
        return inp

    async def run() -> None:
        # Refused: the wrong password (CONNACK 0x86), and a broker certificate of another CA.
        for bad in (
            MqttConfig(**{**base.__dict__, "password": "wrong"}),
            MqttConfig(**{**base.__dict__, "ca_file": str(pki["rogue"])}),
        ):
            inp = await attempt(bad)
            assert inp.connects == 0 and not inp.subscribed.is_set()
        got: list[Message] = []
        inp = MqttInput(base, got.extend)
        await inp.start()
        try:
            await until(inp.subscribed.is_set, "subscribed over TLS")
            sent = [("city/gw-1/up", b"one"), ("city/gw-1/status", b"st")]
            await asyncio.to_thread(publish, broker.port, sent)
            await until(lambda: len(got) == 2, "both messages")
            assert sorted((m.topic, m.payload, m.qos) for m in got) == [
                ("city/gw-1/status", b"st", 1), ("city/gw-1/up", b"one", 1)
            ]
            for m in got:
                assert inp.ack(m)
        finally:
            await inp.close()
        # Acknowledged before the DISCONNECT: the resumed session redelivers nothing.
        again: list[Message] = []
        inp = MqttInput(base, again.extend)
        await inp.start()
        try:
            await until(inp.subscribed.is_set, "subscribed again")
            await asyncio.to_thread(publish, broker.port, [("city/gw-1/up", b"two")])
            await until(lambda: again, "the new message")
            await asyncio.sleep(0.3)
            assert [m.payload for m in again] == [b"two"]
        finally:
            await inp.close()

    asyncio.run(run())


def test_reading_stops_at_the_bound_and_resumes_with_acks(tmp_path: Path) -> None:
    """Unacknowledged messages stop the reading at receive_maximum (plus what the read that
    crossed it held): without the pause, all 60 would be read at once (~6 MB, 100 KB each)."""
    broker = Mosquitto(workdir=str(tmp_path / "mq"))
    broker.start()
    n, bound = 60, 5
    payloads = [bytes([i]) * 100_000 for i in range(n)]
    try:
        config = MqttConfig(port=broker.port, client_id="col-bound", receive_maximum=bound)

        async def run() -> None:
            got: list[Message] = []
            inp = MqttInput(config, got.extend)
            await inp.start()
            try:
                await until(inp.subscribed.is_set, "subscribed")
                pub = asyncio.create_task(
                    asyncio.to_thread(publish, broker.port, [("city/gw-1/up", p) for p in payloads])
                )
                await until(lambda: inp.pauses >= 1, "reading paused at the bound")
                await asyncio.sleep(1.0)  # the broker has had time to send everything it could
                held = len(got)
                assert bound <= held < bound + 5, held  # 256 KiB reads: at most 3 more of 100 KB
                for acked in range(n):
                    await until(lambda i=acked: len(got) > i, f"message {acked + 1}")
                    assert inp.unacked <= bound + 5
                    inp.ack(got[acked])
                await pub
                assert [m.payload for m in got] == payloads  # each once, in order
                assert inp.acks_sent == n
            finally:
                await inp.close()

        asyncio.run(run())
    finally:
        broker.stop()
