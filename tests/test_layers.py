"""The package's layering, read from the source: who may import whom, and no import cycles.

Lowest first: the generated code (``gateway.v1``) and the shared leaves at the top of the package;
``gateway.security``; ``gateway.server`` (which may use security) and ``gateway.client`` (which may
not); ``gateway.cli``, which may use everything. A lower layer never imports a higher one, the
server never imports the client or the CLI, and no module imports itself through others, lazily
or not (only imports under ``if TYPE_CHECKING:`` do not count).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "gateway"

#: What each layer may import, besides itself.
ALLOWED: dict[str, set[str]] = {
    "generated": set(),
    "leaves": {"generated"},
    "security": {"leaves", "generated"},
    "server": {"security", "leaves", "generated"},
    "client": {"leaves", "generated"},
    "cli": {"server", "client", "security", "leaves", "generated"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] == "__main__":
        return "cli" if parts[-1] == "__main__" else "leaves"
    if parts[1] == "v1":
        return "generated"
    if parts[1] in ("security", "server", "client", "cli"):
        return parts[1]
    return "leaves"


def modules() -> dict[str, Path]:
    found = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: path for name, path in found.items() if layer(name) != "generated"}


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imports(module: str, path: Path, known: set[str]) -> set[str]:
    """The ``gateway`` modules ``module`` imports: ``from gateway.x import name`` counts as
    ``gateway.x.name`` when that is a module, else as ``gateway.x``. A module's own packages do
    not count: importing anything in them runs them first anyway."""
    tree = ast.parse(path.read_text(), str(path))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if _type_checking_only(node, parents):
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            while target.count(".") and target not in known:
                target = target.rpartition(".")[0]
            if target.split(".")[0] == "gateway" and layer(target) != "generated":
                found.add(target)
    ancestors = {".".join(module.split(".")[:n]) for n in range(1, module.count(".") + 1)}
    return found - ancestors - {module}


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(name, path, set(found)) for name, path in found.items()}


def violations(edges: dict[str, set[str]]) -> list[str]:
    return [
        f"{module} ({layer(module)}) imports {target} ({layer(target)})"
        for module, targets in edges.items()
        for target in sorted(targets)
        if layer(target) != layer(module) and layer(target) not in ALLOWED[layer(module)]
    ]


def test_layers_import_only_what_is_below_them() -> None:
    assert violations(graph()) == []


def test_the_layer_check_catches_an_import_upwards() -> None:
    edges = {
        "gateway.security.guard": {"gateway.server.metrics"},
        "gateway.server.app": {"gateway.client"},
        "gateway.errors": {"gateway.security.auth"},
        "gateway.cli.serve": {"gateway.server.app", "gateway.client"},
    }
    assert violations(edges) == [
        "gateway.security.guard (security) imports gateway.server.metrics (server)",
        "gateway.server.app (server) imports gateway.client (client)",
        "gateway.errors (leaves) imports gateway.security.auth (security)",
    ]


def test_no_import_cycles() -> None:
    edges = graph()
    cycles = [sorted(group) for group in _strongly_connected(edges) if len(group) > 1]
    assert cycles == []


def _strongly_connected(edges: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iterative."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []
    counter = 0
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.add(member)
                    if member == node:
                        break
                groups.append(group)
    return groups


@pytest.mark.parametrize(
    ("edges", "cycles"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
        ({"a": {"b"}, "b": {"a"}, "c": {"a"}}, [["a", "b"]]),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"d"}}, [["a", "b", "c"]]),
    ],
)
def test_the_cycle_finder_finds_cycles(edges: dict[str, set[str]], cycles: list[list[str]]) -> None:
    assert [sorted(g) for g in _strongly_connected(edges) if len(g) > 1] == cycles


def test_the_layer_reader_sees_a_lazy_import(tmp_path: Path) -> None:
    source = tmp_path / "gateway" / "server" / "example.py"
    source.parent.mkdir(parents=True)
    source.write_text("def f():\n    from gateway.cli import main\n")
    known = {"gateway.cli", "gateway.server.example"}
    assert imports("gateway.server.example", source, known) == {"gateway.cli"}
