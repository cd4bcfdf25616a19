"""The CA's one authentication step, probed with requests pyasn1 builds (issue #23, one item of #22).

Every hole gets its exact refusal: the response body (the request's own response with status
rejection, or an error message), PKIStatus 2 and the one failInfo bit; and its consequence:
no certificate issued, nothing revoked. The CA behind ``CmpServer`` is the real ``Authority``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pyasn1.codec.der import encoder
from pyasn1.type import univ

from fleet.ca.authority import Authority
from fleet.ca.store import CertRecordStatus
from fleet.cmp.backend import CertState
from fleet.cmp.server import CmpServer, ServerConfig
from fleet.cmp.shared_secrets import SharedSecrets

from . import pyasn1_requests as P

SECRET = b"auth-secret"
REF = b"auth-ref"
REJECTION = 2


def name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def authority(tmp_path: Path) -> Iterator[Authority]:
    auth = Authority.open(tmp_path / "ca", base_url="http://127.0.0.1:9")
    yield auth
    auth.close()


def make_server(authority: Authority, **config: object) -> CmpServer:
    trusted = config.pop("trusted", ())
    return authority.server(
        config=ServerConfig(grant_implicit_confirm=True, **config),  # type: ignore[arg-type]
        secrets=SharedSecrets({REF: SECRET}),
        trusted=trusted,  # type: ignore[arg-type]
    )


@pytest.fixture
def server(authority: Authority) -> CmpServer:
    return make_server(authority)


def send(server: CmpServer, data: bytes, now: float | None = None) -> P.Answer:
    return P.Answer.read(server.handle(data, time.time() if now is None else now).data)


@dataclass
class Device:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    def signed(self, authority: Authority) -> P.Signed:
        chain = tuple(c for c in authority.hierarchy.chain_for_issued_der if c != authority.hierarchy.root_der)
        return P.Signed(self.key, self.cert, chain)


def enroll(server: CmpServer, cn: str, key: ec.EllipticCurvePrivateKey | None = None, *,
           confirm: bool = True) -> Device:
    """MAC-protected ir, then certConf unless ``confirm`` is False (the certificate stays pending)."""
    key = key or new_key()
    msg = P.new_message("ir")
    P.cert_request(msg, "ir", key, name(cn))
    ip = send(server, P.protect(msg, P.Mac(SECRET, REF)))
    assert (ip.body, ip.status) == ("ip", 0), ip
    if confirm:
        conf = P.new_message("certConf")
        P.cert_conf(conf, ip.certificate)
        done = send(server, P.protect(conf, P.Mac(SECRET, REF),
                                      P.Header(transaction_id=ip.transaction_id, recip_nonce=ip.sender_nonce)))
        assert done.body == "pkiconf", done
    return Device(key, x509.load_der_x509_certificate(ip.certificate))


def revoke(server: CmpServer, authority: Authority, device: Device, reason: int = 1) -> None:
    msg = P.new_message("rr")
    P.rr(msg, device.cert.issuer, device.cert.serial_number, reasons=(reason,))
    answer = send(server, P.protect(msg, device.signed(authority)))
    assert (answer.body, answer.status) == ("rp", 0), answer


def request(kind: str, device: Device, authority: Authority, *, target: x509.Certificate | None = None,
            header: P.Header | None = None) -> bytes:
    """A new request of ``kind`` signed by ``device``."""
    msg = P.new_message(kind)
    if kind in ("ir", "cr", "kur"):
        P.cert_request(msg, kind, new_key(), name(f"new-{kind}") if kind != "kur" else None)
    elif kind == "p10cr":
        csr = x509.CertificateSigningRequestBuilder().subject_name(name("new-p10")).sign(new_key(), hashes.SHA256())
        P.p10cr(msg, csr)
    elif kind == "rr":
        target = target or device.cert
        P.rr(msg, target.issuer, target.serial_number)
    elif kind == "genm":
        P.genm(msg)
    return P.protect(msg, device.signed(authority), header)


def certificates(authority: Authority) -> int:
    return sum(authority.store.counts_by_status().values())


# Request kinds that start a transaction: the response the refusal comes in.
NEW_REQUESTS = {"ir": "ip", "cr": "cp", "kur": "kup", "p10cr": "cp", "rr": "rp", "genm": "error"}


# ---------------------------------------------------------------------------------------------
# A revoked certificate signs nothing any more


@pytest.mark.parametrize("kind", sorted(NEW_REQUESTS))
def test_revoked_signer_is_refused_for_every_new_request(tmp_path: Path, kind: str) -> None:
    # The twin below shares the device's key: a CA that allows key reuse.
    authority = Authority.open(tmp_path / "reuse", allow_key_reuse=True)
    try:
        _revoked_signer_is_refused(make_server(authority), authority, kind)
    finally:
        authority.close()


def _revoked_signer_is_refused(server: CmpServer, authority: Authority, kind: str) -> None:
    key = new_key()
    device = enroll(server, "dev", key)
    twin = enroll(server, "dev", key)  # same key and subject: an rr by the device may revoke it
    revoke(server, authority, device)
    before = certificates(authority)
    answer = send(server, request(kind, device, authority, target=twin.cert))
    assert (answer.body, answer.status, answer.fail) == (NEW_REQUESTS[kind], REJECTION, ("certRevoked",))
    assert answer.certificate is None
    assert certificates(authority) == before  # nothing issued
    assert authority.store.get(twin.cert.serial_number).status is CertRecordStatus.ISSUED  # nothing revoked


def test_revoked_signer_is_refused_in_follow_ups(authority: Authority) -> None:
    """certConf, pollReq and error of transactions the certificate started before it was revoked."""
    server = make_server(authority, confirm_wait=30)
    device = enroll(server, "dev")
    now = time.time()
    # certConf: the cr's certificate is not confirmed
    cp = send(server, request("cr", device, authority), now)
    assert (cp.body, cp.status) == ("cp", 0)
    # error: the client would give up on a second cr
    cp2 = send(server, request("cr", device, authority), now)
    # pollReq: a third cr answered "waiting"
    waiting = P.Answer.read(server.handle(request("cr", device, authority), now, defer=5).data)
    assert waiting.status == 3  # waiting
    revoke(server, authority, device)

    def follow_up(kind: str, answer: P.Answer) -> P.Answer:
        msg = P.new_message(kind)
        {"certConf": lambda: P.cert_conf(msg, answer.certificate), "pollReq": lambda: P.poll_req(msg),
         "error": lambda: P.error(msg)}[kind]()
        header = P.Header(transaction_id=answer.transaction_id, recip_nonce=answer.sender_nonce)
        return send(server, P.protect(msg, device.signed(authority), header), now + 6)

    for kind, answer in (("certConf", cp), ("error", cp2), ("pollReq", waiting)):
        refused = follow_up(kind, answer)
        assert (refused.body, refused.status, refused.fail) == ("error", REJECTION, ("certRevoked",)), kind
    for issued in (cp, cp2):
        serial = x509.load_der_x509_certificate(issued.certificate).serial_number
        assert authority.store.get(serial).status is CertRecordStatus.PENDING  # never confirmed
    # ... and so rejected when the confirmation deadline passes: none of them stays valid.
    expired = server.tick(now + 400)
    assert len(expired) == 3
    assert all(authority.store.get(o.serial).status is CertRecordStatus.REJECTED for o in expired)


def test_delayed_rr_of_itself_is_still_delivered(server: CmpServer, authority: Authority) -> None:
    """An rr answered "waiting" revokes at once; the pollReq the just-revoked certificate signs
    in that transaction still gets the rp, and nothing else it signs does."""
    device = enroll(server, "self-revoking")
    now = time.time()
    waiting = P.Answer.read(server.handle(request("rr", device, authority), now, defer=2).data)
    assert (waiting.body, waiting.status) == ("error", 3)
    assert authority.store.get(device.cert.serial_number).status is CertRecordStatus.REVOKED
    poll = P.new_message("pollReq")
    P.poll_req(poll, -1)
    header = P.Header(transaction_id=waiting.transaction_id, recip_nonce=waiting.sender_nonce)
    answer = send(server, P.protect(poll, device.signed(authority), header), now + 3)
    assert (answer.body, answer.status) == ("rp", 0)
    assert send(server, request("genm", device, authority), now + 3).fail == ("certRevoked",)


def test_signature_protected_ir_by_a_revoked_certificate(server: CmpServer, authority: Authority) -> None:
    device = enroll(server, "dev")
    revoke(server, authority, device, reason=4)
    before = certificates(authority)
    answer = send(server, request("ir", device, authority))
    assert (answer.body, answer.status, answer.fail) == ("ip", REJECTION, ("certRevoked",))
    assert certificates(authority) == before


def test_rejected_certificate_signs_nothing(authority: Authority) -> None:
    server = make_server(authority, confirm_wait=10)
    now = time.time()
    device = enroll(server, "late", confirm=False)
    server.tick(now + 11)  # never confirmed: rejected
    assert authority.store.get(device.cert.serial_number).status is CertRecordStatus.REJECTED
    answer = send(server, request("cr", device, authority))
    assert (answer.body, answer.status, answer.fail) == ("cp", REJECTION, ("certRevoked",))


# ---------------------------------------------------------------------------------------------
# On hold, unconfirmed, replaced, unknown


def test_held_signer_is_refused_but_may_release_its_hold(server: CmpServer, authority: Authority) -> None:
    device = enroll(server, "held")
    revoke(server, authority, device, reason=6)  # certificateHold
    assert authority.cert_state(device.cert) is CertState.ON_HOLD
    before = certificates(authority)
    for kind in ("cr", "genm"):
        answer = send(server, request(kind, device, authority))
        assert (answer.status, answer.fail) == (REJECTION, ("certRevoked",)), kind
    assert certificates(authority) == before
    # RFC 9483 §4.2 revive: removeFromCRL signed by the held certificate itself.
    msg = P.new_message("rr")
    P.rr(msg, device.cert.issuer, device.cert.serial_number, reasons=(8,))
    assert send(server, P.protect(msg, device.signed(authority))).status == 0
    assert send(server, request("cr", device, authority)).status == 0


def test_unconfirmed_signer_is_not_authorized(server: CmpServer, authority: Authority) -> None:
    device = enroll(server, "pending", confirm=False)
    before = certificates(authority)
    answer = send(server, request("cr", device, authority))
    assert (answer.body, answer.status, answer.fail) == ("cp", REJECTION, ("notAuthorized",))
    assert certificates(authority) == before


def _kur(server: CmpServer, authority: Authority, device: Device, *, confirm: bool = True) -> P.Answer:
    key = new_key()
    msg = P.new_message("kur")
    P.cert_request(msg, "kur", key, None)
    kup = send(server, P.protect(msg, device.signed(authority)))
    assert (kup.body, kup.status) == ("kup", 0), kup
    if confirm:
        conf = P.new_message("certConf")
        P.cert_conf(conf, kup.certificate)
        header = P.Header(transaction_id=kup.transaction_id, recip_nonce=kup.sender_nonce)
        assert send(server, P.protect(conf, device.signed(authority), header)).body == "pkiconf"
    return kup


def test_certificate_replaced_by_kur_no_longer_signs(tmp_path: Path) -> None:
    authority = Authority.open(tmp_path / "ca")
    try:
        server = make_server(authority)
        old = enroll(server, "renewing")
        unconfirmed = _kur(server, authority, old, confirm=False)
        assert authority.cert_state(old.cert) is CertState.GOOD  # not replaced until confirmed
        server.tick(time.time() + 120)  # that kup is never confirmed: rejected, old stays good
        assert authority.cert_state(old.cert) is CertState.GOOD
        assert unconfirmed.certificate is not None
        _kur(server, authority, old)
        assert authority.cert_state(old.cert) is CertState.REPLACED
        before = certificates(authority)
        for kind in ("cr", "kur", "genm"):
            answer = send(server, request(kind, old, authority))
            assert (answer.body, answer.status, answer.fail) == (NEW_REQUESTS[kind], REJECTION, ("notAuthorized",))
        assert certificates(authority) == before
        # The operator's choice: replaced certificates may go on signing.
        lenient = make_server(authority, allow_replaced_signers=True)
        assert send(lenient, request("genm", old, authority)).body == "genp"
    finally:
        authority.close()
    # Durable: a restarted CA still knows the old certificate was replaced.
    reopened = Authority.open(tmp_path / "ca")
    try:
        assert reopened.cert_state(old.cert) is CertState.REPLACED
        server = make_server(reopened)
        answer = send(server, request("cr", old, reopened))
        assert (answer.status, answer.fail) == (REJECTION, ("notAuthorized",))
        # It may still revoke itself.
        assert send(server, request("rr", old, reopened)).status == 0
        assert reopened.store.get(old.cert.serial_number).status is CertRecordStatus.REVOKED
    finally:
        reopened.close()


def test_kur_with_implicit_confirm_and_polling_still_delivers(server: CmpServer, authority: Authority) -> None:
    """The old certificate is replaced the moment the kur is granted implicit confirmation; the
    pollReq it signs afterwards in the same transaction is still answered."""
    old = enroll(server, "poller")
    msg = P.new_message("kur")
    P.cert_request(msg, "kur", new_key(), None)
    msg["header"]["generalInfo"].append(msg["header"]["generalInfo"].componentType.clone())
    info = msg["header"]["generalInfo"][0]
    info["infoType"] = univ.ObjectIdentifier("1.3.6.1.5.5.7.4.13")  # implicitConfirm
    info["infoValue"] = encoder.encode(univ.Null(""))
    now = time.time()
    waiting = P.Answer.read(server.handle(P.protect(msg, old.signed(authority)), now, defer=2).data)
    assert waiting.status == 3 and authority.cert_state(old.cert) is CertState.REPLACED
    poll = P.new_message("pollReq")
    P.poll_req(poll)
    header = P.Header(transaction_id=waiting.transaction_id, recip_nonce=waiting.sender_nonce)
    kup = send(server, P.protect(poll, old.signed(authority), header), now + 3)
    assert (kup.body, kup.status) == ("kup", 0) and kup.certificate is not None
    answer = send(server, request("cr", old, authority), now + 3)  # a new transaction: refused
    assert answer.fail == ("notAuthorized",)


def test_certificate_under_our_key_but_not_in_the_records(server: CmpServer, authority: Authority) -> None:
    key = new_key()
    stray = authority.issuer.issue(key.public_key(), name("stray")).cert  # signed, never recorded
    device = Device(key, stray)
    assert authority.cert_state(stray) is CertState.UNKNOWN
    before = certificates(authority)
    answer = send(server, request("cr", device, authority))
    assert (answer.body, answer.status, answer.fail) == ("cp", REJECTION, ("signerNotTrusted",))
    assert certificates(authority) == before


# ---------------------------------------------------------------------------------------------
# sender and senderKID (RFC 9483 §3.1)


def _foreign_pki(ski: bool) -> tuple[x509.Certificate, Device]:
    """A root of another PKI and a device certificate under it, with or without an SKI."""
    now = datetime.now(UTC)
    root_key, key = new_key(), new_key()
    root_name = name("other root")
    root = (x509.CertificateBuilder().subject_name(root_name).issuer_name(root_name)
            .public_key(root_key.public_key()).serial_number(1)
            .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(root_key, hashes.SHA256()))
    builder = (x509.CertificateBuilder().subject_name(name("other device")).issuer_name(root_name)
               .public_key(key.public_key()).serial_number(2)
               .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=30)))
    if ski:
        builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    return root, Device(key, builder.sign(root_key, hashes.SHA256()))


@pytest.mark.parametrize(
    ("label", "header"),
    [
        ("another name as sender", P.Header(sender=name("somebody else"))),
        ("sender not a directoryName", P.Header(sender=b"\x82\x0bdev.example")),  # dNSName
        ("NULL-DN sender", P.Header(sender=x509.Name([]))),
        ("senderKID missing", P.Header(sender_kid=None)),
        ("senderKID not the SKI", P.Header(sender_kid=b"\x01" * 20)),
    ],
)
def test_signed_request_must_name_its_signer(server: CmpServer, authority: Authority, label: str,
                                             header: P.Header) -> None:
    device = enroll(server, "named")
    before = certificates(authority)
    answer = send(server, request("cr", device, authority, header=header))
    assert (answer.body, answer.status, answer.fail) == ("error", REJECTION, ("badMessageCheck",)), label
    assert certificates(authority) == before


def test_signer_without_ski_needs_no_sender_kid(authority: Authority) -> None:
    root, device = _foreign_pki(ski=False)
    server = make_server(authority, trusted=[root])
    answer = send(server, request("cr", device, authority, header=P.Header(sender_kid=None)))
    assert (answer.body, answer.status) == ("cp", 0)
    assert authority.cert_state(device.cert) is CertState.FOREIGN


def test_mac_request_sender_must_be_a_directory_name(server: CmpServer, authority: Authority) -> None:
    before = certificates(authority)
    for sender in (b"\x82\x0bdev.example", b"\x81\x0fdev@example.com"):  # dNSName, rfc822Name
        msg = P.new_message("ir")
        P.cert_request(msg, "ir", new_key(), name("mac"))
        answer = send(server, P.protect(msg, P.Mac(SECRET, REF), P.Header(sender=sender)))
        assert (answer.body, answer.status, answer.fail) == ("error", REJECTION, ("badMessageCheck",))
    assert certificates(authority) == before
    # The NULL-DN (a sender that does not know its name, RFC 9810 §5.1.1) is a directoryName.
    msg = P.new_message("ir")
    P.cert_request(msg, "ir", new_key(), name("mac"))
    assert send(server, P.protect(msg, P.Mac(SECRET, REF), P.Header(sender=x509.Name([])))).status == 0


# ---------------------------------------------------------------------------------------------
# rr templates (RFC 9483 §4.2)


def _rr(device: Device, authority: Authority, **kw: object) -> bytes:
    msg = P.new_message("rr")
    P.rr(msg, device.cert.issuer, device.cert.serial_number, **kw)  # type: ignore[arg-type]
    return P.protect(msg, device.signed(authority))


@pytest.mark.parametrize(
    ("label", "fields", "fail"),
    [
        ("other subject", {"subject": name("not me")}, "badCertId"),
        ("other public key", {"public_key": new_key().public_key()}, "badCertId"),
        ("two CRLReasons", {"reasons": (1, 4)}, "badRequest"),
    ],
)
def test_rr_template_must_describe_the_certificate(server: CmpServer, authority: Authority, label: str,
                                                   fields: dict[str, object], fail: str) -> None:
    device = enroll(server, "target")
    answer = send(server, _rr(device, authority, **fields))
    assert (answer.body, answer.status, answer.fail) == ("rp", REJECTION, (fail,)), label
    assert authority.store.get(device.cert.serial_number).status is CertRecordStatus.ISSUED  # nothing revoked


def test_rr_template_with_matching_fields_revokes(server: CmpServer, authority: Authority) -> None:
    device = enroll(server, "target")
    answer = send(server, _rr(device, authority, subject=device.cert.subject, public_key=device.key.public_key()))
    assert (answer.body, answer.status) == ("rp", 0)
    record = authority.store.get(device.cert.serial_number)
    assert record.status is CertRecordStatus.REVOKED and record.revocation_reason is x509.ReasonFlags.key_compromise


# ---------------------------------------------------------------------------------------------
# A signer certificate cryptography cannot read is bad protection, not a server failure (#22)


def malformed_signer_request(device: Device, authority: Authority, defect: str) -> bytes:
    msg = P.new_message("cr")
    P.cert_request(msg, "cr", new_key(), name("x"))
    signed = device.signed(authority)
    signed.extra_certs_override = (P.malformed_certificate(device.cert, defect), *signed.extra)
    return P.protect(msg, signed)


@pytest.mark.parametrize(("defect", "fail"), [("duplicate extension", "badMessageCheck"), ("unknown curve", "badAlg")])
def test_malformed_signer_certificate(server: CmpServer, authority: Authority, defect: str, fail: str) -> None:
    device = enroll(server, "malformed")
    before = certificates(authority)
    reply = server.handle(malformed_signer_request(device, authority, defect), time.time())
    answer = P.Answer.read(reply.data)
    assert (answer.body, answer.status, answer.fail) == ("error", REJECTION, (fail,))
    assert reply.outcome.status == "error" and "internal" not in reply.outcome.text
    assert certificates(authority) == before
