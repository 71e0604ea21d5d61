"""Dedup stage: exact recognition of (gw, channel, boot, seq), bounded per gateway and in gateways."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.dedup import Dedup


def test_seen_after_add_only() -> None:
    d = Dedup(window=4, max_gateways=2)
    assert not d.seen("gw", "up", 1, 0)
    d.add("gw", "up", 1, 0)
    assert d.seen("gw", "up", 1, 0)
    assert d.hits == 1
    assert not d.seen("gw", "up", 2, 0)  # a new boot restarts seq: not a duplicate
    assert not d.seen("gw", "alarm", 1, 0)  # alarms count their own seq
    assert not d.seen("other", "up", 1, 0)


def test_window_per_gateway_evicts_oldest() -> None:
    d = Dedup(window=3, max_gateways=10)
    for seq in range(5):
        d.add("gw", "up", 1, seq)
    assert [d.seen("gw", "up", 1, s) for s in range(5)] == [False, False, True, True, True]
    assert d.evicted_keys == 2
    assert len(d) == 3


def test_recently_seen_key_survives() -> None:
    d = Dedup(window=2, max_gateways=10)
    d.add("gw", "up", 1, 0)
    d.add("gw", "up", 1, 1)
    assert d.seen("gw", "up", 1, 0)  # touched: now the newest
    d.add("gw", "up", 1, 2)
    assert d.seen("gw", "up", 1, 0)
    assert not d.seen("gw", "up", 1, 1)


def test_gateway_cap_evicts_least_recent_gateway() -> None:
    d = Dedup(window=10, max_gateways=2)
    d.add("a", "up", 1, 1)
    d.add("b", "up", 1, 1)
    d.add("a", "up", 1, 2)  # a is now more recent than b
    d.add("c", "up", 1, 1)
    assert d.evicted_gateways == 1
    assert d.seen("a", "up", 1, 1) and d.seen("c", "up", 1, 1)
    assert not d.seen("b", "up", 1, 1)


def test_bad_bounds() -> None:
    with pytest.raises(ValueError):
        Dedup(window=0)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 2), st.integers(0, 20)), max_size=200))
def test_matches_an_exact_model_and_stays_bounded(ops: list[tuple[str, int, int]]) -> None:
    """Within the window the answer is exact: never a false positive, never a forgotten recent key."""
    d = Dedup(window=8, max_gateways=2)
    added: set[tuple[str, int, int]] = set()
    for gw, boot, seq in ops:
        hit = d.seen(gw, "up", boot, seq)
        if hit:
            assert (gw, boot, seq) in added  # no false positives
        d.add(gw, "up", boot, seq)
        added.add((gw, boot, seq))
        assert d.seen(gw, "up", boot, seq)  # the newest key is always remembered
        assert len(d) <= 8 * 2


def test_a_gateway_that_lost_its_state_file_is_not_taken_for_a_redelivery() -> None:
    """boot/seq restart at 1/0 after a flash wipe; the batch time tells the new batch apart."""
    d = Dedup(window=8)
    d.add("gw-1", "up", 1, 0, 1_700_000_000_000)
    assert d.seen("gw-1", "up", 1, 0, 1_700_000_000_000)  # the same batch again: a redelivery
    assert not d.seen("gw-1", "up", 1, 0, 1_800_000_000_000)  # same key, later batch: new data
