"""The import graph of `src/hf_lime` has no circles, lazy and type-only imports counted (issue: one home per concept).

Every `import` / `from ... import` anywhere in a module (inside functions and `if TYPE_CHECKING:` blocks too) is an
edge, and importing `a.b.c` also runs the packages `a.b` and `a` (their `__init__`), so those are edges as well.
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO_ROOT

SRC = REPO_ROOT / "src"


def modules() -> dict[str, Path]:
    found = {}
    for path in (SRC / "hf_lime").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imported(name: str, path: Path, node: ast.AST, known: set[str]) -> list[str]:
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    else:
        base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)] if node.level else []
        module = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module or ""
        targets = [module] + [f"{module}.{alias.name}" for alias in node.names]
    edges = set()
    for target in targets:
        parts = target.split(".")
        for k in range(2, len(parts) + 1):  # importing a.b.c runs a.b's __init__ too
            package = ".".join(parts[:k])
            if package in known and package != name and not name.startswith(package + "."):
                edges.add(package)
    return sorted(edges)


def graph() -> dict[str, set[str]]:
    known = modules()
    edges: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges[name].update(imported(name, path, node, set(known)))
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(edges[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
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

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_the_package_has_no_import_cycles():
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_editors_do_not_import_the_tuner():
    edges = graph()
    editors = [name for name in edges if name.startswith("hf_lime.editors")]
    assert editors and not any(target.startswith("hf_lime.tuner") for name in editors for target in edges[name])
