"""The package's layering, read from its source: no import cycles (deferred imports included,
``TYPE_CHECKING`` blocks aside), the core imports nothing above it, ``viz`` is a leaf, and no
method reaches into the model's private state."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mechscope"
# Modules below the core that anything may import.
LEAVES = {"mechscope.errors", "mechscope.paths"}
PRIVATE_ATTRS = {"hf", "adapter", "_runtime"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(module: str) -> set[str]:
    """mechscope modules that ``module`` imports anywhere in its body (functions too)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("mechscope"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("mechscope"):
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    found.add(sub if sub in MODULES else target)
        for child in ast.iter_child_nodes(node):
            visit(child)

    tree = ast.parse(path.read_text())
    visit(tree)
    found.update(f"{package}{target}" for target in _lazy_imports(tree))
    found.discard(module)
    return {m for m in found if m in MODULES}


def _lazy_imports(tree: ast.Module) -> list[str]:
    """Relative module names a package imports lazily (mechscope/__init__.py's module
    ``__getattr__``): the values of a top-level ``_LAZY`` dict and the names in ``_TIERS``."""
    targets: list[str] = []
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            names = [t.id for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
                     if isinstance(t, ast.Name)]
            if "_LAZY" in names and isinstance(node.value, ast.Dict):
                targets += [v.value for v in node.value.values if isinstance(v, ast.Constant)]
            elif "_TIERS" in names and isinstance(node.value, ast.Tuple):
                targets += [f".{e.value}" for e in node.value.elts if isinstance(e, ast.Constant)]
    return targets


GRAPH = {m: _imports(m) for m in MODULES}


def test_the_graph_is_read():
    assert {"mechscope.models.loading", "mechscope.sae.formats", "mechscope.viz"} <= GRAPH["mechscope"]  # lazy exports
    assert "mechscope.models.hooked" in GRAPH["mechscope.models.runtime"] or GRAPH["mechscope.models.hooked"]
    assert "mechscope.models.runtime" in GRAPH["mechscope.models.hooked"]
    assert len(GRAPH) > 40


def test_no_import_cycles():
    # The root package re-exports the API, so a module it imports that imports it back is a cycle too.
    graph = GRAPH
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def strongconnect(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_core_imports_nothing_above_it():
    bad = {m: sorted(d for d in deps if not d.startswith("mechscope.models") and d not in LEAVES)
           for m, deps in GRAPH.items() if m.startswith("mechscope.models")}
    bad = {m: d for m, d in bad.items() if d}
    assert not bad, f"models/ imports from above the core: {bad}"


def test_viz_is_a_leaf():
    bad = {m: sorted(d for d in deps if not d.startswith("mechscope.viz") and d not in LEAVES)
           for m, deps in GRAPH.items() if m.startswith("mechscope.viz")}
    bad = {m: d for m, d in bad.items() if d}
    assert not bad, f"viz/ imports methods: {bad}"


def test_no_method_reads_private_model_state():
    offenders = []
    for module, path in MODULES.items():
        if module.startswith("mechscope.models"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in PRIVATE_ATTRS:
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} .{node.attr}")
    assert not offenders, "outside models/, use HookedModel's public API instead of:\n" + "\n".join(offenders)
