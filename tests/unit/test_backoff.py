"""edge.mqtt.client.backoff_delays: exponential windows up to a cap, full jitter inside each window,
and no thundering herd — a fleet that lost the same broker must not reconnect together.

The tests draw from the simulators' seeded xorshift (devices.common.rng.Rng), so they are reproducible;
the only addition is a subclass that records the window each draw was asked for, so the exponent can
be checked exactly. The default source, the interpreter's `random`, is checked across processes.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator

from devices.common.rng import Rng
from edge.mqtt.client import backoff_delays


class WindowRng(Rng):
    """Rng that remembers each (lo, hi) it drew from."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.windows: list[tuple[float, float]] = []

    def uniform(self, lo: float, hi: float) -> float:
        self.windows.append((lo, hi))
        return float(super().uniform(lo, hi))


def take(gen: Iterator[float], n: int) -> list[float]:
    return [next(gen) for _ in range(n)]


def spread_seeds(n: int) -> list[int]:
    """n distinct 32-bit seeds, as os.urandom gives each gateway (fixed here: reproducible)."""
    src = Rng(0xC17B4A1)
    seeds: list[int] = []
    while len(seeds) < n:
        s = src.next32()
        if s not in seeds:
            seeds.append(s)
    return seeds


def worst_bucket(values: list[float], hi: float, buckets: int = 20) -> float:
    """Largest fraction of `values` in any of `buckets` equal slices of [0, hi]."""
    counts = [0] * buckets
    for v in values:
        counts[min(buckets - 1, int(v / hi * buckets))] += 1
    return max(counts) / len(values)


def test_window_doubles_from_base_to_the_cap_and_stays_there() -> None:
    rng = WindowRng(0x5EED1234)
    delays = take(backoff_delays(0.5, 30.0, rng), 12)
    his = [hi for _, hi in rng.windows]
    assert his == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0, 30.0, 30.0]
    assert all(lo == 0.0 for lo, _ in rng.windows)
    assert all(0.0 <= d <= hi for d, hi in zip(delays, his, strict=True))


def test_cap_below_base_caps_the_first_window_too() -> None:
    rng = WindowRng(7)
    take(backoff_delays(5.0, 2.0, rng), 4)
    assert [hi for _, hi in rng.windows] == [2.0, 2.0, 2.0, 2.0]


def test_full_jitter_fills_the_capped_window_uniformly() -> None:
    cap = 10.0
    gen = backoff_delays(1.0, cap, Rng(0xBEEF5EED))
    take(gen, 8)  # 1, 2, 4, 8, then the cap
    draws = take(gen, 20000)
    assert min(draws) >= 0.0 and max(draws) <= cap
    assert min(draws) < 0.01 * cap and max(draws) > 0.99 * cap  # the whole window, both ends
    assert abs(statistics.mean(draws) - cap / 2) < 0.02 * cap
    assert abs(statistics.pstdev(draws) - cap / 12**0.5) < 0.03 * cap  # uniform's sd, not a spike
    deciles = [0] * 10
    for d in draws:
        deciles[min(9, int(d / cap * 10))] += 1
    assert all(0.09 < c / len(draws) < 0.11 for c in deciles), deciles


def test_each_attempt_is_jittered_over_its_own_window_across_a_fleet() -> None:
    seeds = spread_seeds(2000)
    per_attempt = list(zip(*(take(backoff_delays(1.0, 60.0, Rng(s)), 8) for s in seeds), strict=True))
    for n, values in enumerate(per_attempt):
        hi = min(60.0, 2.0**n)
        assert all(0.0 <= v <= hi for v in values)
        assert abs(statistics.mean(values) - hi / 2) < 0.04 * hi, (n, statistics.mean(values))


def test_two_gateways_seeded_differently_do_not_reconnect_in_lockstep() -> None:
    a = take(backoff_delays(1.0, 60.0, Rng(0x1234ABCD)), 16)
    b = take(backoff_delays(1.0, 60.0, Rng(0x8BADF00D)), 16)
    t_a = t_b = 0.0
    close = 0
    for n in range(16):
        t_a += a[n]
        t_b += b[n]
        window = min(60.0, 2.0**n)
        if abs(a[n] - b[n]) < 0.02 * window:
            close += 1
    assert close <= 1, (a, b)
    assert abs(t_a - t_b) > 1.0  # their attempt times drift apart, not together


def test_a_fleet_spreads_every_attempt_over_its_window() -> None:
    """500 gateways lose the broker at once: no 5 % slice of any attempt's window gets > 10 % of them."""
    seeds = spread_seeds(500)
    per_attempt = list(zip(*(take(backoff_delays(1.0, 60.0, Rng(s)), 8) for s in seeds), strict=True))
    for n, values in enumerate(per_attempt):
        assert worst_bucket(list(values), min(60.0, 2.0**n)) < 0.10, n


def test_default_generators_do_not_repeat_each_other() -> None:
    """Without an rng the draws come from the interpreter's `random`: no two generators share a run."""
    runs = [tuple(take(backoff_delays(1.0, 60.0), 6)) for _ in range(50)]
    assert len(set(runs)) == 50
    firsts = [r[0] for r in runs]
    assert max(firsts) - min(firsts) > 0.5


_DEFAULT_DRAWS = (
    "from edge.mqtt.client import backoff_delays\n"
    "g = backoff_delays(1.0, 60.0)\n"
    "print([next(g) for _ in range(6)])"
)


def test_gateways_started_together_draw_their_own_delays() -> None:
    """The default jitter source (the interpreter's `random`) is seeded anew in every process, on
    CPython and on MicroPython: three gateways started together do not retry in step."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    micropython = Path(sys.executable).parent / "micropython"
    for interpreter in (sys.executable, str(micropython)):
        runs = [subprocess.run([interpreter, "-c", _DEFAULT_DRAWS], cwd=root, capture_output=True, text=True,
                               timeout=30) for _ in range(3)]
        assert all(r.returncode == 0 for r in runs), [r.stderr for r in runs]
        draws = [r.stdout for r in runs]
        assert all(d.startswith("[") for d in draws) and len(set(draws)) == 3, (interpreter, draws)
