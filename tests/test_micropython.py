"""The portable tests under the real `micropython` interpreter, loading .mpy files as a board does.

edge/, devices/ and tests/portable/ are compiled with mpy-cross into a temp tree that mirrors the
packages and holds no .py source, so an import that only works from source (or a module that only
compiles under CPython) fails here. Each tests/portable/test_*.py module runs in its own
`micropython -X heapsize=128K` process through tests/portable/runner.py, so a failure names the
module and one module's heap use cannot hide another's.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("edge", "devices", "tests/portable")
HEAP = "128K"
PORTABLE_MODULES = sorted(p.stem for p in (ROOT / "tests" / "portable").glob("test_*.py"))
SUMMARY = re.compile(r"^(\d+) passed, (\d+) failed$")

pytestmark = pytest.mark.micropython


def find_tool(name: str) -> str:
    """The tool installed next to this interpreter (the venv's bin/), else the one on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found next to {sys.executable} or on PATH: run scripts/test to install it")
    return found


def sources(packages: tuple[str, ...] = PACKAGES) -> list[Path]:
    """Every .py under the given folders, relative to the repo root (found anew on each run)."""
    files: list[Path] = []
    for pkg in packages:
        files.extend(p.relative_to(ROOT) for p in (ROOT / pkg).rglob("*.py") if "__pycache__" not in p.parts)
    return sorted(files)


def compile_mpy(mpy_cross: str, rel: Path, out: Path) -> subprocess.CompletedProcess[str]:
    """Compile one module; `-s` keeps the repo-relative path in tracebacks."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [mpy_cross, "-s", str(rel), "-o", str(out), str(ROOT / rel)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="session")
def mpy_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tree of .mpy files mirroring the packages; modules that do not compile are left out (and named
    by tests/test_mpy_cross.py), so importing them fails in the modules that need them."""
    mpy_cross = find_tool("mpy-cross")
    tree = tmp_path_factory.mktemp("mpy")
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        list(pool.map(lambda rel: compile_mpy(mpy_cross, rel, tree / rel.with_suffix(".mpy")), sources()))
    assert not list(tree.rglob("*.py"))
    return tree


def test_32bit_build_is_32_bit_and_reads_the_images_mpy_format(micropython32: str) -> None:
    """The 32-bit build (scripts/setup) has 4-byte words and the .mpy version the image's mpy-cross emits."""
    probe = "import sys; print(sys.maxsize, sys.implementation._mpy & 0x3FF)"
    got = {}
    for name, exe in (("32", micropython32), ("64", find_tool("micropython"))):
        out = subprocess.run([exe, "-c", probe], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stdout + out.stderr
        maxsize, mpy = out.stdout.split()
        got[name] = (int(maxsize), int(mpy))
    assert got["32"][0] == 2**31 - 1 and got["64"][0] == 2**63 - 1
    # Low byte: the .mpy version; next two bits: the sub-version (bytecode). The arch bits differ.
    assert got["32"][1] == got["64"][1], got
    version = subprocess.run([find_tool("mpy-cross"), "--version"], capture_output=True, text=True).stdout
    mpy_version, mpy_sub = got["32"][1] & 0xFF, got["32"][1] >> 8
    assert f"mpy v{mpy_version}.{mpy_sub}" in version, (version, got)


def test_portable_modules_exist() -> None:
    assert "runner" not in PORTABLE_MODULES
    assert PORTABLE_MODULES, "no tests/portable/test_*.py modules found"


@pytest.mark.parametrize("bits", [64, 32])
@pytest.mark.parametrize("module", PORTABLE_MODULES)
def test_portable_module(
    module: str, bits: int, mpy_tree: Path, micropython32: str, record_property: pytest.RecordProperty
) -> None:
    # The same .mpy tree on both builds: a board is 32-bit (small ints of 31 bits, 4-byte words).
    micropython = find_tool("micropython") if bits == 64 else micropython32
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROPY")}
    # As on a board: frozen modules (asyncio, ...) first, then the compiled tree. MICROPYPATH
    # replaces the default path, so `.frozen` must be listed or the frozen modules vanish.
    env["MICROPYPATH"] = f".frozen:{mpy_tree}"
    # cwd is the .mpy tree, so no .py source from the checkout can shadow a compiled module.
    proc = subprocess.run(
        [micropython, "-X", f"heapsize={HEAP}", "-m", "tests.portable.runner", f"tests.portable.{module}"],
        cwd=mpy_tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    output = (proc.stdout + proc.stderr).strip()
    lines = output.splitlines()
    match = SUMMARY.match(lines[-1]) if lines else None
    assert match is not None, f"runner gave no summary (exit {proc.returncode}):\n{output}"
    passed, failed = int(match[1]), int(match[2])
    mem = [line for line in lines if line.startswith("mem_free=")]
    if mem:
        record_property("micropython_heap", mem[-1])
        print(f"{module}: {mem[-1]} (heap {HEAP})")
    assert failed == 0, f"{module} under micropython:\n{output}"
    assert passed > 0, f"{module} under micropython ran no tests:\n{output}"
    assert proc.returncode == 0, f"{module} under micropython exited {proc.returncode}:\n{output}"
