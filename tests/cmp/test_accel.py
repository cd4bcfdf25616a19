"""fleet.cmp._accel: an extension is installed only when it imports and its probe holds."""

from __future__ import annotations

from types import ModuleType

import pytest

from fleet.cmp import _accel


@pytest.fixture(autouse=True)
def _keep_the_report() -> object:
    saved = dict(_accel._REPORT)
    yield
    _accel._REPORT.clear()
    _accel._REPORT.update(saved)


def test_an_extension_that_agrees_is_installed_and_reported() -> None:
    installed: list[ModuleType] = []
    # any importable module under fleet.cmp stands in for an extension
    assert (
        _accel.accelerate("oids", lambda m: m.__name__ == "fleet.cmp.oids", installed.append)
        == "extension"
    )
    assert [m.__name__ for m in installed] == ["fleet.cmp.oids"]
    assert _accel.implementation()["oids"] == "extension"


@pytest.mark.parametrize("verdict", [False, RuntimeError("probe broke"), ValueError("odd answer")])
def test_a_disagreeing_or_failing_probe_means_python(verdict: object) -> None:
    installed: list[ModuleType] = []

    def probe(module: ModuleType) -> bool:
        if isinstance(verdict, Exception):
            raise verdict
        return bool(verdict)

    assert _accel.accelerate("oids", probe, installed.append) == "python"
    assert installed == [] and _accel.implementation()["oids"] == "python"


def test_an_absent_extension_means_python() -> None:
    installed: list[ModuleType] = []
    assert _accel.accelerate("_not_built", lambda m: True, installed.append) == "python"
    assert installed == [] and _accel.implementation()["_not_built"] == "python"


def test_the_report_names_both_extensions() -> None:
    from fleet.cmp import der, iterated_hash  # noqa: F401  (each loads its extension)

    assert set(_accel.implementation()) >= {"_der", "_iterated_hash"}
    assert set(_accel.implementation().values()) <= {"extension", "python"}
