"""The one loader for fleet's optional C extensions: import, probe, install, report.

The extensions are ``fleet.cmp._der`` and ``fleet.cmp._iterated_hash``. An extension is used only
after it agrees with the Python reference it replaces: the module that
owns the reference hands ``accelerate`` a probe (compare the extension with the reference on
inputs that cover each branch) and an install step (bind the extension's functions). Without a
compiler at install time, or when a probe disagrees, fleet runs the Python reference, silently.
Nothing here reads files or loads libraries by path: an absent extension is an ImportError.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Literal

__all__ = ["Implementation", "accelerate", "implementation"]

Implementation = Literal["extension", "python"]

_REPORT: dict[str, Implementation] = {}


def accelerate(
    name: str,
    probe: Callable[[ModuleType], bool],
    install: Callable[[ModuleType], None],
) -> Implementation:
    """Import the extension ``name`` (a module under ``fleet.cmp``), check it with
    ``probe(module)`` and, if the probe holds, ``install(module)``. Returns, and records for
    ``implementation()``, which implementation now runs."""
    try:
        module = importlib.import_module(f"fleet.cmp.{name}")
    except ImportError:
        return _record(name, "python")
    try:
        agrees = probe(module)
    except Exception:  # noqa: BLE001 - any failure of an optional accelerator means "use Python"
        agrees = False
    if not agrees:
        return _record(name, "python")
    install(module)
    return _record(name, "extension")


def _record(name: str, which: Implementation) -> Implementation:
    _REPORT[name] = which
    return which


def implementation() -> dict[str, Implementation]:
    """Which implementation runs each extension's functions, for the modules that have loaded
    theirs (``fleet.cmp.der`` loads ``_der``, ``fleet.cmp.iterated_hash`` ``_iterated_hash``)."""
    return dict(_REPORT)
