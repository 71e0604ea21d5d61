"""Heap cost of each module a running gateway agent keeps loaded, on MicroPython, as .mpy.

Why: a board loads .mpy files into its heap (bytecode, function and class objects, global
dicts, and the names they intern), so on a 128 KB heap every module's share matters, and
`edge_memory.py` only shows the total. This builds the board image for the same config as
`edge_memory.py` (two serial sources, one MQTT source), asks a MicroPython process which modules
an agent built from it holds (`edge.agent`, the posix port, the configured sources and kinds),
orders them so each module's own imports come first, and imports them one at a time in a fresh
process, measuring after each `gc.collect()`:

  live    the live heap it added (gc.mem_alloc), including any qstr pool it made grow
  qstrs   the names it interned (identifiers, attribute names, short strings)
  pools   the bytes of qstr pools and string data it added (part of `live`): MicroPython grows
          the pool by doubling, so the import that crosses a boundary pays for the next pool

The sum is the code a board carries for the whole run; `edge_memory.py` shows the rest
(objects, buffers, tasks). Exit status 1 with --baseline if the total grew by more than 1 KB.
`--source FILE` adds a source block (e.g. devices/water/sample.json, a Modbus bus) to that config,
its port pointed at /dev/null, so the code of a transport the default mix lacks is counted too.

    python bench/edge_code_size.py [--heap 1M] [--save FILE] [--baseline FILE] [--o3] [--source FILE]
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import baseline  # noqa: E402
from bench.edge_memory import MICROPYTHON, config_for  # noqa: E402
from provisioning.firmware import build  # noqa: E402

# Builds what edge.main builds, then lists what stays imported (argv: config path).
RESIDENT = r"""
import sys
sys.path[0] = ""
from edge.main import load_config
cfg = load_config(sys.argv[1])
from edge.agent import Agent
from edge.ports.posix import PosixPort
agent = Agent(cfg, PosixPort(False))
from edge.ports.tty import Tty
print(" ".join(sorted(m for m in sys.modules if m.split(".")[0] in ("edge", "devices"))))
"""

# Imports argv[1:] in order: after each, the live heap, then qstr_info's line
# "qstr pool: n_pool=.., n_qstr=.., n_str_data_bytes=.., n_total_bytes=..", parsed by `_rows`.
MEASURE = r"""
import gc, sys, micropython
sys.path[0] = ""  # as on a board: modules found relative to the image's root, "edge/agent.mpy"
import asyncio

SEEN = set(sys.modules)

def mark(name):
    gc.collect()
    print("MODULE", name, gc.mem_alloc(), " ".join(m for m in sys.modules if m not in SEEN and m != name))
    SEEN.update(sys.modules)
    micropython.qstr_info()

mark("asyncio")
for name in sys.argv[1:]:
    if name not in SEEN:
        __import__(name)
        mark(name)
"""


def _rows(lines: list[str]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    marks: list[tuple[str, int, dict[str, int]]] = []
    for ln in lines:
        if ln.startswith("MODULE "):
            _tag, name, alloc, *also = ln.split()
            if also:  # a package's __init__ that imports its submodules: one row for all
                name += " (+" + ", ".join(sorted(also)) + ")"
            marks.append((name, int(alloc), {}))
        elif ln.startswith("qstr pool:") and marks:
            for part in ln.split(":", 1)[1].split(","):
                k, v = part.strip().split("=")
                marks[-1][2][k] = int(v)
    rows = [{"module": name, "live": alloc - marks[i][1], "qstrs": q["n_qstr"] - marks[i][2]["n_qstr"],
             "pools": q["n_total_bytes"] - marks[i][2]["n_total_bytes"]}
            for i, (name, alloc, q) in enumerate(marks[1:])]
    return rows, marks[-1][2]


def _module_file(image: Path, name: str) -> Path | None:
    base = image.joinpath(*name.split("."))
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        src = ROOT / cand.relative_to(image)
        if src.exists():
            return src
    return None


def _imports(src: Path, package: str) -> set[str]:
    """Modules `src` imports at module level (lazy imports inside functions come later)."""
    found: set[str] = set()
    for node in ast.parse(src.read_text()).body:
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            mod = node.module if node.level == 0 else package + "." + node.module
            found.add(mod)
            found.update(mod + "." + a.name for a in node.names)
    return found


def import_order(image: Path, resident: list[str]) -> list[str]:
    """`resident` ordered so every module comes after the resident modules it imports."""
    deps: dict[str, set[str]] = {}
    for name in resident:
        src = _module_file(image, name)
        package = name if src is not None and src.name == "__init__.py" else name.rpartition(".")[0]
        found = _imports(src, package) if src is not None else set()
        # A package is imported before its submodules.
        parts = name.split(".")
        found.update(".".join(parts[:i]) for i in range(1, len(parts)))
        deps[name] = {d for d in found if d in resident and d != name}
    order: list[str] = []
    done: set[str] = set()

    def visit(n: str, stack: tuple[str, ...]) -> None:
        if n in done or n in stack:
            return
        for d in sorted(deps[n]):
            visit(d, (*stack, n))
        done.add(n)
        order.append(n)

    for n in sorted(resident):
        visit(n, ())
    return order


def _run(micropython: Path, heap: str, image: Path, script: str, args: list[str]) -> list[str]:
    path = image / "_bench_driver.py"
    path.write_text(script)
    # As on a board: the image is the current folder, so modules are found as "edge/agent.mpy".
    env = dict(os.environ, MICROPYPATH=".frozen:.")
    out = subprocess.run([str(micropython), "-X", "heapsize=" + heap, str(path), *args], env=env,
                         capture_output=True, text=True, cwd=str(image), timeout=60)
    path.unlink()
    if out.returncode != 0:
        raise RuntimeError(f"micropython failed ({out.returncode}):\n{out.stdout}{out.stderr}")
    return out.stdout.splitlines()


def measure(micropython: Path, heap: str, o3: bool, extra: tuple[Path, ...] = ()) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="edge-code-"))
    try:
        cfg_path = tmp / "config.json"
        ttys = {"parking": "/dev/null", "thermometer": "/dev/null"}
        cfg = config_for(1883, 1884, ttys, str(tmp / "spool"), 1)
        for path in extra:
            cfg["sources"].append({**json.loads(path.read_text()), "port": "/dev/null"})
        cfg_path.write_text(json.dumps(cfg))
        image = tmp / "image"
        image_bytes = build(cfg_path, image, progress=lambda _s: None, optimise=3 if o3 else 0)
        # The image's config.json, beside its config.checked: loaded as a board loads it.
        resident = _run(micropython, heap, image, RESIDENT, [str(image / "config.json")])[-1].split()
        order = import_order(image, resident)
        modules, last = _rows(_run(micropython, heap, image, MEASURE, order))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"heap": heap, "o3": o3, "sources": [str(p) for p in extra], "image_bytes": image_bytes,
            "modules": modules,
            "total_live": sum(r["live"] for r in modules), "total_pools": sum(r["pools"] for r in modules),
            "total_qstrs": last["n_qstr"], "pool_count": last["n_pool"]}


def report(fig: dict[str, Any]) -> None:
    print(f"{'module':44} {'live B':>8} {'qstrs':>6} {'pools B':>8}")
    for r in sorted(fig["modules"], key=lambda r: -r["live"]):
        print(f"{r['module']:44} {r['live']:8d} {r['qstrs']:6d} {r['pools']:8d}")
    print(f"{'total (' + str(len(fig['modules'])) + ' rows)':44} {fig['total_live']:8d} "
          f"{fig['total_qstrs']:6d} {fig['total_pools']:8d}")
    print(f"image {fig['image_bytes']} B on flash; {fig['pool_count']} qstr pools; "
          f"-O3 {'on' if fig['o3'] else 'off'}; heap {fig['heap']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heap", default="1M", help="micropython -X heapsize (default 1M: room to measure)")
    parser.add_argument("--micropython", type=Path, default=MICROPYTHON,
                        help="interpreter (default .venv/bin/micropython)")
    parser.add_argument("--o3", action="store_true", help="build the image with mpy-cross -O3")
    parser.add_argument("--source", type=Path, action="append", default=[],
                        help="add this source block (JSON) to the config, e.g. devices/water/sample.json")
    baseline.add_arguments(parser)
    args = parser.parse_args(argv)
    if not args.micropython.exists():
        print(f"bench: needs {args.micropython}", file=sys.stderr)
        return 2
    fig = measure(args.micropython, args.heap, args.o3, tuple(args.source))
    report(fig)
    status = 0
    if args.baseline:
        base = baseline.read(args.baseline, "total_live")
        if base is None:
            return 2
        old = int(base["total_live"])
        was = {r["module"]: r["live"] for r in base.get("modules", [])}
        for r in fig["modules"]:
            d = r["live"] - was.get(r["module"], 0)
            if abs(d) >= 256:
                print(f"  {r['module']:32} {d:+d} B")
        print(f"baseline        code on the heap {old} B -> {fig['total_live']} B "
              f"({fig['total_live'] - old:+d} B)")
        if fig["total_live"] > old + 1024:
            print("FAIL: the resident code grew by more than 1 KB")
            status = 1
    if args.save:
        baseline.save(args.save, fig)
    return status


if __name__ == "__main__":
    sys.exit(main())
