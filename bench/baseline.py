"""Saved figures for the benches: `--save FILE` writes them, `--baseline FILE` reads them back.

Why: every bench saves its figures as JSON and compares a later run with them, and each one had its
own copy of the same tail: two flags, a guarded read that says why a baseline file cannot be used
(exit status 2), and the write. They live here so that every bench reports an unusable baseline in
the same words and saves in the same layout (indented, keys sorted, so two saved files diff line by
line). What to compare, and how much change fails, stays in each bench: that is its goal.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# What a baseline file that is missing, unreadable, not JSON, or short of a figure raises on reading.
_UNUSABLE = (OSError, ValueError, KeyError, TypeError)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `--save FILE` and `--baseline FILE` to a bench's command line."""
    parser.add_argument("--save", metavar="FILE", help="write the figures as JSON")
    parser.add_argument("--baseline", metavar="FILE", help="compare with figures saved by --save")


def read(path: str | os.PathLike[str], figure: str, *more: str) -> dict[str, Any] | None:
    """The figures saved in `path` by `save`, once each named figure is there and is a number.

    None when the file cannot be used, after saying why on stderr
    (`bench: cannot read baseline FILE: reason`): the bench then exits with status 2. Read it
    before a long run where possible, so that a bad baseline does not cost the run.
    """
    try:
        saved: dict[str, Any] = json.loads(Path(path).read_text())
        for name in (figure, *more):
            float(saved[name])
    except _UNUSABLE as exc:
        print(f"bench: cannot read baseline {path}: {exc}", file=sys.stderr)
        return None
    return saved


def save(path: str | os.PathLike[str], figures: Mapping[str, Any]) -> None:
    """Write `figures` to `path` as JSON (indent 2, keys sorted, a final newline)."""
    Path(path).write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
