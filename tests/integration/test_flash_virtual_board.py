"""A field tech's day on a virtual board: provision, build, flash with mpremote, boot, see it online.

The board is the MicroPython unix port behind a pty (hil.virtual_board); the broker is a private
Mosquitto loading the passwd and ACL that `provision render` wrote, so the credentials baked into
the image are the ones the broker checks. Second leg: rotate the password, reload the broker,
re-flash over the old image and boot again (the board's log, and so its boot counter, survives).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import cbor2
import paho.mqtt.client as mqtt
import pytest

from citybrain.cli import main
from hil.services import Mosquitto, free_port
from hil.virtual_board import VirtualBoard

pytestmark = pytest.mark.integration

GW = "gw-xihu-0001"
# A board with the unix port's habits: the .mpy image is loaded into the heap (a board freezes it
# into flash), so the agent needs more than an ESP32's 100 KB here; hil/rig.py uses the same.
HEAP = "256K"


class StatusWatcher:
    """The collector's view: paho on `<prefix>/<gw>/status`, every payload decoded from CBOR."""

    def __init__(self, port: int, password: str) -> None:
        self.got: list[tuple[dict[str, object], bool]] = []
        self.cond = threading.Condition()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="t-collector")
        self.client.username_pw_set("collector", password)
        self.client.on_connect = lambda c, *a: c.subscribe(f"city/{GW}/status", 1)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self.cond:
            self.got.append((cbor2.loads(msg.payload), bool(msg.retain)))
            self.cond.notify_all()

    def wait_state(self, state: str, boot: int, timeout: float = 30.0) -> dict[str, object]:
        """The first status of this boot in this state (the retained one included)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for status, _retain in self.got:
                    if status.get("state") == state and status.get("boot") == boot:
                        return status
                left = deadline - time.monotonic()
                assert left > 0, f"no {state!r} status of boot {boot} within {timeout:.0f}s; got {self.got}"
                self.cond.wait(left)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def files_of(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())


def test_build_flash_boot_on_virtual_board(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    broker_port = free_port()
    fleet = tmp_path / "fleet"
    # The parking adapter: a pty whose slave the agent opens as its serial port.
    bus_master, bus_slave = os.openpty()
    sources = tmp_path / "sources.json"
    sources.write_text(json.dumps([{"kind": "parking", "transport": "serial", "port": os.ttyname(bus_slave),
                                    "sensors": ["P-00012"]}]))
    monkeypatch.setenv("T_COLLECTOR_PW", "collector-pw")
    render = ["provision", "render", "--dir", str(fleet)]
    out = fleet / "out"
    image = tmp_path / "image"
    config = out / "gateways" / GW / "config.json"
    build = ["provision", "build", "--config", str(config), "--out", str(image)]
    assert main(["provision", "init", "--dir", str(fleet), "--broker-host", "127.0.0.1",
                 "--broker-port", str(broker_port)]) == 0
    assert main(["provision", "add-service-user", "--dir", str(fleet), "--name", "collector",
                 "--role", "collector", "--password-env", "T_COLLECTOR_PW"]) == 0
    assert main(["provision", "add-gateway", "--dir", str(fleet), "--id", GW, "--site", "文三路",
                 "--district", "西湖区", "--sources", str(sources)]) == 0
    assert main(render) == 0
    assert main(build) == 0

    auth = out / "mosquitto"
    broker = Mosquitto(broker_port, workdir=str(tmp_path / "broker"),
                       password_file=str(auth / "passwd"), acl_file=str(auth / "acl"))
    board = VirtualBoard(tmp_path / "board-fs", heapsize=HEAP)
    watcher: StatusWatcher | None = None
    try:
        broker.start()
        port = board.start()
        assert port.startswith("/dev/pts/")
        assert main(["provision", "flash", "--resume", "--no-self-test", "--port", port, str(image)]) == 0

        manifest = json.loads((image / "manifest.json").read_text())
        slot = board.dir / f"a-{manifest['image']}"  # the image's folder; main.py boots what `active` names
        assert (board.dir / "active").read_text() == slot.name
        assert files_of(slot) == sorted(manifest["files"])
        assert "edge/agent.mpy" in files_of(slot) and "devices/parking/codec.mpy" in files_of(slot)
        for rel in files_of(slot):
            assert (slot / rel).read_bytes() == (image / rel).read_bytes(), rel
        flashed = json.loads((slot / "config.json").read_text())
        assert flashed["broker"]["port"] == broker_port and flashed["broker"]["username"] == GW

        watcher = StatusWatcher(broker_port, "collector-pw")
        board.boot()
        status = watcher.wait_state("online", boot=1)
        assert status["img"] == manifest["image"]  # which image the board runs, for ops
        assert board.alive(), board.console_tail()
        assert status["clock_synced"] is False and status["ts"] is None
        assert isinstance(status["heap_free"], int)  # gc.mem_free(): it is MicroPython that runs
        assert status["errors"] == {}, board.console_tail()  # the serial port opened
        # Power cut: the broker publishes the agent's last will, the retained offline status.
        board.stop()
        watcher.wait_state("offline", boot=1)

        # Rotate the password, reload the broker, re-flash over the old image and power on again:
        # the new credentials work and the log on the board's filesystem (boot counter) survived.
        assert main(["provision", "rotate-password", "--dir", str(fleet), "--id", GW]) == 0
        assert main(render) == 0
        assert main(build) == 0
        new_password = json.loads((image / "config.json").read_text())["broker"]["password"]
        assert new_password != flashed["broker"]["password"]
        assert broker.proc is not None
        os.kill(broker.proc.pid, signal.SIGHUP)  # Mosquitto re-reads passwd and acl
        assert main(["provision", "flash", "--resume", "--no-self-test", "--port", board.start(),
                     str(image)]) == 0
        manifest = json.loads((image / "manifest.json").read_text())
        slot = board.dir / f"b-{manifest['image']}"  # the other slot; the old one is gone
        assert (slot / "config.json").read_bytes() == (image / "config.json").read_bytes()
        assert sorted(p.name for p in board.dir.iterdir()) == sorted(
            ["active", "main.py", slot.name, "spool"])
        board.boot()
        watcher.wait_state("online", boot=2)
        assert board.alive(), board.console_tail()
    finally:
        if watcher is not None:
            watcher.close()
        board.cleanup()
        broker.cleanup()
        os.close(bus_master)
        os.close(bus_slave)
