"""Run portable test modules without pytest, so the same files run under `micropython` on a board heap.

    micropython -X heapsize=128K -m tests.portable.runner tests.portable.test_crc [...]

Imports each named module, calls every `test_*` function (sorted by name; MicroPython keeps no
definition order), prints one line per failure and closes with the plain line `N passed, M failed`,
which tests/test_micropython.py parses. Exit status 1 if anything failed or a module did not import.
"""

import gc
import sys


def _where(exc):
    """`file:line` of the innermost frame, so a bare `assert` still says which line failed."""
    try:
        import io

        buf = io.StringIO()
        if hasattr(sys, "print_exception"):  # MicroPython
            sys.print_exception(exc, buf)
        else:
            import traceback

            traceback.print_exception(type(exc), exc, exc.__traceback__, file=buf)
        where = ""
        for line in buf.getvalue().split("\n"):
            line = line.strip()
            if line.startswith("File "):
                where = line
        return where
    except Exception:  # reporting must never hide the failure itself
        return ""


def _describe(exc):
    return "%s: %s [%s]" % (type(exc).__name__, exc, _where(exc))


def run_module(name):
    """(passed, failed) for one module; an import error counts as one failure."""
    try:
        module = __import__(name, None, None, ["_"])
    except Exception as exc:
        print("ERROR import %s: %s" % (name, _describe(exc)))
        return 0, 1
    passed = failed = 0
    for attr in sorted(dir(module)):
        if not attr.startswith("test_"):
            continue
        func = getattr(module, attr)
        if not callable(func):
            continue
        gc.collect()
        try:
            func()
        except Exception as exc:  # every failure is counted, the run goes on
            failed += 1
            print("FAIL %s.%s: %s" % (name, attr, _describe(exc)))
        else:
            passed += 1
    return passed, failed


def main(names):
    if not names:
        print("usage: runner.py MODULE [MODULE ...]")
        return 2
    passed = failed = 0
    for name in names:
        p, f = run_module(name)
        passed += p
        failed += f
    gc.collect()
    if hasattr(gc, "mem_free"):
        print("mem_free=%d mem_alloc=%d" % (gc.mem_free(), gc.mem_alloc()))
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
