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


@settings(max_examples=60, deadline=None)
@given(
    prf=st.sampled_from(["sha1", "sha224", "sha256", "sha384", "sha512"]),
    secret=st.binary(max_size=100),
    salt=st.binary(min_size=1, max_size=64),
    iterations=st.integers(1, 3000),
    length=st.integers(1, 128),
)
def test_pbkdf2_key_is_hashlibs_pbkdf2(prf: str, secret: bytes, salt: bytes, iterations: int, length: int) -> None:
    """PBMAC1 keys come from cryptography's PBKDF2 (faster here): the same bytes as hashlib's."""
    import hashlib

    from fleet.cmp.protection import pbkdf2_key

    assert pbkdf2_key(secret, salt, prf, iterations, length) == hashlib.pbkdf2_hmac(prf, secret, salt, iterations, length)


@pytest.mark.parametrize(("text", "value"), [
    ("dev-00000001", b"dev-00000001"), ("CN=fleet-test", b"CN=fleet-test"), ("hex:0A0b", b"\x0a\x0b"),
    ("HEX:ff", b"\xff"), ("gnb-é", "gnb-é".encode()),
])
def test_references_as_users_write_them(text: str, value: bytes) -> None:
    from fleet.cmp.protection import parse_reference

    assert parse_reference(text) == value


@pytest.mark.parametrize(("text", "words"), [("hex:0g", "is not hex"), ("hex:", "empty"), ("", "empty")])
def test_bad_references_name_the_problem(text: str, words: str) -> None:
    from fleet.cmp.protection import parse_reference

    with pytest.raises(ValueError, match=words):
        parse_reference(text)


def test_iteration_caps_per_algorithm_and_an_explicit_cap_for_both() -> None:
    from fleet.cmp.protection import (
        DEFAULT_MAX_PBM_ITERATIONS,
        DEFAULT_MAX_PBMAC1_ITERATIONS,
        IterationCountRefused,
        Pbmac1Params,
        PbmParams,
    )

    pbm = PbmParams(b"salt", "sha256", DEFAULT_MAX_PBM_ITERATIONS, "sha256")
    pbmac1 = Pbmac1Params(b"salt", DEFAULT_MAX_PBMAC1_ITERATIONS, 32, "sha256", "sha256")
    assert parse_mac_params(pbm.encode()) == pbm and parse_mac_params(pbmac1.encode()) == pbmac1
    for params in (PbmParams(b"salt", "sha256", DEFAULT_MAX_PBM_ITERATIONS + 1, "sha256"),
                   Pbmac1Params(b"salt", DEFAULT_MAX_PBMAC1_ITERATIONS + 1, 32, "sha256", "sha256")):
        with pytest.raises(IterationCountRefused, match="is outside 1.."):
            parse_mac_params(params.encode())
    with pytest.raises(IterationCountRefused, match="PBMAC1 iteration count 1000000 is outside 1..500000"):
        parse_mac_params(pbmac1.encode(), max_iterations=500_000)
    assert parse_mac_params(pbm.encode(), max_iterations=DEFAULT_MAX_PBM_ITERATIONS * 2) == pbm


def test_key_is_answers_as_isinstance_for_every_key_class() -> None:
    from cryptography.hazmat.primitives.asymmetric import ed448, ed25519, x448

    from fleet.cmp.pop import cannot_sign
    from fleet.cmp.protection import key_is

    keys = [ec.generate_private_key(ec.SECP256R1()).public_key(),
            rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key(),
            ed25519.Ed25519PrivateKey.generate().public_key(), ed448.Ed448PrivateKey.generate().public_key(),
            x25519.X25519PrivateKey.generate().public_key(), x448.X448PrivateKey.generate().public_key(), object()]
    abstracts = [ec.EllipticCurvePublicKey, rsa.RSAPublicKey, ed25519.Ed25519PublicKey, ed448.Ed448PublicKey,
                 x25519.X25519PublicKey, x448.X448PublicKey]
    for key in keys:
        for abstract in abstracts:
            assert key_is(type(key), abstract) == isinstance(key, abstract), (type(key), abstract)
        assert cannot_sign(key) == isinstance(key, (x25519.X25519PublicKey, x448.X448PublicKey))
