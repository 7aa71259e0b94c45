"""The irflow package's import graph is acyclic (module-level imports; a lazy import inside a
function is a deliberate late edge and not counted), and the library never imports Snakemake.

By hand: ``python tests/test_package_layering.py`` prints the graph's layers."""

from __future__ import annotations

import ast
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """{module: irflow modules it imports at module level}."""
    modules = {_module_name(p): p for p in SRC.joinpath("irflow").rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and target.startswith("irflow"):
                    edges.add(target)
        graph[name] = edges
    return graph


def _without_package_edges(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    # A module importing its own package's __init__ (or a package re-exporting its children)
    # is how Python packages work; cycles are looked for between modules.
    return {
        m: {t for t in edges if not (m.startswith(t + ".") or t.startswith(m + "."))}
        for m, edges in graph.items()
    }


def test_import_graph_is_acyclic():
    graph = _without_package_edges(import_graph())
    try:
        list(TopologicalSorter(graph).static_order())
    except CycleError as err:
        raise AssertionError(f"import cycle: {' -> '.join(err.args[1])}") from None


def test_library_never_imports_snakemake():
    for path in SRC.joinpath("irflow").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "import snakemake" not in text and "from snakemake" not in text, path


if __name__ == "__main__":
    graph = _without_package_edges(import_graph())
    sorter = TopologicalSorter(graph)
    sorter.prepare()
    layer = 0
    while sorter.is_active():
        ready = sorted(sorter.get_ready())
        print(f"layer {layer}: {', '.join(ready)}")
        sorter.done(*ready)
        layer += 1
    sys.exit(0)
