"""The package's shape: no import cycles between catnet's modules, no import from a lower layer
up to a higher one, and the terminal (Rich, Typer, Click) known only under catnet/cli/. Imports
are read from the source with ast, at module level, inside functions and under `if
TYPE_CHECKING:` alike, so a cycle hidden in a function-level or type-only import counts."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import catnet

PACKAGE_DIR = Path(catnet.__file__).parent
TERMINAL_LIBRARIES = {"rich", "typer", "click"}


def module_files(root: Path = PACKAGE_DIR) -> dict[str, Path]:
    """{"catnet.data.folders": path, "catnet.data": path/__init__.py, ...}"""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imported_names(module: str, source: str, is_package: bool) -> list[tuple[str, str | None]]:
    """Every import in the source as (module, name): `import a.b` -> ("a.b", None),
    `from a.b import c` -> ("a.b", "c"); relative imports resolved against `module`."""
    found: list[tuple[str, str | None]] = []
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            found += [(base, alias.name) for alias in node.names]
    return found


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the catnet modules it imports. `from catnet.x import y` points at catnet.x.y
    when that is a module, else at catnet.x. Parent packages imported implicitly on the way
    (catnet, catnet.x) are not edges: they are not the module's choice."""
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for target, member in imported_names(name, path.read_text(), is_package):
            if member and f"{target}.{member}" in modules:
                graph[name].add(f"{target}.{member}")
            elif target in modules:
                graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None when the graph is acyclic (depth-first search)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


# Bottom to top: a module may import its own layer and those below it, never one above. The
# flow of a picture: pixels (data) -> a network (models) -> its answers (scoring) -> training /
# using a model -> the tools around it -> the terminal.
LAYERS: list[set[str]] = [
    {"errors", "runtime"},
    {"config"},
    {"data"},
    {"models"},
    {"scoring"},
    {"engine"},
    {"curation"},
    {"training"},
    {"predicting"},
    {"explaining", "distributed"},
    {"evaluating"},
    {"labelling", "demo"},
    {"cli", "__main__"},
]


def layer_of(module: str) -> int | None:
    """The layer of catnet.<part>...; None for the package itself (catnet/__init__.py, the lazy
    public API, which may name anything)."""
    parts = module.split(".")
    if len(parts) < 2:
        return None
    for level, names in enumerate(LAYERS):
        if parts[1] in names:
            return level
    raise AssertionError(f"{module} is in no layer of LAYERS: place it")


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """'a -> b' for each import of a module in a higher layer than the importer's."""
    found = []
    for name, targets in graph.items():
        for target in sorted(targets):
            here, there = layer_of(name), layer_of(target)
            if here is not None and there is not None and there > here:
                found.append(f"{name} -> {target}")
    return found


def terminal_imports(modules: dict[str, Path]) -> list[str]:
    """'module: library' for each Rich/Typer/Click import outside catnet.cli."""
    found = []
    for name, path in modules.items():
        if name == "catnet.cli" or name.startswith("catnet.cli."):
            continue
        is_package = path.name == "__init__.py"
        for target, _ in imported_names(name, path.read_text(), is_package):
            if target.split(".")[0] in TERMINAL_LIBRARIES:
                found.append(f"{name}: {target}")
    return found


# --- the package ---------------------------------------------------------------------------------


def test_the_package_has_no_import_cycle() -> None:
    modules = module_files()
    assert len(modules) > 30  # the walk found the package, subpackages included
    graph = import_graph(modules)
    assert "catnet.training.finalize" in graph["catnet.training.recipes"]  # edges are resolved
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_import_runs_back_up_the_layers() -> None:
    assert upward_imports(import_graph(module_files())) == []


def test_only_the_cli_knows_the_terminal() -> None:
    assert terminal_imports(module_files()) == []


# --- the checkers themselves can fail --------------------------------------------------------------


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
        ({"a": {"b", "c"}, "b": {"c"}, "c": set()}, None),  # a diamond is no cycle
        ({"a": {"b"}, "b": {"a"}}, ["a", "b", "a"]),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, ["a", "b", "c", "a"]),
        ({"a": {"a"}}, ["a", "a"]),
    ],
)
def test_find_cycle_on_small_graphs(graph: dict[str, set[str]], expected: list[str] | None) -> None:
    assert find_cycle(graph) == expected


def test_function_level_and_relative_imports_make_edges(tmp_path: Path) -> None:
    """A fake package whose only cycle runs through a function-level, relative import."""
    root = tmp_path / "fake"
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "sub" / "__init__.py").write_text("")
    (root / "sub" / "a.py").write_text("from fake.sub import b\n")
    (root / "sub" / "b.py").write_text("def later():\n    from .a import thing\n")
    (root / "c.py").write_text("import fake.sub.a\nfrom fake import sub\n")
    modules = module_files(root)
    graph = import_graph(modules)
    assert graph["fake.sub.b"] == {"fake.sub.a"}
    assert graph["fake.c"] == {"fake.sub.a", "fake.sub"}
    assert find_cycle(graph) == ["fake.sub.a", "fake.sub.b", "fake.sub.a"]


def test_type_only_imports_make_edges(tmp_path: Path) -> None:
    """An import under `if TYPE_CHECKING:` is a dependency too: a file that needs another's types
    belongs above it, so a type-only cycle is still a cycle."""
    root = tmp_path / "fake"
    root.mkdir()
    (root / "__init__.py").write_text("")
    (root / "a.py").write_text("from fake import b\n")
    (root / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from fake.a import A\n"
    )
    assert find_cycle(import_graph(module_files(root))) == ["fake.a", "fake.b", "fake.a"]


def test_an_upward_import_is_found() -> None:
    graph = {"catnet.runtime.compute": {"catnet.data.augment"}, "catnet.data.augment": set()}
    assert upward_imports(graph) == ["catnet.runtime.compute -> catnet.data.augment"]
    assert upward_imports({"catnet.data.augment": {"catnet.runtime.compute"}}) == []


def test_a_terminal_import_outside_the_cli_is_found(tmp_path: Path) -> None:
    root = tmp_path / "catnet"
    (root / "cli").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "cli" / "__init__.py").write_text("import typer\n")  # allowed here
    (root / "lib.py").write_text("def show():\n    from rich.table import Table\n")
    assert terminal_imports(module_files(root)) == ["catnet.lib: rich.table"]
