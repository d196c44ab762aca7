"""No import cycle under `services/` and `shared/`.

Every `import` counts wherever it sits: at module level, inside a function (a deferred import
still ties the two modules together, it only hides the cycle from Python), and under
`if TYPE_CHECKING:` (the type checker and the reader still see the cycle). Imports of modules
outside those two trees are ignored. A cycle is a strongly connected component of more than one
module; the failure lists each with the import lines that close it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("services", "shared")


@dataclass(frozen=True)
class Edge:
    target: str
    line: int


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {module_name(path): path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))}


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute name `from <node.module>` refers to, inside `module`."""
    if node.level == 0:
        return node.module or ""
    # A package's own name is its base for `from .`; a plain module's is its parent package.
    base = module.split(".") if is_package else module.split(".")[:-1]
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imports_of(module: str, path: Path, known: set[str]) -> Iterator[Edge]:
    """The project modules `module` imports; `from pkg import name` is an edge to `pkg.name`
    when that is a module, else to `pkg`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in known:
                    yield Edge(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(module, is_package, node)
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                if submodule in known:
                    yield Edge(submodule, node.lineno)
                elif source in known:
                    yield Edge(source, node.lineno)


def import_graph() -> tuple[dict[str, list[Edge]], dict[str, Path]]:
    modules = project_modules()
    known = set(modules)
    graph = {name: sorted({edge for edge in imports_of(name, path, known) if edge.target != name},
                          key=lambda edge: (edge.line, edge.target))
             for name, path in modules.items()}
    return graph, modules


def strongly_connected(graph: dict[str, list[Edge]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (a deep package tree must not hit the recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted({e.target for e in graph[start]})))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            advanced = False
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = counter
                    counter += 1
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted({e.target for e in graph[succ]}))))
                    advanced = True
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def describe(component: list[str], graph: dict[str, list[Edge]], modules: dict[str, Path]) -> str:
    members = set(component)
    lines = [f"cycle of {len(component)} modules: {', '.join(component)}"]
    for name in component:
        where = modules[name].relative_to(ROOT)
        for edge in graph[name]:
            if edge.target in members:
                lines.append(f"    {where}:{edge.line} imports {edge.target}")
    return "\n".join(lines)


def test_the_walk_sees_relative_deferred_and_type_checking_imports(tmp_path: Path) -> None:
    source = tmp_path / "session.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "import pkg.bus\n"
        "from . import room\n"
        "from .track import Track\n"
        "if TYPE_CHECKING:\n"
        "    from .node import Node\n"
        "def late() -> None:\n"
        "    from pkg.media.commands import run\n"
        "import json\n"
    )
    known = {"pkg.bus", "pkg.media", "pkg.media.room", "pkg.media.track", "pkg.media.node", "pkg.media.commands"}
    found = {(edge.target, edge.line) for edge in imports_of("pkg.media.session", source, known)}
    assert found == {("pkg.bus", 2), ("pkg.media.room", 3), ("pkg.media.track", 4), ("pkg.media.node", 6),
                     ("pkg.media.commands", 8)}


def test_the_real_graph_is_read() -> None:
    """The cycle test would pass vacuously on an empty graph."""
    graph, modules = import_graph()
    assert len(modules) > 50
    assert "shared.events" in {edge.target for edge in graph["shared.eventstore"]}


def test_strongly_connected_finds_a_cycle_and_nothing_else() -> None:
    def edges(*targets: str) -> list[Edge]:
        return [Edge(target, 1) for target in targets]

    graph = {"a": edges("b"), "b": edges("c"), "c": edges("a", "d"), "d": edges(), "e": edges("d")}
    assert [c for c in strongly_connected(graph) if len(c) > 1] == [["a", "b", "c"]]


def test_relative_imports_resolve_against_the_package() -> None:
    def first(source: str) -> ast.ImportFrom:
        node = ast.parse(source).body[0]
        assert isinstance(node, ast.ImportFrom)
        return node

    assert _resolve("services.media.session", False, first("from .track import X")) == "services.media.track"
    assert _resolve("services.media.rtp", True, first("from .codecs import X")) == "services.media.rtp.codecs"
    assert _resolve("services.media.rtp.codecs", False, first("from .. import node")) == "services.media"
    assert _resolve("services.media.rtp.codecs", False, first("from ..track import X")) == "services.media.track"


def test_no_import_cycle_under_services_and_shared() -> None:
    graph, modules = import_graph()
    cycles = [component for component in strongly_connected(graph) if len(component) > 1]
    assert not cycles, "import cycles:\n" + "\n".join(describe(c, graph, modules) for c in cycles)
