"""The import graph of quant/, service/ and solver/: no cycles, and no layer imports the one above it.

Layers, bottom to top: ``solver`` (pure Python ILP, no torch) <- ``quant`` (the torch library) <- ``service``.
Every import counts, also one inside a function (it is still a dependency, only a later one); imports under
``if TYPE_CHECKING:`` are ignored (they never run). The graph is read from the source with :mod:`ast`, so this
test imports none of the packages it checks.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from itertools import pairwise
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("quant", "service", "solver")
#: Top-level names a package must not import, with why.
FORBIDDEN = {
    "solver": {
        "quant": "solver is below quant",
        "service": "solver is below service",
        "torch": "solver is pure Python",
        "torchvision": "solver is pure Python",
        "timm": "solver is pure Python",
    },
    "quant": {"service": "quant is below service"},
}


# ---- building the graph ---------------------------------------------------------------------------------------
def module_files(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    """``{dotted module name: file}`` of every ``.py`` under the packages (a package is its ``__init__``)."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> Iterable[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth, except those under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)  # the else branch does run
            continue
        stack.extend(ast.iter_child_nodes(node))


def _known(name: str, modules: Mapping[str, object]) -> str:
    """The longest prefix of ``name`` that is one of ``modules`` (``pkg.mod.Class`` -> ``pkg.mod``), else ``name``."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in modules:
            return prefix
    return name


def imported_names(module: str, source: str, is_package: bool, modules: Mapping[str, object]) -> set[str]:
    """What ``module`` imports: modules of ``modules`` by name, other (third-party) imports by their full name."""
    found = set()
    for node in _imports(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(_known(alias.name, modules) for alias in node.names)
            continue
        if node.level:  # relative: from the module's package, one level up per extra dot
            package = module.split(".") if is_package else module.split(".")[:-1]
            base = package[: len(package) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        for alias in node.names:
            submodule = f"{target}.{alias.name}"
            found.add(submodule if submodule in modules else _known(target, modules))
    found.discard(module)
    return found


def import_graph(root: Path = ROOT, packages: Iterable[str] = PACKAGES) -> dict[str, set[str]]:
    """``{module: every name it imports}`` (edges to other modules of ``packages`` plus external names)."""
    files = module_files(root, packages)
    return {
        module: imported_names(module, path.read_text(encoding="utf-8"), path.name == "__init__.py", files)
        for module, path in files.items()
    }


# ---- checking it ----------------------------------------------------------------------------------------------
def find_cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) per strongly connected component that has one; edges to names that are not
    keys of ``graph`` are ignored. Tarjan's algorithm, iterative; components and cycles in a stable order."""
    edges = {node: sorted(t for t in targets if t in graph) for node, targets in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            if i < len(edges[node]):
                work.append((node, i + 1))
                target = edges[node][i]
                if target not in index:
                    work.append((target, 0))
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
                continue
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in edges[node]:
                    components.append(sorted(component))
    return [_cycle_in(component, edges) for component in sorted(components)]


def _cycle_in(component: list[str], edges: Mapping[str, list[str]]) -> list[str]:
    """A shortest cycle through the component's first node, by breadth-first search inside the component."""
    members, start = set(component), component[0]
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in edges[node]:
                if target == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if target in members and target not in previous:
                    previous[target] = node
                    following.append(target)
        frontier = following
    raise AssertionError(f"no cycle in component {component}")  # pragma: no cover


def upward_imports(graph: Mapping[str, Iterable[str]]) -> list[str]:
    """``"module -> name (why)"`` for every import that :data:`FORBIDDEN` rules out."""
    found = []
    for module, targets in sorted(graph.items()):
        rules = FORBIDDEN.get(module.split(".")[0], {})
        for target in sorted(targets):
            why = rules.get(target.split(".")[0])
            if why:
                found.append(f"{module} -> {target} ({why})")
    return found


# ---- the checks on this repository ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_the_graph_covers_every_package(graph) -> None:
    assert {"quant", "service", "solver", "quant.data", "service.cli", "solver.general"} <= set(graph)
    assert "quant.imageset" in graph["quant.data"]  # an absolute import
    assert "quant.version" in graph["quant.bundle.save"]  # a relative import inside a function
    assert "service.commands.jobs" in graph["service.cli"]  # ``from package import submodule``


def test_no_import_cycles(graph) -> None:
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_no_layer_imports_the_one_above(graph) -> None:
    upward = upward_imports(graph)
    assert not upward, "upward imports:\n" + "\n".join(upward)


# ---- the checker itself ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("graph", "cycles"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
        ({"a": {"b", "torch"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c", "a"]]),
        ({"a": {"a"}}, [["a", "a"]]),
        ({"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"c", "e"}, "e": set()}, [["a", "b", "a"], ["c", "d", "c"]]),
        ({"a": {"b", "c"}, "b": {"d"}, "c": {"a"}, "d": {"b"}}, [["a", "c", "a"], ["b", "d", "b"]]),
    ],
    ids=["acyclic", "triangle", "self-import", "two-cycles", "nested"],
)
def test_find_cycles_on_synthetic_graphs(graph, cycles) -> None:
    assert find_cycles(graph) == cycles


def test_find_cycles_reports_a_real_path_in_a_large_component() -> None:
    graph = {"a": {"b"}, "b": {"c", "e"}, "c": {"d"}, "d": {"a"}, "e": {"b"}}
    (cycle,) = find_cycles(graph)
    assert cycle == ["a", "b", "c", "d", "a"]
    assert all(after in graph[before] for before, after in pairwise(cycle))


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_a_planted_cycle_through_a_function_level_relative_import_is_found(tmp_path) -> None:
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from . import b\n",
        "pkg/sub/__init__.py": "from .c import C\n",
        "pkg/sub/c.py": "class C:\n    def f(self):\n        from ..a import thing\n",
        "pkg/b.py": "import pkg.sub\n",
    })
    graph = import_graph(tmp_path, ["pkg"])
    assert graph["pkg.a"] == {"pkg.b"}
    assert graph["pkg.sub"] == {"pkg.sub.c"}
    assert graph["pkg.sub.c"] == {"pkg.a"}
    assert find_cycles(graph) == [["pkg.a", "pkg.b", "pkg.sub", "pkg.sub.c", "pkg.a"]]


def test_type_checking_imports_are_ignored_and_upward_imports_are_reported(tmp_path) -> None:
    _write(tmp_path, {
        "solver/__init__.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import torch\n",
        "solver/lp.py": "def f():\n    import torch.nn\n",
        "quant/__init__.py": "",
        "quant/x.py": "from service.db import utcnow\nfrom solver import lp\n",
    })
    graph = import_graph(tmp_path, ["solver", "quant"])
    assert graph["solver"] == {"typing"}
    assert graph["quant.x"] == {"service.db", "solver.lp"}
    assert upward_imports(graph) == [
        "quant.x -> service.db (quant is below service)",
        "solver.lp -> torch.nn (solver is pure Python)",
    ]
