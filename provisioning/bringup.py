"""Blank board bring-up: put the pinned MicroPython release on an ESP32 with esptool (PyPI).

`citybrain provision firmware --port /dev/ttyUSB0 --firmware ESP32_GENERIC-<date>-v1.29.0.bin`
runs, with the esptool next to this interpreter (or on PATH, or --esptool):

    esptool --chip esp32 --port /dev/ttyUSB0 erase-flash
    esptool --chip esp32 --port /dev/ttyUSB0 --baud 460800 write-flash -z 0x1000 <firmware.bin>

The firmware file is checked before anything touches the board: an ESP application image starts
with the byte 0xE9, and MicroPython's banner ("MicroPython v1.29.0 on ...") is a plain string in
it, from which the version is read and compared with the pinned release: the one the images are
built and tested with (mpy-cross and the unix port of the dev environment are 1.29.0). What a
board must really match is the .mpy version of the image's files, which `flash` checks on the
board before copying (`check_board_mpy`).

Not tried on hardware here (no board in CI): the command lines follow esptool 5's documented
`erase-flash` / `write-flash` and MicroPython's download page (offset 0x1000 for the original
ESP32, 0x0 for the S3 and C3).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from provisioning.fleet import FleetError

PINNED_VERSION = "1.29.0"  # the MicroPython release images are built and tested with (see above)
OFFSETS = {"esp32": "0x1000", "esp32s3": "0x0", "esp32c3": "0x0"}  # where the firmware image goes
ESP_IMAGE_MAGIC = 0xE9
_BANNER = re.compile(rb"MicroPython v(\d+\.\d+\.\d+)")


def find_esptool(explicit: str | None = None) -> str:
    if explicit:
        if not Path(explicit).is_file():
            raise FleetError(f"--esptool {explicit}: no such program")
        return explicit
    for name in ("esptool", "esptool.py"):
        beside = Path(sys.executable).parent / name
        if beside.exists():
            return str(beside)
        found = shutil.which(name)
        if found:
            return found
    raise FleetError("esptool not found: install it with `pip install esptool` (PyPI), "
                     "or pass --esptool PATH")


def firmware_version(path: Path) -> str:
    """The MicroPython version inside a firmware .bin; FleetError if it is not one."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FleetError(f"--firmware {path}: {exc.strerror}") from None
    if not data or data[0] != ESP_IMAGE_MAGIC:
        raise FleetError(f"--firmware {path}: not an ESP32 application image (it must start with byte 0xE9); "
                         "download the .bin for your board from micropython.org/download/ESP32_GENERIC")
    m = _BANNER.search(data)
    if m is None:
        raise FleetError(f"--firmware {path}: no MicroPython version string in it: "
                         "is it a MicroPython firmware?")
    return m.group(1).decode()


def commands(esptool: str, port: str, firmware: Path, *, chip: str = "esp32",
             baud: int = 460800) -> list[list[str]]:
    """The esptool command lines: erase the whole flash, then write the firmware at the chip's offset."""
    if chip not in OFFSETS:
        raise FleetError(f"--chip {chip}: one of {', '.join(OFFSETS)}")
    base = [esptool, "--chip", chip, "--port", port]
    return [[*base, "erase-flash"],
            [*base, "--baud", str(baud), "write-flash", "-z", OFFSETS[chip], str(firmware)]]


def install(port: str, firmware: Path, *, chip: str = "esp32", baud: int = 460800, esptool: str | None = None,
            allow_version: bool = False, dry_run: bool = False,
            say: Callable[[str], None] = print) -> list[list[str]]:
    """Erase the board and write the pinned MicroPython; the command lines run (or, dry, to run)."""
    version = firmware_version(firmware)
    if version != PINNED_VERSION and not allow_version:
        raise FleetError(f"--firmware {firmware} is MicroPython {version}; citybrain images are built for "
                         f"{PINNED_VERSION} (ESP32_GENERIC-<date>-v{PINNED_VERSION}.bin from "
                         "micropython.org/download/ESP32_GENERIC). Pass --allow-version to install it anyway")
    cmds = commands(find_esptool(esptool) if not dry_run else (esptool or "esptool"), port, firmware,
                    chip=chip, baud=baud)
    if dry_run:
        return cmds
    steps = (("erasing the flash", "the board may be partly erased and will not boot until `firmware` "
              "completes"),
             ("writing MicroPython " + version, "the board is erased (blank): it will not boot until "
              "`firmware` completes"))
    for cmd, (what, state) in zip(cmds, steps, strict=True):
        say(f"{what}: {' '.join(cmd)}")
        try:
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise FleetError(f"{what} failed: {exc}. {state}. "
                             "Run the same `firmware` command again") from None
        if result.returncode != 0:
            tail = (result.stderr.strip() or result.stdout.strip())[-400:]
            hint = ""
            if "connect" in tail.lower():
                hint = (" If esptool could not connect: hold the board's BOOT button while it starts, "
                        "check the cable (a data cable, not a charge-only one) and the port.")
            raise FleetError(f"{what} failed (esptool exit {result.returncode}): {tail}. {state}.{hint} "
                             "Run the same `firmware` command again")
    return cmds


def check_board_mpy(board_mpy: int | None, board_version: str, image_mpy: int, port: str) -> None:
    """Refuse a board whose MicroPython cannot load the image's .mpy files (FleetError in words)."""
    if board_mpy is not None and board_mpy & 0xFF == image_mpy:
        return
    have = f".mpy v{board_mpy & 0xFF}" if board_mpy is not None else "no .mpy support it reports"
    raise FleetError(
        f"the board on {port} runs MicroPython {board_version or '(unknown version)'} ({have}); this image "
        f"needs .mpy v{image_mpy}. Nothing was changed. Install the pinned release first: "
        f"citybrain provision firmware --port {port} --firmware ESP32_GENERIC-<date>-v{PINNED_VERSION}.bin")
