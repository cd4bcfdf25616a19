"""fleet.cmp.protection: the precomputed-pad HMAC, MAC parameters, signature checks and signers."""

import hmac

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa, x25519
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.cmp import der, oids
from fleet.cmp.protection import (
    BadSignature,
    MacProtector,
    Signer,
    UnsupportedAlgorithm,
    hmac_digest,
    parse_mac_params,
    verify_signature,
)


@settings(max_examples=200, deadline=None)
@given(
    name=st.sampled_from(["sha1", "sha224", "sha256", "sha384", "sha512"]),
    key=st.binary(max_size=200),
    data=st.binary(max_size=2000),
)
def test_hmac_from_precomputed_pads_is_hmac(name: str, key: bytes, data: bytes) -> None:
    assert hmac_digest(key, data, name) == hmac.digest(key, data, name)
    assert hmac_digest(key, data, name) == hmac.digest(key, data, name)  # the cached pads are unchanged


@settings(max_examples=100, deadline=None)
@given(
    owf=st.sampled_from(["sha256", "sha384", "sha512"]),
    mac=st.sampled_from(["sha1", "sha256", "sha512"]),
    iterations=st.integers(1, 100_000),
    salt=st.binary(min_size=1, max_size=64),
    pbmac1=st.booleans(),
)
def test_protector_parameters_parse_back(owf: str, mac: str, iterations: int, salt: bytes, pbmac1: bool) -> None:
    """What a MacProtector announces (parts of PBMParameter are cached per run) is what it uses."""
    protector = MacProtector(b"secret", iterations=iterations, owf=owf, mac=mac, salt=salt, pbmac1=pbmac1)
    assert parse_mac_params(protector.algorithm) == protector.params


@pytest.mark.parametrize("alg", [oids.ED25519, oids.ECDSA_SHA256, oids.RSA_SHA256, oids.RSASSA_PSS])
def test_verify_signature_refuses_keys_that_cannot_sign(alg: str) -> None:
    """A signer certificate (or a POP template) can carry any public key type; one that cannot
    sign, as X25519, is a mismatch with every signature algorithm, not a crash."""
    key = x25519.X25519PrivateKey.generate().public_key()
    with pytest.raises(BadSignature):
        verify_signature(der.algorithm_identifier(alg), key, b"data", bytes(64))


@pytest.mark.parametrize("key", [ec.generate_private_key(ec.SECP256R1()), rsa.generate_private_key(65537, 2048)], ids=["ec", "rsa"])
@pytest.mark.parametrize("hash_name", ["sha1", "md5", "sha3-256"])
def test_signer_refuses_hashes_rfc_9481_does_not_pair_with_the_key(key, hash_name: str) -> None:  # type: ignore[no-untyped-def]
    """A typed error naming the pair, not a KeyError from a table."""
    with pytest.raises(UnsupportedAlgorithm, match=hash_name):
        Signer(key, hash_name)


@pytest.mark.parametrize("pbmac1", [False, True])
def test_with_secret_is_the_constructor_with_another_secret(pbmac1: bool) -> None:
    """A fleet's per-device protector: the template's parameters, the device's secret and
    reference, as the constructor would build them; the template itself is unchanged."""
    template = MacProtector(b"template secret", reference=b"tpl", iterations=321, pbmac1=pbmac1)
    twin = template.with_secret(b"device secret", b"dev-7")
    salt = template.params.salt
    fresh = MacProtector(b"device secret", reference=b"dev-7", iterations=321, pbmac1=pbmac1, salt=salt)
    assert twin.secret == b"device secret" and twin.sender_kid == b"dev-7"
    assert twin.params == fresh.params and twin.algorithm == fresh.algorithm
    assert twin.protect(b"protected part") == fresh.protect(b"protected part")
    assert vars(twin) == vars(fresh)  # nothing of the template's secret or reference is left in it
    assert template.secret == b"template secret" and template.sender_kid == b"tpl"
    assert template.protect(b"x") == MacProtector(b"template secret", iterations=321, pbmac1=pbmac1, salt=salt).protect(b"x")
    assert "device secret" not in repr(twin)
    assert template.with_secret(b"s", None).sender_kid is None
