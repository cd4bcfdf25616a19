"""The OpenSSL-run PBM rounds equal the Python reference, bit for bit."""

import hashlib
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.cmp.iterated_hash import accelerated, iterated_digest, python_iterated_digest


def test_reference_is_the_rfc_definition() -> None:
    data = b"secret" + b"salt"
    expected = hashlib.sha256(data).digest()
    for _ in range(2):
        expected = hashlib.sha256(expected).digest()
    assert python_iterated_digest("sha256", data, 3) == expected


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds libcrypto via /proc/self/maps")
def test_sha256_and_sha384_run_inside_openssl_on_linux() -> None:
    assert accelerated("sha256") and accelerated("sha384")


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(["sha1", "sha224", "sha256", "sha384", "sha512"]),
    data=st.binary(max_size=300),
    count=st.integers(min_value=1, max_value=1200),
)
def test_equals_reference(name: str, data: bytes, count: int) -> None:
    assert iterated_digest(name, data, count) == python_iterated_digest(name, data, count)


def test_secret_with_nul_bytes_is_hashed_whole() -> None:
    data = b"\x00secret\x00\x00" + b"\x00" * 16
    assert iterated_digest("sha256", data, 500) == python_iterated_digest("sha256", data, 500)


def test_count_below_one_is_refused() -> None:
    with pytest.raises(ValueError):
        iterated_digest("sha256", b"x", 0)


