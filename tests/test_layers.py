"""The package's import graph: no cycle anywhere inside curvmem (deferred imports included), and
the layers contract of pyproject.toml (`lint-imports`, run by .ci/run) holds."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]


def strongly_connected(graph) -> list[list[str]]:
    """Tarjan's strongly connected components of more than one module (or a self-import)."""
    modules = sorted(graph.modules)
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.find_modules_directly_imported_by(v)):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.find_modules_directly_imported_by(v):
                out.append(sorted(comp))

    for v in modules:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_inside_curvmem():
    graph = grimp.build_graph("curvmem", cache_dir=None)  # every import statement, deferred too
    assert len(graph.modules) > 20
    assert strongly_connected(graph) == []


def test_cycle_finder_finds_a_cycle():
    graph = grimp.ImportGraph()
    for m in ("a", "a.x", "a.y", "a.z"):
        graph.add_module(m)
    graph.add_import(importer="a.x", imported="a.y")
    graph.add_import(importer="a.y", imported="a.x")
    graph.add_import(importer="a.y", imported="a.z")
    assert strongly_connected(graph) == [["a.x", "a.y"]]


def test_no_library_module_imports_the_cli():
    graph = grimp.build_graph("curvmem", cache_dir=None)
    cli = {"curvmem.cli"} | graph.find_descendants("curvmem.cli")
    outside = [m for m in graph.modules if m not in cli]
    assert not [(m, i) for m in outside for i in graph.find_modules_directly_imported_by(m)
                if i in cli]


@pytest.mark.skipif(shutil.which("lint-imports") is None, reason="import-linter not installed")
def test_layers_contract_is_kept():
    proc = subprocess.run(["lint-imports"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:]
