"""The house layering: imports point one way, and only the pytest layer (``plugin/``) imports
pytest. Every module is found by walking the package, so a new module is checked too."""

from __future__ import annotations

import ast
import itertools
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest_threadcreator

PACKAGE = "pytest_threadcreator"
PACKAGE_DIR = Path(pytest_threadcreator.__file__).parent
#: the only modules that may import pytest and its kin
PYTEST_LAYER = f"{PACKAGE}.plugin"
PYTEST_DISTRIBUTIONS = {"pytest", "_pytest", "pluggy", "xdist"}


def discover_modules(package_dir: Path) -> dict[str, Path]:
    """Every module of a package by dotted name (a package by its ``__init__.py``)."""
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


MODULES = discover_modules(PACKAGE_DIR)


def in_pytest_layer(module: str) -> bool:
    return module == PYTEST_LAYER or module.startswith(PYTEST_LAYER + ".")


def is_type_checking(test: ast.expr) -> bool:
    """``if TYPE_CHECKING:`` or ``if typing.TYPE_CHECKING:``."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def import_nodes(tree: ast.AST, *, runtime_only: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, those inside functions included; with ``runtime_only`` not
    those under ``if TYPE_CHECKING:``, which never run."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif runtime_only and isinstance(node, ast.If) and is_type_checking(node.test):
            for child in node.orelse:
                yield from import_nodes(
                    ast.Module(body=[child], type_ignores=[]), runtime_only=True
                )
        else:
            yield from import_nodes(node, runtime_only=runtime_only)


def imported_names(
    module: str, node: ast.Import | ast.ImportFrom, modules: dict[str, Path]
) -> list[str]:
    """Dotted names of what ``node`` in ``module`` imports, relative imports resolved: a
    submodule where ``from x import y`` names one, else ``x``."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        package = module if modules[module].name == "__init__.py" else module.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{node.module}" if node.module else package
    else:
        base = node.module or ""
    names = [f"{base}.{alias.name}" for alias in node.names]
    return [name if name in modules else base for name in names]


def internal_targets(importer: str, name: str, modules: dict[str, Path]) -> list[str]:
    """The package modules that importing ``name`` runs: the module and the packages above
    it, except those above ``importer`` (they ran before it)."""
    targets = []
    root = importer.split(".")[0]
    while name == root or name.startswith(root + "."):
        above_importer = importer == name or importer.startswith(name + ".")
        if name in modules and not above_importer:
            targets.append(name)
        if "." not in name:
            break
        name = name.rpartition(".")[0]
    return targets


def import_graph(modules: dict[str, Path]) -> dict[str, dict[str, int]]:
    """For each module, the modules it imports, with the line of the first import: at run time
    or for type checking alike (a TYPE_CHECKING cycle still ties the two layers together)."""
    graph: dict[str, dict[str, int]] = {}
    for module, path in modules.items():
        edges: dict[str, int] = {}
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in import_nodes(tree, runtime_only=False):
            for name in imported_names(module, node, modules):
                for target in internal_targets(module, name, modules):
                    edges.setdefault(target, node.lineno)
        graph[module] = edges
    return graph


def strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's strongly connected components that hold a cycle, each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph[node]:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(components)


def shortest_cycle(graph: dict[str, dict[str, int]], start: str, members: set[str]) -> list[str]:
    """The shortest cycle from ``start`` back to it, within ``members``."""
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for target in sorted(graph[node]):
            if target == start:
                return [*paths[node], start]
            if target in members and target not in paths:
                paths[target] = [*paths[node], target]
                queue.append(target)
    raise AssertionError(f"{start} is on no cycle")  # unreachable for a component's member


def describe_cycle(graph: dict[str, dict[str, int]], cycle: list[str]) -> str:
    steps = [f"{a} (line {graph[a][b]})" for a, b in itertools.pairwise(cycle)]
    return " -> ".join([*steps, cycle[-1]])


def import_cycles(modules: dict[str, Path]) -> list[str]:
    """One line per group of modules that import each other: its shortest cycle, in order."""
    graph = import_graph(modules)
    problems = []
    for component in strongly_connected(graph):
        cycle = shortest_cycle(graph, component[0], set(component))
        problems.append(describe_cycle(graph, cycle))
        if len(component) > len(cycle) - 1:
            problems.append(f"  (and more cycles among: {', '.join(component)})")
    return problems


def test_the_cycle_check_counts_imports_in_functions_and_type_checking_ones(
    tmp_path: Path,
) -> None:
    package = tmp_path / "demo"
    (package / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "a.py": "def f():\n    from .sub import b\n",
        "sub/__init__.py": "",
        "sub/b.py": "from ..c import x\n",
        "c.py": "import demo.a\nx = 1\n",
        "d.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import e\n",
        "e.py": "from .d import TYPE_CHECKING\n",
    }
    for name, text in files.items():
        (package / name).write_text(text)
    assert import_cycles(discover_modules(package)) == [
        "demo.a (line 2) -> demo.sub.b (line 1) -> demo.c (line 1) -> demo.a",
        "demo.d (line 3) -> demo.e (line 1) -> demo.d",
    ]


def test_no_module_is_part_of_an_import_cycle() -> None:
    problems = import_cycles(MODULES)
    assert not problems, (
        "import cycles (imports inside functions count; move what both sides need into a "
        "module below them, or pass it in):\n" + "\n".join(problems)
    )


def test_only_the_pytest_layer_imports_pytest() -> None:
    offenders = []
    for module, path in MODULES.items():
        if in_pytest_layer(module):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in import_nodes(tree, runtime_only=False):
            for name in imported_names(module, node, MODULES):
                if name.split(".")[0] in PYTEST_DISTRIBUTIONS:
                    offenders.append(
                        f"{path.relative_to(PACKAGE_DIR.parent)}:{node.lineno}: {name}"
                    )
    assert not offenders, (
        f"only {PYTEST_LAYER} may import pytest, _pytest, pluggy or xdist; move this code into "
        "it or pass what it needs in:\n" + "\n".join(offenders)
    )


def test_the_discovery_finds_the_layers() -> None:
    assert PACKAGE in MODULES
    assert f"{PYTEST_LAYER}.state" in MODULES
    assert f"{PACKAGE}.report.data" in MODULES
    assert f"{PACKAGE}.faults.steps" in MODULES
    assert all(in_pytest_layer(m) for m in MODULES if "plugin" in m.split("."))


def test_core_modules_pull_in_no_pytest() -> None:
    core = sorted(module for module in MODULES if not in_pytest_layer(module))
    # subprocess: this process has pytest loaded already; only a fresh interpreter can tell.
    code = (
        "import importlib, sys\n"
        f"for name in {core!r}:\n"
        "    importlib.import_module(name)\n"
        f"loaded = sorted(m for m in sys.modules if m.split('.')[0] in {sorted(PYTEST_DISTRIBUTIONS)!r})\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_public_api_is_sorted_and_complete() -> None:
    names = pytest_threadcreator.__all__
    assert names == sorted(names)
    for name in names:
        assert hasattr(pytest_threadcreator, name), name
    for name in (
        "Database",
        "ConcurrencyReport",
        "FaultInjector",
        "FaultRule",
        "QueryCounter",
        "RunConcurrently",
        "ThreadCreator",
        "UserContextMaker",
        "UserExecutionContext",
    ):
        assert name in names
    from pytest_threadcreator.factories import MessageFactory, ThreadFactory, UserContextFactory

    assert ThreadFactory and MessageFactory and UserContextFactory
