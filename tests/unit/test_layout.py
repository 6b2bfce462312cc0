"""The code layout's rules: no import cycles, short modules, each saying what it owns.

docs/contributing.md, "Code layout": no module imports another in a cycle, none is over 600
lines, each opens with one line that says what it owns. The dependency rule itself is `lint-imports`
(pyproject.toml's contracts), run by `make lint`."""

from __future__ import annotations

import ast
from pathlib import Path

import grimp
import pytest

REPO = Path(__file__).resolve().parents[2]
MAX_LINES = 600
SOURCES = [
    *sorted(
        p
        for root in ("orchestrator", "workers", "bench", "tests", "examples")
        for p in (REPO / root).rglob("*.py")
        if p.stat().st_size > 0
    ),
    REPO / "beat_schedule.py",
]


def import_cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iteratively)."""
    modules = sorted(graph.modules)
    edges = {m: sorted(graph.find_modules_directly_imported_by(m) & set(modules)) for m in modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    for root in modules:
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            if i < len(edges[node]):
                work.append((node, i + 1))
                nxt = edges[node][i]
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return cycles


def test_the_import_graph_has_no_cycles():
    graph = grimp.build_graph("orchestrator", "workers", exclude_type_checking_imports=True)
    assert import_cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    graph = grimp.ImportGraph()
    for name in ("pkg", "pkg.a", "pkg.b", "pkg.c"):
        graph.add_module(name)
    graph.add_import(importer="pkg.a", imported="pkg.b")
    graph.add_import(importer="pkg.b", imported="pkg.a")
    graph.add_import(importer="pkg.c", imported="pkg.a")
    assert import_cycles(graph) == [["pkg.a", "pkg.b"]]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_a_module_is_short_and_says_what_it_owns(path):
    text = path.read_text(encoding="utf-8")
    assert text.count("\n") <= MAX_LINES, f"{path.name}: over {MAX_LINES} lines"
    doc = ast.get_docstring(ast.parse(text))
    assert doc, f"{path.name}: no docstring"
    summary = doc.split("\n\n", 1)[0]
    assert "\n" not in summary, f"{path.name}: the opening line runs on: {summary!r}"
