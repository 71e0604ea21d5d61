"""The layers import downwards only: devices/ (codecs, simulators) never imports edge/, so a kind
serves the board, the collector and the host tools without dragging the gateway agent along."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def test_devices_import_nothing_from_edge() -> None:
    files = sorted((ROOT / "devices").rglob("*.py"))
    assert len(files) > 10
    upward = [f"{f.relative_to(ROOT)}: {name}" for f in files for name in _imports(f)
              if name == "edge" or name.startswith("edge.")]
    assert upward == []
