"""The module graph of ``src/ai4life_kit`` has no import cycles, and the layers import only downwards.

Imports inside functions count too: they are how cycles were hidden before (``data.sources`` <->
``data.tiff_io``, ``export.build`` <-> ``export.validate``, ``prediction.package_loader`` <->
``prediction.predictor``).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).parents[1] / "src"

# Lower layers never import higher ones (docs/architecture.md, "Modules ..., bottom layer first").
LAYERS = [
    {"errors", "locks", "fileio", "runtime"},
    {"config", "models", "data", "metrics", "metrics_temporal", "laplace", "panels", "package_rdf", "baselines"},
    {"simulate", "rundir", "evaluation"},
    {"prediction"},
    {"training", "export"},
    {"challenge"},
    {"cli", "__main__"},
]


def _modules() -> dict[str, Path]:
    out = {}
    for path in (SRC / "ai4life_kit").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """``module -> modules of ai4life_kit it imports`` (anywhere in the file)."""
    modules = _modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ai4life_kit"):
                submodules = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules]
                targets = submodules if len(submodules) == len(node.names) else [node.module, *submodules]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("ai4life_kit")]
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _layer(module: str) -> int:
    package = _package(module)
    for i, names in enumerate(LAYERS):
        if package in names:
            return i
    raise AssertionError(f"{module}: package {package!r} is in no layer of LAYERS; add it")


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    assert _cycles(import_graph()) == []


def test_layers_import_only_downwards():
    upward = sorted(
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        if module != "ai4life_kit"
        for target in targets
        if target != "ai4life_kit" and _layer(target) > _layer(module)
    )
    assert upward == []
