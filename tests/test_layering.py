"""The direction of dependencies (docs/ARCHITECTURE): models, ops, data, objectives and weight I/O never import the
engine; the engine imports no objective, dataset or model module by name; the core imports no auxiliary family."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

VFM = Path(__file__).resolve().parents[1] / "vfm"


def imported_modules(path: Path) -> set[str]:
    """Every module an `import` or `from ... import` in `path` names (function-level imports included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def files(*packages: str) -> list[Path]:
    return [p for package in packages for p in sorted((VFM / package).rglob("*.py"))]


@pytest.mark.parametrize("path", files("models", "ops", "data", "objectives", "dist") + [VFM / "weights.py", VFM / "registry.py", VFM / "requirements.py"],
                         ids=lambda p: str(p.relative_to(VFM)))
def test_lower_layers_do_not_import_the_engine(path):
    assert not {m for m in imported_modules(path) if m.startswith("vfm.engine")}


@pytest.mark.parametrize("path", files("engine"), ids=lambda p: str(p.relative_to(VFM)))
def test_engine_names_no_objective_model_or_auxiliary_module(path):
    forbidden = ("vfm.objectives", "vfm.models", "vfm.theory", "vfm.task_arithmetic", "vfm.agents")
    assert not {m for m in imported_modules(path) if m.startswith(forbidden)}


def test_the_check_can_fail(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from vfm.engine.checkpoint import load_weights\n")
    assert "vfm.engine.checkpoint" in imported_modules(bad)
