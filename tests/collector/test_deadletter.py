"""The dead-letter store keeps its bounds (size, age, payload prefix), counts what it drops, and
its refusal log says one line per (reason, gateway) episode."""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from pathlib import Path

import pytest

from collector.deadletter import DeadLetters, EpisodeLog


def test_an_oversized_payload_keeps_its_digest_and_a_prefix(tmp_path: Path) -> None:
    dead = DeadLetters(tmp_path / "d.sqlite", payload_max=1024)
    try:
        huge = bytes(range(256)) * 40960  # 10 MiB
        dead.add("too_large", "10 MiB", "city/gw-1/up", huge, gateway="gw-1")
        [e] = dead.list()
        assert e.truncated and e.size == len(huge) and e.payload == huge[:1024]
        assert e.digest == hashlib.sha256(huge).hexdigest() and e.gateway == "gw-1"
        assert dead.stats()["dead_letter_truncated"] == 1
    finally:
        dead.close()
    assert (tmp_path / "d.sqlite").stat().st_size < 1024 * 1024


def test_a_flood_stays_within_max_bytes_and_drops_are_counted(tmp_path: Path) -> None:
    dead = DeadLetters(tmp_path / "d.sqlite", max_bytes=200_000, payload_max=4096)
    try:
        for i in range(500):
            dead.add("bad_cbor", f"flood {i}", "city/gw-x/up", bytes([i % 256]) * 4000, gateway="gw-x")
            assert dead.bytes <= 200_000
        kept = dead.total()
        assert 0 < kept < 500
        assert dead.dropped["size"] == 500 - kept
        assert dead.counts["bad_cbor"] == kept
        assert [e.detail for e in dead.list(newest=True, limit=1)] == ["flood 499"]  # newest kept
    finally:
        dead.close()


def test_entries_past_max_age_are_dropped_at_open_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "d.sqlite"
    dead = DeadLetters(path)
    dead.add("bad_cbor", "old", "t", b"x")
    dead.add("bad_cbor", "new", "t", b"y")
    dead.close()
    db = sqlite3.connect(path)
    db.execute("UPDATE dead_letters SET at_ms = at_ms - 8 * 86400 * 1000 WHERE detail = 'old'")
    db.commit()
    db.close()
    dead = DeadLetters(path, max_age_s=7 * 86400)
    try:
        assert [e.detail for e in dead.list()] == ["new"]
        assert dead.dropped["age"] == 1 and dead.counts["bad_cbor"] == 1
    finally:
        dead.close()


def test_a_store_from_an_older_collector_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "d.sqlite"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE dead_letters (id INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL, reason TEXT NOT NULL,"
        " detail TEXT NOT NULL, topic TEXT NOT NULL, payload BLOB NOT NULL)"
    )
    db.execute("INSERT INTO dead_letters VALUES (1, 1, 'bad_cbor', 'd', 't', x'ff')")
    db.commit()
    db.close()
    dead = DeadLetters(path, max_age_s=1e12)
    try:
        [e] = dead.list()
        assert (e.reason, e.payload, e.gateway, e.truncated) == ("bad_cbor", b"\xff", "", False)
    finally:
        dead.close()


def test_one_line_per_episode_a_reminder_while_it_lasts_and_a_summary(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ep = EpisodeLog(quiet_s=60.0, logger=logging.getLogger("test.refused"))
    with caplog.at_level(logging.WARNING, logger="test.refused"):
        for i in range(141):  # 70 s of flood from gw-1, one refusal every 0.5 s
            ep.note("bad_cbor", "gw-1", "junk", "ab" * 32, now=i * 0.5)
            if i == 10:
                ep.note("bad_cbor", "gw-2", "junk", "cd" * 32, now=5.0)  # once
        ep.flush(now=200.0)  # quiet: the episode ends
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("refused bad_cbor from gateway gw-1: junk [payload sha256:abababababababab]")
    assert lines[1].startswith("refused bad_cbor from gateway gw-2")
    assert lines[2].startswith("still refusing bad_cbor from gateway gw-1: 120 more in 60 s")
    assert lines[3].startswith("refusals bad_cbor from gateway gw-1 stopped: 20 more since the last line")
    assert len(lines) == 4  # gw-2 had no repeats to summarise
    assert ep.suppressed_total == 140
