"""Device kinds: one sub-package per kind, named after its config key.

Each kind package holds `codec.py` (pure: bytes in, readings out), `sim.py` (a seeded simulator with
fault modes), `vectors.py` (wire test vectors as data) and a README. Shared helpers that are not a
device kind live in `devices.common`.

The agent imports only the kinds its config names, through `load`, so a board never pays the heap
for a codec it does not run.
"""

KINDS = ("parking", "manhole", "water", "thermometer")


def load(kind, part="codec"):
    """Import `devices.<kind>.<part>` by config key; unknown kinds are a ValueError naming the key."""
    if kind not in KINDS:
        raise ValueError("unknown device kind %r (known: %s)" % (kind, ", ".join(KINDS)))
    name = "devices." + kind + "." + part
    mod = __import__(name)
    return getattr(getattr(mod, kind), part)
