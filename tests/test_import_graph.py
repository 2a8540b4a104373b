"""The installed package's module graph: no import circles, and imports flow one way.

The graph is static: every ``.py`` file of the installed ``stbench`` (with ``stbench.kernels``,
``stbench.layouts`` and ``stbench.reference``, which pyproject maps from their own folders) is
parsed with ``ast`` and every ``import`` / ``from ... import`` of ours is an edge, relative
imports resolved against the importing module. Imports inside functions count: they run when
the function runs, so a circle through one is still a circle (it only moves the failure to a
call site). Imports under ``if TYPE_CHECKING:`` never run and do not count. Importing
``a.b.c`` also runs the ``__init__`` of ``a`` and ``a.b``; those packages are edges too unless
they enclose the importing module (then they are already initialised when it runs).
Imports by name at run time (``importlib.import_module``: the backend registry, the CLI's
command table) are the designed plug-in points and are not edges.
"""

from __future__ import annotations

import ast
import importlib.util
import pkgutil
import tomllib
from pathlib import Path

import pytest

ROOT = "stbench"
# The folders the architecture names (DESIGN.md): each installs as a subpackage of stbench.
PARTS = ("stbench", "stbench.kernels", "stbench.layouts", "stbench.reference")
BACKEND_PACKAGES = ("stbench.kernels", "cupy", "triton")  # what "a backend" means here
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def _modules() -> dict[str, Path]:
    """Every module of the installed package: dotted name -> source file."""
    found: dict[str, Path] = {}

    def walk(package: str) -> None:
        spec = importlib.util.find_spec(package)
        assert spec is not None and spec.origin, f"{package} is not installed"
        found[package] = Path(spec.origin)
        for info in pkgutil.iter_modules(spec.submodule_search_locations):
            name = f"{package}.{info.name}"
            if info.ispkg:
                walk(name)
            else:
                found[name] = Path(info.module_finder.path) / f"{info.name}.py"

    for part in PARTS:
        walk(part)
    return found


def _in_type_checking(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def _imported_names(module: str, path: Path, is_package: bool) -> set[str]:
    """Absolute dotted names imported by ``module`` (candidates: attribute imports such as
    ``from stbench import attention`` resolve later to the longest existing module)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    package = module if is_package else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Import | ast.ImportFrom) or _in_type_checking(node, parents):
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join(anchor + ([base] if base else []))
        names.add(base)
        names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _ancestors(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def build_graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(our edges module -> modules it imports, every absolute name each module imports)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    external: dict[str, set[str]] = {}
    for module, path in modules.items():
        names = _imported_names(module, path, path.name == "__init__.py")
        external[module] = names
        edges: set[str] = set()
        for name in names:
            target = _resolve(name, modules) if name.split(".")[0] == ROOT else None
            if target is None:
                continue
            enclosing = set(_ancestors(module)) | {module}
            for t in (*_ancestors(target), target):
                if t not in enclosing and t in modules:
                    edges.add(t)
        graph[module] = edges
    return graph, external


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

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
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                components.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


@pytest.fixture(scope="module")
def graph():
    return build_graph()


def test_graph_covers_the_package(graph):
    edges, _ = graph
    for expected in ("stbench.api", "stbench.layouts.layout", "stbench.reference.dense",
                     "stbench.kernels.triton.backend", "stbench.sweep", "stbench.tuning.cache"):
        assert expected in edges
    assert "stbench.layouts.layout" in edges["stbench.layouts.plan"]


def test_find_cycles_sees_a_circle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles(graph):
    edges, _ = graph
    cycles = find_cycles(edges)
    assert not cycles, "import circles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_layouts_import_nothing_of_ours_outside_layouts(graph):
    edges, external = graph
    for module, targets in edges.items():
        if module.startswith("stbench.layouts"):
            outside = sorted(t for t in targets if not t.startswith("stbench.layouts"))
            assert not outside, f"{module} imports {outside}"


@pytest.mark.parametrize("part", ["stbench.layouts", "stbench.reference"])
def test_layouts_and_reference_import_no_backend(graph, part):
    edges, external = graph
    for module, names in external.items():
        if not module.startswith(part):
            continue
        bad = sorted(n for n in names if n.split(".")[0] in BACKEND_PACKAGES[1:]
                     or n.startswith(BACKEND_PACKAGES[0]))
        assert not bad, f"{module} imports backends {bad}"


def test_pyproject_lists_every_package(graph):
    """A package missing from pyproject's list works in an editable install and is silently
    left out of a real one (tox, wheels)."""
    if not PYPROJECT.exists():
        pytest.skip("pyproject.toml is not beside the tests (an installed test run)")
    declared = set(tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["packages"])
    modules = _modules()
    packages = {m for m, p in modules.items() if p.name == "__init__.py"}
    assert declared == packages
