"""After a flash: reset the board, read what it says on its console, and judge it in words.

The agent prints a boot line (edge/main.py): `citybrain-gw: boot gw=<id> fw=<version> image=<hash>`,
then, once its sources and uplink made a first attempt, the start-up line
`citybrain-gw: up gw=.. fw=.. boot=.. sources=<open>/<configured> broker=<connected|down> clock=..`
(docs/gateway.md, "Console"), and lines of its own: `citybrain-gw: <port>: <reason>; reopening` when a
sensor port does not open, `citybrain-gw: uplink: ...` when the broker cannot be reached. The parser
reads every `key=value` word of every `citybrain-gw:` line and ignores the rest, so more keys do not
break it; `gateway`/`gateway_id`, `firmware`/`version` and `img` are read as `gw`, `fw` and `image`.

When the broker is reachable from the laptop, the retained `online` status of this gateway (with
`img`, the image hash) is the proof that the board reached it: `wait_online` subscribes for it.
"""

from __future__ import annotations

import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

PREFIX = "citybrain-gw:"
_ALIASES = {"gateway": "gw", "gateway_id": "gw", "firmware": "fw", "version": "fw", "img": "image"}
_WORD = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=(\S+)")
# What a board prints when it does not start: MicroPython's traceback, our config check, a bad .mpy.
_FATAL = ("Traceback (most recent call last)", "config error:", "incompatible .mpy", "agent crashed")


@dataclass
class Console:
    """What the console said since the reset."""

    facts: dict[str, str] = field(default_factory=dict)
    boot_line: str = ""
    up: dict[str, str] = field(default_factory=dict)  # the `up` line's words, once it was printed
    source_errors: list[str] = field(default_factory=list)
    uplink_errors: list[str] = field(default_factory=list)
    fatal: list[str] = field(default_factory=list)


def parse_console(text: str) -> Console:
    con = Console()
    for raw in text.splitlines():
        line = raw.strip()
        if any(mark in line for mark in _FATAL):
            con.fatal.append(line)
        if not line.startswith(PREFIX):
            continue
        body = line[len(PREFIX):].strip()
        if body.startswith("boot ") and not con.boot_line:
            con.boot_line = line
        if body.startswith("up ") and not con.up:
            con.up = dict(_WORD.findall(body))
        for key, value in _WORD.findall(body):
            con.facts.setdefault(_ALIASES.get(key, key), value)
        if body.startswith("uplink:"):
            con.uplink_errors.append(body)
        elif "cannot open" in body or body.endswith("; reopening"):  # a source's port (edge/sources)
            con.source_errors.append(body)
    return con


@dataclass
class Verdict:
    ok: bool
    lines: list[str]

    def text(self) -> str:
        head = "self-test " + ("PASSED" if self.ok else "FAILED")
        return "\n".join([head, *("  " + s for s in self.lines)])


def judge(con: Console, *, gateway_id: str, image: str, fw: str, status: dict[str, Any] | None,
          broker_checked: bool) -> Verdict:
    """Pass/fail in words: the boot line names this gateway and image, nothing failed, the broker saw it."""
    lines: list[str] = []
    ok = True
    if con.fatal:
        return Verdict(False, [f"the board did not start: {con.fatal[0]}",
                               "run flash again; if it repeats, send the console output (mpremote connect "
                               "<port> repl) to the office"])
    if not con.boot_line:
        return Verdict(False, ["no boot line on the console: the agent did not start (is main.py the "
                               "citybrain boot selector? run flash again)"])
    expected = (("gw", gateway_id, "gateway id"), ("image", image, "image"), ("fw", fw, "firmware"))
    for key, want, what in expected:
        got = con.facts.get(key)
        if got != want:
            ok = False
            lines.append(f"{what}: the board says {got!r}, expected {want!r}")
        else:
            lines.append(f"{what} {got}: ok")
    opened, _, configured = con.up.get("sources", "").partition("/")
    if con.source_errors:
        ok = False
        lines += [f"sensor source failed: {e}" for e in dict.fromkeys(con.source_errors)]  # each once
    elif opened.isdigit() and configured.isdigit():
        if int(opened) < int(configured):
            ok = False
            lines.append(f"sensor sources: {opened} of {configured} opened (see the console for which)")
        else:
            lines.append(f"sensor sources: {opened} of {configured} opened")
    else:
        lines.append("sensor sources: no open errors on the console (start-up line not seen yet)")
    # Not a failure (a board's first NTP answer may come after the settle time), but never silent:
    # a gateway without a clock logs every reading and sends none (docs/gateway.md, "Clock").
    clock = "synced" if status is not None and status.get("clock_synced") else con.up.get("clock")
    if clock == "synced":
        lines.append("clock: set")
    elif clock == "unsynced":
        lines.append("clock: NOT set yet: the board holds its readings until it is (NTP from the config's "
                     "ntp_host: let the site's network reach it, UDP 123; a Linux gateway needs "
                     "trust_os_clock); its status shows clock_synced once set")
    if status is not None:
        if status.get("img") == image and status.get("state") == "online":
            lines.append(f"broker: the gateway's retained status is online with image {image}")
        else:
            ok = False
            lines.append(f"broker: the retained status is {status.get('state')!r} with image "
                         f"{status.get('img')!r}, expected online with {image}")
    elif broker_checked:
        ok = False
        err = con.uplink_errors[-1] if con.uplink_errors else "no status arrived"
        lines.append(f"broker: no online status from the gateway ({err}); check the broker address, "
                     "the gateway's password (render + broker reload) and the network at the site")
    elif con.uplink_errors:
        lines.append(f"broker: not reached yet ({con.uplink_errors[-1]}); not checked from this laptop")
    else:
        lines.append("broker: not checked (not reachable from this laptop)")
    return Verdict(ok, lines)


class NotAccepted(OSError):
    """The broker was reached but did not take this laptop's connection (CONNACK refused, or the
    connection closed before it, as a broker requiring client certificates does without one)."""


def wait_online(host: str, port: int, topic: str, image: str, *, username: str | None, password: str | None,
                timeout: float, tls_ca: str | None = None,
                tls_cert: tuple[str, str] | None = None) -> dict[str, Any] | None:
    """The gateway's retained status once it is `online` with `image` (None if not within `timeout`).

    Raises OSError if the broker cannot be reached from here at all, NotAccepted if it refused
    this laptop's own connection (then the caller says "not checked", and why, rather than blame
    the gateway)."""
    import threading

    import cbor2
    import paho.mqtt.client as mqtt

    got: list[dict[str, Any]] = []
    cond = threading.Condition()
    session: dict[str, str] = {}  # "ok", or "refused": the reason

    def on_connect(client: mqtt.Client, userdata: object, flags: object, rc: Any,
                   props: object = None) -> None:
        with cond:
            if rc.is_failure:
                session["refused"] = f"the broker refused the login of {username}: {rc}"
            else:
                session["ok"] = "1"
                client.subscribe(topic, 1)
            cond.notify_all()

    def on_disconnect(client: mqtt.Client, *args: object) -> None:
        with cond:
            if "ok" not in session:
                no_cert = tls_ca and not tls_cert
                hint = " (it may require a client certificate: --check-cert)" if no_cert else ""
                session.setdefault("refused", "the broker closed the connection before accepting it" + hint)
                cond.notify_all()

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        try:
            status = cbor2.loads(msg.payload)
        except Exception:  # not a status map: keep waiting for one
            return
        if isinstance(status, dict):
            with cond:
                got.append(status)
                cond.notify_all()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                         client_id=f"citybrain-selftest-{time.monotonic_ns()}")
    if username:
        client.username_pw_set(username, password)
    if tls_ca:
        certfile, keyfile = tls_cert or (None, None)
        client.tls_set(ca_certs=tls_ca, certfile=certfile, keyfile=keyfile)
    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.on_message = on_message
    client.connect(host, port, keepalive=30)
    client.loop_start()
    try:
        deadline = time.monotonic() + timeout
        with cond:
            while True:
                if "refused" in session:
                    raise NotAccepted(session["refused"])
                for status in got:
                    if status.get("state") == "online" and status.get("img") == image:
                        return status
                left = deadline - time.monotonic()
                if left <= 0:
                    if "ok" not in session:
                        raise NotAccepted(f"no answer to this laptop's connection within {timeout:.0f} s")
                    return got[-1] if got else None
                cond.wait(left)
    finally:
        client.disconnect()
        client.loop_stop()


def read_console(read: Callable[[float], bytes], *, until: Callable[[Console], bool],
                 timeout: float) -> Console:
    """Read console bytes (`read(max_wait_s)`) until `until(parsed)` or `timeout`; the parsed console."""
    text = b""
    deadline = time.monotonic() + timeout
    con = Console()
    while time.monotonic() < deadline:
        chunk = read(min(0.2, max(deadline - time.monotonic(), 0)))
        if chunk:
            text += chunk
            con = parse_console(text.decode(errors="replace"))
        if until(con):  # also on silence: a settled board may say nothing more
            break
    return con


SETTLE_S = 5.0  # after the boot line: time for a sensor port or the broker to fail loudly


def selftest(port: str, *, gateway_id: str, image: str, fw: str, broker: dict[str, Any] | None,
             account: tuple[str, str] | None, prefix: str, tls_ca: str | None = None,
             tls_cert: tuple[str, str] | None = None,
             timeout: float = 30.0) -> Verdict:
    """Soft-reset the board on `port` (Ctrl-D at its REPL runs main.py), read its console, check the
    broker with `account` (a service account: never the gateway's own, whose client id it would take)."""
    import serial

    try:
        ser = serial.Serial(port, 115200, timeout=0)
    except (OSError, serial.SerialException) as exc:
        return Verdict(False, [f"cannot open {port} to reset the board: {exc}"])
    try:
        ser.write(b"\r\x02")  # leave the raw REPL (flash leaves it already; harmless at the friendly one)
        time.sleep(0.1)
        ser.reset_input_buffer()
        ser.write(b"\x04")  # soft reset: the board runs main.py

        def read(wait: float) -> bytes:
            deadline = time.monotonic() + wait
            while True:
                data: bytes = ser.read(4096)
                if data or time.monotonic() >= deadline:
                    return data
                time.sleep(0.02)

        seen_boot: list[float] = []

        def settled(con: Console) -> bool:
            if con.fatal:
                return True
            if con.boot_line and not seen_boot:
                seen_boot.append(time.monotonic())
            return bool(seen_boot) and time.monotonic() - seen_boot[0] >= SETTLE_S

        try:
            con = read_console(read, until=settled, timeout=timeout)
        except (OSError, serial.SerialException) as exc:
            return Verdict(False, [f"lost the board on {port} while reading its console: {exc}"])
    finally:
        ser.close()
    status = None
    checked = False
    notes: list[str] = []
    if broker is not None and account is not None and not con.fatal and con.boot_line:
        try:
            status = wait_online(str(broker["host"]), int(broker.get("port") or 1883),
                                 f"{prefix}/{gateway_id}/status", image, username=account[0],
                                 password=account[1], timeout=timeout, tls_ca=tls_ca, tls_cert=tls_cert)
            checked = True
        except (NotAccepted, ssl.SSLError) as exc:  # reached, but this laptop was not let in
            notes.append(f"broker {broker['host']}:{broker.get('port')} did not accept this laptop's check "
                         f"({exc}): not checked; check the --check-broker account and password, and on a "
                         "broker that requires client certificates give --check-cert CERT KEY")
        except OSError as exc:
            notes.append(f"broker {broker['host']}:{broker.get('port')} not reachable from this laptop "
                         f"({exc}): not checked")
    verdict = judge(con, gateway_id=gateway_id, image=image, fw=fw, status=status, broker_checked=checked)
    verdict.lines += notes
    return verdict
