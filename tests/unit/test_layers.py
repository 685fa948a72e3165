"""Layers import only downward: jobs -> pipeline -> review -> transforms -> schemas (docs/ARCHITECTURE.md)."""
from __future__ import annotations

import ast
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
#: Lowest first: a package may import itself and those before it, never those after it.
LAYERS = ("schemas", "transforms", "review", "pipeline", "jobs")


def _imported_packages(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return {name.split(".")[0] for name in names}


@pytest.mark.parametrize("layer", LAYERS)
def test_no_import_runs_upward(layer):
    above = set(LAYERS[LAYERS.index(layer) + 1:])
    upward = {str(path.relative_to(REPO)): sorted(_imported_packages(path) & above)
              for path in sorted((REPO / layer).rglob("*.py"))}
    assert {path: packages for path, packages in upward.items() if packages} == {}
