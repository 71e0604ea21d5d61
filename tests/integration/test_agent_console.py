"""What a gateway says on its console: one start-up summary line in a stable format (parsed by
provisioning after a flash, documented in docs/gateway.md "Console"), a once-only warning when
readings are held for want of a clock, and on a board a bad config is one line and a wait for a
new config instead of a crash loop."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from hil.rig import INTERPRETERS, Rig
from hil.services import Mosquitto
from hil.virtual_board import VirtualBoard
from provisioning.firmware import build

pytestmark = pytest.mark.integration

SUMMARY = re.compile(r"^citybrain-gw: up gw=(\S+) fw=(\S+) boot=(\d+) sources=(\d+)/(\d+) "
                     r"broker=(connected|down) clock=(synced|unsynced)$", re.M)


@pytest.mark.parametrize("interpreter", INTERPRETERS)
def test_summary_and_one_clock_warning(interpreter: str) -> None:
    with Rig(interpreter, parking=2, thermometers=0, lids=1, water=(), speed=10.0) as rig:
        assert rig.agent is not None
        cfg = dict(rig.config, trust_os_clock=False)  # a Linux gateway that forgot the setting
        rig.config_path.write_text(json.dumps(cfg))
        rig.start_agent()
        rig.run(3.0)
        log = rig.agent.log_tail(1 << 20)
        assert [m.groups() for m in SUMMARY.finditer(log)] == [
            ("gw-hil-1", "0.1.0", "1", "2", "2", "connected", "unsynced")], log
        assert log.count("citybrain-gw: warning gw=gw-hil-1: readings held until the clock is set") == 1, log
        assert not rig.sub.payloads("up")  # held indeed: nothing stamped, nothing sent


def _wait_for(board: VirtualBoard, text: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while text not in board.console_tail(1 << 20):
        assert board.alive(), board.console_tail()
        assert time.monotonic() < deadline, board.console_tail()
        time.sleep(0.1)
    return board.console_tail(1 << 20)


@pytest.mark.micropython
def test_board_waits_for_a_good_config_then_says_hello(tmp_path: Path, mosquitto: Mosquitto) -> None:
    master, slave = os.openpty()  # the screening station's serial line (nothing talks on it)
    good = {"gateway_id": "gw-board-1", "broker": {"host": "127.0.0.1", "port": mosquitto.port},
            "store": {"dir": "spool"},
            "sources": [{"kind": "thermometer", "transport": "serial", "port": os.ttyname(slave)}]}
    (tmp_path / "good.json").write_text(json.dumps(good))
    board = VirtualBoard(tmp_path / "fs")
    try:
        build(tmp_path / "good.json", board.dir, progress=lambda _m: None)
        bad = dict(good, sources=[dict(good["sources"][0], alarm_limits={"fever": 38.0},
                                       deadband={"body": 0.1})])
        (board.dir / "config.json").write_text(json.dumps(bad))
        # What main.py does on a board, with the re-check every 0.2 s instead of 5.
        main_py = 'import edge.main\nedge.main.main("config.json", wait_s=0.2)\n'
        (board.dir / "board_main.py").write_text(main_py)
        board.boot("board_main.py")
        out = _wait_for(board, "citybrain config error:")
        time.sleep(1.5)  # several re-checks of an unchanged file: still one line, still running
        out = board.console_tail(1 << 20)
        errors = [line for line in out.splitlines() if "config error" in line]
        assert errors == ["citybrain config error: config.sources[0].deadband: thermometer has no field "
                          "'body' (did you mean 'body_c'?) (+1 more); waiting for a new config.json"], out
        assert board.alive() and not (board.dir / "spool").exists()
        (board.dir / "config.json").write_text(json.dumps(good))
        out = _wait_for(board, "citybrain-gw: up ")
        assert [m.groups()[:6] for m in SUMMARY.finditer(out)] == [
            ("gw-board-1", "0.1.0", "1", "1", "1", "connected")], out
    finally:
        board.cleanup()
        os.close(master)
        os.close(slave)
