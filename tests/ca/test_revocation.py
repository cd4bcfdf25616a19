"""CRL and OCSP answers, read back with cryptography and checked by the openssl CLI."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509 import ocsp

from fleet.ca.pki import CaHierarchy, CertificateIssuer, IssuedCert
from fleet.ca.revocation import CrlPublisher, OcspResponder
from fleet.ca.store import CertStore

from .conftest import BASE_URL, device_name, ec_public_key, openssl, write_pem

_DER = serialization.Encoding.DER


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CertStore]:
    with CertStore(tmp_path / "certs.db") as s:
        yield s


def _issue(issuer: CertificateIssuer, store: CertStore) -> IssuedCert:
    issued = issuer.issue(ec_public_key(), device_name())
    store.record_issued(issued)
    return issued


# --------------------------------------------------------------------------- CRL


def test_crl_lists_revoked_and_rejected_serials(
    hierarchy: CaHierarchy, issuer: CertificateIssuer, store: CertStore, tmp_path: Path
) -> None:
    good, revoked, rejected = (_issue(issuer, store) for _ in range(3))
    store.flush()
    when = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)
    store.revoke(revoked.serial, x509.ReasonFlags.key_compromise, when)
    store.reject(rejected.serial)
    publisher = CrlPublisher(hierarchy, store)
    crl = x509.load_der_x509_crl(publisher.current_crl_der())

    assert crl.is_signature_valid(hierarchy.issuing.public_key())  # type: ignore[arg-type]
    assert crl.issuer == hierarchy.issuing.subject
    entry = crl.get_revoked_certificate_by_serial_number(revoked.serial)
    assert entry is not None and entry.revocation_date_utc == when
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason is (
        x509.ReasonFlags.key_compromise
    )
    other = crl.get_revoked_certificate_by_serial_number(rejected.serial)
    assert other is not None and len(other.extensions) == 0  # no reason code: unspecified
    assert crl.get_revoked_certificate_by_serial_number(good.serial) is None
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 1
    aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == hierarchy.issuing_ski
    assert crl.next_update_utc is not None and crl.last_update_utc is not None
    assert crl.next_update_utc - crl.last_update_utc == timedelta(hours=24)

    crl_file = tmp_path / "issuing.crl"
    crl_file.write_bytes(publisher.current_crl_der())
    ca_file = write_pem(tmp_path / "issuing.pem", hierarchy.issuing)
    result = openssl(
        "crl", "-inform", "DER", "-in", crl_file, "-noout", "-text", "-CAfile", ca_file
    )
    assert result.returncode == 0 and "verify OK" in result.stderr, result.stderr
    assert format(revoked.serial, "X") in result.stdout.replace(":", "")
    assert "Key Compromise" in result.stdout


def test_crl_is_cached_until_a_revocation_and_numbers_grow(
    hierarchy: CaHierarchy, issuer: CertificateIssuer, store: CertStore
) -> None:
    a, b = _issue(issuer, store), _issue(issuer, store)
    publisher = CrlPublisher(hierarchy, store)
    first = publisher.current()
    assert first.entries == 0 and first.number == 1
    assert publisher.current() is first  # nothing changed: no re-signing
    store.confirm(a.serial)
    assert publisher.current() is first  # a confirmation is not a revocation
    store.revoke(b.serial)
    second = publisher.current()
    assert second.entries == 1 and second.number == 2
    assert publisher.current(fresh=True).number == 3
    # A publisher after a restart continues the numbering from the store.
    assert CrlPublisher(hierarchy, store).current().number == 4


def test_crl_rebuild_can_be_throttled_under_mass_revocation(
    hierarchy: CaHierarchy, issuer: CertificateIssuer, store: CertStore
) -> None:
    certs = [_issue(issuer, store) for _ in range(3)]
    publisher = CrlPublisher(hierarchy, store, min_rebuild_interval=3600)
    first = publisher.current()
    for cert in certs:
        store.revoke(cert.serial)
    assert publisher.current() is first  # within the interval: served as it is
    assert publisher.current(fresh=True).entries == 3


def test_crl_is_refreshed_when_next_update_nears(hierarchy: CaHierarchy, store: CertStore) -> None:
    publisher = CrlPublisher(hierarchy, store, validity=timedelta(seconds=2))
    first = publisher.current()
    time.sleep(1.1)  # half the validity has passed
    assert publisher.current().number == first.number + 1


def test_crl_with_many_entries(
    hierarchy: CaHierarchy, issuer: CertificateIssuer, store: CertStore
) -> None:
    template = _issue(issuer, store)
    for _ in range(2_000):
        serial = x509.random_serial_number()
        store.record_issued(
            IssuedCert(
                template.der,
                template.cert,
                serial,
                template.not_before,
                template.not_after,
                template.key_fingerprint,
            )
        )
        store.revoke(serial, x509.ReasonFlags.cessation_of_operation)
    publisher = CrlPublisher(hierarchy, store)
    started = time.perf_counter()
    crl = x509.load_der_x509_crl(publisher.current_crl_der())
    build_ms = (time.perf_counter() - started) * 1e3
    store.revoke(template.serial)
    started = time.perf_counter()
    crl = x509.load_der_x509_crl(publisher.current_crl_der())
    rebuild_ms = (time.perf_counter() - started) * 1e3
    print(
        f"\nCRL with 2,000 entries: {build_ms:.0f} ms first build, "
        f"{rebuild_ms:.0f} ms after one more"
    )
    assert len(crl) == 2_001


# --------------------------------------------------------------------------- OCSP


def _request(
    cert: x509.Certificate,
    issuer: x509.Certificate,
    algorithm: hashes.HashAlgorithm,
    nonce: bytes | None = None,
) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, algorithm)
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(_DER)


def _verified(hierarchy: CaHierarchy, der: bytes) -> ocsp.OCSPResponse:
    """Load a response, insist it is successful, and check the issuing CA signed it."""
    response = ocsp.load_der_ocsp_response(der)
    assert response.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
    key = hierarchy.issuing.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        algorithm = response.signature_hash_algorithm
        assert algorithm is not None
        key.verify(response.signature, response.tbs_response_bytes, ec.ECDSA(algorithm))
    else:
        assert isinstance(key, ed25519.Ed25519PublicKey)
        key.verify(response.signature, response.tbs_response_bytes)
    assert response.responder_key_hash == hierarchy.issuing_ski
    return response


def test_ocsp_good_revoked_unknown(
    hierarchy: CaHierarchy, issuer: CertificateIssuer, store: CertStore
) -> None:
    good, revoked, rejected = (_issue(issuer, store) for _ in range(3))
    store.confirm(good.serial)  # good once its certConf came (a pending one is on hold)
    never_recorded = issuer.issue(ec_public_key(), device_name())
    when = datetime(2032, 1, 1, tzinfo=UTC)
    store.revoke(revoked.serial, x509.ReasonFlags.superseded, when)
    store.reject(rejected.serial)
    responder = OcspResponder(hierarchy, store)

    nonce = os.urandom(16)
    r = _verified(
        hierarchy, responder.respond(_request(good.cert, hierarchy.issuing, hashes.SHA1(), nonce))
    )
    assert r.certificate_status is ocsp.OCSPCertStatus.GOOD and r.serial_number == good.serial
    assert r.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == nonce
    assert r.next_update_utc is not None and r.this_update_utc < r.next_update_utc

    r = _verified(
        hierarchy, responder.respond(_request(revoked.cert, hierarchy.issuing, hashes.SHA256()))
    )
    assert r.certificate_status is ocsp.OCSPCertStatus.REVOKED
    assert r.revocation_time_utc == when and r.revocation_reason is x509.ReasonFlags.superseded
    assert isinstance(r.hash_algorithm, hashes.SHA256)

    r = _verified(
        hierarchy, responder.respond(_request(rejected.cert, hierarchy.issuing, hashes.SHA1()))
    )
    assert r.certificate_status is ocsp.OCSPCertStatus.REVOKED and r.revocation_reason is None

    r = _verified(
        hierarchy,
        responder.respond(_request(never_recorded.cert, hierarchy.issuing, hashes.SHA1())),
    )
    assert r.certificate_status is ocsp.OCSPCertStatus.UNKNOWN


def test_ocsp_pending_is_on_hold_until_confirmed(
    hierarchy: CaHierarchy, issuer: CertificateIssuer, store: CertStore, tmp_path: Path
) -> None:
    """Delivered but not confirmed: revoked with reason certificateHold since its issuance, no
    nextUpdate (so nobody caches the hold), and not on the CRL; its certConf makes it good."""
    pending = _issue(issuer, store)
    record = store.get(pending.serial)
    assert record is not None
    responder = OcspResponder(hierarchy, store)
    request = _request(pending.cert, hierarchy.issuing, hashes.SHA1())
    r = _verified(hierarchy, responder.respond(request))
    assert r.certificate_status is ocsp.OCSPCertStatus.REVOKED
    assert r.revocation_reason is x509.ReasonFlags.certificate_hold
    assert r.revocation_time_utc == record.created and r.next_update_utc is None
    crl = x509.load_der_x509_crl(CrlPublisher(hierarchy, store).current_crl_der())
    assert crl.get_revoked_certificate_by_serial_number(pending.serial) is None

    (tmp_path / "req.der").write_bytes(request)
    (tmp_path / "resp.der").write_bytes(responder.respond(request))
    checked = openssl("ocsp", "-reqin", tmp_path / "req.der", "-respin", tmp_path / "resp.der",
                      "-CAfile", write_pem(tmp_path / "root.pem", hierarchy.root),
                      "-verify_other", write_pem(tmp_path / "ca.pem", hierarchy.issuing), "-resp_text")
    assert checked.returncode == 0 and "Response verify OK" in checked.stderr, checked.stderr
    assert "Cert Status: revoked" in checked.stdout
    assert "Revocation Reason: certificateHold" in checked.stdout

    store.confirm(pending.serial)
    r = _verified(hierarchy, responder.respond(request))
    assert r.certificate_status is ocsp.OCSPCertStatus.GOOD and r.next_update_utc is not None


def test_ocsp_unknown_for_another_issuer(
    hierarchy: CaHierarchy, issuer: CertificateIssuer, store: CertStore
) -> None:
    issued = _issue(issuer, store)
    responder = OcspResponder(hierarchy, store)
    # Same serial, but the CertID names the root as issuer: not a certificate of ours.
    r = _verified(
        hierarchy, responder.respond(_request(issued.cert, hierarchy.root, hashes.SHA1()))
    )
    assert r.certificate_status is ocsp.OCSPCertStatus.UNKNOWN
    assert r.serial_number == issued.serial


@pytest.mark.parametrize(
    "garbage", [b"", b"\x30\x03\x02\x01\x01", os.urandom(64), b"\x30" * 10_000]
)
def test_ocsp_malformed_request_gets_malformed_response(
    hierarchy: CaHierarchy, store: CertStore, garbage: bytes
) -> None:
    response = ocsp.load_der_ocsp_response(OcspResponder(hierarchy, store).respond(garbage))
    assert response.response_status is ocsp.OCSPResponseStatus.MALFORMED_REQUEST


def test_ocsp_checked_by_openssl(
    hierarchy: CaHierarchy, issuer: CertificateIssuer, store: CertStore, tmp_path: Path
) -> None:
    revoked = _issue(issuer, store)
    store.revoke(revoked.serial, x509.ReasonFlags.key_compromise)
    store.flush()
    ca = write_pem(tmp_path / "issuing.pem", hierarchy.issuing)
    root = write_pem(tmp_path / "root.pem", hierarchy.root)
    leaf = write_pem(tmp_path / "leaf.pem", revoked.cert)
    made = openssl("ocsp", "-issuer", ca, "-cert", leaf, "-reqout", tmp_path / "req.der")
    assert made.returncode == 0, made.stderr  # openssl adds a nonce by default
    answer = OcspResponder(hierarchy, store).respond((tmp_path / "req.der").read_bytes())
    (tmp_path / "resp.der").write_bytes(answer)
    checked = openssl(
        "ocsp",
        "-reqin",
        tmp_path / "req.der",
        "-respin",
        tmp_path / "resp.der",
        "-CAfile",
        root,
        "-verify_other",
        ca,
        "-resp_text",
    )
    assert checked.returncode == 0, checked.stderr
    assert "Response verify OK" in checked.stderr
    assert "Cert Status: revoked" in checked.stdout and "keyCompromise" in checked.stdout
    assert "OCSP Nonce" in checked.stdout


@pytest.mark.parametrize("key_type", ["ed25519", "ec:P-384"])
def test_crl_and_ocsp_with_other_ca_keys(key_type: str, tmp_path: Path) -> None:
    h = CaHierarchy.load_or_create(tmp_path / "state", key_type=key_type)
    issuer = CertificateIssuer(h, base_url=BASE_URL)
    with CertStore(tmp_path / "certs.db") as store:
        issued = _issue(issuer, store)
        store.revoke(issued.serial, x509.ReasonFlags.affiliation_changed)
        crl = x509.load_der_x509_crl(CrlPublisher(h, store).current_crl_der())
        assert crl.is_signature_valid(h.issuing.public_key())  # type: ignore[arg-type]
        assert crl.get_revoked_certificate_by_serial_number(issued.serial) is not None
        response = _verified(
            h, OcspResponder(h, store).respond(_request(issued.cert, h.issuing, hashes.SHA1()))
        )
        assert response.certificate_status is ocsp.OCSPCertStatus.REVOKED


def test_ocsp_microseconds_per_response(
    hierarchy: CaHierarchy, issuer: CertificateIssuer, store: CertStore
) -> None:
    issued = _issue(issuer, store)
    store.confirm(issued.serial)
    responder = OcspResponder(hierarchy, store)
    request = _request(issued.cert, hierarchy.issuing, hashes.SHA1(), os.urandom(16))
    started = time.perf_counter()
    for _ in range(500):
        answer = responder.respond(request)
    per_response = (time.perf_counter() - started) / 500 * 1e6
    print(f"\nOCSP respond(): {per_response:.0f} us per response")
    assert ocsp.load_der_ocsp_response(answer).certificate_status is ocsp.OCSPCertStatus.GOOD
