"""Flashing a board a field tech can trust, on the virtual board (hil.virtual_board).

- Another gateway's board is refused unless --reassign, which wipes its spool and state (issue 9,
  finding 1: its spooled readings were published under the new id).
- A cut at any point of a flash (the board's power, or the flashing tool killed) leaves a board that
  boots either its old image or the new one, and the tool's message says which (finding 2: a 0-byte
  .mpy and a board that did not boot, with only "mpremote failed").
- The self-test: the board is reset over its serial port, its boot line read, and the gateway's
  retained online status (with the image hash) awaited on a real Mosquitto.

"Which image boots" is read from the board itself: a power-on (`VirtualBoard.boot`) runs main.py
and the agent's boot line names its gateway and image hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from citybrain.cli import main
from hil.services import Mosquitto, free_port, stop_process
from hil.virtual_board import VirtualBoard
from provisioning.firmware import build
from provisioning.flash import BOOT_PY, FlashError, Progress, flash
from provisioning.selftest import Console, parse_console

pytestmark = pytest.mark.integration

HEAP = "256K"  # as tests/integration/test_flash_virtual_board.py: the unix port loads .mpy into its heap
GW_A, GW_B = "gw-xihu-0001", "gw-xihu-0002"
LEGACY_MAIN = b'import edge.main\n\nedge.main.main("config.json")\n'  # what an earlier `build` wrote


def make_image(tmp: Path, name: str, gw: str, broker_port: int, **broker: object) -> Path:
    cfg = tmp / f"{name}.json"
    broker = {"host": "127.0.0.1", "port": broker_port, **broker}
    cfg.write_text(json.dumps({"gateway_id": gw, "broker": broker, "sources": []}))
    out = tmp / name
    build(cfg, out, progress=lambda _m: None)
    return out


def image_hash(image: Path) -> str:
    return str(json.loads((image / "manifest.json").read_text())["image"])


def power_on(board: VirtualBoard, timeout: float = 30.0) -> Console:
    """Boot the board, read its console until the boot line (or a crash), power it off again."""
    board.console_log.unlink(missing_ok=True)
    board.boot()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            con = parse_console(board.console_tail(1 << 20))
            if con.boot_line or con.fatal or not board.alive():
                time.sleep(0.2)
                return parse_console(board.console_tail(1 << 20))
            time.sleep(0.05)
        return parse_console(board.console_tail(1 << 20))
    finally:
        board.stop()


def boot_counter(board: VirtualBoard) -> int:
    """The store's boot counter (spool/state: magic, boot, cursor; edge/store/log.py)."""
    return int(struct.unpack_from("<I", (board.dir / "spool" / "state").read_bytes(), 4)[0])


def board_files(board: VirtualBoard) -> list[str]:
    return sorted(p.name for p in board.dir.iterdir())


def test_another_gateways_board_is_refused_and_reassign_wipes_its_store(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dead_port = free_port()  # no broker: the agent boots, logs its boot line and retries the uplink
    image_a = make_image(tmp_path, "A", GW_A, dead_port)
    image_b = make_image(tmp_path, "B", GW_B, dead_port)
    board = VirtualBoard(tmp_path / "fs", heapsize=HEAP)
    try:
        flash_cmd = ["provision", "flash", "--resume", "--no-self-test", "--port"]
        assert main([*flash_cmd, board.start(), str(image_a)]) == 0
        # The progress bar: bytes and files, to the last of each, then the read-back check.
        out = capsys.readouterr().out
        files = len(json.loads((image_a / "manifest.json").read_text())["files"])
        assert re.search(rf"copy   \[#{{30}}\]\s+([\d.]+)/\1 KB  {files}/{files} files", out), out
        assert "verifying sha256 of every file on the board" in out and "switching over" in out, out
        con = power_on(board)
        assert con.facts["gw"] == GW_A and con.facts["image"] == image_hash(image_a), con
        assert boot_counter(board) == 1
        spool_before = sorted(p.name for p in (board.dir / "spool").iterdir())
        active_before = (board.dir / "active").read_text()

        # gw-B's image onto gw-A's board: refused, and the board is untouched.
        capsys.readouterr()
        assert main([*flash_cmd, board.start(), str(image_b)]) == 1
        err = capsys.readouterr().err
        assert f"is gateway {GW_A}, this image is for {GW_B}" in err and "--reassign" in err, err
        assert (board.dir / "active").read_text() == active_before
        assert sorted(p.name for p in (board.dir / "spool").iterdir()) == spool_before
        con = power_on(board)
        assert con.facts["gw"] == GW_A and boot_counter(board) == 2

        # --reassign: the board becomes gw-B with a clean store (boot counter from 1 again).
        assert main(["provision", "flash", "--resume", "--reassign", "--no-self-test", "--port",
                     board.start(), str(image_b)]) == 0
        out = capsys.readouterr().out
        assert f"reassigned: the board was {GW_A}; wiped its spool" in out, out
        assert not (board.dir / "spool").exists()
        con = power_on(board)
        assert con.facts["gw"] == GW_B and con.facts["image"] == image_hash(image_b), con
        assert boot_counter(board) == 1
        # A store with no image to say whose it is (the image was deleted by hand): refused too.
        slot = (board.dir / "active").read_text()
        for name in ("main.py", "active", slot):
            path = board.dir / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        assert main([*flash_cmd, board.start(), str(image_b)]) == 1
        assert "has a store (spool) but no image to tell whose readings it holds" in capsys.readouterr().err
        assert main([*flash_cmd[:3], "--reassign", *flash_cmd[3:], board.start(), str(image_b)]) == 0
        assert power_on(board).facts["gw"] == GW_B and boot_counter(board) == 1
        # Same gateway again (a new password, say): no question asked, the store is kept.
        image_b2 = make_image(tmp_path, "B2", GW_B, dead_port, keepalive_s=30)
        assert main([*flash_cmd, board.start(), str(image_b2)]) == 0
        assert power_on(board).facts["image"] == image_hash(image_b2) and boot_counter(board) == 2
    finally:
        board.cleanup()


def _said(message: str, old: str, new: str) -> set[str]:
    """The images the tool's failure message says the board may boot (it also says what to run)."""
    assert "`citybrain provision flash --port " in message, f"the message says nothing to run: {message}"
    if "boots the NEW image" in message:
        return {new}
    if "boots either" in message:
        return {old, new}
    if "still boots" in message or "Nothing was changed" in message:
        return {old}
    raise AssertionError(f"the message does not say what the board boots: {message}")


def _lay_flat(board_dir: Path, image: Path) -> None:
    """The flat layout an earlier `build`/`flash` left on boards: the image's files at the root."""
    for rel in json.loads((image / "manifest.json").read_text())["files"]:
        (board_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (board_dir / rel).write_bytes((image / rel).read_bytes())
    (board_dir / "main.py").write_bytes(LEGACY_MAIN)


def _steps_of_a_flash(tmp: Path, images: list[Path], *, flat: bool) -> list[str]:
    """The phases of every progress step of a whole flash of images[1] over images[0]."""
    steps: list[Progress] = []
    probe = VirtualBoard(tmp / f"probe-{flat}", heapsize=HEAP)
    try:
        if flat:
            _lay_flat(probe.dir, images[0])
        else:
            flash(images[0], probe.start(), resume=True)
        flash(images[1], probe.start(), resume=True, progress=steps.append)
    finally:
        probe.cleanup()
    return [p.phase for p in steps]


def _cut_flashes(board: VirtualBoard, images: list[Path], booting: str, cuts: list[int],
                 phases: list[str]) -> tuple[str, list[tuple[int, str, str]]]:
    """One flash per cut point k, its power cut at progress step k, chained (each flash starts from
    what the last left). Checks each: the board boots, the old or the new image, the one the
    message named. Returns what boots at the end and (k, phase, old|new) per cut."""
    outcomes = []
    for k in cuts:
        target = images[1] if booting in ("legacy", image_hash(images[0])) else images[0]
        old = booting
        seen = [0]

        def cut(p: Progress, k: int = k, seen: list[int] = seen) -> None:
            seen[0] += 1
            if seen[0] == k:
                board.stop()  # the power cut: the board's process is killed mid-whatever

        message = ""
        try:
            flash(target, board.start(), resume=True, progress=cut)
        except FlashError as exc:
            message = str(exc)
        con = power_on(board)
        assert con.boot_line and not con.fatal, f"cut at step {k}: the board does not boot: {con}"
        booting = con.facts["image"] if con.facts["image"] != "-" else "legacy"
        assert booting in (old, image_hash(target)), (k, booting)
        if message:
            assert booting in _said(message, old, image_hash(target)), (k, message, booting)
        else:
            assert booting == image_hash(target)
        outcomes.append((k, phases[k - 1] if k <= len(phases) else "-", "new" if booting != old else "old"))
    return booting, outcomes


def test_power_cut_at_random_points_leaves_old_or_new_image_booting(tmp_path: Path) -> None:
    """Power cuts during flashes at a random progress step (mostly a chunk written), and at every
    step from the verification on (each step of the switch-over, the clean-up). First from the flat
    layout of boards in the field, then from the slots layout a flash leaves."""
    dead_port = free_port()
    images = [make_image(tmp_path, n, GW_A, dead_port, keepalive_s=k) for n, k in (("A", 60), ("B", 61))]
    board = VirtualBoard(tmp_path / "fs", heapsize=HEAP)
    _lay_flat(board.dir, images[0])
    try:
        con = power_on(board)
        assert con.facts["image"] == "-" and con.facts["gw"] == GW_A, con  # the flat image boots

        outcomes = []
        booting = "legacy"
        for flat, seeds in ((True, range(6)), (False, range(6, 10))):
            phases = _steps_of_a_flash(tmp_path, images, flat=flat)
            late = [i + 1 for i, ph in enumerate(phases) if ph in ("verify", "switch", "clean", "done")]
            cuts = [random.Random(seed).randint(1, len(phases)) for seed in seeds] + late
            booting, got = _cut_flashes(board, images, booting, cuts, phases)
            outcomes += got
            print("flat" if flat else "slots", "layout: cut step, phase, image booting after:", got)
            assert {o[2] for o in got} == {"old", "new"}, got  # both sides of the switch-over were hit
            if flat:
                # A whole flash tidies up: main.py, active, one slot, the store; no flat leftovers.
                target = images[1] if booting in ("legacy", image_hash(images[0])) else images[0]
                flash(target, board.start(), resume=True)
                booting = power_on(board).facts["image"]
                assert booting == image_hash(target)
                slot = (board.dir / "active").read_text()
                assert board_files(board) == sorted(["active", "main.py", slot, "spool"])
                assert (board.dir / "main.py").read_bytes() == BOOT_PY
        assert len(outcomes) >= 20
    finally:
        board.cleanup()


def test_flash_tool_killed_mid_copy_leaves_a_booting_board(tmp_path: Path) -> None:
    """The tool (not the board) dies: SIGKILL to `citybrain provision flash` at a random moment after
    its staging folder appeared on the board; the board keeps whatever half-written files it got."""
    dead_port = free_port()
    images = [make_image(tmp_path, n, GW_A, dead_port, keepalive_s=k) for n, k in (("A", 60), ("B", 61))]
    board = VirtualBoard(tmp_path / "fs", heapsize=HEAP)
    tool_exe = str(Path(sys.executable).parent / "citybrain")
    try:
        flash(images[0], board.start(), resume=True)
        t0 = time.monotonic()
        flash(images[1], board.start(), resume=True)
        whole = time.monotonic() - t0
        booting = image_hash(images[1])
        killed = 0
        for seed in range(4):
            target = images[0] if booting == image_hash(images[1]) else images[1]
            slot = board.dir / (("b-" if (board.dir / "active").read_text().startswith("a-") else "a-")
                                + image_hash(target))
            cmd = [tool_exe, "provision", "flash", "--resume", "--quiet", "--no-self-test",
                   "--port", board.start(), str(target)]
            tool = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    start_new_session=True)
            try:
                deadline = time.monotonic() + 30
                while tool.poll() is None and not slot.exists() and time.monotonic() < deadline:
                    time.sleep(0.002)  # until the staging folder appears: the copy has begun
                assert slot.exists(), f"the tool never started copying: {tool.poll()}"
                time.sleep(random.Random(seed).uniform(0, whole))
                if tool.poll() is None:
                    os.killpg(tool.pid, signal.SIGKILL)
                    killed += 1
            finally:
                stop_process(tool)
                assert tool.stderr is not None
                tool.stderr.close()
            con = power_on(board)
            assert con.boot_line and not con.fatal, f"seed {seed}: the board does not boot: {con}"
            assert con.facts["image"] in (booting, image_hash(target)), con
            booting = con.facts["image"]
        print(f"tool killed mid-flash in {killed} of 4 runs (a whole copy takes {whole:.2f} s)")
        assert killed >= 2, "the tool finished before most kills: the copy is too quick to cut this way"
        flash(images[0], board.start(), resume=True)  # and the next flash cleans up after the killed ones
        slot_now = (board.dir / "active").read_text()
        assert board_files(board) == sorted(["active", "main.py", slot_now, "spool"])
    finally:
        board.cleanup()


def test_self_test_reads_boot_line_and_waits_for_online_status(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    fleet = tmp_path / "fleet"
    broker_port = free_port()
    monkeypatch.setenv("T_COLLECTOR_PW", "collector-pw")
    assert main(["provision", "init", "--dir", str(fleet), "--broker-host", "127.0.0.1",
                 "--broker-port", str(broker_port)]) == 0
    assert main(["provision", "add-service-user", "--dir", str(fleet), "--name", "collector",
                 "--role", "collector", "--password-env", "T_COLLECTOR_PW"]) == 0
    assert main(["provision", "add-gateway", "--dir", str(fleet), "--id", GW_A, "--site", "文三路"]) == 0
    assert main(["provision", "render", "--dir", str(fleet)]) == 0
    config = fleet / "out" / "gateways" / GW_A / "config.json"
    image = tmp_path / "image"
    assert main(["provision", "build", "--config", str(config), "--out", str(image)]) == 0
    auth = fleet / "out" / "mosquitto"
    broker = Mosquitto(broker_port, workdir=str(tmp_path / "broker"), password_file=str(auth / "passwd"),
                       acl_file=str(auth / "acl"))
    board = VirtualBoard(tmp_path / "fs", heapsize=HEAP, reset_runs_main=True)
    try:
        broker.start()
        capsys.readouterr()
        port = board.start()
        code = main(["provision", "flash", "--resume", "--quiet", "--port", port, str(image),
                     "--check-broker", "collector=@T_COLLECTOR_PW"])
        out = capsys.readouterr().out
        assert code == 0, out
        assert "self-test PASSED" in out and f"gateway id {GW_A}: ok" in out, out
        assert f"retained status is online with image {image_hash(image)}" in out, out

        # A sensor port that does not exist on the board: flashed, but the self-test fails and says why.
        cfg = json.loads(config.read_text())
        cfg["sources"] = [{"kind": "parking", "transport": "serial", "port": "/dev/citybrain-no-such-tty"}]
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps(cfg))
        assert main(["provision", "build", "--config", str(bad), "--out", str(image)]) == 0
        capsys.readouterr()
        # Flashed again while its agent runs: Ctrl-C on the port stops it, as on a board.
        code = main(["provision", "flash", "--resume", "--quiet", "--port", port, str(image)])
        out = capsys.readouterr().out
        assert code == 3, out
        assert "self-test FAILED" in out and "sensor source failed: /dev/citybrain-no-such-tty" in out, out
        assert "broker: not checked" in out or "broker: not reached" in out, out
    finally:
        board.cleanup()
        broker.cleanup()


def test_firmware_with_real_esptool_on_a_board_not_in_its_bootloader(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """esptool (PyPI) itself, against a serial port where no ESP32 ROM bootloader answers (the virtual
    board's MicroPython REPL, as a board that was not put into download mode): the tool says the
    erase failed, what state the board may be in, and how to get esptool connected."""
    from tests.unit.test_bringup import fake_firmware

    fw = fake_firmware(tmp_path)
    board = VirtualBoard(tmp_path / "fs", heapsize=HEAP)
    try:
        assert main(["provision", "firmware", "--port", board.start(), "--firmware", str(fw)]) == 1
        err = capsys.readouterr().err
        assert "erasing the flash failed (esptool exit 2)" in err and "Failed to connect to ESP32" in err, err
        assert "hold the board's BOOT button" in err and "Run the same `firmware` command again" in err, err
    finally:
        board.cleanup()


def test_ctrl_c_mid_copy_is_told_like_any_cut(tmp_path: Path) -> None:
    dead_port = free_port()
    images = [make_image(tmp_path, n, GW_A, dead_port, keepalive_s=k) for n, k in (("A", 60), ("B", 61))]
    board = VirtualBoard(tmp_path / "fs", heapsize=HEAP)
    try:
        flash(images[0], board.start(), resume=True)

        def ctrl_c(p: Progress) -> None:
            if p.phase == "copy" and p.done_files == 10:
                raise KeyboardInterrupt

        with pytest.raises(FlashError, match=r"interrupted \(Ctrl-C\)\. The board still boots its old image "
                                             + image_hash(images[0])):
            flash(images[1], board.start(), resume=True, progress=ctrl_c)
        assert power_on(board).facts["image"] == image_hash(images[0])
    finally:
        board.cleanup()


def test_cut_during_the_switch_rename_is_told_as_either_image(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The one step the tool cannot know the outcome of: the board dies while the rename onto
    `active` is on the wire. The message names both images; the board boots one of them."""
    from provisioning import flash as flash_module

    dead_port = free_port()
    images = [make_image(tmp_path, n, GW_A, dead_port, keepalive_s=k) for n, k in (("A", 60), ("B", 61))]
    board = VirtualBoard(tmp_path / "fs", heapsize=HEAP)
    try:
        flash(images[0], board.start(), resume=True)
        real_run = flash_module.Board.run

        def run(self: flash_module.Board, code: str) -> bytes:
            if "os.rename('active.tmp', 'active')" in code:
                board.stop()  # the power cut, as the rename goes out
            return real_run(self, code)

        monkeypatch.setattr(flash_module.Board, "run", run)
        with pytest.raises(FlashError) as err:
            flash(images[1], board.start(), resume=True)
        monkeypatch.undo()
        assert "boots either its old image " + image_hash(images[0]) in str(err.value), err.value
        assert "or the new image " + image_hash(images[1]) in str(err.value), err.value
        booting = power_on(board).facts["image"]
        assert booting in _said(str(err.value), image_hash(images[0]), image_hash(images[1]))
    finally:
        board.cleanup()


def test_a_file_the_board_stored_wrong_is_caught_by_the_read_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sha256 of every file is read back from the board, the CA file included: a board that
    stores other bytes than were sent (flash wear, a full filesystem) is not switched to the image."""
    from provisioning import flash as flash_module

    dead_port = free_port()
    (tmp_path / "ca.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    old = make_image(tmp_path, "A", GW_A, dead_port)
    new = make_image(tmp_path, "B", GW_A, dead_port, tls=True, ca_file="ca.pem")
    assert "ca.pem" in json.loads((new / "manifest.json").read_text())["files"]
    board = VirtualBoard(tmp_path / "fs", heapsize=HEAP)
    try:
        flash(old, board.start(), resume=True)
        real_write = flash_module.Board.write

        def write(self: flash_module.Board, path: str, data: bytes, on_chunk: Any) -> None:
            if path.endswith("/ca.pem"):
                data = data.replace(b"MIIB", b"MIIC")  # what the board keeps is not what was sent
            real_write(self, path, data, on_chunk)

        monkeypatch.setattr(flash_module.Board, "write", write)
        with pytest.raises(FlashError) as err:
            flash(new, board.start(), resume=True)
        monkeypatch.undo()
        said = str(err.value)
        assert "the copy on the board differs from the image: 1 file(s) wrong or missing (ca.pem)" in said, \
            said
        assert f"The board still boots its old image {image_hash(old)}" in said, said
        assert power_on(board).facts["image"] == image_hash(old)
        # Through the same path without the fault: the image goes on and boots.
        flash(new, board.start(), resume=True)
        assert power_on(board).facts["image"] == image_hash(new)
    finally:
        board.cleanup()


def test_an_image_the_boards_micropython_cannot_load_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A board whose MicroPython cannot load the image's .mpy version is refused before anything is
    copied (it would stop at boot with `ValueError: incompatible .mpy file`), naming the firmware to
    install. The image here is made as a newer mpy-cross would (.mpy version 7) and re-manifested."""
    from provisioning.firmware import MANIFEST
    from provisioning.firmware import image_hash as hash_of

    dead_port = free_port()
    old = make_image(tmp_path, "A", GW_A, dead_port)
    future = make_image(tmp_path, "B", GW_A, dead_port, keepalive_s=61)
    manifest = json.loads((future / MANIFEST).read_text())
    for rel in manifest["files"]:
        if rel.endswith(".mpy"):
            data = bytearray((future / rel).read_bytes())
            data[1] = 7  # the .mpy version byte after the 'M'
            (future / rel).write_bytes(bytes(data))
            manifest["files"][rel] = hashlib.sha256(data).hexdigest()
    manifest["image"] = hash_of(manifest["files"])
    (future / MANIFEST).write_text(json.dumps(manifest))
    board = VirtualBoard(tmp_path / "fs", heapsize=HEAP)
    try:
        flash(old, board.start(), resume=True)
        before = board_files(board)
        capsys.readouterr()
        assert main(["provision", "flash", "--resume", "--no-self-test", "--port", board.start(),
                     str(future)]) == 1
        err = capsys.readouterr().err
        assert re.search(r"runs MicroPython 1\.\d+\.\d+ \(\.mpy v6\); this image needs \.mpy v7\. "
                         r"Nothing was changed\.", err), err
        assert "citybrain provision firmware --port " in err, err
        assert board_files(board) == before
        assert power_on(board).facts["image"] == image_hash(old)
    finally:
        board.cleanup()


def test_a_port_that_keeps_talking_without_a_repl_is_refused_in_bounded_time(tmp_path: Path) -> None:
    """The wrong port, with a device on it that streams (a GPS, a meter): `flash` says it found no
    MicroPython REPL there and that nothing was changed. It waited forever before, with nothing on
    the screen: mpremote's deadline for the raw REPL only counts while the port is silent."""
    import threading
    import tty

    image = make_image(tmp_path, "A", GW_A, free_port())
    master, slave = os.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)
    stop = threading.Event()

    def stream() -> None:
        while not stop.is_set():
            try:
                os.write(master, b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47\r\n")
            except BlockingIOError:
                pass  # nobody reads: the pty's buffer is full
            stop.wait(0.005)

    talker = threading.Thread(target=stream)
    talker.start()
    try:
        tool = [str(Path(sys.executable).parent / "citybrain"), "provision", "flash", "--quiet",
                "--no-self-test", "--port", os.ttyname(slave), str(image)]
        run = subprocess.run(tool, capture_output=True, text=True, timeout=60)  # a bound, 10 s expected
        assert run.returncode == 1, run.stdout + run.stderr
        assert f"cannot reach a MicroPython REPL on {os.ttyname(slave)}: no MicroPython raw REPL answered" \
            in run.stderr and "4807.038,N" in run.stderr and "Nothing was changed" in run.stderr, run.stderr
    finally:
        stop.set()
        talker.join()
        os.close(master)
        os.close(slave)
