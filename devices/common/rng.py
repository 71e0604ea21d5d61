"""A seeded xorshift32 generator for the simulators.

Simulators must replay the same frames for the same seed on CPython and on MicroPython (whose
`random` module differs and may be absent), so they use this instead of `random`.
"""


class Rng:
    __slots__ = ("state",)

    def __init__(self, seed=1):
        self.state = (seed & 0xFFFFFFFF) or 0x9E3779B9

    def next32(self):
        x = self.state
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        self.state = x
        return x

    def below(self, n):
        """An int in [0, n)."""
        return self.next32() % n

    def uniform(self, lo, hi):
        return lo + (hi - lo) * (self.next32() / 4294967296.0)

    def chance(self, p):
        return self.next32() < p * 4294967296.0

    def gauss(self, mu=0.0, sigma=1.0):
        """Approximate normal (Irwin-Hall, 12 uniforms): no math.log needed, bounded tails."""
        s = 0.0
        for _ in range(12):
            s += self.next32() / 4294967296.0
        return mu + (s - 6.0) * sigma
