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


# -- one door: only inject/ (and backbones/ for loading) touches the frozen model ------
DOOR = ("softprompt.inject", "softprompt.backbones")
# the model's two ends and its layers, as attributes of a backbone or its HF model
MODEL_PARTS = {
    "lm_head": "reads the LM head",
    "get_output_embeddings": "reads the LM head",
    "output_embeddings": "reads the LM head",
    "get_input_embeddings": "reads the embedding table",
    "input_embeddings": "reads the embedding table",
    "embed_tokens": "reads the embedding table",
}
# inject/ internals that run or read the model directly; outside, use an injector's
# methods or the functions `softprompt.inject` exports
INTERNALS = {"LMHead", "embed_tokens", "check_head", "cache_keyword"}
# (module, what) -> why it may: each a deliberate exception, not a prompt path
ALLOWED = {
    ("softprompt.train.loop", ".core()"): "FSDP shards the frozen stack: placement, not a run",
    ("softprompt.recipes.baselines", "get_output_embeddings"): (
        "the LoRA/full fine-tune baseline trains its own copy of the model"
    ),
}


def _ends_in_backbone_model(node: ast.AST) -> bool:
    """`backbone.model`, `self.backbone.model`, `spec.backbone.model`, ..."""
    if not (isinstance(node, ast.Attribute) and node.attr == "model"):
        return False
    owner = node.value
    name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
    return name == "backbone"


def door_violations(tree: ast.AST) -> list[tuple[int, str, str]]:
    """(line, what, why) for each way `tree` reaches past the injector into the model."""
    found = []
    aliases = {  # `model = self.backbone.model` then `model(...)`
        target.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign) and _ends_in_backbone_model(node.value)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in MODEL_PARTS:
            found.append((node.lineno, node.attr, MODEL_PARTS[node.attr]))
        if isinstance(node, ast.Attribute) and node.attr == "weight":
            if isinstance(node.value, ast.Attribute) and node.value.attr == "embed":
                found.append((node.lineno, ".embed.weight", "reads the embedding table"))
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(DOOR[0]):
            for alias in node.names:
                if alias.name in INTERNALS:
                    found.append((node.lineno, alias.name, "imports inject/ internals"))
        if isinstance(node, ast.Name) and node.id == "LMHead":
            found.append((node.lineno, "LMHead", "builds its own LM head"))
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr == "core" and not node.args:
            found.append((node.lineno, ".core()", "runs the backbone's layers"))
        if _ends_in_backbone_model(func) or (isinstance(func, ast.Name) and func.id in aliases):
            found.append((node.lineno, "backbone.model(...)", "runs the whole model"))
        if isinstance(func, ast.Attribute) and func.attr in ("generate", "forward"):
            if _ends_in_backbone_model(func.value) or getattr(func.value, "id", "") in aliases:
                found.append((node.lineno, f"backbone.model.{func.attr}", "runs the whole model"))
    return sorted(set(found))


def outside_the_door() -> list[str]:
    bad = []
    for name, path in modules().items():
        if name.startswith(DOOR):
            continue
        for line, what, why in door_violations(ast.parse(path.read_text(encoding="utf-8"))):
            if (name, what) not in ALLOWED:
                bad.append(f"{name} line {line}: {what} ({why})")
    return bad


def test_only_inject_touches_the_frozen_model():
    bad = outside_the_door()
    assert not bad, (
        "outside inject/ (and backbones/), code reaches into the frozen model; go through "
        "an injector (softprompt.inject: run_core, embed, logits, embedding_table, "
        "token_kv, decode, packed_hidden):\n" + "\n".join(bad)
    )


def test_the_door_check_catches_each_way_in():
    """Each planted violation is found; what callers may do (config, placement, the
    injector's own methods) is not."""
    planted = {
        "hidden = backbone.core()(inputs_embeds=x)": ".core()",
        "out = self.backbone.model(input_ids=ids)": "backbone.model(...)",
        "m = spec.backbone.model\ndef f():\n    return m(ids)": "backbone.model(...)",
        "backbone.model.generate(ids)": "backbone.model.generate",
        "w = model.lm_head.weight": "lm_head",
        "h = backbone.model.get_output_embeddings()": "get_output_embeddings",
        "head = LMHead(backbone)": "LMHead",
        "from softprompt.inject.head import embed_tokens": "embed_tokens",
        "t = backbone.input_embeddings().weight": "input_embeddings",
        "t = model.model.embed_tokens(ids)": "embed_tokens",
        "w = self.embed.weight.shape[1]": ".embed.weight",
        "e = m.get_input_embeddings()": "get_input_embeddings",
    }
    for code, what in planted.items():
        assert what in [w for _, w, _ in door_violations(ast.parse(code))], code
    allowed = (
        "c = backbone.model.config\nplace(backbone.model, device)\nbackbone.model.to(device)\n"
        "h = injector.run_core(inputs_embeds=x)\nv = injector.embed(ids)\n"
        "s = injector.logits(h)\nt = injector.embedding_table()\n"
        "from softprompt.inject import decode, embedding_table, token_embeddings\n"
    )
    assert door_violations(ast.parse(allowed)) == []
