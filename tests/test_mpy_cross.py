"""Every module of edge/ and devices/ compiles with mpy-cross, so syntax MicroPython lacks fails CI
(on the module that uses it) before anyone flashes a board."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_micropython import compile_mpy, find_tool, sources

MODULES = sources(("edge", "devices"))


def test_modules_found() -> None:
    assert Path("edge/compat.py") in MODULES


@pytest.mark.parametrize("rel", MODULES, ids=str)
def test_compiles(rel: Path, tmp_path: Path) -> None:
    proc = compile_mpy(find_tool("mpy-cross"), rel, tmp_path / rel.with_suffix(".mpy"))
    assert proc.returncode == 0, f"mpy-cross {rel}:\n{proc.stdout}{proc.stderr}"
    assert (tmp_path / rel.with_suffix(".mpy")).stat().st_size > 0
