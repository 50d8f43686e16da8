"""The import graph of geodino: no cycles, and the lower layers import nothing from the upper.

Every module is parsed with ``ast``; imports at module level and inside functions count
(a function-level import is a dependency all the same, only a lazy one); imports under
``if TYPE_CHECKING:`` do not (they never run).
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "geodino"

#: Layers that must not depend on the application layers above them.
LOWER = ("geodino.models", "geodino.losses", "geodino.datasets", "geodino.transforms")
UPPER = (
    "geodino.tasks",
    "geodino.cli",
    "geodino.inference",
    "geodino.evaluation",
    "geodino.callbacks",
)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Import statements anywhere in the tree, except under ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def imported(name: str, path: Path, known: set[str]) -> set[str]:
    """The geodino modules that a module imports (the most specific module of each name)."""
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    for node in _imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            # `from package import submodule` imports the submodule
            candidates = [f"{module}.{alias.name}" for alias in node.names] + [module]
            candidates = [c for c in candidates if c in known] or [module]
        for candidate in candidates:
            while candidate and candidate not in known:
                candidate = candidate.rpartition(".")[0]
            if candidate.startswith("geodino") and candidate != name:
                targets.add(candidate)
    return targets


def import_graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imported(name, path, known) for name, path in found.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component that has one (Tarjan), as a path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
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
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return [_cycle_in(graph, set(c), c[0]) for c in components]


def _cycle_in(graph: dict[str, set[str]], members: set[str], start: str) -> list[str]:
    """A shortest path start -> ... -> start inside a strongly connected component."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if w not in previous:
                    previous[w] = v
                    following.append(w)
        frontier = following
    raise AssertionError(f"{start} lies on no cycle")


def in_layer(module: str, layer: str) -> bool:
    return module == layer or module.startswith(layer + ".")


def test_the_graph_sees_function_level_imports_and_skips_type_checking_blocks() -> None:
    graph = import_graph()
    # plotting imports the models only inside functions
    assert "geodino.models" in graph["geodino.plotting"]
    # inference imports the export format only for type checking, at module level
    assert "geodino.export" not in graph["geodino.inference.regions"]
    assert "geodino.export" in graph["geodino.inference.embedding"]  # inside embed()


def test_cycle_finder_reports_the_cycle_path() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles() -> None:
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles among geodino modules:\n" + "\n".join(
        " -> ".join(cycle) for cycle in cycles
    )


@pytest.mark.parametrize("layer", LOWER)
def test_lower_layers_import_nothing_from_the_application_layers(layer: str) -> None:
    graph = import_graph()
    upward = sorted(
        f"{module} imports {target}"
        for module, targets in graph.items()
        if in_layer(module, layer)
        for target in targets
        if any(in_layer(target, upper) for upper in UPPER)
    )
    assert not upward, f"{layer} imports from an application layer:\n" + "\n".join(upward)


def _layer(module: str) -> str:
    """The part of geodino a module belongs to: its subpackage or top-level module."""
    return module.split(".")[1]


def documented_imports() -> dict[str, set[str]]:
    """The "imports from" column of the layer table in docs/architecture.md, by part."""
    page = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    table: dict[str, set[str]] = {}
    for line in page.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        names = [n.strip("` /") for n in cells[0].split(",")]
        targets = (
            set() if cells[2].startswith("nothing") else {t.strip() for t in cells[2].split(",")}
        )
        for name in names:
            table[name] = targets
    return table


def test_architecture_page_lists_what_each_part_imports() -> None:
    actual: dict[str, set[str]] = {}
    for module, targets in import_graph().items():
        if module in ("geodino", "geodino.__main__"):
            continue
        parts = {_layer(t) for t in targets if t != "geodino"} - {_layer(module)}
        actual.setdefault(_layer(module), set()).update(parts)
    documented = documented_imports()
    assert sorted(documented) == sorted(actual), "docs/architecture.md lists other parts"
    wrong = {
        part: {"documented": sorted(documented[part]), "actual": sorted(actual[part])}
        for part in actual
        if documented[part] != actual[part]
    }
    assert not wrong, f"docs/architecture.md's layer table differs from the imports: {wrong}"
