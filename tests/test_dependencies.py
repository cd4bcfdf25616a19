"""pyproject's runtime dependencies are exactly the third-party packages ``fleet/`` imports.

A dependency that only the tests or the benches use (httpx, pyasn1) belongs in the ``test`` or
``bench`` extra: installing fleet should not pull it onto the load path. Imports are read from
the source with ``ast``, wherever they stand (a lazy import is still an import).
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _dist_name(requirement: str) -> str:
    """``"pyasn1-alt-modules>=0.4.10"`` -> ``"pyasn1-alt-modules"`` (PEP 503 normalised)."""
    name = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert name is not None, requirement
    return re.sub(r"[-_.]+", "-", name.group()).lower()


def _top_level_imports(root: Path) -> set[str]:
    found: set[str] = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(alias.name.partition(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                found.add(node.module.partition(".")[0])
    return found


def _third_party_distributions(root: Path) -> set[str]:
    """The distributions providing what ``root`` imports, beside the stdlib and fleet itself."""
    providers = packages_distributions()
    # the tree's own modules (the tests' helpers import each other by their bare names)
    local = {p.stem for p in root.rglob("*.py")} | {p.name for p in root.rglob("*") if p.is_dir()}
    local |= {root.name, "fleet", "__future__"}
    dists: set[str] = set()
    for module in _top_level_imports(root) - set(sys.stdlib_module_names) - local:
        assert module in providers, f"{module} is imported by {root.name}/ but not installed"
        dists.update(_dist_name(d) for d in providers[module])
    return dists


def test_runtime_dependencies_are_what_fleet_imports() -> None:
    runtime = {_dist_name(r) for r in _project()["dependencies"]}
    assert _third_party_distributions(ROOT / "fleet") == runtime


def test_httpx_and_pyasn1_are_test_and_bench_extras_only() -> None:
    project = _project()
    runtime = {_dist_name(r) for r in project["dependencies"]}
    extras = {k: {_dist_name(r) for r in v} for k, v in project["optional-dependencies"].items()}
    moved = {"httpx", "pyasn1", "pyasn1-alt-modules"}
    assert not moved & runtime
    assert moved <= extras["test"]
    assert moved <= extras["bench"]


def test_the_test_extra_holds_what_the_tests_import() -> None:
    project = _project()
    declared = {_dist_name(r) for r in project["dependencies"]}
    declared |= {_dist_name(r) for r in project["optional-dependencies"]["test"]}
    # pytest plugins are loaded by name, not imported: only check what the test code imports.
    assert _third_party_distributions(ROOT / "tests") <= declared
