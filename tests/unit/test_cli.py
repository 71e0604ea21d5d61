"""`citybrain` and every subcommand answer --help, exit codes follow the convention (0 ok, 1 a
check failed, 2 usage error), in-process and through the installed entry point; and `citybrain
simulate` round-trips every device kind that exists."""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import devices
from citybrain import cli
from hil.services import Mosquitto

COMMANDS = sorted(cli.COMMANDS)


def test_commands_listed() -> None:
    assert COMMANDS, "citybrain.cli.COMMANDS is empty"


def test_main_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_no_command_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert "usage: citybrain" in capsys.readouterr().out


def test_unknown_command_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["no-such-command"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize("name", COMMANDS)
def test_command_module_contract(name: str) -> None:
    module = importlib.import_module(cli.COMMANDS[name][0])
    assert callable(module.add_arguments) and callable(module.run)
    assert module.__doc__, f"{module.__name__} needs a docstring: it is the command's --help text"


@pytest.mark.parametrize("name", COMMANDS)
def test_command_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main([name, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: citybrain {name}")


@pytest.mark.parametrize("name", COMMANDS)
def test_command_rejects_unknown_option(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main([name, "--no-such-option"])
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_entry_point_and_module_run() -> None:
    """The installed `citybrain` script and `python -m citybrain.cli` reach the same parser."""
    script = Path(sys.executable).parent / "citybrain"
    found = str(script) if script.exists() else shutil.which("citybrain")
    assert found, "the citybrain entry point is not installed: run scripts/test (pip install -e .)"
    for cmd in ([found, "--help"], [sys.executable, "-m", "citybrain.cli", "--help"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert "usage: citybrain" in proc.stdout
    proc = subprocess.run([found], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2


def _kind_ready(kind: str) -> bool:
    base = Path(__file__).resolve().parents[2] / "devices" / kind
    return (base / "codec.py").exists() and (base / "sim.py").exists()


def _simulate(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code = cli.main(["simulate", "--json", "-q", "--start-ms", "1790000000000", *argv])
    return code, json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("kind", devices.KINDS)
def test_simulate_round_trip(kind: str, capsys: pytest.CaptureFixture[str]) -> None:
    if not _kind_ready(kind):
        pytest.skip(f"devices/{kind} codec/sim in progress")
    code, summary = _simulate(capsys, "--kind", kind, "--count", "60")
    [row] = summary["kinds"]
    assert row["problems"] == [] and code == 0
    assert row["frames"] == 60 and row["readings"] == 60
    assert row["lost"] == 0 and row["invented"] == 0 and row["errors"] == {}
    assert row["round_trip_ok"] and row["batches"] >= 1


@pytest.mark.parametrize("kind", devices.KINDS)
@pytest.mark.parametrize("fault", ["garbage", "truncate", "bad_crc"])
def test_simulate_faults_are_counted_never_invented(
    kind: str, fault: str, capsys: pytest.CaptureFixture[str]
) -> None:
    if not _kind_ready(kind):
        pytest.skip(f"devices/{kind} codec/sim in progress")
    argv = ("--kind", kind, "--count", "80", "--fault", fault, "--fault-rate", "0.5")
    code, summary = _simulate(capsys, *argv)
    [row] = summary["kinds"]
    assert code == 0, row["problems"]
    assert row["invented"] == 0
    assert sum(row["errors"].values()) > 0
    assert row["readings"] < row["frames"]


def test_simulate_same_seed_same_output(capsys: pytest.CaptureFixture[str]) -> None:
    kinds = [k for k in devices.KINDS if _kind_ready(k)]
    if not kinds:
        pytest.skip("no device kind ready yet")
    argv = ["simulate", "--kind", kinds[0], "--count", "10", "--seed", "7", "--start-ms", "1790000000000"]
    assert cli.main(argv) == 0
    first = capsys.readouterr().out
    assert cli.main(argv) == 0
    assert capsys.readouterr().out == first
    assert "frame " in first


def test_simulate_bad_option_values(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["simulate", "--sensors", "0"]) == 2
    assert "--sensors" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli.main(["simulate", "--publish", "localhost"])
    assert exc.value.code == 2 and "HOST:PORT" in capsys.readouterr().err


@pytest.mark.integration
def test_simulate_publish_through_a_broker(capsys: pytest.CaptureFixture[str], mosquitto: Mosquitto) -> None:
    kinds = [k for k in devices.KINDS if _kind_ready(k)]
    if not kinds:
        pytest.skip("no device kind ready yet")
    argv = [a for k in kinds for a in ("--kind", k)]
    code, summary = _simulate(capsys, "--publish", f"127.0.0.1:{mosquitto.port}", "--count", "40", *argv)
    assert summary["transport"] == f"mqtt broker 127.0.0.1:{mosquitto.port}"
    for row in summary["kinds"]:
        assert row["problems"] == [] and row["round_trip_ok"], row
    assert code == 0
