"""The gateway benches (bench/edge_*.py) run in their --quick mode and print and save their figures.

Only that: the speed and size goals are the benches' own business (a loaded CI machine must not
fail a test), so no figure is compared with a goal here. Each bench starts a private Mosquitto.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent

pytestmark = pytest.mark.integration


def _run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "bench" / script), "--quick", *args],
                          capture_output=True, text=True, timeout=240, cwd=str(ROOT))


def _figure(out: str, label: str) -> float:
    """The first number on the line that starts with `label`."""
    m = re.search(r"^" + re.escape(label) + r"\s+(-?[\d.]+)", out, re.M)
    assert m, f"no {label!r} line in:\n{out}"
    return float(m.group(1))


def test_throughput_bench_prints_and_saves(tmp_path: Path) -> None:
    saved = tmp_path / "tp.json"
    r = _run("edge_throughput.py", "--save", str(saved))
    assert r.returncode in (0, 1), r.stdout + r.stderr  # 1 = a goal missed, still a run
    rate = _figure(r.stdout, "throughput")
    fig = json.loads(saved.read_text())
    assert fig["readings_per_s"] == pytest.approx(rate, abs=1)
    assert fig["readings_acked"] == fig["readings_decoded"] == fig["subscriber_readings"] == 1000
    same = _run("edge_throughput.py", "--baseline", str(saved))
    assert re.search(r"^baseline\s+\d+ readings/s -> \d+ \([+-][\d.]+%\)", same.stdout, re.M), same.stdout


def test_flash_bench_prints_and_saves(tmp_path: Path) -> None:
    saved = tmp_path / "flash.json"
    r = _run("edge_flash.py", "--save", str(saved))
    assert r.returncode in (0, 1), r.stdout + r.stderr
    fig = json.loads(saved.read_text())
    assert _figure(r.stdout, "bytes written") == pytest.approx(fig["bytes_written_per_reading"], abs=0.01)
    assert fig["readings"] == fig["readings_acked"] == 300
    # The split adds up: records written plus those receipted before their sync (never written)
    # are every record taken (payload + 7-byte header); the small atomic files come on top.
    written_or_skipped = fig["record_bytes_per_reading"] + fig["skipped_bytes_per_reading"]
    assert written_or_skipped == pytest.approx(fig["payload_bytes_per_reading"] + 7, abs=0.02)
    assert fig["link"] == "online" and fig["latency_p99_ms"] > 0


def test_flash_bench_takes_each_kinds_share(tmp_path: Path) -> None:
    saved = tmp_path / "flash.json"
    r = _run("edge_flash.py", "--shares", "parking=0.9,thermometer=0.1", "--save", str(saved))
    assert r.returncode in (0, 1), r.stdout + r.stderr
    fig = json.loads(saved.read_text())
    assert fig["kinds"] == {"parking": 270, "thermometer": 30}
    assert fig["readings"] == fig["readings_acked"] == 300


@pytest.mark.micropython
def test_memory_bench_prints_and_saves(tmp_path: Path, micropython32: str) -> None:
    saved = tmp_path / "mem.json"
    r = _run("edge_memory.py", "--heap", "1M", "--save", str(saved))
    assert r.returncode in (0, 1), r.stdout + r.stderr
    fig = json.loads(saved.read_text())
    assert fig["word_bits"] == 32  # the default interpreter is the 32-bit build
    assert fig["sensors"] == {"parking": 20, "thermometer": 6, "manhole": 12}
    assert _figure(r.stdout, "peak live heap") == fig["peak_alloc"]
    assert "growth slope" in r.stdout and "gc.mem_alloc" in r.stdout
    assert fig["readings_uplinked"] >= 1000
    assert len(fig["alloc_by_readings"]) >= 5
    assert fig["image_kinds"] == ["manhole", "parking", "thermometer"]
    kinds = {m.split(".")[1] for m in fig["modules"] if m.count(".") >= 1} - {"common"}
    assert sorted(kinds) == fig["image_kinds"]  # only the configured kinds were imported


@pytest.mark.micropython
def test_memory_bench_runs_the_sensor_count_and_mix_asked_for(tmp_path: Path, micropython32: str) -> None:
    saved = tmp_path / "mem.json"
    r = _run("edge_memory.py", "--sensors", "parking=30,manhole=5", "--mix", "parking=3,manhole=1",
             "--save", str(saved))
    assert r.returncode in (0, 1), r.stdout + r.stderr
    fig = json.loads(saved.read_text())
    assert fig["sensors"] == {"parking": 30, "manhole": 5}
    assert fig["mix"] == {"parking": 0.75, "manhole": 0.25}
    assert fig["image_kinds"] == ["manhole", "parking"]  # no thermometer source, so no codec for it
    assert fig["readings_uplinked"] >= 1000
    assert re.search(r"^sensors\s+parking 30 \(75% of readings\), manhole 5 \(25% of readings\); 35 in all",
                     r.stdout, re.M), r.stdout
    bad = subprocess.run([sys.executable, str(ROOT / "bench" / "edge_memory.py"), "--sensors", "water=3"],
                         capture_output=True, text=True, timeout=60, cwd=str(ROOT))
    assert bad.returncode == 2 and "'water=3' is not KIND=VALUE" in bad.stderr, bad.stderr


@pytest.mark.micropython
def test_memory_bench_runs_with_receipts_off_and_reports_interned_names(
        tmp_path: Path, micropython32: str) -> None:
    saved = tmp_path / "mem.json"
    r = _run("edge_memory.py", "--quick", "--no-receipts", "--save", str(saved))
    assert r.returncode in (0, 1), r.stdout + r.stderr
    fig = json.loads(saved.read_text())
    assert fig["receipts"] is False and "; receipts off" in r.stdout, r.stdout
    assert fig["readings_uplinked"] >= 1000  # PUBACKs alone drain the log
    names = re.search(r"^interned names\s+(\d+) qstrs in (\d+) pools, (\d+) B", r.stdout, re.M)
    assert names, r.stdout
    assert [int(g) for g in names.groups()] == [fig["qstrs"], fig["qstr_pools"], fig["qstr_bytes"]]
    assert fig["qstrs"] > 500 and fig["qstr_pools"] >= 5  # the agent's own names: real figures, not absent


@pytest.mark.micropython
def test_memory_bench_names_the_stage_of_a_memory_error(tmp_path: Path, micropython32: str) -> None:
    r = _run("edge_memory.py", "--heap", "48K")
    assert r.returncode == 1, r.stdout + r.stderr
    assert re.search(r"MemoryError while '\w+'", r.stdout), r.stdout
    assert "live heap by stage" in r.stdout


@pytest.mark.micropython
def test_code_size_bench_lists_what_a_running_agent_keeps(tmp_path: Path) -> None:
    saved = tmp_path / "code.json"
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "edge_code_size.py"), "--save", str(saved)],
                       capture_output=True, text=True, timeout=240, cwd=str(ROOT))
    assert r.returncode == 0, r.stdout + r.stderr
    fig = json.loads(saved.read_text())
    rows = {m["module"].split(" ")[0]: m for m in fig["modules"]}
    total = re.search(r"^total \((\d+) rows\)\s+(\d+)", r.stdout, re.M)
    assert total, r.stdout
    assert int(total.group(1)) == len(fig["modules"])
    assert int(total.group(2)) == fig["total_live"] == sum(m["live"] for m in fig["modules"])
    for name in ("edge.agent", "edge.mqtt.client", "devices.parking.codec", "devices.manhole.codec"):
        assert rows[name]["live"] > 0
    # Code a board needs only at boot or on demand is not resident for the run.
    for lazy in ("edge.config", "edge.command", "edge.cbor_decode", "edge.store.boot", "edge.mqtt.refused",
                 "edge.start", "edge.mqtt.connect"):
        assert not any(m["module"].startswith(lazy) or lazy in m["module"] for m in fig["modules"]), lazy


@pytest.mark.micropython
def test_memory_bench_sends_a_first_command_and_reports_the_names_it_adds(
        tmp_path: Path, micropython32: str) -> None:
    saved = tmp_path / "mem.json"
    r = _run("edge_memory.py", "--command-at", "500", "--save", str(saved))
    assert r.returncode in (0, 1), r.stdout + r.stderr
    cmd = json.loads(saved.read_text())["command"]
    assert cmd["sent"] and cmd["reply"][0]["id"] == "bench-1" and cmd["reply"][0]["ok"] is True, cmd
    # edge.command and the decoder are loaded by the command: their names are added then
    assert cmd["qstrs_after"] > cmd["qstrs_before"] > 500, cmd
    line = re.search(r"^first command .* interned names (\d+) \(\d pools\) before -> (\d+) ", r.stdout, re.M)
    assert line and [int(g) for g in line.groups()] == [cmd["qstrs_before"], cmd["qstrs_after"]], r.stdout
    assert cmd["free_at_128k_after"] == 128 * 1024 - cmd["peak_alloc_after"]
