"""Compile collector/_fastup.c into collector/ with the machine's C compiler (run by scripts/setup).

    .venv/bin/python scripts/build_fastup.py

setuptools' build_ext does the compiler and flag lookup (the flags CPython was built with, so the
extension matches the interpreter); the result lands beside the source, where `collector._fastup`
imports it. Exit status 1 if the build fails: the collector then runs its pure path.
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
from pathlib import Path

from setuptools import Distribution, Extension

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    (ROOT / "collector" / "_fastup.build").unlink(missing_ok=True)
    ext = Extension(
        "collector._fastup",
        sources=[str(ROOT / "collector" / "_fastup.c")],
        # never -ffast-math: the float formatting relies on IEEE division and fma being exact
        extra_compile_args=["-O2", "-fno-fast-math", "-Wall", "-Wextra", "-Wno-unused-parameter"],
        libraries=["m"],
    )
    dist = Distribution({"name": "citybrain-fastup", "ext_modules": [ext]})
    cmd = dist.get_command_obj("build_ext")
    cmd.inplace = True
    with tempfile.TemporaryDirectory() as tmp:
        cmd.build_temp = tmp
        cmd.ensure_finalized()
        try:
            cmd.run()
        except Exception as exc:  # CompileError, LinkError, a missing compiler: reported, not raised
            print(f"build_fastup: {exc}", file=sys.stderr)
            return 1
    source = ROOT / "collector" / "_fastup.c"
    (ROOT / "collector" / "_fastup.build").write_text(hashlib.sha256(source.read_bytes()).hexdigest() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
