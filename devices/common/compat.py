"""`const` on both interpreters, for devices/ and edge/ alike (devices/ imports nothing from edge/).

MicroPython's `const` folds `_X = const(1)` at compile time (mpy-cross does it because the name is
`const`); on CPython it is the identity. edge.compat re-exports it, so edge modules keep one import.
"""

try:
    from micropython import const
except ImportError:  # CPython

    def const(value):
        return value
