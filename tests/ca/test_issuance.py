"""Issuance policy: extensions, names, validity (from the request's time), records; checked
with cryptography and openssl."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet.ca.authority import Authority
from fleet.ca.hierarchy import BACKDATE, CaHierarchy
from fleet.ca.issuance import (
    CertificateIssuer,
    CertificateRequestRejected,
    IssuedCert,
    key_fingerprint,
)
from fleet.ca.rfc4514 import simple_rfc4514
from fleet.ca.service import CaService
from fleet.cmp.client import ClientConfig, ClientTransaction
from fleet.cmp.messages import BodyType, CertRepMessage, decode
from fleet.cmp.protection import MacProtector
from fleet.cmp.requests import CertRequest
from fleet.cmp.shared_secrets import SharedSecrets
from fleet.cmp.trust import TrustStore
from fleet.http.server import HttpRequest

from .conftest import BASE_URL, device_name, ec_public_key, openssl_verify
from .pki_helpers import SUBJECT_KEYS as _SUBJECT_KEYS
from .pki_helpers import ext as _ext
from .pki_helpers import make_openssl_pki
from .pki_helpers import names as _names


@pytest.fixture(scope="module")
def openssl_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_openssl_pki(tmp_path_factory.mktemp("openssl-pki"))


def test_issued_certificate_carries_the_policy_extensions(
    issuer: CertificateIssuer, hierarchy: CaHierarchy, tmp_path: Path
) -> None:
    key = ec_public_key()
    issued = issuer.issue(key, device_name("dev-7"), sans=[x509.DNSName("dev-7.example")])
    cert = x509.load_der_x509_certificate(issued.der)
    assert cert == issued.cert and cert.serial_number == issued.serial
    assert cert.issuer == hierarchy.issuing.subject
    assert cert.subject == device_name("dev-7") and issued.subject == "CN=dev-7"
    assert (
        cert.signature_hash_algorithm is not None and cert.signature_hash_algorithm.name == "sha256"
    )

    bc = _ext(cert, x509.BasicConstraints)
    assert bc.critical and bc.value.ca is False  # type: ignore[attr-defined]
    ku = _ext(cert, x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_encipherment  # type: ignore[attr-defined]
    san = _ext(cert, x509.SubjectAlternativeName)
    assert not san.critical and san.value.get_values_for_type(x509.DNSName) == ["dev-7.example"]  # type: ignore[attr-defined]
    assert _ext(cert, x509.SubjectKeyIdentifier).value == x509.SubjectKeyIdentifier.from_public_key(
        key
    )
    assert _ext(cert, x509.AuthorityKeyIdentifier).value.key_identifier == hierarchy.issuing_ski  # type: ignore[attr-defined]
    dp = _ext(cert, x509.CRLDistributionPoints).value
    assert [n.value for n in dp[0].full_name] == [f"{BASE_URL}/crl/issuing.crl"]  # type: ignore[index]
    aia = _ext(cert, x509.AuthorityInformationAccess).value
    assert [(a.access_method.dotted_string, a.access_location.value) for a in aia] == [  # type: ignore[attr-defined]
        ("1.3.6.1.5.5.7.48.1", f"{BASE_URL}/ocsp")
    ]
    assert issued.key_fingerprint == key_fingerprint(key)
    assert issued.not_before == cert.not_valid_before_utc
    assert issued.not_after == cert.not_valid_after_utc
    assert timedelta(days=364) < issued.not_after - datetime.now(UTC) <= timedelta(days=365)

    result = openssl_verify(hierarchy, cert, tmp_path)
    assert result.returncode == 0, result.stderr


def test_without_base_url_no_crl_or_ocsp_pointers(hierarchy: CaHierarchy) -> None:
    cert = CertificateIssuer(hierarchy).issue(ec_public_key(), device_name()).cert
    oids = {e.oid for e in cert.extensions}
    assert x509.CRLDistributionPoints.oid not in oids
    assert x509.AuthorityInformationAccess.oid not in oids


def test_recorded_subject_is_the_certificates_own(issuer: CertificateIssuer) -> None:
    """``IssuedCert.subject`` comes from the requested name, not a re-parse: it must still be
    what the certificate says, escapes, multi-valued RDNs and non-ASCII included."""
    name = x509.Name(
        [
            x509.RelativeDistinguishedName(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, ' a,b+c\\d="e" '),
                    x509.NameAttribute(NameOID.SERIAL_NUMBER, "42"),
                ]
            ),
            x509.RelativeDistinguishedName(
                [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Grüße")]
            ),
            x509.RelativeDistinguishedName(
                [x509.NameAttribute(x509.ObjectIdentifier("1.2.3.4"), "#custom")]
            ),
        ]
    )
    single = x509.Name([rdn for rdn in name.rdns if len(rdn) == 1])
    for subject in (name, single):  # DER reorders the multi-valued RDN of the first
        issued = issuer.issue(ec_public_key(), subject)
        reparsed = x509.load_der_x509_certificate(issued.der).subject.rfc4514_string()
        assert issued.subject == reparsed
    assert issued.subject == single.rfc4514_string()


def test_null_dn_subject_with_san_makes_the_san_critical(
    issuer: CertificateIssuer, hierarchy: CaHierarchy, tmp_path: Path
) -> None:
    uri = "urn:uuid:0f8fad5b-d9cb-469f-a165-70867728950e"
    issued = issuer.issue(ec_public_key(), None, sans=[x509.UniformResourceIdentifier(uri)])
    assert len(issued.cert.subject) == 0 and issued.subject == ""
    san = _ext(issued.cert, x509.SubjectAlternativeName)
    assert san.critical
    assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == [uri]  # type: ignore[attr-defined]
    result = openssl_verify(hierarchy, issued.cert, tmp_path)
    assert result.returncode == 0, result.stderr


def test_san_may_come_from_the_requested_extensions(issuer: CertificateIssuer) -> None:
    requested = x509.Extension(
        x509.SubjectAlternativeName.oid,
        False,
        x509.SubjectAlternativeName([x509.DNSName("a.example")]),
    )
    issued = issuer.issue(ec_public_key(), x509.Name([]), extensions=[requested])
    assert _ext(issued.cert, x509.SubjectAlternativeName).critical


def test_null_dn_without_san_is_rejected(issuer: CertificateIssuer) -> None:
    with pytest.raises(CertificateRequestRejected, match="neither a subject nor a subjectAltName"):
        issuer.issue(ec_public_key(), x509.Name([]))


def test_requested_extensions_policy(issuer: CertificateIssuer) -> None:
    policy_oid = ObjectIdentifier("1.3.6.1.4.1.99999.1.2")
    unknown_oid = ObjectIdentifier("1.3.6.1.4.1.99999.7")
    requested = [
        x509.Extension(
            x509.KeyUsage.oid,
            True,
            x509.KeyUsage(True, True, False, False, False, False, False, False, False),
        ),
        x509.Extension(
            x509.ExtendedKeyUsage.oid,
            False,
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
            ),
        ),
        x509.Extension(
            x509.CertificatePolicies.oid,
            False,
            x509.CertificatePolicies([x509.PolicyInformation(policy_oid, None)]),
        ),
        x509.Extension(unknown_oid, False, x509.UnrecognizedExtension(unknown_oid, b"\x05\x00")),
        x509.Extension(
            x509.BasicConstraints.oid, True, x509.BasicConstraints(ca=False, path_length=None)
        ),
    ]
    cert = issuer.issue(ec_public_key(), device_name(), extensions=requested).cert
    ku = _ext(cert, x509.KeyUsage).value
    assert ku.digital_signature and ku.content_commitment  # type: ignore[attr-defined]
    assert list(_ext(cert, x509.ExtendedKeyUsage).value) == [  # type: ignore[call-overload]
        ExtendedKeyUsageOID.CLIENT_AUTH,
        ExtendedKeyUsageOID.SERVER_AUTH,
    ]
    assert _ext(cert, x509.CertificatePolicies).value[0].policy_identifier == policy_oid  # type: ignore[index]
    oids = [e.oid for e in cert.extensions]
    assert unknown_oid not in oids
    assert len(oids) == len(set(oids))  # the CA's own basicConstraints only once


@pytest.mark.parametrize(
    ("extension", "message"),
    [
        (
            x509.Extension(
                x509.BasicConstraints.oid, True, x509.BasicConstraints(ca=True, path_length=None)
            ),
            "CA certificate",
        ),
        (
            x509.Extension(
                x509.KeyUsage.oid,
                True,
                x509.KeyUsage(False, False, False, False, False, True, False, False, False),
            ),
            "keyCertSign",
        ),
        (
            x509.Extension(
                ObjectIdentifier("1.3.6.1.4.1.99999.8"),
                True,
                x509.UnrecognizedExtension(ObjectIdentifier("1.3.6.1.4.1.99999.8"), b"\x05\x00"),
            ),
            "unsupported critical extension 1.3.6.1.4.1.99999.8",
        ),
    ],
)
def test_requests_outside_the_policy_are_rejected(
    issuer: CertificateIssuer, extension: x509.Extension[x509.ExtensionType], message: str
) -> None:
    with pytest.raises(CertificateRequestRejected, match=message):
        issuer.issue(ec_public_key(), device_name(), extensions=[extension])


def test_not_after_is_honoured_and_clamped_to_the_ca(
    issuer: CertificateIssuer, hierarchy: CaHierarchy
) -> None:
    soon = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=2)
    assert (
        issuer.issue(ec_public_key(), device_name(), not_after=soon).cert.not_valid_after_utc
        == soon
    )
    naive = soon.replace(tzinfo=None)  # taken as UTC
    assert issuer.issue(ec_public_key(), device_name(), not_after=naive).not_after == soon
    far = datetime.now(UTC) + timedelta(days=365 * 50)
    clamped = issuer.issue(ec_public_key(), device_name(), not_after=far).cert
    assert clamped.not_valid_after_utc == hierarchy.issuing.not_valid_after_utc
    with pytest.raises(CertificateRequestRejected, match="in the past"):
        issuer.issue(
            ec_public_key(), device_name(), not_after=datetime.now(UTC) - timedelta(days=1)
        )


def test_rsa_subject_key_gets_key_encipherment(issuer: CertificateIssuer) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    ku = _ext(issuer.issue(key, device_name()).cert, x509.KeyUsage).value
    assert ku.digital_signature and ku.key_encipherment  # type: ignore[attr-defined]


def test_unique_serials_over_10000_issues(issuer: CertificateIssuer) -> None:
    key = ec_public_key()
    name = device_name()
    started = time.perf_counter()
    serials = {issuer.issue(key, name).serial for _ in range(10_000)}
    per_issue_us = (time.perf_counter() - started) / 10_000 * 1e6
    print(f"\nissue(): {per_issue_us:.0f} us per certificate (EC P-256 issuer, with CRL DP + AIA)")
    assert len(serials) == 10_000
    assert all(0 < s < 2**159 for s in serials)
    assert per_issue_us < 1_000  # generous for a shared machine


def test_ed25519_subject_key(issuer: CertificateIssuer) -> None:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    cert = issuer.issue(key, device_name()).cert
    assert cert.public_key() == key
    assert _ext(cert, x509.SubjectKeyIdentifier).value == x509.SubjectKeyIdentifier.from_public_key(
        key
    )


def test_issued_cert_from_a_foreign_certificate(openssl_pki: Path) -> None:
    cert = x509.load_pem_x509_certificate((openssl_pki / "server.crt").read_bytes())
    wrapped = IssuedCert.from_certificate(cert)
    assert wrapped.serial == cert.serial_number and wrapped.subject == "CN=server"
    assert wrapped.key_fingerprint == key_fingerprint(cert.public_key())
    digest = hashes.Hash(hashes.SHA256())
    digest.update(
        cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    assert wrapped.key_fingerprint == digest.finalize()
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)


def test_plain_request_path_declines_what_the_general_path_must_judge(
    issuer: CertificateIssuer,
) -> None:
    with pytest.raises(CertificateRequestRejected, match="neither a subject nor a subjectAltName"):
        issuer.issue(ec_public_key(), x509.Name([]))
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    ku = _ext(issuer.issue(rsa_key, device_name()).cert, x509.KeyUsage).value
    assert ku.key_encipherment  # type: ignore[attr-defined]


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(name=_names(), key_index=st.integers(0, len(_SUBJECT_KEYS) - 1))
def test_subject_as_der_issues_what_the_name_issues(
    issuer: CertificateIssuer, name: x509.Name, key_index: int
) -> None:
    """A subject handed over as the request's DER (what the CMP server does for a plain
    certTemplate) gives the certificate and record fields the ``x509.Name`` gives."""
    key = _SUBJECT_KEYS[key_index]
    spki = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )  # type: ignore[attr-defined]
    der_bytes = name.public_bytes()
    now = time.time()
    try:
        from_name = issuer.issue(key, name, serial=0x55AA, now=now)  # type: ignore[arg-type]
    except CertificateRequestRejected:  # the NULL-DN without a SAN
        with pytest.raises(CertificateRequestRejected):
            issuer.issue(key, der_bytes, serial=0x55AA, spki=spki, now=now)  # type: ignore[arg-type]
        return
    from_der = issuer.issue(key, der_bytes, serial=0x55AA, spki=spki, now=now)  # type: ignore[arg-type]
    assert from_name.not_before == from_der.not_before
    assert from_der.cert.tbs_certificate_bytes == from_name.cert.tbs_certificate_bytes
    assert (
        from_der.subject,
        from_der.not_after,
        from_der.key_fingerprint,
        from_der.signature_hash,
    ) == (
        from_name.subject,
        from_name.not_after,
        from_name.key_fingerprint,
        from_name.signature_hash,
    )
    assert from_der.subject == from_der.cert.subject.rfc4514_string()


def test_plain_issuance_parses_the_certificate_only_on_demand(issuer: CertificateIssuer) -> None:
    issued = issuer.issue(ec_public_key(), device_name("lazy").public_bytes())
    assert "cert" not in issued.__dict__ and issued.signature_hash == "sha256"
    assert (
        issued.cert.serial_number == issued.serial
        and issued.cert.public_bytes(serialization.Encoding.DER) == issued.der
    )
    assert issued.cert.signature_hash_algorithm.name == issued.signature_hash  # type: ignore[union-attr]
    assert issued.subject == "CN=lazy"


@pytest.mark.parametrize(
    "subject",
    [
        b"\x30\x05\x31\x03\x30\x01\x06",  # truncated
        # '@' is not a PrintableString character
        b"\x30\x0d\x31\x0b\x30\x09\x06\x03\x55\x04\x03\x13\x02a@",
        b"\x04\x00",  # not a SEQUENCE
    ],
)
def test_subject_der_that_is_no_name_is_refused(issuer: CertificateIssuer, subject: bytes) -> None:
    assert simple_rfc4514(subject) is None
    with pytest.raises(CertificateRequestRejected):
        issuer.issue(ec_public_key(), subject)


def test_spki_is_used_only_in_its_canonical_p256_form(issuer: CertificateIssuer) -> None:
    """A compressed point (another encoding of the same key) is re-encoded, not copied."""
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    canonical = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    point = key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
    )
    compressed = canonical[:23] + bytes((0x03, len(point) + 1, 0x00)) + point
    compressed = bytes((0x30, len(compressed) - 2)) + compressed[2:]
    assert serialization.load_der_public_key(compressed) == key
    issued = issuer.issue(key, device_name("c").public_bytes(), spki=compressed)
    assert issued.cert.public_key() == key
    assert issued.cert.public_bytes(serialization.Encoding.DER).find(canonical) > 0


# --------------------------------------------------------------------------- the request's time


@pytest.mark.parametrize("path", ["plain", "general"])
def test_validity_starts_from_the_time_passed_in_not_a_clock(
    issuer: CertificateIssuer, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The policy reads no clock: notBefore is the request's time less ``BACKDATE``, notAfter
    that time plus the validity, on the plain path and on the general one alike."""
    now = 1_800_000_000.75  # not this test's wall-clock time
    received = datetime.fromtimestamp(1_800_000_000, UTC)

    def no_clock() -> float:
        raise AssertionError("the issuance policy read the wall clock")

    monkeypatch.setattr(time, "time", no_clock)
    extra = {} if path == "plain" else {"sans": [x509.DNSName("d.example")]}
    issued = issuer.issue(ec_public_key(), device_name(), now=now, **extra)  # type: ignore[arg-type]
    assert ("cert" not in issued.__dict__) == (path == "plain")  # the path this case is about
    assert issued.not_before == received - BACKDATE == issued.cert.not_valid_before_utc
    assert issued.not_after == received + timedelta(days=365) == issued.cert.not_valid_after_utc


def test_the_clock_of_the_ca_service_is_the_certificates_time(tmp_path: Path) -> None:
    """``CaService(clock=...)`` is the time of everything a request does: the CMP server hands
    its reading through the Authority to the issuance policy, so the certificate's notBefore is
    the injected time (less ``BACKDATE``), not the wall clock."""
    injected = math.floor(time.time()) - 7 * 86_400 + 0.5  # a week ago
    authority = Authority.open(tmp_path / "ca", base_url="http://127.0.0.1:9")
    try:
        service = CaService(
            authority, secrets=SharedSecrets({b"ref": b"secret"}), clock=lambda: injected
        )
        config = ClientConfig(
            protector=MacProtector(b"secret", reference=b"ref"),
            trust=TrustStore([authority.hierarchy.root]),
        )
        key = ec.generate_private_key(ec.SECP256R1())
        sent_at = datetime.fromtimestamp(injected, UTC)  # the device's clock agrees with the CA's
        tx = ClientTransaction(
            config, CertRequest(BodyType.IR, key, device_name()), now=lambda: sent_at
        )
        request = HttpRequest(
            "POST",
            "/.well-known/cmp",
            [(b"content-type", b"application/pkixcmp")],
            tx.start().data,
            "127.0.0.1",
        )
        response = trio.run(service.handle, request)
        assert response.status == 200
        body = decode(response.body).body
        assert isinstance(body, CertRepMessage) and body.responses[0].certificate is not None
        cert = x509.load_der_x509_certificate(body.responses[0].certificate)
        start = datetime.fromtimestamp(math.floor(injected), UTC) - BACKDATE
        assert cert.not_valid_before_utc == start
        assert cert.not_valid_after_utc == start + BACKDATE + timedelta(days=365)
        assert authority.store.get(cert.serial_number).not_before == start
    finally:
        authority.close()
