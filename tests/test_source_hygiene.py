"""Comments and docstrings neither quote measured figures nor point outside the repository;
each class name in fleet/ means one thing; CI lints with a pinned ruff, then type-checks with a
pinned mypy, before the tests.

Measured costs rot with the machine: they live in bench/README.md beside the command that
measures them, and code says why in words. A path outside the repository (a sibling checkout's
documents) does not exist for a reader of the repository. Read with ``tokenize``: comments and
every string literal (docstrings included) of fleet/, tests/ and bench/.
"""

from __future__ import annotations

import ast
import builtins
import io
import re
import subprocess
import sys
import tokenize
import tomllib
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# "~25 µs", "about 40 ms", "costs 1.3 µs", "saves ~0.5 µs", "3-10x more", "took 3.7%": a figure
# given as a measurement. Specified bounds ("buckets from 1 ms to 60 s") are not matched.
MEASURED = re.compile(
    r"(~|\babout |\bcosts? |\bcost |\bsaves? |\btook |\bmeasured )\s*[\d][\d.,]*(\s*[-–]\s*[\d.,]+)?"
    r"\s*(µs|us|ns|ms|%)(?!\w)"
    r"|\b\d+(\.\d+)?(-\d+(\.\d+)?)?x (faster|slower|more|less|cheaper|dearer)\b"
    r"|\b\d[\d.,]*(\s*[-–]\s*[\d.,]+)?\s*(µs|ms) (of (CPU|client|the)|per|a call|apiece|each)\b"
    r"|\b\d[\d.,]* -> \d[\d.,]*\s*(µs|ms)"
)
OUTSIDE = re.compile(r"shared/docs|\bdocs/[\w.-]+\.md\b|measured-costs\.md|/work/")


def _texts(path: Path) -> Iterator[tuple[int, str]]:
    """(line, text) of each comment and string literal in ``path``."""
    source = path.read_text()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type in (tokenize.COMMENT, tokenize.STRING):
            yield tok.start[0], tok.string


def _sources(*dirs: str) -> list[Path]:
    found = [p for d in dirs for p in sorted((ROOT / d).rglob("*.py"))]
    return [p for p in found if p.resolve() != Path(__file__).resolve()]


def test_no_measured_figures_in_fleets_comments() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line}: {match.group(0)!r}"
        for path in _sources("fleet")
        for line, text in _texts(path)
        for match in MEASURED.finditer(text)
    ]
    assert not found, "measured figures belong in bench/README.md:\n" + "\n".join(found)


def test_no_reference_to_files_outside_the_repository() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line}: {match.group(0)!r}"
        for path in _sources("fleet", "tests", "bench")
        for line, text in _texts(path)
        for match in OUTSIDE.finditer(text)
        if not (ROOT / match.group(0)).is_file()  # docs/ of this repository is inside it
    ]
    assert not found, "\n".join(found)


def test_the_patterns_catch_what_they_are_for() -> None:
    """The patterns themselves, on the phrases this test was written against."""
    for quoted in (
        "costs ~22 ms", "about 0.15 µs", "3-10x more", "took 3.7% of", "cost ~70-80 µs",
        "26-47 µs of CPU", "1.3 µs for eight fields, 0.24 µs each", "12 -> 5 µs",
    ):
        assert MEASURED.search(quoted), quoted
    for spec in ("buckets run from 1 ms to 60 s", "100 µs up to 60 s", "error by 1/256 (0.4 %)"):
        assert not MEASURED.search(spec), spec
    assert OUTSIDE.search("see shared/docs/measured-costs.md")
    assert OUTSIDE.search("the test PKI of docs/openssl-peer.md")
    assert not OUTSIDE.search("bench/README.md")


def test_each_class_name_is_defined_once_and_shadows_no_builtin() -> None:
    """A reader who meets ``DeviceState`` or ``Progress`` should not have to ask which one, and
    ``NameError_`` was a builtin's name with a trailing underscore."""
    where: defaultdict[str, list[str]] = defaultdict(list)
    for path in _sources("fleet"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef):
                where[node.name].append(str(path.relative_to(ROOT)))
    clashes = {name: paths for name, paths in where.items() if len(paths) > 1}
    assert not clashes
    shadowing = sorted(n for n in where if n in vars(builtins) or n.rstrip("_") in vars(builtins))
    assert not shadowing


def test_ci_runs_a_pinned_ruff_before_the_tests() -> None:
    """CI lints before it tests, with the ruff version the tree was made clean with."""
    script = (ROOT / ".ci" / "run").read_text().splitlines()
    install = next(i for i, line in enumerate(script) if "pip install" in line and "ruff==" in line)
    lint = script.index("python3 -m ruff check fleet tests bench")
    assert install < lint < script.index("python3 -m pytest -q")


def test_ci_type_checks_fleet_with_a_pinned_mypy_after_the_lint() -> None:
    """CI runs mypy on fleet/ ([tool.mypy] in pyproject.toml) between the lint and the tests,
    with the mypy version the tree was made clean with (pinned in the test extra)."""
    script = (ROOT / ".ci" / "run").read_text().splitlines()
    lint = script.index("python3 -m ruff check fleet tests bench")
    assert lint < script.index("python3 -m mypy fleet") < script.index("python3 -m pytest -q")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    test_extra = pyproject["project"]["optional-dependencies"]["test"]
    assert any(r.startswith("mypy==") for r in test_extra)
    assert pyproject["tool"]["mypy"]["warn_unused_ignores"] is True


def test_ruff_finds_nothing() -> None:
    """What CI's lint step runs (skipped where ruff is not installed; CI installs it)."""
    ruff = pytest.importorskip("ruff")
    result = subprocess.run(
        [sys.executable, "-m", ruff.__name__, "check", "--no-cache", "fleet", "tests", "bench"],
        cwd=ROOT, check=False, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-1000:]
