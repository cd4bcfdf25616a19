"""Every implementation of the PBM rounds (C extension, EVP_BytesToKey, Python) agrees bit for bit."""

import hashlib
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.cmp import iterated_hash
from fleet.cmp.iterated_hash import implementation, iterated_digest, python_iterated_digest

NAMES = ["sha1", "sha224", "sha256", "sha384", "sha512"]
IMPLEMENTATIONS = {
    "extension": iterated_hash._extension_digests(),
    "evp_bytes_to_key": iterated_hash._openssl_digests(),
}


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
    assert set(IMPLEMENTATIONS["evp_bytes_to_key"]) == {"sha256", "sha384"}  # the fallback works too


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
        assert table["sha256"](data, 500) == python_iterated_digest("sha256", data, 500)


def test_count_below_one_is_refused() -> None:
    with pytest.raises(ValueError):
        iterated_digest("sha256", b"x", 0)
    compiled = pytest.importorskip("fleet.cmp._iterated_hash").iterated_digest
    with pytest.raises(ValueError):
        compiled("sha256", b"x", 0)
    with pytest.raises(ValueError):
        compiled("md5", b"x", 1)
