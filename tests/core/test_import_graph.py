"""No import circle (issue 23): inside spectrum_cli.core, and in the whole package except
the package's own lazy ``__getattr__`` (the public API loaded on first use). Every other
import counts, at the top of a module or inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "spectrum_cli"
CORE = PACKAGE / "core"


def _lazy_face(tree: ast.Module) -> set[int]:
    """Ids of the nodes inside the package's ``__getattr__``/``__dir__`` (its lazy face)."""
    return {id(n) for f in tree.body if isinstance(f, ast.FunctionDef)
            and f.name in ("__getattr__", "__dir__") for n in ast.walk(f)}


def core_imports(root: Path = CORE) -> dict[str, set[str]]:
    """Module -> the modules under ``root`` it imports (packages too)."""
    modules = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        lazy = _lazy_face(tree) if path == PACKAGE / "__init__.py" else set()
        for node in ast.walk(tree):
            if id(node) in lazy:
                continue
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, *([node.module] if node.module else [])])
                found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                             for a in node.names)
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_finder_sees_imports():
    graph = core_imports()
    assert "spectrum_cli.core.metrics" in graph["spectrum_cli.core.measure"]
    assert "spectrum_cli.core.measure" in graph["spectrum_cli.core.esd_metrics"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circle_in_core():
    assert cycles(core_imports()) == []


def test_no_import_circle_in_the_package():
    graph = core_imports(PACKAGE)
    assert "spectrum_cli.runs.document" in graph["spectrum_cli.runs.batch"]  # it reads
    assert cycles(graph) == []
