"""How the block rig's poller (hil/block.py) remembers rows, without a database: a row that shows
more of a point replaces the partial one and dates its sighting; a contradicting row is kept apart."""

from __future__ import annotations

from typing import Any

from hil.block import Poller


def poller() -> Poller:
    return Poller(None, 0.25, 0)  # type: ignore[arg-type]  # the database is not touched here


ROW: dict[str, Any] = {"time": 1000, "gw": "gw-01", "sensor": "T-1", "seq": 7, "body_c": 36.5, "kind": None}


def test_a_fuller_row_of_the_same_point_replaces_the_partial_one() -> None:
    p = poller()
    assert p._see("thermometer", {"time": 1000, "gw": "gw-01", "sensor": "T-1", "seq": 7}, 10.0) == 1
    assert p._see("thermometer", ROW, 10.25) == 0
    assert p._see("thermometer", ROW, 10.5) == 0
    ((key, seen),) = p.first_seen.items()
    assert seen == 10.25 and p.rows[key][1] == ROW


def test_nulls_do_not_make_a_new_point_and_a_contradiction_is_kept_apart() -> None:
    p = poller()
    assert p._see("thermometer", ROW, 10.0) == 1
    assert p._see("thermometer", {**ROW, "ambient_c": None}, 10.5) == 0
    assert p._see("thermometer", {**ROW, "body_c": 39.0}, 11.0) == 1
    assert p.count() == 2
    assert p._see("thermometer", {**ROW, "gw": "gw-02"}, 11.0) == 1  # another gateway's sensor
