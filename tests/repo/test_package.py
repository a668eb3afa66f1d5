"""The package's structure: no import cycle between the modules of ``plif_jax``.

The graph is read from the source (``ast``), not by importing: every ``import plif_jax.x`` and
``from plif_jax(.x) import y`` counts, at module level or inside a function (a lazy import still
ties the two modules together).
"""

from __future__ import annotations

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGE = "plif_jax"


def module_files(root: str = ROOT) -> dict[str, str]:
    """``{dotted module name: path}`` of every ``.py`` file of the package."""
    out = {}
    for dirpath, _, files in os.walk(os.path.join(root, PACKAGE)):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(dirpath, f), root)[: -len(".py")]
                parts = rel.split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                out[".".join(parts)] = os.path.join(dirpath, f)
    return out


def _resolve(name: str, modules: dict[str, str]) -> str | None:
    """The module of ``name`` (``plif_jax.a.b.C`` -> ``plif_jax.a.b``), None if not ours."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(modules: dict[str, str]) -> dict[str, set[str]]:
    """``{module: modules it imports}`` within the package (a package's own ``__init__`` too)."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.endswith("__init__.py")
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), filename=path)
        targets = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's package, up level - 1
                    package = name if is_package else name.rpartition(".")[0]
                    for _ in range(node.level - 1):
                        package = package.rpartition(".")[0]
                    base = f"{package}.{base}" if base else package
                # `from plif_jax import x` imports the submodule plif_jax.x when there is one.
                targets |= {f"{base}.{alias.name}" for alias in node.names} | {base}
        deps = {_resolve(t, modules) for t in targets if t.split(".")[0] == PACKAGE}
        # A module importing its own package's __init__ (plif_jax.a.b -> plif_jax.a) is how
        # Python loads it anyway, and `from plif_jax import x` names the package: not an edge.
        graph[name] = {
            d for d in deps if d is not None and d != name and not name.startswith(d + ".")
        }
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

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
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(cycles)


def test_no_import_cycle_in_plif_jax():
    graph = import_graph(module_files())
    assert "plif_jax.training.run" in graph and "plif_jax.training.checkpoint" in graph
    assert find_cycles(graph) == []


def test_cycle_finder_reports_a_lazy_import_cycle(tmp_path):
    pkg = tmp_path / PACKAGE
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from plif_jax import b\n")
    (pkg / "b.py").write_text("def f():\n    from plif_jax.c import g\n")
    (pkg / "c.py").write_text("import plif_jax.a\n")
    (pkg / "d.py").write_text("from plif_jax import a\n")  # into the cycle, not part of it
    graph = import_graph(module_files(str(tmp_path)))
    assert graph["plif_jax.b"] == {"plif_jax.c"}
    assert find_cycles(graph) == [["plif_jax.a", "plif_jax.b", "plif_jax.c"]]
