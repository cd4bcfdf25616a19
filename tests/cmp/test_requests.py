"""``requests``: the direct body encoder agrees with the record-based one it shortcuts."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.cmp import messages
from fleet.cmp.messages import BodyType, CertReqMessages
from fleet.cmp.protection import Signer, verify_signature
from fleet.cmp.requests import CertRequest, body_der, build_body

_ED25519 = ed25519.Ed25519PrivateKey.generate()
_RSA = rsa.generate_private_key(65537, 2048)
_EC = ec.generate_private_key(ec.SECP256R1())

_names = st.lists(
    st.tuples(st.sampled_from([x509.NameOID.COMMON_NAME, x509.NameOID.ORGANIZATION_NAME]), st.text(min_size=1, max_size=20)),
    max_size=3,
).map(lambda attrs: x509.Name([x509.NameAttribute(oid, value) for oid, value in attrs]))
_sans = st.lists(
    st.one_of(
        st.from_regex(r"[a-z]{1,10}\.example", fullmatch=True).map(x509.DNSName),
        st.from_regex(r"urn:uuid:[0-9a-f]{8}", fullmatch=True).map(x509.UniformResourceIdentifier),
    ),
    max_size=2,
)


@settings(max_examples=60, deadline=None)
@given(
    kind=st.sampled_from([BodyType.IR, BodyType.CR]),
    subject=st.none() | _names,
    sans=_sans,
    key=st.sampled_from([_ED25519, _RSA]),
    implicit_confirm=st.booleans(),
)
def test_direct_encoding_equals_the_record_encoding(kind, subject, sans, key, implicit_confirm) -> None:
    """Ed25519 and RSA PKCS#1 v1.5 signatures are deterministic, so the bytes must be identical."""
    request = CertRequest(kind, key, subject, sans, implicit_confirm=implicit_confirm)
    assert body_der(request) == messages.encode_body(kind, build_body(request))


def test_ecdsa_body_matches_but_for_the_signature_and_the_pop_verifies() -> None:
    subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "dev-1")])
    request = CertRequest(BodyType.IR, _EC, subject, [x509.DNSName("dev-1.example")])
    direct = messages.decode_body(BodyType.IR, messages.der.parse(body_der(request)).unwrap())
    reference = build_body(request)
    assert isinstance(direct, CertReqMessages) and isinstance(reference, CertReqMessages)
    got, want = direct.messages[0], reference.messages[0]
    assert got.template == want.template and got.cert_req_id == want.cert_req_id
    assert got.popo is not None and want.popo is not None and got.popo.algorithm == want.popo.algorithm
    verify_signature(got.popo.algorithm, _EC.public_key(), got.cert_request_der, got.popo.signature)


@pytest.mark.parametrize("pop", ["raVerified", "none"])
def test_other_pops_take_the_record_path(pop: str) -> None:
    request = CertRequest(BodyType.IR, _ED25519, None, pop=pop)
    assert body_der(request) == messages.encode_body(BodyType.IR, build_body(request))


def test_signer_algorithm_is_what_the_pop_names() -> None:
    request = CertRequest(BodyType.CR, _EC, None)
    popo = messages.decode_body(BodyType.CR, messages.der.parse(body_der(request)).unwrap()).messages[0].popo  # type: ignore[union-attr]
    assert popo is not None and popo.algorithm == Signer(_EC).algorithm


@settings(max_examples=40, deadline=None)
@given(subject=_names, sans=_sans)
def test_subject_given_as_der_encodes_as_the_name_does(subject: x509.Name, sans: list[x509.GeneralName]) -> None:
    by_name = CertRequest(BodyType.IR, _ED25519, subject, sans)
    by_der = CertRequest(BodyType.IR, _ED25519, subject.public_bytes(), sans)
    assert by_der.subject_der == by_name.subject_der
    assert body_der(by_der) == body_der(by_name)
    assert messages.encode_body(BodyType.IR, build_body(by_der)) == body_der(by_name)


@pytest.mark.parametrize("bad", [b"", b"\x30", b"\x31\x00", b"\x30\x05\x00"])
def test_subject_der_that_is_not_a_name_is_refused(bad: bytes) -> None:
    with pytest.raises(ValueError, match="subject is not a DER Name"):
        CertRequest(BodyType.IR, _ED25519, bad)
