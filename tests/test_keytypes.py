"""The one key-type grammar: parsing, canonical text, generation and naming of existing keys."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, rsa, x25519

import fleet.keys
from fleet.errors import FleetError
from fleet.keytypes import ALLOWED_SPECS, KeySpec, KeySpecError

EC = KeySpec.parse("ec:P-256")
ED = KeySpec.parse("ed25519")
RSA = KeySpec.parse("rsa:2048")


@pytest.mark.parametrize("text", ALLOWED_SPECS)
def test_spec_round_trips(text: str) -> None:
    spec = KeySpec.parse(text)
    assert str(spec) == text
    assert KeySpec.parse(str(spec)) == spec
    assert hash(spec) == hash(KeySpec.parse(text))
    assert spec.estimated_seconds_per_key > 0


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("EC:p-256", "ec:P-256"),
        ("ec:secp256r1", "ec:P-256"),
        ("ec:prime256v1", "ec:P-256"),
        ("ec:secp384r1", "ec:P-384"),
        ("ec:secp521r1", "ec:P-521"),
        ("ec:p521", "ec:P-521"),
        (" RSA:3072 ", "rsa:3072"),
        ("Ed25519", "ed25519"),
        ("ED448", "ed448"),
    ],
)
def test_spec_accepts_case_and_aliases(text: str, canonical: str) -> None:
    assert str(KeySpec.parse(text)) == canonical


@pytest.mark.parametrize(
    "text",
    ["", "rsa", "rsa:1024", "rsa:2047", "rsa:6144", "rsa:16384", "rsa:abc", "ec", "ec:P-192",
     "ec:secp256k1", "dsa:2048", "ed25519:x", "ed448:x", "x25519", "rsa:2048:1", "rsa:99999999999"],
)  # fmt: skip
def test_bad_spec_names_what_is_allowed(text: str) -> None:
    with pytest.raises(KeySpecError) as info:
        KeySpec.parse(text)
    message = str(info.value)
    assert isinstance(info.value, FleetError)
    assert "\n" not in message
    assert all(allowed in message for allowed in ALLOWED_SPECS)


def test_spec_cannot_be_constructed_invalid() -> None:
    with pytest.raises(KeySpecError):
        KeySpec("rsa", bits=1024)
    with pytest.raises(KeySpecError):
        KeySpec("ec", curve="P-192")


@pytest.mark.parametrize(
    "text", ["ec:P-256", "ec:P-384", "ec:P-521", "ed25519", "ed448", "rsa:2048"]
)
def test_generate_makes_the_named_type(text: str) -> None:
    spec = KeySpec.parse(text)
    key = spec.generate()
    assert KeySpec.of(key) == spec
    assert KeySpec.of(key.public_key()) == spec
    der = spec.generate_der()
    loaded = serialization.load_der_private_key(der, None)
    assert KeySpec.of(loaded) == spec  # type: ignore[arg-type]


def test_rsa_uses_exponent_65537() -> None:
    key = RSA.generate()
    assert isinstance(key, rsa.RSAPrivateKey)
    assert key.key_size == 2048
    assert key.public_key().public_numbers().e == 65537


def test_of_rejects_unsupported_keys() -> None:
    with pytest.raises(KeySpecError, match="curve"):
        KeySpec.of(ec.generate_private_key(ec.SECP256K1()))
    with pytest.raises(KeySpecError, match="RSA key size 1024"):
        KeySpec.of(rsa.generate_private_key(public_exponent=65537, key_size=1024))
    with pytest.raises(KeySpecError, match="X25519PrivateKey"):
        KeySpec.of(x25519.X25519PrivateKey.generate())  # type: ignore[arg-type]


def test_cheapness() -> None:
    assert EC.is_cheap and ED.is_cheap and not RSA.is_cheap
    assert KeySpec.parse("ec:P-521").is_cheap and KeySpec.parse("ed448").is_cheap
    assert not KeySpec.parse("rsa:8192").is_cheap


def test_key_pools_use_this_grammar() -> None:
    """``fleet.keys`` (pools, ``fleet keys``) re-exports the grammar rather than keeping its own."""
    assert fleet.keys.KeySpec is KeySpec
    assert fleet.keys.KeySpecError is KeySpecError
    assert fleet.keys.ALLOWED_SPECS is ALLOWED_SPECS


def test_an_ed448_pool_hands_out_ed448_keys() -> None:
    spec = KeySpec.parse("ed448")
    pool = fleet.keys.KeyPool(
        spec, [spec.generate_der() for _ in range(2)], on_exhausted="generate"
    )
    keys = [pool.take() for _ in range(3)]  # two from the pool, one generated
    assert all(isinstance(k, ed448.Ed448PrivateKey) for k in keys)
    assert pool.statistics().generated == 1
