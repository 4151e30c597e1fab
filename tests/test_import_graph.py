"""The module graph of `swarrow/` and `processors/` has no circle, and processors import defining modules.

Built from the source with `ast`, nothing imported: every `import` counts, at module level or inside a
function (a lazy import is still a dependency), except under `if TYPE_CHECKING:` (never executed).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("swarrow", "processors")


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement that can run (all but those under `if TYPE_CHECKING:`)."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _targets(
    node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: Mapping[str, Path]
) -> set[str]:
    """The project modules `node` imports: `from a import b` is `a.b` when that is a module, else `a`."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name in known}
    base = node.module or ""
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join([*package, base] if base else package)
    found = set()
    for alias in node.names:
        if f"{base}.{alias.name}" in known:
            found.add(f"{base}.{alias.name}")
        elif base in known:
            found.add(base)
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports."""
    known = _modules()
    graph: dict[str, set[str]] = {}
    for module, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        edges: set[str] = set()
        for node in _imports(tree):
            edges |= _targets(node, module, path.name == "__init__.py", known)
        edges.discard(module)
        graph[module] = edges
    return graph


def find_cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """One circle per strongly connected component of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def test_the_cycle_finder_finds_a_circle_and_only_a_circle() -> None:
    """The check below can fail: a two- and a three-module circle are found, a diamond is not one."""
    graph = {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"e"}, "e": {"c", "f"}, "f": set()}
    assert find_cycles(graph) == [["a", "b"], ["c", "d", "e"]]
    assert find_cycles({"top": {"left", "right"}, "left": {"base"}, "right": {"base"}, "base": set()}) == []


def test_lazy_imports_count_and_type_checking_ones_do_not() -> None:
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from swarrow.message import Message\n"
        "def f():\n    from swarrow.control import ConsumerControl\n"
    )
    known = {"swarrow.message": ROOT, "swarrow.control": ROOT}
    found = set().union(*(_targets(node, "swarrow.x", False, known) for node in _imports(tree)))
    assert found == {"swarrow.control"}


def test_the_graph_is_real() -> None:
    """Sanity: the graph sees the modules and the edges everyone knows of (else an empty graph passes)."""
    graph = import_graph()
    assert len(graph) > 100
    assert "swarrow.control" in graph["swarrow.consumer"]
    assert "swarrow.otel" in graph["processors.tracing"]  # `from swarrow import otel`: the module
    assert "swarrow.pool.supervisor" in graph["swarrow.pool"]  # `from swarrow.pool.supervisor import …`


def test_no_import_circles_in_swarrow_and_processors() -> None:
    cycles = find_cycles(import_graph())
    assert cycles == [], "import circles (each line one strongly connected set of modules):\n" + "\n".join(
        " <-> ".join(cycle) for cycle in cycles
    )


def test_processors_import_defining_modules_not_the_package_root() -> None:
    """`from swarrow import Message` in a processor ties it to the package's re-exports (and made a
    circle); `from swarrow.message import Message`, or `from swarrow import otel` (a module), does not."""
    known = _modules()
    offenders = []
    for module, path in known.items():
        if not module.startswith("processors"):
            continue
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                bad = [alias.name for alias in node.names if alias.name == "swarrow"]
            elif node.module == "swarrow" and not node.level:
                bad = [alias.name for alias in node.names if f"swarrow.{alias.name}" not in known]
            else:
                bad = []
            offenders += [f"{path.relative_to(ROOT)}:{node.lineno} {name}" for name in bad]
    assert offenders == []
