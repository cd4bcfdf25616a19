"""CA hierarchy on disk and from operator files, checked with cryptography and openssl."""

from __future__ import annotations

import stat
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509

from fleet.ca.hierarchy import ID_KP_CMC_RA, CaHierarchy, HierarchyError
from fleet.ca.issuance import CertificateIssuer
from fleet.errors import FleetError
from fleet.keytypes import ALLOWED_SPECS, KeySpec, KeySpecError

from .conftest import BASE_URL, device_name, ec_public_key, openssl_verify
from .pki_helpers import ext as _ext
from .pki_helpers import make_openssl_pki


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
    with pytest.raises(KeySpecError) as pools:  # what ``fleet keys`` and profiles say about it
        KeySpec.parse("dsa:1024")
    assert str(info.value) == str(pools.value)
    assert not (tmp_path / "s" / "root-ca.key.pem").exists()


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


@pytest.mark.parametrize(
    ("key_type", "hash_name"),
    [
        ("ec:P-384", "sha384"),
        ("ec:P-521", "sha512"),
        ("rsa:2048", "sha256"),
        ("ed25519", None),
        ("ed448", None),
    ],
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


# --------------------------------------------------------------------------- operator credentials


@pytest.fixture(scope="module")
def openssl_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_openssl_pki(tmp_path_factory.mktemp("openssl-pki"))


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
