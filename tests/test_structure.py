"""The layout rules: sub-packages follow the data path, a lower layer never imports a higher one, no
import circles, ``paperlib`` imports only at module top, no private names across modules."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import paperlib

ROOT = Path(paperlib.__file__).resolve().parent
LAYERS = ["config", "data", "sae", "metrics", "autointerp", "stages", "report", "reproduce", "export", "cli",
          "__main__"]
"""Sub-packages (and the top-level command modules `reproduce`, `export`, `cli` and `__main__`) from the bottom of
the data path up."""


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__")
        out[name] = ast.parse(path.read_text())
    return out


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def _imports(tree: ast.Module, mods: dict) -> list[tuple[str, ast.AST, str | None]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("paperlib"):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.append((sub if sub in mods else node.module, node, a.name))
        elif isinstance(node, ast.Import):
            out += [(a.name, node, None) for a in node.names if a.name.startswith("paperlib")]
    return out


def test_every_module_belongs_to_a_layer():
    assert [m for m in _modules() if m != "paperlib" and _layer(m) is None] == []


def test_no_upward_imports():
    mods = _modules()
    bad = [(m, target) for m, tree in mods.items() if m != "paperlib"
           for target, _, _ in _imports(tree, mods) if target != "paperlib" and _layer(target) > _layer(m)]
    assert bad == []


def test_package_imports_only_at_module_top():
    mods = _modules()
    bad = []
    for m, tree in mods.items():
        top = {id(n) for n in tree.body}
        bad += [(m, t, node.lineno) for t, node, _ in _imports(tree, mods) if id(node) not in top]
    assert bad == []


def test_no_private_names_across_modules():
    mods = _modules()
    bad = [(m, t, name) for m, tree in mods.items() for t, _, name in _imports(tree, mods)
           if name and name.startswith("_")]
    assert bad == []


def test_no_import_circles():
    mods = _modules()
    graph = {m: {t for t, _, _ in _imports(tree, mods) if t in mods and t != "paperlib"} for m, tree in mods.items()}
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for t in graph[m]:
            if state.get(t) == 1:
                raise AssertionError("import circle: " + " -> ".join(stack + [m, t]))
            if t not in state:
                visit(t, stack + [m])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [])


def test_no_try_except_import_of_package_modules():
    for m, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Try):
                imports = [n for b in node.body for n in ast.walk(b) if isinstance(n, ast.ImportFrom)
                           and (n.module or "").startswith("paperlib")]
                assert not imports, f"{m}: paperlib import inside try"


def test_public_api_importable_from_the_package_and_its_modules():
    from paperlib.cooccurrence import count as c2
    from paperlib.models import BatchTopKSAE as B2
    from paperlib.penalty import decomposability_penalty as d2
    from paperlib.stats import welch as w2

    from paperlib import BatchTopKSAE, count, decomposability_penalty, phi, welch, within_stats

    assert (BatchTopKSAE, count, decomposability_penalty, welch) == (B2, c2, d2, w2)
    assert callable(phi) and callable(within_stats)


def test_the_code_passes_the_linter():
    """``make lint`` (ruff, configured in pyproject.toml) is part of ``make test``: a lint error fails CI."""
    ruff = pytest.importorskip("ruff")
    res = subprocess.run([sys.executable, "-m", "ruff", "check", "paperlib", "tests", "benchmarks"],
                         cwd=ROOT.parent, capture_output=True, text=True)
    assert res.returncode == 0, f"ruff {getattr(ruff, '__version__', '')}:\n{res.stdout}{res.stderr}"
