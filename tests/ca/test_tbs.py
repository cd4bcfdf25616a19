"""The direct certificate encoder against its reference, cryptography's builder: byte for
byte over random requests and every issuing key type, and the fallback when they differ."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet.ca import tbs
from fleet.ca.hierarchy import CaHierarchy
from fleet.ca.issuance import CertificateIssuer, CertificateRequestRejected, IssuedCert
from fleet.ca.tbs import SKI_SLOT, DirectEncoder, public_key_bits, validity_der
from fleet.ca.tbs import x509_time as _x509_time
from fleet.cmp import der

from .conftest import BASE_URL, device_name, ec_public_key, openssl_verify
from .pki_helpers import SUBJECT_KEYS as _SUBJECT_KEYS
from .pki_helpers import both_ways as _both_ways

# --------------------------------------------------------------------------- direct TBS encoding

_SAN_NAMES = st.lists(
    st.one_of(
        st.from_regex(r"[a-z][a-z0-9-]{0,20}\.example", fullmatch=True).map(x509.DNSName),
        st.from_regex(r"urn:dev:[a-z0-9]{1,12}", fullmatch=True).map(
            x509.UniformResourceIdentifier
        ),
        st.from_regex(r"[a-z]{1,8}@example\.org", fullmatch=True).map(x509.RFC822Name),
    ),
    max_size=3,
)
_KEY_USAGES = st.tuples(*[st.booleans()] * 5).map(
    lambda b: x509.KeyUsage(b[0], b[1], b[2], b[3], b[4], False, False, False, False)
)
_EKUS = st.lists(
    st.sampled_from(
        [
            ExtendedKeyUsageOID.CLIENT_AUTH,
            ExtendedKeyUsageOID.SERVER_AUTH,
            ExtendedKeyUsageOID.CODE_SIGNING,
        ]
    ),
    min_size=1,
    max_size=3,
    unique=True,
)
_CN = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x2FF, exclude_characters="\x7f"),
    min_size=1,
    max_size=32,
)  # cryptography caps a commonName at 64 UTF-8 octets; these characters take at most 2 each


@st.composite
def _requests(
    draw: st.DrawFn,
) -> tuple[x509.Name | None, list[x509.Extension[x509.ExtensionType]], list[x509.GeneralName]]:
    exts: list[x509.Extension[x509.ExtensionType]] = []
    sans = draw(_SAN_NAMES)
    if sans and draw(st.booleans()):
        exts.append(
            x509.Extension(
                x509.SubjectAlternativeName.oid, False, x509.SubjectAlternativeName(sans)
            )
        )
        sans = []
    if draw(st.booleans()):
        exts.append(x509.Extension(x509.KeyUsage.oid, draw(st.booleans()), draw(_KEY_USAGES)))
    if draw(st.booleans()):
        exts.append(
            x509.Extension(x509.ExtendedKeyUsage.oid, False, x509.ExtendedKeyUsage(draw(_EKUS)))
        )
    if draw(st.booleans()):
        policy = ObjectIdentifier(f"1.3.6.1.4.1.99999.{draw(st.integers(1, 10**6))}")
        exts.append(
            x509.Extension(
                x509.CertificatePolicies.oid,
                False,
                x509.CertificatePolicies([x509.PolicyInformation(policy, None)]),
            )
        )
    if draw(st.booleans()):
        exts.append(
            x509.Extension(
                x509.BasicConstraints.oid, True, x509.BasicConstraints(ca=False, path_length=None)
            )
        )
    if draw(st.booleans()):
        odd = ObjectIdentifier("1.3.6.1.4.1.99999.7")
        exts.append(x509.Extension(odd, False, x509.UnrecognizedExtension(odd, b"\x05\x00")))
    subject = (
        None
        if sans
        or any(e.oid == x509.SubjectAlternativeName.oid for e in exts)
        and draw(st.booleans())
        else (
            x509.Name(
                [x509.NameAttribute(NameOID.COMMON_NAME, draw(_CN))]
                + (
                    [x509.NameAttribute(NameOID.ORGANIZATION_NAME, draw(_CN))]
                    if draw(st.booleans())
                    else []
                )
            )
        )
    )
    return subject, exts, sans


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    request=_requests(),
    key_index=st.integers(0, len(_SUBJECT_KEYS) - 1),
    days=st.none() | st.integers(1, 5000),
)
def test_direct_encoding_is_byte_identical_to_the_builder(
    issuer: CertificateIssuer,
    request: tuple[
        x509.Name | None, list[x509.Extension[x509.ExtensionType]], list[x509.GeneralName]
    ],
    key_index: int,
    days: int | None,
) -> None:
    subject, exts, sans = request
    not_after = None if days is None else datetime.now(UTC) + timedelta(days=days)
    try:
        direct, built = _both_ways(
            issuer,
            _SUBJECT_KEYS[key_index],
            subject,
            extensions=exts,
            sans=sans or None,
            not_after=not_after,
        )
    except CertificateRequestRejected as exc:  # both ways refuse alike
        encoder = issuer._encoder
        issuer._encoder = None
        try:
            with pytest.raises(CertificateRequestRejected, match=str(exc)[:20]):
                issuer.issue(
                    _SUBJECT_KEYS[key_index],
                    subject,
                    extensions=exts,
                    sans=sans or None,
                    not_after=not_after,
                )  # type: ignore[arg-type]
        finally:
            issuer._encoder = encoder
        return
    assert direct.tbs_certificate_bytes == built.tbs_certificate_bytes
    assert direct.signature_algorithm_oid == built.signature_algorithm_oid
    issuer.hierarchy.issuing.public_key().verify(  # type: ignore[call-arg]
        direct.signature,
        direct.tbs_certificate_bytes,
        ec.ECDSA(hashes.SHA256()),  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    "key_type", ["ec:P-256", "ec:P-384", "ec:P-521", "rsa:2048", "ed25519", "ed448"]
)
def test_direct_encoding_for_each_issuing_key_type(key_type: str, tmp_path: Path) -> None:
    h = CaHierarchy.load_or_create(tmp_path / "state", key_type=key_type)
    for base_url in (BASE_URL, None):
        issuer = CertificateIssuer(h, base_url=base_url)
        sans = [x509.DNSName("dev.example")]
        direct, built = _both_ways(issuer, ec_public_key(), device_name(), sans=sans)
        assert direct.tbs_certificate_bytes == built.tbs_certificate_bytes
        assert direct.signature_algorithm_oid == built.signature_algorithm_oid
        assert direct.verify_directly_issued_by(h.issuing) is None
    result = openssl_verify(h, direct, tmp_path)
    assert result.returncode == 0, result.stderr


def test_an_issuer_the_direct_encoding_cannot_reproduce_uses_the_builder(
    hierarchy: CaHierarchy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The self-check at construction: if the direct TBS differs from the builder's for the
    probe certificate, every issuance goes through the builder."""
    monkeypatch.setattr(tbs, "_VERSION_3", b"\xa0\x03\x02\x01\x01")  # a v2 TBS: wrong on purpose
    issuer = CertificateIssuer(hierarchy, base_url=BASE_URL)
    assert issuer._encoder is None
    cert = issuer.issue(ec_public_key(), device_name()).cert
    assert cert.version is x509.Version.v3


def test_x509_time_switches_to_generalized_time_in_2050() -> None:
    assert (
        _x509_time(datetime(2049, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC))
        == b"\x17\x0d491231235959Z"
    )
    assert _x509_time(datetime(2050, 1, 1, tzinfo=UTC)) == b"\x18\x0f20500101000000Z"
    assert _x509_time(datetime(2031, 2, 3, 4, 5, 6, tzinfo=UTC)) == b"\x17\x0d310203040506Z"


@pytest.mark.parametrize("key_index", range(len(_SUBJECT_KEYS)))
def test_plain_request_path_is_byte_identical_to_the_builder(
    issuer: CertificateIssuer, key_index: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plain request (no extensions, SANs or notAfter asked for) takes ``_issue_plain``;
    its certificate is the builder's, and the recorded fields are the general path's."""
    taken: list[bool] = []
    original = CertificateIssuer._issue_plain

    def spy(self: CertificateIssuer, *args: object) -> IssuedCert | None:
        result = original(self, *args)  # type: ignore[arg-type]
        taken.append(result is not None)
        return result

    monkeypatch.setattr(CertificateIssuer, "_issue_plain", spy)
    key = _SUBJECT_KEYS[key_index]
    direct, built = _both_ways(issuer, key, device_name("plain"))
    assert taken and taken[0]
    assert direct.tbs_certificate_bytes == built.tbs_certificate_bytes
    before = len(taken)
    now = time.time()
    plain = issuer.issue(key, device_name("plain"), serial=77, now=now)
    assert len(taken) == before + 1 and taken[-1] is True
    general = issuer.issue(
        key,
        device_name("plain"),
        extensions=[  # forces the general path
            x509.Extension(
                ObjectIdentifier("1.3.6.1.4.1.99999.7"),
                False,
                x509.UnrecognizedExtension(ObjectIdentifier("1.3.6.1.4.1.99999.7"), b"\x05\x00"),
            )
        ],
        serial=77,
        now=now,
    )
    assert len(taken) == before + 1  # the general path never asks the plain one
    assert (plain.subject, plain.not_before, plain.not_after, plain.key_fingerprint) == (
        general.subject,
        general.not_before,
        general.not_after,
        general.key_fingerprint,
    )
    assert plain.cert.tbs_certificate_bytes == general.cert.tbs_certificate_bytes


def test_validity_der_is_the_builders_validity(hierarchy: CaHierarchy) -> None:
    for start, end in (
        (1_800_000_000, 1_831_536_000),
        (1_800_000_000, 2_600_000_000),
    ):  # to 2028; to 2052
        cert = tbs.sign_with_builder(
            hierarchy.issuing.subject,
            hierarchy.issuing_key,
            hierarchy.issuing_hash,
            1,
            datetime.fromtimestamp(start, UTC),
            datetime.fromtimestamp(end, UTC),
            device_name(),
            ec_public_key(),
            [],
        )
        assert validity_der(start, end) == der.parse(cert.tbs_certificate_bytes).children()[4].raw


@pytest.mark.parametrize(
    "key",
    [
        ec.generate_private_key(ec.SECP256R1()).public_key(),
        ec.generate_private_key(ec.SECP521R1()).public_key(),
        rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key(),
        ed25519.Ed25519PrivateKey.generate().public_key(),
        ed448.Ed448PrivateKey.generate().public_key(),
    ],
    ids=["p256", "p521", "rsa", "ed25519", "ed448"],
)
def test_public_key_bits_and_ski_are_rfc5280_method_1(
    key: object, issuer: CertificateIssuer
) -> None:
    """The key's BIT STRING as cryptography encodes it, and the SKI cryptography computes."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        raw = key.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    elif isinstance(key, rsa.RSAPublicKey):
        raw = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    else:
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)  # type: ignore[attr-defined]
    assert public_key_bits(key) == raw  # type: ignore[arg-type]
    cert = issuer.issue(key, device_name("ski")).cert  # type: ignore[arg-type]
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(key)  # type: ignore[arg-type]


def test_fixed_extensions_need_exactly_one_ski_slot(hierarchy: CaHierarchy) -> None:
    basic = tbs.preencoded(x509.BasicConstraints(ca=False, path_length=None), True)
    encoder = DirectEncoder.probe(
        hierarchy.issuing, hierarchy.issuing_key, hierarchy.issuing_hash, [basic, SKI_SLOT]
    )
    assert encoder is not None
    head, tail = encoder.fixed_extensions([basic, SKI_SLOT])
    assert tail == b"" and head.endswith(
        tbs.extension_der(basic) + bytes.fromhex("301d0603551d0e04160414")
    )
    with pytest.raises(ValueError, match="SKI exactly once"):
        encoder.fixed_extensions([basic])
