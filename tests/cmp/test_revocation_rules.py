"""Revocation and revive requests (RFC 9483 §4.2, RFC 9810 §5.3.9) to the embedded CA, written by
pyasn1-alt-modules: who may send an rr, what its one RevDetails must say, and what a refused rr
leaves behind (nothing revoked)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509

from fleet.ca.authority import Authority
from fleet.ca.store import CertRecordStatus
from fleet.cmp.server import CmpServer

from . import pyasn1_requests as P
from .foreign_pki import CMC_RA, cn, foreign_pki
from .test_server_auth import REF, REJECTION, SECRET, Device, enroll, make_server, new_key, send

ACCEPTED = 0


@pytest.fixture
def authority(tmp_path: Path):
    auth = Authority.open(tmp_path / "ca", base_url="http://127.0.0.1:9")
    yield auth
    auth.close()


@pytest.fixture
def server(authority: Authority) -> CmpServer:
    return make_server(authority)


def status_of(authority: Authority, device: Device) -> CertRecordStatus:
    rec = authority.store.get(device.cert.serial_number)
    assert rec is not None
    return rec.status


def rr(server: CmpServer, authority: Authority, device: Device, protection: P.Signed | P.Mac | None = None,
       **details: object) -> P.Answer:
    """An rr for ``device``'s certificate (issuer and serial unless ``details`` say otherwise),
    signed by the device unless ``protection`` is given."""
    msg = P.new_message("rr")
    issuer = details.pop("issuer", device.cert.issuer)
    serial = details.pop("serial", device.cert.serial_number)
    P.rr(msg, issuer, serial, **details)  # type: ignore[arg-type]
    return send(server, P.protect(msg, protection or device.signed(authority)))


def test_mac_protected_rr_is_refused_with_wrong_integrity(server: CmpServer, authority: Authority) -> None:
    device = enroll(server, "mac-rr")
    answer = rr(server, authority, device, P.Mac(SECRET, REF))
    assert (answer.body, answer.status, answer.fail) == ("rp", REJECTION, ("wrongIntegrity",))
    assert status_of(authority, device) is CertRecordStatus.ISSUED


def test_rr_without_issuer_or_serial_is_refused(server: CmpServer, authority: Authority) -> None:
    device = enroll(server, "incomplete")
    for missing in ("issuer", "serial"):
        answer = rr(server, authority, device, **{missing: None})
        assert (answer.body, answer.status, answer.fail) == ("rp", REJECTION, ("addInfoNotAvailable",)), missing
    assert status_of(authority, device) is CertRecordStatus.ISSUED


def test_rr_with_two_rev_details_is_refused(server: CmpServer, authority: Authority) -> None:
    device = enroll(server, "two")
    other = enroll(server, "three")
    msg = P.new_message("rr")
    P.rr(msg, device.cert.issuer, device.cert.serial_number)
    P.rr(msg, other.cert.issuer, other.cert.serial_number)
    answer = send(server, P.protect(msg, device.signed(authority)))
    assert answer.body in ("rp", "error")  # the form of this refusal is the error-form table's
    assert (answer.status, answer.fail) == (REJECTION, ("badRequest",))
    assert status_of(authority, device) is status_of(authority, other) is CertRecordStatus.ISSUED


@pytest.mark.parametrize(("reasons", "fail"), [
    ((0, 1), "badRequest"),  # two CRLReason extensions
    ((0, 8), "badRequest"),  # revoke and revive at once
    ((7,), "badDataFormat"),  # 7 is no CRLReason value
    ((11,), "badDataFormat"),
])
def test_crl_reasons(server: CmpServer, authority: Authority, reasons: tuple[int, ...], fail: str) -> None:
    device = enroll(server, "reasons")
    answer = rr(server, authority, device, reasons=reasons)
    assert (answer.body, answer.status, answer.fail) == ("rp", REJECTION, (fail,))
    assert status_of(authority, device) is CertRecordStatus.ISSUED


def test_template_fields_must_match_the_certificate(server: CmpServer, authority: Authority) -> None:
    device = enroll(server, "named")
    for details in ({"issuer": cn("Some Other CA")}, {"subject": cn("someone-else")},
                    {"public_key": new_key().public_key()}):
        answer = rr(server, authority, device, **details)
        assert (answer.body, answer.status, answer.fail) == ("rp", REJECTION, ("badCertId",)), details
    assert status_of(authority, device) is CertRecordStatus.ISSUED
    answer = rr(server, authority, device, subject=device.cert.subject, public_key=device.key.public_key())
    assert (answer.body, answer.status) == ("rp", ACCEPTED)
    assert status_of(authority, device) is CertRecordStatus.REVOKED


def test_already_revoked_is_cert_revoked(server: CmpServer, authority: Authority) -> None:
    device = enroll(server, "twice")
    assert rr(server, authority, device).status == ACCEPTED
    answer = rr(server, authority, device, reasons=(4,))
    assert (answer.body, answer.status, answer.fail) == ("rp", REJECTION, ("certRevoked",))
    assert authority.store.get(device.cert.serial_number).revocation_reason is x509.ReasonFlags.key_compromise


def test_revive_of_a_held_certificate_checks_issuer_and_subject(server: CmpServer, authority: Authority) -> None:
    device = enroll(server, "held")
    assert rr(server, authority, device, reasons=(6,)).status == ACCEPTED  # certificateHold
    for details in ({"issuer": cn("Some Other CA")}, {"subject": cn("someone-else")}):
        answer = rr(server, authority, device, reasons=(8,), **details)
        assert (answer.body, answer.status, answer.fail) == ("rp", REJECTION, ("badCertId",)), details
        assert status_of(authority, device) is CertRecordStatus.REVOKED
    answer = rr(server, authority, device, reasons=(8,), subject=device.cert.subject)
    assert (answer.body, answer.status) == ("rp", ACCEPTED)
    assert status_of(authority, device) is CertRecordStatus.ISSUED


def test_trusted_pki_entity_may_revoke_and_revive(authority: Authority) -> None:
    """RFC 9483 §5.3.2: a PKI management entity revokes on an end entity's behalf with its own
    CMP protection key: a certificate with id-kp-cmcRA under an anchor the operator configured."""
    root, ra, ee = foreign_pki()
    server = make_server(authority, trusted=(root.cert,))
    device = enroll(server, "managed")
    # Not a PKI entity: a foreign end entity, and one of this CA's own that asked for cmcRA (this
    # CA honours a requested extendedKeyUsage, so it proves nothing).
    own_ra_key = new_key()
    msg = P.new_message("ir")
    P.cert_request(msg, "ir", own_ra_key, cn("self-made RA"), extensions=(x509.ExtendedKeyUsage([CMC_RA]),))
    own = send(server, P.protect(msg, P.Mac(SECRET, REF)))
    assert own.status == ACCEPTED
    own_cert = x509.load_der_x509_certificate(own.certificate)
    assert list(own_cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [CMC_RA]
    for signer in (P.Signed(ee.key, ee.cert), P.Signed(own_ra_key, own_cert)):
        answer = rr(server, authority, device, signer)
        assert (answer.body, answer.status, answer.fail) == ("rp", REJECTION, ("notAuthorized",))
    assert status_of(authority, device) is CertRecordStatus.ISSUED
    ra_signer = P.Signed(ra.key, ra.cert)
    assert rr(server, authority, device, ra_signer, reasons=(6,)).status == ACCEPTED
    assert status_of(authority, device) is CertRecordStatus.REVOKED
    assert rr(server, authority, device, ra_signer, reasons=(8,)).status == ACCEPTED
    assert status_of(authority, device) is CertRecordStatus.ISSUED
