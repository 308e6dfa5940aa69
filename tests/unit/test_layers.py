"""Dependencies point one way: each layer imports only from the layers below it
(bridge/engine/__init__.py draws them), and no two modules import each other,
however indirectly, even inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

BRIDGE = Path(__file__).resolve().parents[2] / "bridge"

#: package (or module) → what it may import of ours
ALLOWED = {
    "secrets": set(),
    "errors": set(),
    "options": set(),
    "histogram": set(),
    "capture": {"capture", "errors"},
    "tls": {"tls", "errors", "secrets"},
    "keys": {"keys", "errors", "secrets"},
    "quic": {"quic", "tls", "errors", "secrets"},
    "engine": {"engine", "quic", "tls", "keys", "capture", "errors", "secrets", "options", "histogram"},
    "reinject": {"reinject", "engine", "tls", "capture", "errors"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bridge."):
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names if alias.name.startswith("bridge.")}
    return names


def _module(path: Path) -> str:
    parts = path.relative_to(BRIDGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict[str, set[str]]:
    return {_module(path): _imports(path) for path in BRIDGE.rglob("*.py")}


def test_each_layer_imports_only_from_below():
    wrong = []
    for module, imports in _graph().items():
        layer = module.split(".")[1] if module.count(".") else module
        if layer not in ALLOWED:
            continue
        for name in imports:
            target = name.split(".")[1]
            if target not in ALLOWED[layer]:
                wrong.append(f"{module} imports {name}")
    assert not wrong, wrong


def test_no_module_imports_itself_through_others():
    graph = _graph()
    modules = set(graph)

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    edges = {module: {t for t in (resolve(n) for n in names) if t and t != module} for module, names in graph.items()}
    cycles = []
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for target in edges.get(node, ()):
            if state.get(target) == 1:
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target, stack + [target])
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    # a package's __init__ re-exporting its own modules is not a cycle between concepts
    cycles = [c for c in cycles if not (len({m.split(".")[1] for m in c if "." in m}) == 1 and
                                        any(m.count(".") == 1 for m in c))]
    assert not cycles, cycles
