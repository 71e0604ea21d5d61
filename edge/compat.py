"""The few names that differ between CPython and MicroPython, in one place.

`const` is defined in devices.common.compat (devices/ must not import edge/) and re-exported here,
so edge modules import it with the other names: mpy-cross still folds `X = const(1)` at build time
because the name is `const`.
"""

from devices.common.compat import const  # used below, and re-exported for edge modules

try:
    from time import ticks_add, ticks_diff, ticks_ms
except ImportError:  # CPython
    import time  # not `as _time`: `time` is a name MicroPython has built in, `_time` one more to intern

    _TICKS_PERIOD = const(1 << 30)

    def ticks_ms():
        return int(time.monotonic() * 1000) & (_TICKS_PERIOD - 1)  # type: ignore[attr-defined]  # CPython

    def ticks_diff(a, b):
        d = (a - b) & (_TICKS_PERIOD - 1)
        if d >= _TICKS_PERIOD // 2:
            d -= _TICKS_PERIOD
        return d

    def ticks_add(a, b):
        return (a + b) & (_TICKS_PERIOD - 1)


IS_MICROPYTHON = False
try:
    import sys  # not `as _sys`, as `time` above

    IS_MICROPYTHON = sys.implementation.name == "micropython"
except AttributeError:
    pass


def unload(name):
    """Forget module `name` so the GC can take back its code: for code a board runs once (config
    checks, log recovery at boot) and should not keep in its heap for the whole run.

    MicroPython only: CPython has the memory, and a re-import there would make new classes (a
    second ConfigError) for code that kept the first module.
    """
    if not IS_MICROPYTHON:
        return
    import gc

    sys.modules.pop(name, None)
    parent, _, leaf = name.rpartition(".")
    pkg = sys.modules.get(parent)
    if pkg is not None and leaf in pkg.__dict__:
        delattr(pkg, leaf)
    gc.collect()
