"""fleet.cmp's public face, in the manner of httpx's test_exported_members: ``__all__`` is sorted
and is exactly what the package offers; each name is the object its home module defines;
importing the package is cheap and brings no I/O machinery."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import fleet.cmp

ROOT = Path(__file__).resolve().parents[2]
CMP = ROOT / "fleet" / "cmp"


def test_all_is_sorted_and_is_what_the_package_offers() -> None:
    assert fleet.cmp.__all__ == sorted(fleet.cmp.__all__)
    for name in fleet.cmp.__all__:
        getattr(fleet.cmp, name)  # every export resolves
    public = sorted(
        name
        for name, value in vars(fleet.cmp).items()
        if not name.startswith("_") and not isinstance(value, ModuleType)
    )
    assert fleet.cmp.__all__ == public
    assert set(fleet.cmp.__all__) <= set(dir(fleet.cmp))


def test_each_export_is_its_home_modules_object() -> None:
    for name in fleet.cmp.__all__:
        value = getattr(fleet.cmp, name)
        home = value.__module__
        assert home.startswith("fleet.cmp.") and not home.startswith("fleet.cmp._"), (name, home)
        assert getattr(importlib.import_module(home), name) is value, name


def test_what_static_tools_see_is_what_runs() -> None:
    """The TYPE_CHECKING imports name the same objects, from the same modules, as ``_HOME``."""
    tree = ast.parse((CMP / "__init__.py").read_text())
    [block] = [node for node in tree.body if isinstance(node, ast.If)]
    imported = {
        alias.name: node.module
        for node in block.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert imported == {name: f"fleet.cmp.{home}" for name, home in fleet.cmp._HOME.items()}
    assert sorted(imported) == fleet.cmp.__all__


def test_unknown_names_raise_attribute_error() -> None:
    try:
        fleet.cmp.NoSuchThing  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("fleet.cmp.NoSuchThing resolved")


_IMPORT_CHECK = """
import sys
import fleet.cmp
loaded = sorted(m for m in sys.modules if m.startswith("fleet."))
assert loaded == ["fleet.cmp"], loaded  # cheap: nothing but the face itself
assert "cryptography" not in sys.modules
from fleet.cmp import ClientTransaction, CmpServer, TrustStore, BodyType, MacProtector
for heavy in ("trio", "h11", "numpy", "prometheus_client", "typer", "asyncio", "ssl"):
    assert heavy not in sys.modules, heavy
below = ("fleet.errors", "fleet.records", "fleet.randomness")
outside = sorted(m for m in sys.modules
                 if m.startswith("fleet.") and not m.startswith("fleet.cmp") and m not in below)
assert not outside, outside
print("ok")
"""


def test_importing_fleet_cmp_is_cheap_and_brings_no_io() -> None:
    """In a fresh interpreter: ``import fleet.cmp`` loads no submodule, and using both roles loads
    neither trio, asyncio nor ssl, nor anything of fleet above the core. (``socket`` may come in
    through the standard library's email package, which cryptography's x509 imports.)"""
    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_CHECK],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": ""},
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


_IO_MODULES = {"socket", "ssl", "select", "selectors", "asyncio", "trio", "h11", "http", "urllib"}
_FLEET_BELOW = ("fleet.errors", "fleet.records", "fleet.randomness")  # what the core may use


def test_no_module_of_the_core_imports_io_or_the_layers_above() -> None:
    for path in sorted(CMP.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                assert top not in _IO_MODULES, (path.name, name)
                if top == "fleet":
                    assert name.startswith("fleet.cmp") or name in _FLEET_BELOW, (path.name, name)
