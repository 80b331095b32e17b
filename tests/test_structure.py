"""The house: no import cycle between the harness's modules, at import time or inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

LAZY_CYCLES_LEFT = [{"harness.config", "harness.registry"}]
"""`RunConfig.get_workload` looks a workload up by name in the registry (inside the method), and the registry
resolves configs: the one cycle left, through a function-level import."""


def _modules(package: str) -> dict[str, Path]:
    out = {}
    for path in (REPO / package).rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(path: Path, name: str, modules: dict[str, Path], lazy: bool) -> set[str]:
    """Modules of the package `path` imports: at its top level, or (lazy) anywhere outside TYPE_CHECKING blocks."""
    tree = ast.parse(path.read_text())
    skip = {id(n) for block in ast.walk(tree) if _is_type_checking(block) for n in ast.walk(block)}
    nodes = [n for n in ast.walk(tree) if id(n) not in skip] if lazy else \
        [n for n in tree.body if not _is_type_checking(n)]
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            subs = {f"{node.module}.{a.name}" for a in node.names} & modules.keys()
            found |= subs or {node.module}
            if len(subs) < len(node.names):
                found.add(node.module)
    parents = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
    return {m for m in found if m in modules and m != name and m not in parents}


def _cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    for v in graph:
        if v not in index:
            visit(v)
    return out


def _graph(lazy: bool) -> dict[str, set[str]]:
    modules = _modules("harness")
    return {m: _imports(p, m, modules, lazy) for m, p in modules.items()}


def test_no_module_imports_itself_back_at_import_time() -> None:
    assert _cycles(_graph(lazy=False)) == []


def test_function_level_imports_close_no_cycle_but_the_one_named() -> None:
    assert _cycles(_graph(lazy=True)) == LAZY_CYCLES_LEFT


def test_the_scan_finds_a_cycle_when_there_is_one() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
