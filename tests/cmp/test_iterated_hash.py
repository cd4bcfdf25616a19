"""Every implementation of the PBM rounds (the C extension, the Python reference) agrees bit for bit,
and without the extension fleet runs the reference, with no I/O at import."""

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.cmp import _accel, iterated_hash
from fleet.cmp.iterated_hash import implementation, iterated_digest, python_iterated_digest

NAMES = ["sha1", "sha224", "sha256", "sha384", "sha512"]
try:
    from fleet.cmp import _iterated_hash as _EXT
except ImportError:
    _EXT = None
IMPLEMENTATIONS = {"extension": iterated_hash.extension_digests(_EXT) if _EXT is not None else {}}


def test_reference_is_the_rfc_definition() -> None:
    data = b"secret" + b"salt"
    expected = hashlib.sha256(data).digest()
    for _ in range(2):
        expected = hashlib.sha256(expected).digest()
    assert python_iterated_digest("sha256", data, 3) == expected


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="CI builds the extension on Linux")
def test_the_extension_is_built_and_used() -> None:
    """CI installs a compiler and OpenSSL's headers, so the extension must be there."""
    assert set(IMPLEMENTATIONS["extension"]) == set(NAMES)
    assert all(implementation(name) == "extension" for name in NAMES)
    assert _accel.implementation()["_iterated_hash"] == "extension"


@settings(max_examples=80, deadline=None)
@given(name=st.sampled_from(NAMES), data=st.binary(max_size=300), count=st.integers(min_value=1, max_value=1200))
def test_every_implementation_equals_the_reference(name: str, data: bytes, count: int) -> None:
    expected = python_iterated_digest(name, data, count)
    assert iterated_digest(name, data, count) == expected
    for table in IMPLEMENTATIONS.values():
        if name in table:
            assert table[name](data, count) == expected


def test_secret_with_nul_bytes_is_hashed_whole() -> None:
    data = b"\x00secret\x00\x00" + b"\x00" * 16
    for table in IMPLEMENTATIONS.values():
        if "sha256" in table:
            assert table["sha256"](data, 500) == python_iterated_digest("sha256", data, 500)
    assert iterated_digest("sha256", data, 500) == python_iterated_digest("sha256", data, 500)


def test_count_below_one_is_refused() -> None:
    with pytest.raises(ValueError):
        iterated_digest("sha256", b"x", 0)
    compiled = pytest.importorskip("fleet.cmp._iterated_hash").iterated_digest
    with pytest.raises(ValueError):
        compiled("sha256", b"x", 0)
    with pytest.raises(ValueError):
        compiled("md5", b"x", 1)


_WITHOUT_EXTENSION = """
import sys
opened = []
sys.addaudithook(lambda event, args: opened.append(str(args[0])) if event == "open" else None)
sys.modules["fleet.cmp._iterated_hash"] = None  # as if it had not been built: ImportError
from fleet.cmp import _accel, iterated_hash
assert _accel.implementation()["_iterated_hash"] == "python", _accel.implementation()
assert all(iterated_hash.implementation(n) == "python" for n in {names!r})
for name in {names!r}:
    assert iterated_hash.iterated_digest(name, b"s", 500) == iterated_hash.python_iterated_digest(name, b"s", 500)
assert "ctypes" not in sys.modules, "the fallback loads no library by hand"
assert not [p for p in opened if p.startswith("/proc")], opened
print("ok")
"""


def test_without_the_extension_the_python_reference_runs_and_nothing_is_read() -> None:
    """No /proc/self/maps, no ctypes: an absent extension means hashlib, nothing else."""
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_EXTENSION.format(names=NAMES)],
        capture_output=True, text=True, timeout=60, check=False, cwd=root,
        env={"PYTHONPATH": str(root), "PATH": ""},
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
