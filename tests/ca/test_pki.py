"""CA hierarchy on disk, issuance policy and extensions, checked with cryptography and openssl."""

from __future__ import annotations

import os
import stat
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet.ca.pki import (
    ID_KP_CMC_RA,
    CaHierarchy,
    CertificateIssuer,
    CertificateRequestRejected,
    HierarchyError,
    IssuedCert,
    key_fingerprint,
)
from fleet.errors import FleetError
from fleet.keytypes import ALLOWED_SPECS, KeySpec, KeySpecError

from .conftest import BASE_URL, device_name, ec_public_key, openssl, openssl_verify


def _ext(
    cert: x509.Certificate, kind: type[x509.ExtensionType]
) -> x509.Extension[x509.ExtensionType]:
    return cert.extensions.get_extension_for_class(kind)


# --------------------------------------------------------------------------- hierarchy


def test_first_start_creates_and_restart_reloads_the_same_hierarchy(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = CaHierarchy.load_or_create(state, name_prefix="lab")
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    files = first.files
    for key_file in (files.root_key, files.issuing_key, files.signer_key):
        assert key_file is not None and stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert key_file.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8
    for cert_file in (files.root_cert, files.issuing_cert, files.signer_cert):
        assert cert_file is not None and cert_file.read_bytes().startswith(
            b"-----BEGIN CERTIFICATE"
        )
    assert not list(state.glob("*.tmp"))

    again = CaHierarchy.load_or_create(state, key_type="rsa:2048")  # key_type ignored on reload
    assert again.root_der == first.root_der
    assert again.issuing_der == first.issuing_der
    assert again.signer_der == first.signer_der
    assert again.chain_for_issued_der == first.chain_for_issued_der
    assert again.signer_chain_der == (first.signer_der, first.issuing_der, first.root_der)
    assert again.issuing.subject.rfc4514_string() == "CN=lab Issuing CA,O=lab"


def test_partial_state_dir_is_refused_not_overwritten(tmp_path: Path) -> None:
    state = tmp_path / "state"
    h = CaHierarchy.load_or_create(state)
    assert h.files.signer_key is not None
    h.files.signer_key.unlink()
    with pytest.raises(HierarchyError, match=r"partial hierarchy; missing cmp-signer\.key\.pem"):
        CaHierarchy.load_or_create(state)
    assert h.files.issuing_key is not None and h.files.issuing_key.exists()


def test_creation_interrupted_before_any_certificate_starts_over(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = CaHierarchy.load_or_create(state)
    for cert_file in (first.files.root_cert, first.files.issuing_cert, first.files.signer_cert):
        assert cert_file is not None
        cert_file.unlink()
    again = CaHierarchy.load_or_create(state)
    assert again.issuing_der != first.issuing_der
    assert CaHierarchy.load_or_create(state).issuing_der == again.issuing_der


def test_mismatched_key_on_disk_is_refused_without_showing_it(tmp_path: Path) -> None:
    state = tmp_path / "state"
    h = CaHierarchy.load_or_create(state)
    assert h.files.issuing_key is not None and h.files.signer_key is not None
    secret = h.files.signer_key.read_bytes()
    h.files.issuing_key.write_bytes(secret)
    with pytest.raises(HierarchyError) as info:
        CaHierarchy.load_or_create(state)
    assert "does not match" in str(info.value)
    assert "PRIVATE" not in str(info.value) and "\n" not in str(info.value)


def test_unknown_key_type_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(FleetError, match="unknown key type 'dsa:1024'; allowed: ec:P-256") as info:
        CaHierarchy.load_or_create(tmp_path / "s", key_type="dsa:1024")
    assert "\n" not in str(info.value)
    assert all(allowed in str(info.value) for allowed in ALLOWED_SPECS)
    assert not (tmp_path / "s" / "root-ca.key.pem").exists()
    with pytest.raises(KeySpecError) as pools:  # what ``fleet keys`` and profiles say about it
        KeySpec.parse("dsa:1024")
    assert str(info.value) == str(pools.value)


def test_hierarchy_extensions(hierarchy: CaHierarchy) -> None:
    root, issuing, signer = hierarchy.root, hierarchy.issuing, hierarchy.signer
    assert root.issuer == root.subject
    bc = _ext(root, x509.BasicConstraints)
    assert bc.critical and bc.value.ca is True  # type: ignore[attr-defined]
    ku = _ext(root, x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign  # type: ignore[attr-defined]
    assert not ku.value.digital_signature  # type: ignore[attr-defined]
    root_ski = _ext(root, x509.SubjectKeyIdentifier).value.digest  # type: ignore[attr-defined]

    bc = _ext(issuing, x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0  # type: ignore[attr-defined]
    assert _ext(issuing, x509.AuthorityKeyIdentifier).value.key_identifier == root_ski  # type: ignore[attr-defined]
    issuing.verify_directly_issued_by(root)

    assert _ext(signer, x509.BasicConstraints).value.ca is False  # type: ignore[attr-defined]
    ku = _ext(signer, x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign  # type: ignore[attr-defined]
    assert list(_ext(signer, x509.ExtendedKeyUsage).value) == [ID_KP_CMC_RA]  # type: ignore[call-overload]
    assert ID_KP_CMC_RA.dotted_string == "1.3.6.1.5.5.7.3.28"
    assert _ext(signer, x509.AuthorityKeyIdentifier).value.key_identifier == hierarchy.issuing_ski  # type: ignore[attr-defined]
    assert hierarchy.signer_ski == _ext(signer, x509.SubjectKeyIdentifier).value.digest  # type: ignore[attr-defined]
    signer.verify_directly_issued_by(issuing)

    validity = root.not_valid_after_utc - root.not_valid_before_utc
    assert validity >= timedelta(days=3650)
    assert issuing.not_valid_after_utc <= root.not_valid_after_utc
    assert signer.not_valid_after_utc <= issuing.not_valid_after_utc


def test_repr_shows_names_never_keys(hierarchy: CaHierarchy) -> None:
    text = repr(hierarchy)
    assert "fleet Issuing CA" in text and "Key" not in text and "PRIVATE" not in text


def test_signer_chain_verifies_with_openssl(hierarchy: CaHierarchy, tmp_path: Path) -> None:
    result = openssl_verify(hierarchy, hierarchy.signer, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(": OK")


# --------------------------------------------------------------------------- issuance


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
    assert per_issue_us < 1_000  # target 150 on an idle core; generous for a shared machine


@pytest.mark.parametrize(
    ("key_type", "hash_name"),
    [("ec:P-384", "sha384"), ("ec:P-521", "sha512"), ("rsa:2048", "sha256"), ("ed25519", None), ("ed448", None)],
)
def test_other_issuing_key_types(key_type: str, hash_name: str | None, tmp_path: Path) -> None:
    """The hierarchy's keys come from the one key-type grammar (``fleet.keytypes``)."""
    h = CaHierarchy.load_or_create(tmp_path / "state", key_type=key_type)
    assert KeySpec.of(h.issuing_key) == KeySpec.of(h.signer_key) == KeySpec.parse(key_type)  # type: ignore[arg-type]
    assert (h.issuing_hash.name if h.issuing_hash else None) == hash_name
    cert = CertificateIssuer(h, base_url=BASE_URL).issue(ec_public_key(), device_name()).cert
    algorithm = cert.signature_hash_algorithm
    assert (algorithm.name if algorithm else None) == hash_name
    result = openssl_verify(h, cert, tmp_path)
    assert result.returncode == 0, result.stderr


def test_ed25519_subject_key(issuer: CertificateIssuer) -> None:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    cert = issuer.issue(key, device_name()).cert
    assert cert.public_key() == key
    assert _ext(cert, x509.SubjectKeyIdentifier).value == x509.SubjectKeyIdentifier.from_public_key(
        key
    )


# --------------------------------------------------------------------------- operator credentials


@pytest.fixture(scope="module")
def openssl_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test PKI of docs/openssl-peer.md: root.crt/key and server.crt/key, made by openssl."""
    d = tmp_path_factory.mktemp("openssl-pki")
    ec_args = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    steps = [
        [
            "req",
            "-x509",
            *ec_args,
            "-keyout",
            "root.key",
            "-out",
            "root.crt",
            "-days",
            "365",
            "-subj",
            "/CN=Test Root CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-config",
            os.devnull,
        ],
        [
            "req",
            "-new",
            *ec_args,
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=server",
            "-config",
            os.devnull,
        ],
        [
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "root.crt",
            "-CAkey",
            "root.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "365",
            "-extfile",
            "ee.ext",
        ],
    ]
    (d / "ee.ext").write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
    )
    for step in steps:
        result = openssl(*step, cwd=d)
        assert result.returncode == 0, result.stderr
    return d


def test_from_files_serves_openssl_made_credentials(openssl_pki: Path, tmp_path: Path) -> None:
    d = openssl_pki
    h = CaHierarchy.from_files(
        d / "root.crt", d / "root.key", d / "server.crt", d / "server.key", chain=[]
    )
    assert h.root == h.issuing  # a self-signed issuing CA is its own root
    assert h.signer.subject.rfc4514_string() == "CN=server"
    assert h.signer_chain == (h.signer, h.issuing)
    assert h.chain_for_issued_der == (h.issuing_der,)
    assert h.files.signer_key == d / "server.key"
    issued = CertificateIssuer(h, base_url=BASE_URL).issue(ec_public_key(), device_name())
    result = openssl_verify(h, issued.cert, tmp_path)
    assert result.returncode == 0, result.stderr


def test_from_files_with_an_intermediate_and_objects(
    hierarchy: CaHierarchy, tmp_path: Path
) -> None:
    h = CaHierarchy.from_files(
        hierarchy.issuing,
        hierarchy.issuing_key,
        hierarchy.signer,
        hierarchy.signer_key,
        chain=[hierarchy.root],
    )
    assert h.root_der == hierarchy.root_der
    assert h.signer_chain_der == hierarchy.signer_chain_der
    assert h.files.issuing_key is None


def test_from_files_refuses_a_key_that_does_not_match(openssl_pki: Path) -> None:
    d = openssl_pki
    with pytest.raises(
        HierarchyError, match=r"root\.key does not match the certificate 'CN=server'"
    ):
        CaHierarchy.from_files(d / "server.crt", d / "server.key", d / "server.crt", d / "root.key")
    with pytest.raises(HierarchyError, match="does not hold a readable private key"):
        CaHierarchy.from_files(d / "root.crt", d / "root.crt", d / "server.crt", d / "server.key")


def test_from_files_refuses_a_chain_out_of_order(hierarchy: CaHierarchy, openssl_pki: Path) -> None:
    with pytest.raises(HierarchyError, match="out of order"):
        CaHierarchy.from_files(
            hierarchy.issuing,
            hierarchy.issuing_key,
            hierarchy.signer,
            hierarchy.signer_key,
            chain=[openssl_pki / "root.crt"],
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


# --------------------------------------------------------------------------- direct TBS encoding

_SAN_NAMES = st.lists(
    st.one_of(
        st.from_regex(r"[a-z][a-z0-9-]{0,20}\.example", fullmatch=True).map(x509.DNSName),
        st.from_regex(r"urn:dev:[a-z0-9]{1,12}", fullmatch=True).map(x509.UniformResourceIdentifier),
        st.from_regex(r"[a-z]{1,8}@example\.org", fullmatch=True).map(x509.RFC822Name),
    ),
    max_size=3,
)
_KEY_USAGES = st.tuples(*[st.booleans()] * 5).map(
    lambda b: x509.KeyUsage(b[0], b[1], b[2], b[3], b[4], False, False, False, False)
)
_EKUS = st.lists(
    st.sampled_from(
        [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CODE_SIGNING]
    ),
    min_size=1,
    max_size=3,
    unique=True,
)
_CN = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x2FF, exclude_characters="\x7f"), min_size=1, max_size=32
)  # cryptography caps a commonName at 64 UTF-8 octets; these characters take at most 2 each


@st.composite
def _requests(draw: st.DrawFn) -> tuple[x509.Name | None, list[x509.Extension[x509.ExtensionType]], list[x509.GeneralName]]:
    exts: list[x509.Extension[x509.ExtensionType]] = []
    sans = draw(_SAN_NAMES)
    if sans and draw(st.booleans()):
        exts.append(x509.Extension(x509.SubjectAlternativeName.oid, False, x509.SubjectAlternativeName(sans)))
        sans = []
    if draw(st.booleans()):
        exts.append(x509.Extension(x509.KeyUsage.oid, draw(st.booleans()), draw(_KEY_USAGES)))
    if draw(st.booleans()):
        exts.append(x509.Extension(x509.ExtendedKeyUsage.oid, False, x509.ExtendedKeyUsage(draw(_EKUS))))
    if draw(st.booleans()):
        policy = ObjectIdentifier(f"1.3.6.1.4.1.99999.{draw(st.integers(1, 10**6))}")
        exts.append(
            x509.Extension(x509.CertificatePolicies.oid, False, x509.CertificatePolicies([x509.PolicyInformation(policy, None)]))
        )
    if draw(st.booleans()):
        exts.append(x509.Extension(x509.BasicConstraints.oid, True, x509.BasicConstraints(ca=False, path_length=None)))
    if draw(st.booleans()):
        odd = ObjectIdentifier("1.3.6.1.4.1.99999.7")
        exts.append(x509.Extension(odd, False, x509.UnrecognizedExtension(odd, b"\x05\x00")))
    subject = None if sans or any(e.oid == x509.SubjectAlternativeName.oid for e in exts) and draw(st.booleans()) else (
        x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, draw(_CN))]
            + ([x509.NameAttribute(NameOID.ORGANIZATION_NAME, draw(_CN))] if draw(st.booleans()) else [])
        )
    )
    return subject, exts, sans


_SUBJECT_KEYS = [
    ec.generate_private_key(ec.SECP256R1()).public_key(),
    ec.generate_private_key(ec.SECP384R1()).public_key(),
    ed25519.Ed25519PrivateKey.generate().public_key(),
]


def _both_ways(
    issuer: CertificateIssuer, key: object, subject: x509.Name | None, **kwargs: object
) -> tuple[x509.Certificate, x509.Certificate]:
    """The same request through the direct encoding and through cryptography's builder, issued
    within one second (so the validity is the same); returns (direct, builder)."""
    direct_signer = issuer._sign_raw
    assert direct_signer is not None, "the direct encoding should be in use for this issuer"
    for _ in range(5):
        direct = issuer.issue(key, subject, serial=0x7F1234567890ABCDEF, **kwargs)  # type: ignore[arg-type]
        issuer._sign_raw = None
        try:
            built = issuer.issue(key, subject, serial=0x7F1234567890ABCDEF, **kwargs)  # type: ignore[arg-type]
        finally:
            issuer._sign_raw = direct_signer
        if direct.not_before == built.not_before:
            return direct.cert, built.cert
    raise AssertionError("could not issue twice within one second")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=_requests(), key_index=st.integers(0, len(_SUBJECT_KEYS) - 1), days=st.none() | st.integers(1, 5000))
def test_direct_encoding_is_byte_identical_to_the_builder(
    issuer: CertificateIssuer,
    request: tuple[x509.Name | None, list[x509.Extension[x509.ExtensionType]], list[x509.GeneralName]],
    key_index: int,
    days: int | None,
) -> None:
    subject, exts, sans = request
    not_after = None if days is None else datetime.now(UTC) + timedelta(days=days)
    try:
        direct, built = _both_ways(
            issuer, _SUBJECT_KEYS[key_index], subject, extensions=exts, sans=sans or None, not_after=not_after
        )
    except CertificateRequestRejected as exc:  # both ways refuse alike
        issuer_signer = issuer._sign_raw
        issuer._sign_raw = None
        try:
            with pytest.raises(CertificateRequestRejected, match=str(exc)[:20]):
                issuer.issue(_SUBJECT_KEYS[key_index], subject, extensions=exts, sans=sans or None, not_after=not_after)  # type: ignore[arg-type]
        finally:
            issuer._sign_raw = issuer_signer
        return
    assert direct.tbs_certificate_bytes == built.tbs_certificate_bytes
    assert direct.signature_algorithm_oid == built.signature_algorithm_oid
    issuer.hierarchy.issuing.public_key().verify(  # type: ignore[call-arg]
        direct.signature, direct.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256())  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("key_type", ["ec:P-256", "ec:P-384", "rsa:2048", "ed25519"])
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
    from fleet.ca import pki

    monkeypatch.setattr(pki, "_VERSION_3", b"\xa0\x03\x02\x01\x01")  # a v2 TBS: wrong on purpose
    issuer = CertificateIssuer(hierarchy, base_url=BASE_URL)
    assert issuer._sign_raw is None
    cert = issuer.issue(ec_public_key(), device_name()).cert
    assert cert.version is x509.Version.v3


def test_x509_time_switches_to_generalized_time_in_2050() -> None:
    from fleet.ca.pki import _x509_time

    assert _x509_time(datetime(2049, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)) == b"\x17\x0d491231235959Z"
    assert _x509_time(datetime(2050, 1, 1, tzinfo=UTC)) == b"\x18\x0f20500101000000Z"
    assert _x509_time(datetime(2031, 2, 3, 4, 5, 6, tzinfo=UTC)) == b"\x17\x0d310203040506Z"


_NAME_OIDS = [
    NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME, NameOID.ORGANIZATIONAL_UNIT_NAME, NameOID.LOCALITY_NAME,
    NameOID.STATE_OR_PROVINCE_NAME, NameOID.STREET_ADDRESS, NameOID.DOMAIN_COMPONENT, NameOID.USER_ID,
    NameOID.SERIAL_NUMBER, NameOID.EMAIL_ADDRESS, NameOID.TITLE,
]
_STRING_TYPES = [
    x509.name._ASN1Type.UTF8String, x509.name._ASN1Type.PrintableString, x509.name._ASN1Type.IA5String,
    x509.name._ASN1Type.BMPString, x509.name._ASN1Type.UniversalString, x509.name._ASN1Type.T61String,
]
_VALUES = st.text(st.sampled_from(list("abcXYZ019 -.'=#\\\"+,;<>\0\té✓")), min_size=1, max_size=70) | st.text(
    st.sampled_from(list("abcXYZ019-.'=é✓ ")), min_size=1, max_size=30
)


@st.composite
def _names(draw: st.DrawFn) -> x509.Name:
    rdns = []
    for _ in range(draw(st.integers(0, 4))):
        attrs = []
        for _ in range(draw(st.sampled_from([1, 1, 1, 2]))):
            oid = draw(st.sampled_from(_NAME_OIDS))
            value = draw(_VALUES)
            kind = draw(st.sampled_from(_STRING_TYPES))
            if kind in (x509.name._ASN1Type.PrintableString, x509.name._ASN1Type.IA5String):
                value = "".join(c for c in value if c.isascii() and (c.isalnum() or c in " '-.=")) or "x"
            attrs.append(x509.NameAttribute(oid, value, _type=kind, _validate=False))
        oids_used = [a.oid for a in attrs]
        if len(set(oids_used)) == len(oids_used):
            rdns.append(x509.RelativeDistinguishedName(attrs))
    return x509.Name(rdns)


@settings(max_examples=500, deadline=None)
@given(name=_names())
def test_simple_rfc4514_is_cryptographys_string_or_declines(name: x509.Name) -> None:
    from fleet.ca.pki import _simple_rfc4514

    der_bytes = name.public_bytes()
    fast = _simple_rfc4514(der_bytes)
    if fast is not None:
        assert fast == name.rfc4514_string()
        # ... and what a parser of the DER (as the certificate carries it) says
        parsed = x509.load_der_x509_csr(_csr_for(der_bytes)).subject
        assert fast == parsed.rfc4514_string()


def _csr_for(name_der: bytes) -> bytes:
    from fleet.cmp.server import _DUMMY_SPKI, _csr_der

    return _csr_der(name_der, _DUMMY_SPKI, None)


def test_simple_rfc4514_common_shapes() -> None:
    from fleet.ca.pki import _simple_rfc4514

    assert _simple_rfc4514(device_name("dev-42").public_bytes()) == "CN=dev-42"
    assert _simple_rfc4514(x509.Name([]).public_bytes()) == ""
    two = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Acme"), x509.NameAttribute(NameOID.COMMON_NAME, "d")])
    assert _simple_rfc4514(two.public_bytes()) == "CN=d,O=Acme" == two.rfc4514_string()
    assert _simple_rfc4514(device_name("a,b").public_bytes()) is None  # needs an escape: cryptography's job
    long_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "x" * 60)] * 3)
    assert _simple_rfc4514(long_name.public_bytes()) is None  # long-form lengths
    assert _simple_rfc4514(b"\x30\x05\x31\x03\x30\x01\x06") is None  # truncated


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
    plain = issuer.issue(key, device_name("plain"), serial=77)
    assert len(taken) == before + 1 and taken[-1] is True
    general = issuer.issue(key, device_name("plain"), extensions=[  # forces the general path
        x509.Extension(ObjectIdentifier("1.3.6.1.4.1.99999.7"), False, x509.UnrecognizedExtension(ObjectIdentifier("1.3.6.1.4.1.99999.7"), b"\x05\x00"))
    ], serial=77)
    assert len(taken) == before + 1  # the general path never asks the plain one
    if plain.not_before == general.not_before:
        assert (plain.subject, plain.not_after, plain.key_fingerprint) == (
            general.subject, general.not_after, general.key_fingerprint
        )
        assert plain.cert.tbs_certificate_bytes == general.cert.tbs_certificate_bytes


def test_plain_request_path_declines_what_the_general_path_must_judge(issuer: CertificateIssuer) -> None:
    with pytest.raises(CertificateRequestRejected, match="neither a subject nor a subjectAltName"):
        issuer.issue(ec_public_key(), x509.Name([]))
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    ku = _ext(issuer.issue(rsa_key, device_name()).cert, x509.KeyUsage).value
    assert ku.key_encipherment  # type: ignore[attr-defined]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=_names(), key_index=st.integers(0, len(_SUBJECT_KEYS) - 1))
def test_subject_as_der_issues_what_the_name_issues(issuer: CertificateIssuer, name: x509.Name, key_index: int) -> None:
    """A subject handed over as the request's DER (what the CMP server does for a plain
    certTemplate) gives the certificate and record fields the ``x509.Name`` gives."""
    key = _SUBJECT_KEYS[key_index]
    spki = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)  # type: ignore[attr-defined]
    der_bytes = name.public_bytes()
    for _ in range(5):
        try:
            from_name = issuer.issue(key, name, serial=0x55AA)  # type: ignore[arg-type]
        except CertificateRequestRejected:  # the NULL-DN without a SAN
            with pytest.raises(CertificateRequestRejected):
                issuer.issue(key, der_bytes, serial=0x55AA, spki=spki)  # type: ignore[arg-type]
            return
        from_der = issuer.issue(key, der_bytes, serial=0x55AA, spki=spki)  # type: ignore[arg-type]
        if from_name.not_before == from_der.not_before:
            break
    else:
        raise AssertionError("could not issue twice within one second")
    assert from_der.cert.tbs_certificate_bytes == from_name.cert.tbs_certificate_bytes
    assert (from_der.subject, from_der.not_after, from_der.key_fingerprint, from_der.signature_hash) == (
        from_name.subject, from_name.not_after, from_name.key_fingerprint, from_name.signature_hash
    )
    assert from_der.subject == from_der.cert.subject.rfc4514_string()


def test_plain_issuance_parses_the_certificate_only_on_demand(issuer: CertificateIssuer) -> None:
    issued = issuer.issue(ec_public_key(), device_name("lazy").public_bytes())
    assert "cert" not in issued.__dict__ and issued.signature_hash == "sha256"
    assert issued.cert.serial_number == issued.serial and issued.cert.public_bytes(serialization.Encoding.DER) == issued.der
    assert issued.cert.signature_hash_algorithm.name == issued.signature_hash  # type: ignore[union-attr]
    assert issued.subject == "CN=lazy"


@pytest.mark.parametrize(
    "subject",
    [
        b"\x30\x05\x31\x03\x30\x01\x06",  # truncated
        b"\x30\x0d\x31\x0b\x30\x09\x06\x03\x55\x04\x03\x13\x02a@",  # '@' is not a PrintableString character
        b"\x04\x00",  # not a SEQUENCE
    ],
)
def test_subject_der_that_is_no_name_is_refused(issuer: CertificateIssuer, subject: bytes) -> None:
    from fleet.ca.pki import _simple_rfc4514

    assert _simple_rfc4514(subject) is None
    with pytest.raises(CertificateRequestRejected):
        issuer.issue(ec_public_key(), subject)


def test_spki_is_used_only_in_its_canonical_p256_form(issuer: CertificateIssuer) -> None:
    """A compressed point (another encoding of the same key) is re-encoded, not copied."""
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    canonical = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    point = key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)
    compressed = canonical[:23] + bytes((0x03, len(point) + 1, 0x00)) + point
    compressed = bytes((0x30, len(compressed) - 2)) + compressed[2:]
    assert serialization.load_der_public_key(compressed) == key
    issued = issuer.issue(key, device_name("c").public_bytes(), spki=compressed)
    assert issued.cert.public_key() == key
    assert issued.cert.public_bytes(serialization.Encoding.DER).find(canonical) > 0
