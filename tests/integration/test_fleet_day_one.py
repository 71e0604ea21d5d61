"""A fresh fleet, day one: five gateways from `provision init` to verified virtual boards, one test.

Only the tools are used, with no hand-edited file: init, a service account, five `add-gateway`
(every device kind, two districts, Chinese site names, manhole lids through a site broker),
`render`, `build`, then `flash` with its self-test and `--check-broker` on each virtual board
(hil.virtual_board: the MicroPython unix port behind a pty, at a capped heap). The fleet's broker
is a real Mosquitto started from nothing but the files `render` wrote (its conf.d, passwd, acl);
the site broker the lids publish to is the site's own (anonymous, on the LAN), not the fleet's.
The sensors are the HIL rig's: simulators on ptys for the serial kinds, the pymodbus water slave
behind a socat null-modem, lids publishing with paho.

Then, as the collector sees it: every gateway's retained status is online with its own image
hash, and every reading published under a gateway's id is one of that gateway's sensors.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import cbor2
import paho.mqtt.client as mqtt
import pytest

from citybrain.cli import main
from collector.decode import decode_status
from devices.parking.sim import Simulator as ParkingSim
from devices.thermometer.sim import Simulator as ThermometerSim
from hil.rig import LidPublisher, ModbusBus, SerialDevice
from hil.services import Mosquitto, free_port
from hil.verify import codecs_by_code, readings_of
from hil.virtual_board import VirtualBoard

pytestmark = pytest.mark.integration

HEAP = "256K"  # as the other virtual-board tests: the unix port loads the .mpy image into its heap
# The virtual board is the unix port (the posix runtime): no NTP of its own, it trusts the host's
# clock, as a Linux gateway does; a board's NTP is not part of what this test can show.
OPTIONS = {"uplink": {"batch_age_ms": 300, "status_every_s": 5}, "trust_os_clock": True}


class Collector:
    """paho with the collector's account on `city/+/{up,status}`: what arrived, by topic."""

    def __init__(self, port: int, user: str, password: str, topics: tuple[str, ...]) -> None:
        self.got: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=user)
        self.client.username_pw_set(user, password)
        self.client.on_connect = lambda c, *a: c.subscribe([(t, 1) for t in topics])
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.got.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def messages(self) -> list[tuple[str, bytes, bool]]:
        with self.lock:
            return list(self.got)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_five_gateways_from_init_to_verified_boards(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    fleet = tmp_path / "fleet"
    port = free_port()
    monkeypatch.setenv("T_COLLECTOR_PW", "collector-pw-1")
    monkeypatch.setenv("T_CHECK_PW", "field-check-pw")
    site = Mosquitto(workdir=str(tmp_path / "site-broker"))  # the lids' broker on the site's LAN
    devices: list[SerialDevice] = []
    bus: ModbusBus | None = None
    lids: LidPublisher | None = None
    boards: list[VirtualBoard] = []
    broker: Mosquitto | None = None
    collector: Collector | None = None
    try:
        site.start()
        parking = SerialDevice("parking", ["P-00012", "P-00013"], ParkingSim(
            ["P-00012", "P-00013"], seed=3, heartbeat_s=5, mean_stay_s=20, mean_vacant_s=15, link="rs485"),
            speed=10.0)
        gate = SerialDevice("thermometer", ["黄龙-闸机-1"],
                            ThermometerSim(["黄龙-闸机-1"], seed=4, mean_gap_s=4.0), speed=10.0)
        bays = SerialDevice("parking", ["P-00501"], ParkingSim(
            ["P-00501"], seed=5, heartbeat_s=5, mean_stay_s=20, mean_vacant_s=15, link="rs485"), speed=10.0)
        lobby = SerialDevice("thermometer", ["灵隐-1"], ThermometerSim(["灵隐-1"], seed=6, mean_gap_s=4.0),
                             speed=10.0)
        devices = [parking, gate, bays, lobby]
        bus = ModbusBus(tmp_path, [(1, "ABCD"), (2, "CDAB")])
        lids = LidPublisher(site.port, "lids/jiangnan", ["MH-0123", "滨江-井盖-08"], interval_s=0.2)

        def serial(d: SerialDevice) -> dict[str, Any]:
            return {"kind": d.kind, "transport": "serial", "port": d.path, "sensors": d.sensors}

        gateways: dict[str, dict[str, Any]] = {
            "gw-xihu-0001": {"site": "文三路", "district": "西湖区", "sources": [serial(parking)]},
            "gw-xihu-0002": {"site": "黄龙体育中心", "district": "西湖区", "sources": [serial(gate)]},
            "gw-xihu-0003": {"site": "灵隐路", "district": "西湖区",
                             "sources": [serial(bays), serial(lobby)]},
            "gw-binjiang-0001": {"site": "钱塘江闸口", "district": "滨江区", "sources": [
                {"kind": "water", "transport": "modbus", "port": bus.path, "poll_ms": 1000,
                 "slaves": [{"address": 1, "sensor": "WQ-钱塘江-01", "word_order": "ABCD"},
                            {"address": 2, "sensor": "WQ-钱塘江-02", "word_order": "CDAB"}]}]},
            "gw-binjiang-0002": {"site": "江南大道", "district": "滨江区", "site_broker": site.port,
                                 "sources": [
                {"kind": "manhole", "transport": "mqtt", "topic": "lids/jiangnan/#",
                 "sensors": ["MH-0123", "滨江-井盖-08"]}]},
        }
        sensors_of = {gid: {s for src in g["sources"] for s in src.get("sensors", ())}
                      | {sl["sensor"] for src in g["sources"] for sl in src.get("slaves", ())}
                      for gid, g in gateways.items()}
        assert {src["kind"] for g in gateways.values() for src in g["sources"]} == {
            "parking", "thermometer", "water", "manhole"}

        def cli(*args: str) -> str:
            code = main(["provision", *args])
            out = capsys.readouterr()
            assert code == 0, (args, out.out, out.err)
            return out.out

        cli("init", "--dir", str(fleet), "--broker-host", "127.0.0.1", "--broker-port", str(port),
            "--listen", "127.0.0.1", "--conf-dir", str(fleet / "out" / "mosquitto"))
        cli("add-service-user", "--dir", str(fleet), "--name", "collector-1", "--role", "collector",
            "--password-env", "T_COLLECTOR_PW")
        cli("add-service-user", "--dir", str(fleet), "--name", "field-check", "--role", "operator",
            "--password-env", "T_CHECK_PW")
        options = tmp_path / "options.json"
        options.write_text(json.dumps(OPTIONS))
        for gid, g in gateways.items():
            sources = tmp_path / f"{gid}.sources.json"
            sources.write_text(json.dumps(g["sources"], ensure_ascii=False))
            extra = ["--site-broker", f"127.0.0.1:{g['site_broker']}"] if "site_broker" in g else []
            cli("add-gateway", "--dir", str(fleet), "--id", gid, "--site", g["site"], "--district",
                g["district"], "--sources", str(sources), "--options", str(options), *extra)
        listing = cli("list", "--dir", str(fleet))
        for gid, g in gateways.items():
            assert f"gateway {gid}  site={g['site']}  district={g['district']}" in listing, listing
        cli("render", "--dir", str(fleet))
        images: dict[str, Path] = {}
        for gid in gateways:
            images[gid] = tmp_path / "build" / gid
            cli("build", "--config", str(fleet / "out" / "gateways" / gid / "config.json"),
                "--out", str(images[gid]))

        broker = Mosquitto(port, workdir=str(tmp_path / "broker"),
                           include_dir=str(fleet / "out" / "mosquitto" / "conf.d"))
        broker.start()

        stop = threading.Event()

        def sensors_talk() -> None:
            while not stop.is_set():
                now = time.monotonic()
                for d in devices:
                    d.step(now, True, lambda e: None)
                assert lids is not None
                lids.step(now, True, lambda e: None)
                stop.wait(0.05)

        talker = threading.Thread(target=sensors_talk, daemon=True)
        talker.start()
        # The collector runs before the boards come up, as in a city: a water station's values change
        # slowly, so after its first readings it may report again only at max_silence_s.
        collector = Collector(port, "collector-1", "collector-pw-1", ("city/+/up", "city/+/status"))
        try:
            for gid in gateways:
                board = VirtualBoard(tmp_path / "boards" / gid, heapsize=HEAP, reset_runs_main=True)
                boards.append(board)
                out = cli("flash", "--resume", "--quiet", "--port", board.start(), str(images[gid]),
                          "--check-broker", "field-check=@T_CHECK_PW")
                image = json.loads((images[gid] / "manifest.json").read_text())["image"]
                assert "self-test PASSED" in out and f"gateway id {gid}: ok" in out, out
                assert f"retained status is online with image {image}" in out, out

            images_of = {gid: json.loads((images[gid] / "manifest.json").read_text())["image"]
                         for gid in gateways}
            codecs = codecs_by_code()

            def online_and_reporting() -> tuple[set[str], set[str]]:
                online: set[str] = set()
                reporting: set[str] = set()
                assert collector is not None
                for topic, payload, _retain in collector.messages():
                    gid = topic.split("/")[1]
                    if topic.endswith("/status"):
                        status = decode_status(payload, max_bytes=65536)
                        if status.get("state") == "online" and status.get("img") == images_of.get(gid):
                            online.add(gid)
                    elif topic.endswith("/up") and readings_of(cbor2.loads(payload), codecs):
                        reporting.add(gid)
                return online, reporting

            def last_statuses() -> dict[str, dict[str, object]]:
                assert collector is not None
                return {t.split("/")[1]: decode_status(p, max_bytes=65536)
                        for t, p, _r in collector.messages() if t.endswith("/status")}

            # The water stations' values do not change (the slave serves one snapshot), so the
            # gateway reports them once, right at boot: only a collector that stays subscribed
            # sees them. It did not while the self-test's broker check used the collector's own
            # account: the broker binds client ids to usernames, so the check replaced the
            # collector's session (the check now has an account of its own, `field-check`).
            everyone = set(gateways)
            deadline = time.monotonic() + 30
            while online_and_reporting() != (everyone, everyone) and time.monotonic() < deadline:
                time.sleep(0.1)
            online, reporting = online_and_reporting()
            assert online == everyone and reporting == everyone, (
                f"online with their image: {sorted(online)}; with readings: {sorted(reporting)}; "
                f"their last statuses: {last_statuses()}")
        finally:
            stop.set()
            talker.join()

        # What the broker keeps for anyone who subscribes later (ops' dashboard): every gateway's
        # retained status, online with the image it was flashed with.
        late = Collector(port, "field-check", "field-check-pw", ("city/+/status",))
        try:
            def retained() -> dict[str, dict[str, object]]:
                return {t.split("/")[1]: decode_status(p, max_bytes=65536)
                        for t, p, r in late.messages() if r}

            deadline = time.monotonic() + 10
            while len(retained()) < len(gateways) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert {gid: (st.get("state"), st.get("img")) for gid, st in retained().items()} == {
                gid: ("online", images_of[gid]) for gid in gateways}
        finally:
            late.close()

        # Each gateway publishes under its own id only: every topic names one of the five, and every
        # reading under a gateway's id is one of that gateway's own sensors.
        per_gateway: dict[str, set[str]] = {}
        for topic, payload, _retain in collector.messages():
            gid = topic.split("/")[1]
            assert gid in gateways, topic
            if topic.endswith("/up"):
                for sensor, _kind, _ts, _fields in readings_of(cbor2.loads(payload), codecs):
                    per_gateway.setdefault(gid, set()).add(sensor)
        for gid, seen in per_gateway.items():
            assert seen <= sensors_of[gid], (gid, seen - sensors_of[gid])
        assert set(per_gateway) == set(gateways)
        for board in boards:
            assert board.alive(), board.console_tail()
    finally:
        if collector is not None:
            collector.close()
        for board in boards:
            board.cleanup()
        if lids is not None:
            lids.close()
        if bus is not None:
            bus.close()
        for d in devices:
            d.close()
        if broker is not None:
            broker.cleanup()
        site.cleanup()
