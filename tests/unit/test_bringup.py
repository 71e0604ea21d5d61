"""Blank board bring-up (`provision firmware`): the esptool command lines and every refusal, and the
.mpy version check `flash` makes. No ESP32 here: see tests/integration/test_flash_safe.py for
esptool itself failing against a board that is not in its bootloader."""

from __future__ import annotations

from pathlib import Path

import pytest

from citybrain.cli import main
from provisioning.bringup import PINNED_VERSION, check_board_mpy, commands, firmware_version
from provisioning.fleet import FleetError


def fake_firmware(tmp: Path, version: str = PINNED_VERSION, magic: bytes = b"\xe9") -> Path:
    """A file shaped like a MicroPython ESP32 .bin where it matters: the image magic, the banner."""
    path = tmp / f"ESP32_GENERIC-20260829-v{version}.bin"
    banner = f"MicroPython v{version} on 2026-08-29; Generic ESP32 module with ESP32".encode()
    path.write_bytes(magic + b"\x03\x02\x20" + bytes(64) + banner + bytes(64))
    return path


def test_command_lines_per_chip(tmp_path: Path) -> None:
    fw = tmp_path / "fw.bin"
    erase, write = commands("/x/esptool", "/dev/ttyUSB0", fw)
    assert erase == ["/x/esptool", "--chip", "esp32", "--port", "/dev/ttyUSB0", "erase-flash"]
    assert write == ["/x/esptool", "--chip", "esp32", "--port", "/dev/ttyUSB0", "--baud", "460800",
                     "write-flash", "-z", "0x1000", str(fw)]
    s3 = commands("esptool", "/dev/ttyACM0", fw, chip="esp32s3", baud=115200)[1]
    assert s3[s3.index("--baud") + 1] == "115200" and s3[s3.index("-z") + 1] == "0x0"
    with pytest.raises(FleetError, match="--chip esp8266: one of esp32, esp32s3, esp32c3"):
        commands("esptool", "/dev/ttyUSB0", fw, chip="esp8266")


def test_dry_run_prints_the_esptool_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fw = fake_firmware(tmp_path)
    assert main(["provision", "firmware", "--port", "/dev/ttyUSB0", "--firmware", str(fw), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["esptool --chip esp32 --port /dev/ttyUSB0 erase-flash",
                     f"esptool --chip esp32 --port /dev/ttyUSB0 --baud 460800 write-flash -z 0x1000 {fw}"]


def _no_banner(tmp: Path) -> Path:
    path = tmp / "other.bin"
    path.write_bytes(b"\xe9" + bytes(100))  # an ESP image, but not MicroPython's
    return path


@pytest.mark.parametrize(("make", "message"), [
    (lambda t: t / "missing.bin", "No such file or directory"),
    (lambda t: fake_firmware(t, magic=b"P"), "not an ESP32 application image"),
    (lambda t: _no_banner(t), "no MicroPython version string"),
    (lambda t: fake_firmware(t, "1.19.1"),
     f"is MicroPython 1.19.1; citybrain images are built for {PINNED_VERSION}"),
])
def test_bad_firmware_files_are_refused_before_the_board_is_touched(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], make: object, message: str) -> None:
    fw = make(tmp_path)  # type: ignore[operator]
    assert main(["provision", "firmware", "--port", "/dev/ttyUSB0", "--firmware", str(fw), "--dry-run"]) == 1
    assert message in capsys.readouterr().err


def test_other_version_with_allow_version_and_missing_esptool(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    fw = fake_firmware(tmp_path, "1.27.0")
    assert firmware_version(fw) == "1.27.0"
    assert main(["provision", "firmware", "--port", "/dev/ttyUSB0", "--firmware", str(fw),
                 "--allow-version", "--esptool", str(tmp_path / "no-esptool")]) == 1
    err = capsys.readouterr().err
    assert f"--esptool {tmp_path / 'no-esptool'}: no such program" in err, err


def test_board_mpy_version_check() -> None:
    check_board_mpy(2822, "1.29.0", 6, "/dev/ttyUSB0")  # the unix port here: .mpy v6.3 on x64
    with pytest.raises(FleetError, match=r"MicroPython 1\.18\.0 \(\.mpy v5\); this image needs \.mpy v6"):
        check_board_mpy(5, "1.18.0", 6, "/dev/ttyUSB0")
    with pytest.raises(FleetError, match="provision firmware --port /dev/ttyUSB0"):
        check_board_mpy(None, "1.12.0", 6, "/dev/ttyUSB0")
