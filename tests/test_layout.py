"""The layout's promise holds: one package per stage, imports pointing down only (the
import-linter contract in pyproject.toml), no import cycle anywhere, and the old flat module
paths still import (with a DeprecationWarning naming the new one)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import grimp
import pytest

from tests.conftest import ROOT

LINT = Path(sys.executable).with_name("lint-imports")
STAGES = ["model", "tiny", "recipe", "plan", "data", "ship", "use", "train", "cli"]


def _lint(cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT), "--config", str(cwd / "pyproject.toml"), "--no-cache"],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(cwd), "PATH": ""},
    )


def test_the_layers_contract_is_kept():
    proc = _lint(ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Contracts: 1 kept, 0 broken." in proc.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    """A copy of the package where the model layer imports the training loop: the contract names
    the broken layer pair and the offending line."""
    shutil.copytree(ROOT / "vlmsurgeon", tmp_path / "vlmsurgeon", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    tree = tmp_path / "vlmsurgeon" / "model" / "tree.py"
    tree.write_text(tree.read_text() + "\n\ndef _upward():\n    from vlmsurgeon.train.loop import finetune\n")
    proc = _lint(tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Contracts: 0 kept, 1 broken." in proc.stdout
    assert "vlmsurgeon.model is not allowed to import vlmsurgeon.train" in proc.stdout
    assert "vlmsurgeon.model.tree -> vlmsurgeon.train.loop" in proc.stdout


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycle_between_any_two_modules():
    graph = grimp.build_graph("vlmsurgeon")
    assert len(graph.modules) > 60
    assert _cycles(graph) == []


def test_a_cycle_is_found():
    graph = grimp.ImportGraph()
    for a, b in [("p.a", "p.b"), ("p.b", "p.c"), ("p.c", "p.a"), ("p.c", "p.d")]:
        graph.add_import(importer=a, imported=b)
    assert _cycles(graph) == [["p.a", "p.b", "p.c"]]


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_says_what_lives_there_and_what_it_may_import(stage):
    import importlib.util

    doc = importlib.import_module(f"vlmsurgeon.{stage}").__doc__ or ""
    assert len(doc.split()) > 20 and "May import" in doc, stage


def test_the_top_level_holds_only_the_stages_and_the_leaves():
    top = {p.stem for p in (ROOT / "vlmsurgeon").glob("*.py")}
    folders = {p.name for p in (ROOT / "vlmsurgeon").iterdir() if (p / "__init__.py").is_file()}
    assert top == {"__init__", "errors", "fsutil", "quiet"}
    assert folders == set(STAGES)


def test_old_flat_paths_still_import_the_same_module_with_a_warning():
    from vlmsurgeon.recipe import freeze

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sys.modules.pop("vlmsurgeon.freeze", None)
        from vlmsurgeon.freeze import apply_preset  # the path the 0.1 README named
    assert apply_preset is freeze.apply_preset
    assert sys.modules["vlmsurgeon.freeze"] is freeze
    assert [str(w.message) for w in caught if w.category is DeprecationWarning] == [
        "vlmsurgeon.freeze moved to vlmsurgeon.recipe.freeze; import it from there"
    ]


def test_every_old_path_names_a_module_that_exists():
    import importlib.util

    import vlmsurgeon

    for old, new in vlmsurgeon.MOVED.items():
        assert importlib.util.find_spec(f"vlmsurgeon.{new}") is not None, (old, new)
        assert not (ROOT / "vlmsurgeon" / f"{old}.py").exists()
