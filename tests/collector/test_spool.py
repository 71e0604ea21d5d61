"""The spool: FIFO, bounded, refuses instead of crashing when full, keeps commits across kill -9."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from collector.spool import Spool

ROOT = Path(__file__).resolve().parents[2]


def rows_text(sp: Spool) -> list[bytes]:
    return [body for _, body, _ in sp.head(10**9)]


def test_fifo_group_commit_and_delete_through(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "s.db", 10_000)
    assert sp.append([(b"a 1", 1), (b"b 2\nc 3", 2)]) == 2  # one group, one row
    assert sp.append([(b"d 4", 1)]) == 1
    assert (sp.rows, sp.lines, sp.bytes) == (2, 4, len(b"a 1\nb 2\nc 3") + 3)
    head = sp.head(3)
    assert [(b, n) for _, b, n in head] == [(b"a 1\nb 2\nc 3", 3)]  # stops once 3 lines are reached
    sp.delete_through(head[-1][0])
    assert rows_text(sp) == [b"d 4"] and (sp.rows, sp.lines, sp.bytes) == (1, 1, 3)
    sp.delete_through(sp.head(1)[-1][0])
    assert sp.head(10) == [] and (sp.rows, sp.lines, sp.bytes) == (0, 0, 0)
    assert sp.append([(b"e 5", 1)]) == 1
    assert rows_text(sp) == [b"e 5"]
    sp.close()


def test_counts_survive_reopen_and_ids_keep_increasing(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "s.db", 10_000)
    sp.append([(b"x 1", 1)])
    first = sp.head(1)[0][0]
    sp.delete_through(first)
    sp.append([(b"y 2", 1), (b"z 3", 1)])
    sp.close()
    sp = Spool(tmp_path / "s.db", 10_000)
    assert (sp.rows, sp.lines, sp.bytes) == (1, 2, 7)
    assert sp.head(10)[0][0] > first
    assert sp.oldest_age_s() >= 0.0
    sp.close()


def test_full_spool_refuses_new_data_and_warns_at_high_water(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="collector.spool")
    sp = Spool(tmp_path / "s.db", 100, high_water=0.5)
    assert sp.append([(b"x" * 40, 1)]) == 1
    assert not any("high-water" in r.message for r in caplog.records)
    assert sp.append([(b"y" * 20, 1), (b"z" * 60, 1)]) == 1  # the second does not fit: a prefix
    assert any("above high-water" in r.message for r in caplog.records)
    assert any(r.levelno == logging.ERROR and "spool full" in r.message for r in caplog.records)
    assert sp.refused == 1
    assert sp.append([(b"w" * 60, 1)]) == 0
    assert sp.refused == 2
    assert rows_text(sp) == [b"x" * 40, b"y" * 20]
    sp.delete_through(sp.head(10)[-1][0])  # drained: room again
    assert sp.append([(b"w" * 60, 1)]) == 1
    sp.close()


def test_disk_full_is_a_refusal_not_a_crash(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="collector.spool")
    sp = Spool(tmp_path / "s.db", 10**9)
    pages = sp._db.execute("PRAGMA page_count").fetchone()[0]
    # The file may not grow past its current size: SQLite raises "database or disk is full".
    sp._db.execute(f"PRAGMA max_page_count={pages + 2}")
    assert sp.append([(b"a" * 100, 1)]) == 1
    assert sp.append([(b"b" * 200_000, 1)]) == 0
    assert "full" in sp.last_error
    assert any("disk is full" in r.message for r in caplog.records)
    assert (sp.rows, sp.lines) == (1, 1)  # the refused append left nothing behind
    assert rows_text(sp) == [b"a" * 100]
    assert sp.append([(b"c" * 10, 1)]) == 1  # still usable
    sp.close()


def test_committed_rows_survive_kill_9(tmp_path: Path) -> None:
    """A child appends and reports each commit; after SIGKILL every reported commit is there."""
    db = tmp_path / "s.db"
    child = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from collector.spool import Spool
        sp = Spool({str(db)!r}, 10**9)
        i = 0
        while True:
            sp.append([(b"m v=%di %d" % (i, i), 1), (b"m v=%di %d" % (i + 1, i + 1), 1)])
            i += 2
            print(i, flush=True)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    committed = 0
    while committed < 2000:
        committed = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    proc.stdout.close()
    sp = Spool(db, 10**9)
    lines = b"\n".join(rows_text(sp)).split(b"\n")
    assert len(lines) >= committed
    assert lines == [b"m v=%di %d" % (i, i) for i in range(len(lines))]  # in order, no gaps
    sp.close()
