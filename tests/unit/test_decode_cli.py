"""`citybrain decode`: payloads made by edge.protocol shown with names and UTC times; garbage -> exit 1."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from citybrain import decode
from edge import command, protocol

ROOT = Path(__file__).resolve().parent.parent.parent
T0 = 1767225600000  # 2026-01-01T00:00:00Z


def _batch() -> bytes:
    e = protocol.BatchEncoder(512)
    e.begin(3, 42, T0)
    assert e.add("P-00001", 1, T0 + 1500, (True, 1, 17, None, None, None, 3612, -97))
    assert e.add("西湖-井盖-07", 2, T0 - 250, (2.5, False))
    return bytes(e.finish())


def _run(args: list[str], stdin: bytes = b"") -> tuple[int, str, str]:
    """The command in a subprocess, as a user runs it (stdin, exit status, no traceback)."""
    code = (
        "import argparse, sys\n"
        "from citybrain import decode\n"
        "p = argparse.ArgumentParser(prog='citybrain decode')\n"
        "decode.add_arguments(p)\n"
        "sys.exit(decode.run(p.parse_args(sys.argv[1:])))\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, *args], input=stdin, capture_output=True, timeout=60, cwd=str(ROOT)
    )
    return r.returncode, r.stdout.decode("utf-8"), r.stderr.decode("utf-8")


def test_raw_file_text_output(tmp_path: Path) -> None:
    f = tmp_path / "batch.cbor"
    f.write_bytes(_batch())
    rc, out, err = _run([str(f)])
    assert rc == 0, err
    assert "boot 3" in out and "seq 42" in out and "t0 2026-01-01T00:00:00.000Z" in out
    assert "2026-01-01T00:00:01.500Z  P-00001  parking" in out
    assert "occupied=true" in out and "battery_mv=3612 mV" in out and "rssi_dbm=-97 dBm" in out
    assert "2025-12-31T23:59:59.750Z  西湖-井盖-07  manhole" in out
    assert "Traceback" not in err


def test_hex_stdin_with_spaces_and_json() -> None:
    hexs = _batch().hex()
    spaced = "\n".join(
        " ".join(hexs[i : i + 2] for i in range(j, min(j + 32, len(hexs)), 2))
        for j in range(0, len(hexs), 32)
    )
    rc, out, err = _run(["--json", "--topic", "city/gw-01/up"], spaced.encode())
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["type"] == "batch" and doc["gw"] == "gw-01" and doc["seq"] == 42
    r0 = doc["readings"][0]
    assert r0["sensor"] == "P-00001" and r0["ts"] == T0 + 1500 and r0["time"] == "2026-01-01T00:00:01.500Z"
    assert r0["fields"]["occupied"]["value"] is True
    assert r0["fields"]["battery_mv"] == {"value": 3612, "unit": "mV"}
    assert doc["problems"] == []


def test_alarm_status_reply_guessed() -> None:
    e = protocol.BatchEncoder(256)
    alarm = bytes(protocol.encode_alarm(e, 3, 1, "low_battery", "P-00002", 1, T0, (False, 0, 5)))
    rc, out, _ = _run([], alarm.hex().encode())
    assert rc == 0 and "ALARM low_battery" in out and "P-00002" in out
    rc, out, _ = _run(["--json"], protocol.will_payload("1.2.0", 9))
    doc = json.loads(out)
    assert rc == 0 and doc["type"] == "status" and doc["state"] == "offline" and doc["boot"] == 9
    w = bytearray()
    protocol.encode_status(w, "online", "1.2.0", 9, 60, 50000, 0, 0, 0, True, T0, {"P-00001": {"bad_crc": 1}})
    rc, out, _ = _run([], bytes(w))
    assert rc == 0 and "ts: 1767225600000  (2026-01-01T00:00:00.000Z)" in out and "bad_crc" in out
    w = bytearray()
    command.encode_reply(w, "c-9", "unknown_op")
    rc, out, _ = _run(["--topic", "reply"], bytes(w))
    assert rc == 0 and "reply" in out and "unknown_op" in out


def test_receipt_shown_as_ranges() -> None:
    """A receipt (docs/protocol.md's vector) guessed from its keys, or named by its topic."""
    vector = "a40001010702841828182a182d182d03820303"
    rc, out, _ = _run([], vector.encode())
    assert rc == 0 and "receipt  (19 bytes)" in out and "up: 40-42, 45" in out and "alarm: 3" in out
    rc, out, _ = _run(["--json", "--topic", "city/gw-01/ack"], vector.encode())
    doc = json.loads(out)
    assert doc["type"] == "receipt" and doc["boot"] == 7 and doc["gw"] == "gw-01"
    assert doc["up"] == ["40-42", "45"] and doc["alarm"] == ["3"]
    # One the gateway would refuse (lo > hi) is refused here with the same verdict.
    rc, _, err = _run(["--topic", "ack"], b"a400010107028202010380")
    assert rc == 1 and "not a receipt the gateway accepts" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("stdin", "args", "message"),
    [
        (b"", [], "empty input"),
        (b"hello world", [], "not a CBOR payload"),
        (b"a5 00 0", ["--format", "hex"], "not hex text"),
        (b"\x83\x01\x02\x03", [], "not a citybrain payload"),
        (_batch(), ["--topic", "city/gw-01/nonsense"], "last part must be one of"),
        (_batch(), ["--topic", "status"], "text keys"),
        (_batch()[:-2], [], "truncated"),
    ],
)
def test_garbage_exits_1_without_traceback(stdin: bytes, args: list[str], message: str) -> None:
    rc, _out, err = _run(args, stdin)
    assert rc == 1
    assert message in err and "Traceback" not in err


def test_missing_file() -> None:
    rc, _, err = _run(["/nonexistent/batch.cbor"])
    assert rc == 1 and "cannot read" in err and "Traceback" not in err


def test_structural_problems_reported() -> None:
    import cbor2

    bad = cbor2.dumps({0: 1, 1: 3, 2: 1, 3: 1000, 4: [["x", 1, 0, {99: 1}], "junk", ["y", 77, 0, {}]]})
    doc, problems, _ = decode.decode(bad, None)
    assert len(doc["readings"]) == 2
    assert any("index 99" in p for p in problems)
    assert any("reading 1 is not" in p for p in problems)
    assert any("unknown kind code 77" in p for p in problems)
    assert any("before 2020" in p for p in problems)


def test_help_teaches() -> None:
    p = argparse.ArgumentParser(prog="citybrain decode", description=decode.__doc__)
    decode.add_arguments(p)
    text = p.format_help()
    assert "examples:" in text and "--topic" in text and "--json" in text and "hex" in text


def test_protocol_doc_examples_are_what_the_code_makes() -> None:
    """docs/protocol.md's hex examples must not drift from edge/protocol.py."""
    import re

    from edge import cbor

    doc = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")
    e = protocol.BatchEncoder(512)
    e.begin(7, 42, T0)
    e.add("P-00012", 1, T0, (True, 1, 305, 212, -268, -731, 3612, -97))
    e.add("体温-东门-2", 4, T0 + 1250, (37.5, 21.25, 88, 42, True))
    alarm = protocol.BatchEncoder(256)
    reply = bytearray()
    command.encode_reply(reply, "op-20260101-001", None, {"sources": 1})
    made = [
        bytes(e.finish()),
        bytes(
            protocol.encode_alarm(
                alarm, 7, 3, "fever", "体温-东门-2", 4, T0 + 1250, (38.5, 21.25, 89, 40, True)
            )
        ),
        protocol.will_payload("1.0.0", 7),
        cbor.dumps(
            {"id": "op-20260101-001", "op": "set", "args": {"kind": "water", "deadband": {"ph": 0.05}}}
        ),
        bytes(reply),
    ]
    shown = re.findall(r"`([0-9a-f]{40,})`", doc)
    assert shown == [m.hex() for m in made]
    for h in shown:
        _, problems, _ = decode.decode(h.encode(), None)
        assert problems == []


def test_values_the_collector_refuses_are_reported() -> None:
    """The same verdict as the collector's validator: the kind registry's types and ranges."""
    import cbor2

    readings = [
        ["T-1", 4, 0, {0: "36.6"}],
        ["T-2", 4, 1, {0: 36}],
        ["T-3", 4, 2, {0: 50.0}],
        ["T\u200b4", 4, 3, {0: 36.6}],
    ]
    doc, problems, _ = decode.decode(cbor2.dumps({0: 1, 1: 3, 2: 1, 3: T0, 4: readings}), None)
    assert len(doc["readings"]) == 4
    assert [p.split(": ")[0] for p in problems] == ["reading 0", "reading 2", "reading 3"], problems
    assert "field_type: thermometer.body_c: text where float is due" in problems[0]
    assert "out_of_range" in problems[1] and "bad_sensor_id" in problems[2]


def test_every_kind_shows_its_units() -> None:
    """Units come from each kind's host half (sim_encode), imported by name: a codec no longer
    forwards unknown names to it, so a lookup on the codec would find no units at all."""
    from devices import registry

    table = decode.Kinds().table
    assert sorted(table) == sorted(registry.by_code())
    for name, fields, units in table.values():
        assert len(units) == len(fields) and any(units), name
    assert table[1][2][3] == "mG" and table[4][2][0] == "°C"
