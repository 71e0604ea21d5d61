"""Type-check the board runtime against the ESP32 stubs of the pinned MicroPython release.

The board runtime (edge/ports/board.py and every module a board imports) has never run on an
ESP32 in CI. This runs mypy over it with MicroPython's own API in place of CPython's: the
`micropython-esp32-stubs` package (pinned in pyproject.toml's dev extra to the firmware release
the field guide installs) and its `micropython-stdlib-stubs` replace typeshed, so a call the ESP32
firmware does not have (a misspelt `machine.UART` keyword, `network.WLAN.isconected`,
`ntptime.settimee`, `machine.WDT(timout=...)`, `time.monotonic`) is an error here, before a board
meets it. What it cannot show is in docs/gateway.md ("What is checked without a board").

The modules: those reachable by import statements (also inside functions) from edge/main.py and
edge/ports/board.py, plus every kind's codec (a board loads them by name, devices.load), less
the Linux runtime that edge.main.main picks by sys.platform. mypy runs with
`--platform esp32`, so `sys.platform` branches are judged as on the board.

edge/ and devices/ have no annotations (no typing at runtime on a board), so mypy infers types
inside function bodies (--check-untyped-defs). The error codes that only report its guesses about
our own unannotated variables (assignment, var-annotated, has-type, union-attr, no-redef,
operator, misc) are off; what stays on is what a wrong call into the platform produces:
attr-defined, call-arg, arg-type, call-overload, name-defined, import-not-found and the rest.
Attributes set outside `__init__` are declared under `if _TYPE_CHECKING:` (a folded const(0):
the board compiler drops the block), and the few stub gaps carry a `# type: ignore[code]` with
the reason (unused ignores are errors too).

examples:
  python scripts/board_types.py                     check the board modules (scripts/test runs this)
  python scripts/board_types.py --list              only list the modules it would check
  python scripts/board_types.py /tmp/try_uart.py    check other files against the same stubs
"""

from __future__ import annotations

import argparse
import ast
import importlib.metadata as md
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STUBS = ("micropython-esp32-stubs", "micropython-stdlib-stubs")
ENTRY = ("edge/main.py", "edge/ports/board.py")
LINUX_ONLY = ("edge.ports.posix",)  # edge.main.main: only where sys.platform is linux/darwin
OFF = ("assignment", "var-annotated", "has-type", "union-attr", "no-redef", "operator", "misc")


def _module_file(name: str) -> Path | None:
    base = ROOT / name.replace(".", "/")
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imported(path: Path) -> list[str]:
    """Module names one file imports, anywhere in it (`from a import b` gives a and a.b)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names += [f"{node.module}.{a.name}" for a in node.names]
    return names


def board_modules() -> list[Path]:
    """The repo files a board imports, found from the entry points (see the module docstring)."""
    import devices

    todo = [ROOT / p for p in ENTRY] + [ROOT / "devices" / k / "codec.py" for k in devices.KINDS]
    seen: set[Path] = set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in _imported(path):
            parts = name.split(".")
            linux_only = any(name == m or name.startswith(m + ".") for m in LINUX_ONLY)
            if parts[0] not in ("edge", "devices") or linux_only:
                continue
            for i in range(1, len(parts) + 1):  # a package's __init__ runs before its module
                found = _module_file(".".join(parts[:i]))
                if found is not None and found not in seen:
                    todo.append(found)
    return sorted(seen)


def typeshed(into: Path) -> Path:
    """A typeshed folder made of the installed stub packages: stdlib-stubs' `stdlib/` and
    `stubs/`, with every ESP32 module added to `stdlib/` (listed in VERSIONS), so mypy takes them
    as the standard library and keeps the stubs' own inconsistencies out of the report."""
    stdlib = into / "stdlib"
    added: list[str] = []
    for dist_name in STUBS:
        try:
            dist = md.distribution(dist_name)
        except md.PackageNotFoundError:
            raise SystemExit(f"board_types: {dist_name} is not installed: pip install -e '.[dev]'") from None
        for f in dist.files or ():
            parts = f.parts
            if not str(f).endswith(".pyi"):
                continue
            if dist_name == "micropython-stdlib-stubs" and parts[0] in ("stdlib", "stubs"):
                target = into.joinpath(*parts)
            elif dist_name == "micropython-esp32-stubs":
                target = stdlib.joinpath(*parts)
                if len(parts) == 1 or parts[-1] == "__init__.pyi":
                    added.append(parts[0].removesuffix(".pyi"))
            else:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(str(dist.locate_file(f))), target)
        if dist_name == "micropython-stdlib-stubs":
            versions = dist.locate_file("stdlib/VERSIONS")
            shutil.copyfile(Path(str(versions)), stdlib / "VERSIONS")
    with open(stdlib / "VERSIONS", "a") as out:
        out.writelines(f"{name}: 3.0-\n" for name in sorted(set(added)))
    return into


def check(files: list[Path]) -> int:
    """mypy's exit status for `files` against the ESP32 stubs (its report goes to stdout)."""
    from mypy import api

    with tempfile.TemporaryDirectory(prefix="citybrain-esp32-typeshed-") as tmp:
        args = [
            "--config-file=",  # not pyproject's [tool.mypy]: that one skips edge/ and devices/
            "--custom-typeshed-dir", str(typeshed(Path(tmp))),
            "--platform", "esp32",
            "--python-version", "3.11",
            "--check-untyped-defs",
            "--follow-imports", "silent",
            "--always-true", "_TYPE_CHECKING",
            "--warn-unused-ignores",
            "--no-incremental",
            "--cache-dir", str(Path(tmp) / "cache"),
            "--show-error-codes",
            *[a for code in OFF for a in ("--disable-error-code", code)],
            *[str(f) for f in files],
        ]
        out, err, status = api.run(args)
    sys.stdout.write(out)
    sys.stderr.write(err)
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("files", nargs="*", type=Path, help="files to check instead of the board modules")
    parser.add_argument("--list", action="store_true", help="print the board modules and exit")
    args = parser.parse_args(argv)
    files = args.files or board_modules()
    if args.list:
        print("\n".join(str(f.relative_to(ROOT)) for f in files))
        return 0
    versions = ", ".join(f"{d} {md.version(d)}" for d in STUBS if _installed(d))
    print(f"board types: {len(files)} files against {versions or 'no stubs'}", flush=True)
    return 1 if check(files) else 0


def _installed(dist: str) -> bool:
    try:
        md.version(dist)
    except md.PackageNotFoundError:
        return False
    return True


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
