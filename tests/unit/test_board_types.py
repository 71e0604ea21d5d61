"""scripts/board_types.py, the board runtime's type check against the ESP32 stubs, fails on a wrong
platform call: the real edge/ports/board.py with one call misspelt, and a WiFi snippet (the board
runtime has no WLAN code yet). scripts/test runs the check itself over the board modules."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BOARD = (ROOT / "edge" / "ports" / "board.py").read_text()

# (what is misspelt in board.py, the misspelling, what mypy must say)
MISTAKES = (
    ("rx=Pin(int(parts[2])), timeout=0)", "rx=Pin(int(parts[2])), timout=0)",
     'Unexpected keyword argument "timout"'),
    ("UART(uid, baud, timeout=0)", 'UART(uid, "9600", timeout=0)',
     'matches argument types "int", "str", "int"'),
    ("WDT(timeout=_WDT_MS)", "WDT(timout=_WDT_MS)", 'Unexpected keyword argument "timout" for "WDT"'),
    ("ntptime.settime()", "ntptime.settimee()", 'Module has no attribute "settimee"'),
    ("machine.reset()", "machine.rest()", 'Module has no attribute "rest"'),
    ("n = self.uart.any()", "n = self.uart.anyy()", '"UART" has no attribute "anyy"'),
)

WLAN_GOOD = """import network


def join(ssid, key):
    wlan = network.WLAN(network.WLAN.IF_STA)
    wlan.active(True)
    if not wlan.isconnected():
        wlan.connect(ssid, key)
    return wlan.ifconfig()[0]
"""
WLAN_MISTAKES = (
    ("wlan.isconnected()", "wlan.isconected()", '"WLAN" has no attribute "isconected"'),
    ("network.WLAN(network.WLAN.IF_STA)", "network.WLAM(network.WLAN.IF_STA)",
     'Module has no attribute "WLAM"'),
    ("wlan.connect(ssid, key)", "wlan.connect(ssid, key, timeout=5)",
     'Unexpected keyword argument "timeout"'),
)


def _check(*files: Path) -> tuple[int, str]:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "board_types.py"), *map(str, files)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout + proc.stderr


def test_board_code_as_it_is_passes_and_each_wrong_call_fails(tmp_path: Path) -> None:
    """One mypy run over board.py and a WiFi snippet as they are (no error) and each with one
    wrong call (errors on that line only, one of them saying what is wrong; an overloaded call
    such as UART's also says that no variant matches)."""
    cases = [(BOARD, *m) for m in MISTAKES] + [(WLAN_GOOD, *m) for m in WLAN_MISTAKES]
    good = [tmp_path / "board_ok.py", tmp_path / "wifi_ok.py"]
    good[0].write_text(BOARD)
    good[1].write_text(WLAN_GOOD)
    bad = []
    for i, (text, right, wrong, _) in enumerate(cases):
        assert text.count(right) == 1, right  # the mutation hits the call it means
        bad.append(tmp_path / f"bad{i}.py")
        bad[-1].write_text(text.replace(right, wrong))
    status, out = _check(*good, *bad)
    assert status == 1, out
    errors = [ln for ln in out.splitlines() if ": error:" in ln]
    assert [e for e in errors if "_ok.py:" in e] == []
    for path, (text, right, wrong, said) in zip(bad, cases, strict=True):
        line = 1 + text[: text.index(right)].count("\n")
        mine = [e for e in errors if e.startswith(f"{path}:")]
        assert mine and all(e.startswith(f"{path}:{line}: error:") for e in mine), (wrong, mine)
        assert any(said in e for e in mine), (wrong, said, mine)


def test_the_stubs_are_those_of_the_firmware_the_field_guide_installs() -> None:
    """A new firmware pin (provisioning.bringup.PINNED_VERSION) needs the stubs of that release."""
    import importlib.metadata as md

    from provisioning.bringup import PINNED_VERSION

    stubs = md.version("micropython-esp32-stubs")
    assert stubs == PINNED_VERSION or stubs.startswith(PINNED_VERSION + ".post"), (stubs, PINNED_VERSION)
