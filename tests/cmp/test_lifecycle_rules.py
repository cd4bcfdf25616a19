"""Certificate life-cycle rules of the embedded CA (issue #19), with requests written by
pyasn1-alt-modules (``pyasn1_requests``), not by fleet's encoder: one CertReqMsg per request,
one key update at a time, no revocation of an unconfirmed kup's certificate, certConf statuses
and nonces, and key reuse (refused by default, allowed by ``allow_key_reuse``).

Refusals of signers the records refuse (revoked, on hold, unconfirmed, replaced) are in
``test_server_auth``."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from cryptography import x509

from fleet.ca.authority import Authority
from fleet.ca.store import CertRecordStatus
from fleet.cmp.backend import CertState
from fleet.cmp.server import CmpServer

from . import pyasn1_requests as P
from .test_server_auth import (
    REF,
    REJECTION,
    SECRET,
    Device,
    certificates,
    enroll,
    make_server,
    name,
    new_key,
    send,
)

ACCEPTED = 0


@pytest.fixture
def authority(tmp_path: Path):
    auth = Authority.open(tmp_path / "ca", base_url="http://127.0.0.1:9")
    yield auth
    auth.close()


@pytest.fixture
def server(authority: Authority) -> CmpServer:
    return make_server(authority)


def kur(server: CmpServer, authority: Authority, device: Device, key=None) -> P.Answer:
    """A kur signed by ``device`` for a new key, without implicit confirmation."""
    msg = P.new_message("kur")
    P.cert_request(msg, "kur", key or new_key(), None)
    return send(server, P.protect(msg, device.signed(authority)))


def confirm(server: CmpServer, authority: Authority, signer: P.Signed | P.Mac, answer: P.Answer,
            **status: object) -> P.Answer:
    msg = P.new_message("certConf")
    P.cert_conf(msg, answer.certificate, **status)  # type: ignore[arg-type]
    header = P.Header(transaction_id=answer.transaction_id, recip_nonce=answer.sender_nonce)
    return send(server, P.protect(msg, signer, header))


def as_device(answer: P.Answer, key) -> Device:
    return Device(key, x509.load_der_x509_certificate(answer.certificate))


# ---------------------------------------------------------------------------------------------
# One CertReqMsg per request (LwCMP, RFC 9483 §4.1.1)


def test_two_cert_req_msgs_in_one_ir_are_refused(server: CmpServer, authority: Authority) -> None:
    msg = P.new_message("ir")
    P.cert_request(msg, "ir", new_key(), name("first"))
    P.cert_request(msg, "ir", new_key(), name("second"), cert_req_id=1)
    answer = send(server, P.protect(msg, P.Mac(SECRET, REF)))
    # The body a refusal of this kind comes in is the error-form table's (ip or error).
    assert answer.body in ("ip", "error")
    assert (answer.status, answer.fail, answer.certificate) == (REJECTION, ("badRequest",), None)
    assert certificates(authority) == 0


# ---------------------------------------------------------------------------------------------
# Key updates (RFC 9483 §4.1.3)


def test_a_second_kur_while_one_is_open_is_refused(server: CmpServer, authority: Authority) -> None:
    device = enroll(server, "updating")
    first_key = new_key()
    first = kur(server, authority, device, first_key)
    assert (first.body, first.status) == ("kup", ACCEPTED)
    before = certificates(authority)
    second = kur(server, authority, device)
    assert (second.body, second.status, second.fail) == ("kup", REJECTION, ("badRequest",))
    assert second.certificate is None and certificates(authority) == before
    # The first one confirmed: the old certificate is replaced and may not update again.
    assert confirm(server, authority, device.signed(authority), first).body == "pkiconf"
    assert authority.cert_state(device.cert) is CertState.REPLACED
    again = kur(server, authority, device)
    assert (again.body, again.status, again.fail) == ("kup", REJECTION, ("notAuthorized",))
    # The new certificate updates normally.
    renewed = kur(server, authority, as_device(first, first_key))
    assert (renewed.body, renewed.status) == ("kup", ACCEPTED)


def test_an_expired_kur_frees_the_certificate_for_another(authority: Authority) -> None:
    server = make_server(authority, confirm_wait=10)
    device = enroll(server, "slow")
    now = time.time()
    assert kur(server, authority, device).status == ACCEPTED
    assert kur(server, authority, device).fail == ("badRequest",)
    server.tick(now + 11)  # the first kup is never confirmed: rejected, the update closed
    assert authority.cert_state(device.cert) is CertState.GOOD
    assert kur(server, authority, device).status == ACCEPTED


def test_kur_signed_by_the_unconfirmed_kup_certificate_is_refused(server: CmpServer, authority: Authority) -> None:
    device = enroll(server, "hasty")
    key = new_key()
    kup = kur(server, authority, device, key)
    answer = kur(server, authority, as_device(kup, key))
    assert (answer.body, answer.status, answer.fail) == ("kup", REJECTION, ("notAuthorized",))


def test_kur_for_a_revoked_certificate_is_refused(server: CmpServer, authority: Authority) -> None:
    device = enroll(server, "revoked")
    msg = P.new_message("rr")
    P.rr(msg, device.cert.issuer, device.cert.serial_number)
    assert send(server, P.protect(msg, device.signed(authority))).status == ACCEPTED
    answer = kur(server, authority, device)
    assert (answer.body, answer.status, answer.fail) == ("kup", REJECTION, ("certRevoked",))


def test_rr_for_an_unconfirmed_kup_certificate_is_refused(server: CmpServer, authority: Authority) -> None:
    device = enroll(server, "rr-pending")
    key = new_key()
    kup = kur(server, authority, device, key)
    new = as_device(kup, key)
    msg = P.new_message("rr")
    P.rr(msg, new.cert.issuer, new.cert.serial_number)
    answer = send(server, P.protect(msg, new.signed(authority)))
    assert (answer.body, answer.status, answer.fail) == ("rp", REJECTION, ("notAuthorized",))
    assert authority.store.get(new.cert.serial_number).status is CertRecordStatus.PENDING  # not revoked
    # Its holder settles it by certConf: rejected, and the old certificate stays good.
    assert confirm(server, authority, device.signed(authority), kup, status=2, fail=("badCertTemplate",)).body == "pkiconf"
    assert authority.store.get(new.cert.serial_number).status is CertRecordStatus.REJECTED
    assert authority.cert_state(device.cert) is CertState.GOOD


# ---------------------------------------------------------------------------------------------
# certConf (RFC 9810 §5.3.18)


def _ir(server: CmpServer, nonce: bytes | None = None) -> tuple[P.Answer, bytes]:
    msg = P.new_message("ir")
    P.cert_request(msg, "ir", new_key(), name("confirming"))
    header = P.Header()
    if nonce is not None:
        header.sender_nonce = nonce
    ip = send(server, P.protect(msg, P.Mac(SECRET, REF), header))
    assert (ip.body, ip.status) == ("ip", ACCEPTED)
    return ip, header.sender_nonce


def test_cert_conf_accepting_with_a_fail_info_is_refused(server: CmpServer, authority: Authority) -> None:
    ip, _ = _ir(server)
    answer = confirm(server, authority, P.Mac(SECRET, REF), ip, status=0, fail=("badPOP",))
    assert (answer.body, answer.status, answer.fail) == ("error", REJECTION, ("badRequest",))
    serial = x509.load_der_x509_certificate(ip.certificate).serial_number
    assert authority.store.get(serial).status is CertRecordStatus.PENDING  # neither confirmed nor lost
    # A plain acceptance still confirms it.
    assert confirm(server, authority, P.Mac(SECRET, REF), ip, status=0).body == "pkiconf"
    assert authority.store.get(serial).status is CertRecordStatus.ISSUED


def test_cert_conf_reusing_the_requests_sender_nonce_is_refused(server: CmpServer, authority: Authority) -> None:
    ip, nonce = _ir(server)
    msg = P.new_message("certConf")
    P.cert_conf(msg, ip.certificate)
    header = P.Header(transaction_id=ip.transaction_id, recip_nonce=ip.sender_nonce, sender_nonce=nonce)
    answer = send(server, P.protect(msg, P.Mac(SECRET, REF), header))
    assert (answer.body, answer.status, answer.fail) == ("error", REJECTION, ("badSenderNonce",))
    serial = x509.load_der_x509_certificate(ip.certificate).serial_number
    assert authority.store.get(serial).status is CertRecordStatus.PENDING


# ---------------------------------------------------------------------------------------------
# Key reuse


def test_a_key_already_certified_is_refused(server: CmpServer, authority: Authority) -> None:
    key = new_key()
    device = enroll(server, "owner", key)
    for kind in ("ir", "cr"):
        msg = P.new_message(kind)
        P.cert_request(msg, kind, key, name("copy"))
        protection = P.Mac(SECRET, REF) if kind == "ir" else device.signed(authority)
        answer = send(server, P.protect(msg, protection))
        assert (answer.body, answer.status, answer.fail) == (f"{kind[0]}p", REJECTION, ("badCertTemplate",)), kind
    # kur to the same key: no new key pair.
    answer = kur(server, authority, device, key)
    assert (answer.body, answer.status, answer.fail) == ("kup", REJECTION, ("badCertTemplate",))
    assert certificates(authority) == 1


def test_a_key_whose_certificate_died_unused_may_enroll_again(authority: Authority) -> None:
    """Not confirmed yet, never confirmed (rejected) or revoked for a reason other than
    keyCompromise: the key is free again (a device that lost its answer retries with its key, as
    fleet provision does); keyCompromise and certificateHold keep it taken."""
    server = make_server(authority, confirm_wait=10)
    key = new_key()
    enroll(server, "lost", key, confirm=False)
    enroll(server, "lost-answer", key, confirm=False)  # the first is still pending: no holder yet
    server.tick(time.time() + 11)
    device = enroll(server, "retry", key)  # the rejected certificates do not hold the key

    def revoke(reason: int) -> None:
        msg = P.new_message("rr")
        P.rr(msg, device.cert.issuer, device.cert.serial_number, reasons=(reason,))
        assert send(server, P.protect(msg, device.signed(authority))).status == ACCEPTED

    def reenroll() -> P.Answer:
        msg = P.new_message("ir")
        P.cert_request(msg, "ir", key, name("again"))
        return send(server, P.protect(msg, P.Mac(SECRET, REF)))

    revoke(6)  # certificateHold
    assert reenroll().fail == ("badCertTemplate",)
    revoke(8)  # removeFromCRL
    revoke(1)  # keyCompromise
    assert reenroll().fail == ("badCertTemplate",)
    fresh = new_key()
    device = enroll(server, "superseded", fresh)
    msg = P.new_message("rr")
    P.rr(msg, device.cert.issuer, device.cert.serial_number, reasons=(4,))  # superseded
    assert send(server, P.protect(msg, device.signed(authority))).status == ACCEPTED
    enroll(server, "superseded-again", fresh)


def test_key_reuse_allowed_by_the_option(tmp_path: Path) -> None:
    authority = Authority.open(tmp_path / "ca", allow_key_reuse=True)
    try:
        server = make_server(authority)
        key = new_key()
        first = enroll(server, "twin", key)
        second = enroll(server, "twin", key)
        assert first.cert.serial_number != second.cert.serial_number
    finally:
        authority.close()
