"""The import graph of src/softprompt: no cycles, and imports only go down the layers.

The graph is read from the source (AST), so an import written inside a function counts
like one at the top of the file: hiding a cycle in a function does not break it. The
layer order is written once, in the package docstring (src/softprompt/__init__.py).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import softprompt

PACKAGE = "softprompt"
ROOT = Path(softprompt.__file__).parent


@dataclass(frozen=True)
class Edge:
    source: str  # importing module, e.g. softprompt.model
    target: str  # imported module, e.g. softprompt.tasks.base
    line: int

    def __str__(self) -> str:
        return f"{self.source} -> {self.target} (line {self.line})"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _imported(node: ast.AST, package: str, known: dict[str, Path]) -> list[str]:
    """Modules one import statement names (`import a.b`, `from a import b`, `from . import b`)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:  # relative: `from . import x` / `from ..x import y`
        parts = package.split(".")
        parts = parts[: len(parts) - node.level + 1]
        base = ".".join(parts + ([node.module] if node.module else []))
    names = [f"{base}.{alias.name}" for alias in node.names]
    return [name if name in known else base for name in names]


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The softprompt module an imported name lives in (`a.b.func` -> `a.b`)."""
    if name != PACKAGE and not name.startswith(PACKAGE + "."):
        return None
    while name not in known and "." in name:
        name = name.rsplit(".", 1)[0]
    return name if name in known else None


def import_graph() -> list[Edge]:
    """Every import of a softprompt module by a softprompt module, wherever it is written."""
    known = modules()
    edges: set[Edge] = set()
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            for imported in _imported(node, package, known):
                target = _resolve(imported, known)
                if target is not None and target != name:
                    edges.add(Edge(name, target, node.lineno))
    return sorted(edges, key=lambda e: (e.source, e.line, e.target))


def layer_rows() -> list[list[str]]:
    """The indented block of the package docstring: one layer a line, lowest first."""
    block = (softprompt.__doc__ or "").split("checks both rules:", 1)[1]
    return [line.split() for line in block.splitlines() if line.startswith("    ")]


def layers() -> dict[str, int]:
    """Layer index of each top-level name."""
    return {name: depth for depth, row in enumerate(layer_rows()) for name in row}


def unit(module: str) -> str:
    """`softprompt.tasks.image` -> `tasks`; the root package itself -> ``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def cycles(edges: list[Edge]) -> list[tuple[list[str], list[str]]]:
    """Each strongly connected group of modules (Tarjan), with one cycle through it."""
    graph: dict[str, list[str]] = {}
    for edge in edges:
        graph.setdefault(edge.source, []).append(edge.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, []):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [(sorted(group), _one_cycle(graph, group)) for group in groups]


def _one_cycle(graph: dict[str, list[str]], group: set[str]) -> list[str]:
    """A shortest path back to the group's first module (breadth first inside the group)."""
    start = min(group)
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for nxt in graph.get(node, []):
            if nxt == start:
                return paths[node] + [start]
            if nxt in group and nxt not in paths:
                paths[nxt] = paths[node] + [nxt]
                queue.append(nxt)
    return sorted(group)


def upward(edges: list[Edge], order: dict[str, int]) -> list[Edge]:
    return [
        e
        for e in edges
        if unit(e.source) and order.get(unit(e.target), 0) > order.get(unit(e.source), 0)
    ]


def test_the_layer_list_names_every_top_level_module_once():
    order = layers()
    listed = [name for row in layer_rows() for name in row]
    assert len(listed) == len(set(listed)), "a name appears in two layers"
    units = {unit(m) for m in modules()} - {""}
    assert sorted(units - set(order)) == [], "add these to the layer list in softprompt/__init__"
    assert sorted(set(order) - units) == [], "the layer list names modules that do not exist"


def test_the_graph_sees_imports_inside_functions_and_relative_ones():
    code = "from . import b\nimport softprompt.c.d\ndef f():\n    from softprompt.e import g\n"
    known = dict.fromkeys(["softprompt.a", "softprompt.b", "softprompt.c.d", "softprompt.e"])
    found = [
        _resolve(name, known)
        for node in ast.walk(ast.parse(code))
        for name in _imported(node, "softprompt", known)
    ]
    assert sorted(found) == ["softprompt.b", "softprompt.c.d", "softprompt.e"]


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(
        f"{len(group)} modules ({', '.join(group)}), e.g. {' -> '.join(cycle)}"
        for group, cycle in found
    )


def test_imports_only_go_down_the_layers():
    bad = upward(import_graph(), layers())
    assert not bad, "imports from a lower layer to a higher one:\n" + "\n".join(map(str, bad))


def test_the_checks_catch_a_hidden_cycle_and_an_upward_import():
    """The two rules on a made-up graph: model -> init inside a function closes a cycle."""
    edges = [
        Edge("softprompt.init", "softprompt.model", 105),
        Edge("softprompt.model", "softprompt.methods", 1),
        Edge("softprompt.methods", "softprompt.init", 1),
    ]
    assert cycles(edges)[0][1] == [
        "softprompt.init",
        "softprompt.model",
        "softprompt.methods",
        "softprompt.init",
    ]
    assert upward(edges, layers()) == [edges[0]]  # init sits below model
