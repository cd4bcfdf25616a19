"""fleet's layers, read from the source with ``ast``: no import cycle between its modules or its
packages, nothing in the CMP core or the HTTP layer reaching up into what uses them, and no
module too long to read.

Every import counts: at module level, inside functions (a lazy import that hides a cycle is
still the cycle) and under ``if TYPE_CHECKING:``. Packages are ``fleet/load``, ``fleet/ca``,
``fleet/cmp``, ``fleet/http``, ``fleet/coap``, ``fleet/provision`` and ``fleet/cli``; each root module
(``fleet/keys.py`` ...) is a node of its own.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLEET = ROOT / "fleet"
PACKAGES = (
    "fleet.load", "fleet.ca", "fleet.ra", "fleet.cmp", "fleet.http", "fleet.coap", "fleet.provision", "fleet.cli"
)
# The protocol core and the transport sit at the bottom: they never import their users.
LOWER = ("fleet.cmp", "fleet.http", "fleet.coap")
UPPER = ("fleet.load", "fleet.provision", "fleet.ca", "fleet.ra", "fleet.cli")
MAX_LINES = 800


def modules(root: Path = FLEET) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under ``root`` (packages by ``__init__``)."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imported(source: str, module: str, is_package: bool) -> Iterator[str]:
    """Every ``fleet`` name ``source`` imports, wherever the import statement stands; relative
    imports resolved against ``module``; ``from a import b`` yields ``a.b`` (a module or not)."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        yield from (name for name in names if name == "fleet" or name.startswith("fleet."))


def import_graph(found: Mapping[str, Path]) -> dict[str, set[str]]:
    """module -> the fleet modules it imports (a name resolves to its longest module prefix)."""

    def resolve(name: str) -> str:
        while name not in found:
            name = name.rpartition(".")[0]
        return name

    graph: dict[str, set[str]] = {}
    for module, path in found.items():
        targets = {
            resolve(n)
            for n in imported(path.read_text(encoding="utf-8"), module, path.name == "__init__.py")
        }
        graph[module] = targets - {module}
    return graph


def node_of(module: str) -> str:
    """The package a module belongs to, or the module itself at the root of fleet."""
    return next((p for p in PACKAGES if module == p or module.startswith(p + ".")), module)


def package_graph(graph: Mapping[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for module, targets in graph.items():
        out.setdefault(node_of(module), set()).update(node_of(t) for t in targets)
    return {n: targets - {n} for n, targets in out.items()}


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def explain(
    component: list[str], graph: Mapping[str, set[str]], modules_graph: Mapping[str, set[str]]
) -> str:
    """The module imports behind the edges of one cycle, for the failure message."""
    members = set(component)
    lines = []
    for module, targets in sorted(modules_graph.items()):
        for target in sorted(targets):
            a, b = node_of(module), node_of(target)
            if a != b and a in members and b in members and b in graph.get(a, ()):
                lines.append(f"{module} -> {target}")
    return " | ".join(lines)


GRAPH = import_graph(modules())


def test_the_walker_sees_every_kind_of_import(tmp_path: Path) -> None:
    """Lazy, TYPE_CHECKING and relative imports all count (else a cycle could hide)."""
    pkg = tmp_path / "fleet"
    (pkg / "load").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "load" / "__init__.py").write_text("")
    (pkg / "load" / "runner.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from fleet.metrics import Thing\n"
        "def f():\n    from . import device\n    import fleet.keys\n"
    )
    (pkg / "load" / "device.py").write_text("")
    (pkg / "metrics.py").write_text("def g():\n    from fleet.load.runner import WorkerRun\n")
    (pkg / "keys.py").write_text("")
    graph = import_graph(modules(pkg))
    assert graph["fleet.load.runner"] == {"fleet.metrics", "fleet.load.device", "fleet.keys"}
    assert cycles(package_graph(graph)) == [["fleet.load", "fleet.metrics"]]
    assert cycles(graph) == [["fleet.load.runner", "fleet.metrics"]]


def test_the_graph_covers_fleet() -> None:
    assert {"fleet.cli.main", "fleet.cmp.client", "fleet.load.runner", "fleet.ca.service"} <= set(
        GRAPH
    )
    assert "fleet.cmp.client" in GRAPH["fleet.load.runner"]  # sanity: real edges are found


def test_no_module_import_cycle() -> None:
    found = cycles(GRAPH)
    assert not found, "; ".join(explain(c, GRAPH, GRAPH) for c in found)


def test_no_package_import_cycle() -> None:
    packages = package_graph(GRAPH)
    found = cycles(packages)
    assert not found, "; ".join(f"{c}: {explain(c, packages, GRAPH)}" for c in found)


def test_cmp_and_http_never_import_their_users() -> None:
    upward = sorted(
        f"{module} -> {target}"
        for module, targets in GRAPH.items()
        if node_of(module) in LOWER
        for target in targets
        if node_of(target) in UPPER
    )
    assert not upward, upward


def line_counts() -> dict[str, int]:
    return {
        str(path.relative_to(ROOT)): len(path.read_text(encoding="utf-8").splitlines())
        for path in sorted(FLEET.rglob("*.py"))
    }


def test_no_module_over_800_lines() -> None:
    counts = line_counts()
    too_long = {path: n for path, n in counts.items() if n > MAX_LINES}
    assert not too_long, f"modules over {MAX_LINES} lines: {too_long}"
